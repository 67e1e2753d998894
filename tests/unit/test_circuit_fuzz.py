"""Property tests: random and corrupted input gives a Circuit or a typed circuitsteer error, never
another exception; whatever loads survives a save/load round trip unchanged."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from circuitsteer.circuit import Circuit, dumps_circuit, loads_circuit, resolve_circuit
from circuitsteer.errors import CircuitSteerError
from circuitsteer.formats import from_acdc, from_auto_circuit, from_eap_ig, from_heads

circuit_from_dict = Circuit.from_dict

IOI_TEXT = resolve_circuit("gpt2-small/ioi").read_text(encoding="utf-8")
IOI = json.loads(IOI_TEXT)
SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# names and numbers that sit on the edges of what is valid
names = st.sampled_from(
    [
        "a9.h9",
        "a0.h0",
        "a12.h0",
        "a1.h12",
        "m3",
        "m12",
        "m0.n5",
        "input",
        "logits",
        "resid_pre.1",
        " a1.h1",
        "a01.h1",
        "a\u0663.h1",
        "a-1.h2",
        "a" + "9" * 40 + ".h1",
        "A1.2",
        "",
        "q",
        "k",
        "->",
        "a7.h3->a9.h9<q>",
        "S2",
        "END",
        "circuitsteer.circuit/1",
        "name mover",
        "a" + "9" * 400 + ".h1",
        "m" + "7" * 400,
        "a1.h1->a" + "9" * 400 + ".h0<q>",
        "A" + "9" * 400 + ".1->Resid End",
        "blocks." + "9" * 400 + ".hook_q_input",
    ]
)
numbers = st.sampled_from(
    [0, -1, 1, 11, 12, 2**63, 10**400, -(10**400), 1e308, float("inf"), float("nan"), True]
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.text(max_size=12)
    | names
    | numbers
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | names, inner, max_size=4)
    ),
    max_leaves=20,
)


def accepts(fn) -> Circuit | None:
    """Run an importer: a Circuit or a CircuitSteerError is fine; anything else fails the test."""
    try:
        out = fn()
    except CircuitSteerError:
        return None
    assert isinstance(out, Circuit)
    return out


def round_trips(c: Circuit) -> None:
    text = dumps_circuit(c)
    assert dumps_circuit(loads_circuit(text)) == text


@st.composite
def mutated_ioi(draw) -> Any:
    """The IOI file with 1-3 random corruptions: deleted keys, wrong types, random strings,
    out-of-range numbers, renamed or duplicated entries."""
    d: Any = copy.deepcopy(IOI)
    for _ in range(draw(st.integers(1, 3))):
        parent: Any = None
        key: Any = None
        cur: Any = d
        while isinstance(cur, dict | list) and cur and draw(st.integers(0, 3)) > 0:
            key = (
                draw(st.sampled_from(list(cur)))
                if isinstance(cur, dict)
                else draw(st.integers(0, len(cur) - 1))
            )
            parent, cur = cur, cur[key]
        op = draw(st.sampled_from(["delete", "replace", "rename", "duplicate", "insert"]))
        if parent is None:
            if op == "replace":
                d = draw(json_values)
            continue
        if op == "delete":
            del parent[key]
        elif op == "replace":
            parent[key] = draw(json_values | names | numbers)
        elif op == "rename" and isinstance(parent, dict):
            parent[draw(names | st.text(max_size=8))] = parent.pop(key)
        elif op == "duplicate" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(cur))
        elif op == "insert" and isinstance(cur, dict):
            cur[draw(names | st.text(max_size=8))] = draw(json_values)
        elif op == "insert" and isinstance(cur, list):
            cur.append(draw(json_values))
    return d


@SETTINGS
@given(mutated_ioi())
def test_corrupted_ioi_gives_a_circuit_or_a_typed_error(d):
    c = accepts(lambda: circuit_from_dict(d, file="fuzz.json"))
    if c is not None:
        round_trips(c)


@SETTINGS
@given(json_values)
def test_random_json_gives_a_circuit_or_a_typed_error(d):
    for candidate in (d, {"schema": "circuitsteer.circuit/1", "nodes": d}, {**IOI, "edges": d}):
        c = accepts(lambda candidate=candidate: circuit_from_dict(candidate))
        if c is not None:
            round_trips(c)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    st.integers(0, len(IOI_TEXT) - 1),
    st.integers(0, 40),
    st.text(max_size=5) | st.binary(max_size=5),
)
def test_corrupted_text_gives_a_circuit_or_a_typed_error(at, cut, insert):
    if isinstance(insert, bytes):
        text: str | bytes = IOI_TEXT.encode()[:at] + insert + IOI_TEXT.encode()[at + cut :]
    else:
        text = IOI_TEXT[:at] + insert + IOI_TEXT[at + cut :]
    accepts(lambda: loads_circuit(text, file="fuzz.json"))


@settings(max_examples=150, deadline=None, derandomize=True)
@given(json_values)
def test_importers_give_a_circuit_or_a_typed_error(d):
    accepts(lambda: from_eap_ig(d))
    accepts(lambda: from_eap_ig({"cfg": {"n_layers": 2, "n_heads": 2}, "nodes": d, "edges": d}))
    accepts(lambda: from_acdc(d, n_layers=4))
    accepts(
        lambda: from_acdc(
            [["blocks.1.hook_q_input", d, "blocks.0.attn.hook_result", d, d]], n_layers=4
        )
    )
    accepts(lambda: from_auto_circuit(d if isinstance(d, dict | list) else [d]))
    accepts(lambda: from_heads(d))
    accepts(lambda: Circuit.from_dict({**IOI, "metadata": {"dense": d}}).expand_edges())
