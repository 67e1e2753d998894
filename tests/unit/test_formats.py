"""Circuit JSON validation, and the ACDC / EAP-IG / auto-circuit / head-list importers and exporters."""

from __future__ import annotations

import copy
import json
import pickle
import random
from types import SimpleNamespace

import pytest

from circuitsteer.circuit import SCHEMA, Circuit, load_circuit, loads_circuit
from circuitsteer.errors import CircuitFormatError, ShapeMismatchError, UntrustedPickleError
from circuitsteer.formats import (
    from_acdc,
    from_auto_circuit,
    from_eap_ig,
    from_heads,
    parse_heads,
    parse_torch_index,
    read_acdc,
    read_eap_ig,
    to_acdc,
    to_acdc_rows,
    to_auto_circuit,
    to_eap_ig,
    to_heads,
    write_eap_ig,
)
from circuitsteer.nodes import ModelShape

circuit_from_dict = Circuit.from_dict

TOY = ModelShape(n_layers=4, n_heads=4, d_model=128, d_head=32, d_mlp=512, d_vocab=200)


def base() -> dict:
    return {
        "schema": SCHEMA,
        "name": "t",
        "model": "gpt2-small",
        "source": "test",
        "nodes": {
            "input": {},
            "a0.h1": {"class": "dup", "positions": ["S2"]},
            "a9.h9": {"class": "nm"},
            "logits": {},
        },
        "edges": [
            {"src": "input", "dst": "a0.h1", "channel": "q", "positions": None, "score": None},
            {"src": "a0.h1", "dst": "a9.h9", "channel": "k", "positions": ["S2"], "score": 0.5},
            {"src": "a9.h9", "dst": "logits", "channel": None, "positions": None, "score": None},
        ],
        "metadata": {},
    }


def mutate(fn) -> dict:
    d = base()
    fn(d)
    return d


# -- the circuit format: every validation error is typed and names file, entry and fix -------------

CASES = [
    (
        "unknown schema",
        lambda d: d.update(schema="circuitsteer.circuit/2"),
        CircuitFormatError,
        r"bad\.json: schema: unknown schema 'circuitsteer.circuit/2'\. Fix: set 'schema'",
    ),
    ("missing schema", lambda d: d.pop("schema"), CircuitFormatError, r"schema: no 'schema' key"),
    (
        "malformed name",
        lambda d: d["nodes"].update({"a1h2": {}}),
        CircuitFormatError,
        r"nodes\['a1h2'\]: unknown node name 'a1h2'\. Fix: use",
    ),
    (
        "non-canonical name",
        lambda d: d["nodes"].update({"a09.h1": {}}),
        CircuitFormatError,
        r"nodes\['a09.h1'\]: .*canonical.*Fix: write it as 'a9.h1'",
    ),
    (
        "residual site",
        lambda d: d["nodes"].update({"resid_pre.3": {}}),
        CircuitFormatError,
        r"not a circuit node",
    ),
    (
        "layer outside",
        lambda d: d["nodes"].update({"a12.h0": {}}),
        ShapeMismatchError,
        r"bad\.json: a12\.h0: layer 12 is outside the model.*Fix: use layers 0\.\.11",
    ),
    (
        "head outside",
        lambda d: d["nodes"].update({"a1.h12": {}}),
        ShapeMismatchError,
        r"head 12 is outside",
    ),
    (
        "backwards edge",
        lambda d: d["edges"].append({"src": "a9.h9", "dst": "a0.h1", "channel": "q"}),
        CircuitFormatError,
        r"edges\[3\]: edge a9\.h9->a0\.h1<q> points backwards.*Fix: a sender must come earlier",
    ),
    (
        "cycle",
        lambda d: d["edges"].append({"src": "a9.h9", "dst": "a0.h1", "channel": "k"}),
        CircuitFormatError,
        r"edges\[3\]: .*backwards",
    ),
    (
        "channel on MLP",
        lambda d: d["edges"].__setitem__(2, {"src": "a9.h9", "dst": "logits", "channel": "q"}),
        CircuitFormatError,
        r"edges\[2\]: channel 'q' on edge a9\.h9->logits<q>, but logits is not a head.*Fix: drop",
    ),
    (
        "no channel on head",
        lambda d: d["edges"].append({"src": "input", "dst": "a9.h9"}),
        CircuitFormatError,
        r"enters head a9\.h9 without a channel",
    ),
    (
        "bad channel",
        lambda d: d["edges"].append({"src": "input", "dst": "a9.h9", "channel": "o"}),
        CircuitFormatError,
        r"unknown channel 'o'",
    ),
    (
        "duplicate edge",
        lambda d: d["edges"].append(dict(d["edges"][0])),
        CircuitFormatError,
        r"edges\[3\]: duplicate edge input->a0\.h1<q>",
    ),
    (
        "undeclared node",
        lambda d: d["edges"].append({"src": "input", "dst": "m3"}),
        CircuitFormatError,
        r"uses node 'm3', which 'nodes' does not declare.*Fix: add 'm3' to 'nodes'",
    ),
    (
        "unknown key",
        lambda d: d["nodes"]["a0.h1"].update(positon=["END"]),
        CircuitFormatError,
        r"nodes\['a0.h1'\]: unknown key 'positon'.*did you mean 'positions'",
    ),
    (
        "positions type",
        lambda d: d["nodes"]["a0.h1"].update(positions="END"),
        CircuitFormatError,
        r"positions must be a list",
    ),
    (
        "score type",
        lambda d: d["edges"][0].update(score="high"),
        CircuitFormatError,
        r"score must be a number",
    ),
    (
        "class type",
        lambda d: d["nodes"]["a0.h1"].update({"class": 3}),
        CircuitFormatError,
        r"'class' must be a string",
    ),
    ("nodes type", lambda d: d.update(nodes=[]), CircuitFormatError, r"nodes: must be an object"),
    (
        "edge type",
        lambda d: d["edges"].append(7),
        CircuitFormatError,
        r"edges\[3\]: an edge must be an object",
    ),
    (
        "MLP in attn-only model",
        lambda d: d.update(model="attn-only-4l", nodes={"m0": {}}, edges=[]),
        ShapeMismatchError,
        r"uses m0, but .* is attention-only",
    ),
]


@pytest.mark.parametrize("label,fn,error,pattern", CASES, ids=[c[0] for c in CASES])
def test_validation_errors_are_typed_and_actionable(label, fn, error, pattern):
    with pytest.raises(error, match=pattern) as info:
        circuit_from_dict(mutate(fn), file="bad.json")
    assert "bad.json" in str(info.value) and "Fix:" in str(info.value)


def test_valid_base_and_shorthand_edges():
    c = circuit_from_dict(base())
    assert [e.name for e in c.edges] == ["input->a0.h1<q>", "a0.h1->a9.h9<k>", "a9.h9->logits"]
    d = mutate(lambda d: d.update(edges=["input->a0.h1<q>", "a0.h1->a9.h9<k>"]))
    assert len(circuit_from_dict(d).edges) == 2
    with pytest.raises(CircuitFormatError, match=r"edges\[0\]: malformed edge"):
        circuit_from_dict(mutate(lambda d: d.update(edges=["a0.h1=>a9.h9"])))
    assert circuit_from_dict(base()).to_dict() == base()  # canonical input round-trips exactly


def test_file_level_errors(tmp_path):
    text = json.dumps(base()).replace(
        '"a9.h9": {"class": "nm"}', '"a9.h9": {"class": "nm"}, "a9.h9": {}'
    )
    with pytest.raises(CircuitFormatError, match=r"key 'a9.h9': duplicate entry"):
        loads_circuit(text, file="dup.json")
    with pytest.raises(CircuitFormatError, match=r"line 1 column \d+: invalid JSON"):
        loads_circuit('{"schema": ', file="cut.json")
    with pytest.raises(CircuitFormatError, match="top level: expected a JSON object"):
        loads_circuit("[1, 2]")
    with pytest.raises(CircuitFormatError, match="not UTF-8"):
        loads_circuit(b"\xff\xfe{")
    with pytest.raises(CircuitFormatError, match="no shipped circuit of that name.*gpt2-small/ioi"):
        load_circuit("gpt2-small/nope")
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(base()))
    assert load_circuit(path, model=ModelShape(12, 12, 768, 64, 3072, 50257)).name == "t"
    with pytest.raises(
        ShapeMismatchError, match=r"mine\.json: circuit 't' is for gpt2-small .*toy has 4 layers"
    ):
        load_circuit(path, model=SimpleNamespace(shape=TOY, name="toy"))
    with pytest.raises(ShapeMismatchError, match="is for gpt2-small"):
        load_circuit("gpt2-small/ioi", model=TOY)


def test_explicit_shape_for_unknown_models():
    d = mutate(
        lambda d: d.update(
            model="toy-ioi",
            shape={"n_layers": 4, "n_heads": 4, "d_mlp": 512},
            nodes={"a0.h1": {}, "a3.h3": {}},
            edges=[],
        )
    )
    c = circuit_from_dict(d)
    assert c.shape is not None and c.shape.n_layers == 4
    assert circuit_from_dict(c.to_dict()).shape == c.shape
    bad = copy.deepcopy(d)
    bad["nodes"]["a4.h0"] = {}
    with pytest.raises(ShapeMismatchError, match="layer 4 is outside"):
        circuit_from_dict(bad)
    with pytest.raises(CircuitFormatError, match="shape: missing 'd_mlp'"):
        circuit_from_dict(mutate(lambda d: d.update(shape={"n_layers": 4, "n_heads": 4})))


# -- EAP-IG ------------------------------------------------------------------------------------------


def eap_ig_graph(
    n_layers: int, n_heads: int, seed: int, node_format: str = "dict", frac: float = 0.3
) -> dict:
    """An EAP-IG graph JSON built the way EAP-IG's Graph.from_model + to_json build it."""
    rng = random.Random(seed)
    node_names, edge_names = ["input"], []
    residual = ["input"]
    for layer in range(n_layers):
        attn = [f"a{layer}.h{h}" for h in range(n_heads)]
        for n in residual:
            for a in attn:
                for letter in "qkv":
                    edge_names.append(f"{n}->{a}<{letter}>")
        residual += attn
        for n in residual:
            edge_names.append(f"{n}->m{layer}")
        residual.append(f"m{layer}")
        node_names += [*attn, f"m{layer}"]
    for n in residual:
        edge_names.append(f"{n}->logits")
    node_names.append("logits")
    edges = {
        e: {"score": round(rng.gauss(0, 1), 6), "in_graph": rng.random() < frac} for e in edge_names
    }
    on = {"logits"} | {e.split("->")[0] for e, v in edges.items() if v["in_graph"]}
    on |= {rng.choice(node_names)}  # a node in the graph without edges
    on -= {
        rng.choice([e.split("->")[0] for e, v in edges.items() if v["in_graph"]])
    }  # an edge to a node marked out
    if node_format == "bool":
        nodes = {n: n in on for n in node_names}
    else:
        nodes = {n: {"in_graph": n in on, "score": round(rng.random(), 6)} for n in node_names}
    cfg = {"n_layers": n_layers, "n_heads": n_heads, "parallel_attn_mlp": False, "d_model": 16}
    return {"cfg": cfg, "nodes": nodes, "edges": edges}


@pytest.mark.parametrize("node_format", ["dict", "bool"])
def test_eap_ig_round_trips_exactly(node_format, tmp_path):
    d = eap_ig_graph(2, 3, seed=1, node_format=node_format)
    c = from_eap_ig(copy.deepcopy(d))
    assert len(c.edges) == sum(v["in_graph"] for v in d["edges"].values())
    assert to_eap_ig(c) == d
    assert json.dumps(to_eap_ig(c)) == json.dumps(d)  # key order too
    # through files in both formats
    (tmp_path / "g.json").write_text(json.dumps(d))
    c2 = read_eap_ig(tmp_path / "g.json")
    write_eap_ig(c2, tmp_path / "out.json")
    assert (tmp_path / "out.json").read_text() == json.dumps(d)
    c2.save(tmp_path / "circuit.json")
    assert to_eap_ig(load_circuit(tmp_path / "circuit.json")) == d


def test_eap_ig_round_trips_exactly_at_gpt2_small_size():
    # a real GPT-2-small EAP-IG circuit keeps a few hundred of the 32,491 edges
    d = eap_ig_graph(12, 12, seed=12, frac=0.01)
    assert len(d["edges"]) == 32491
    assert json.dumps(to_eap_ig(from_eap_ig(d, model="gpt2-small"))) == json.dumps(d)


def test_eap_ig_export_of_a_native_circuit():
    ioi = load_circuit("gpt2-small/ioi").expand_edges()
    d = to_eap_ig(ioi)
    assert len(d["edges"]) == 32491 and sum(v["in_graph"] for v in d["edges"].values()) == 963
    assert d["nodes"]["a9.h9"] == {"in_graph": True} and d["nodes"]["a1.h1"] == {"in_graph": False}
    back = from_eap_ig(d, model="gpt2-small")
    assert back.edge_keys() == ioi.edge_keys()
    with pytest.raises(CircuitFormatError, match="needs the model shape"):
        to_eap_ig(Circuit("no shape"))


def test_eap_ig_errors():
    with pytest.raises(CircuitFormatError, match="missing 'cfg', 'nodes' or 'edges'"):
        from_eap_ig({"nodes": {}})
    d = eap_ig_graph(1, 1, seed=0)
    d["cfg"]["parallel_attn_mlp"] = True
    with pytest.raises(CircuitFormatError, match="parallel"):
        from_eap_ig(d)
    d = eap_ig_graph(1, 1, seed=0)
    d["edges"]["a0.h0->input"] = {"score": 0.0, "in_graph": True}
    with pytest.raises(CircuitFormatError, match=r"edges\['a0.h0->input'\]"):
        from_eap_ig(d)
    with pytest.raises(CircuitFormatError, match="is 1 layers x 1 heads.*gpt2-small"):
        from_eap_ig(eap_ig_graph(1, 1, seed=0), model="gpt2-small")


# -- ACDC -------------------------------------------------------------------------------------------

COL = (None,)


def H(i):  # noqa: N802 - ACDC's own helper name
    return (None, None, i)


# ACDC's get_docstring_subgraph_true_edges (acdc/docstring/utils.py), as data
DOCSTRING_ACDC = [
    ("blocks.1.hook_v_input", H(4), "blocks.0.attn.hook_result", H(5)),
    ("blocks.0.attn.hook_v", H(5), "blocks.0.hook_v_input", H(5)),
    ("blocks.0.hook_v_input", H(5), "blocks.0.hook_resid_pre", COL),
    ("blocks.2.attn.hook_q", H(0), "blocks.2.hook_q_input", H(0)),
    ("blocks.2.hook_q_input", H(0), "blocks.0.hook_resid_pre", COL),
    ("blocks.2.hook_q_input", H(0), "blocks.0.attn.hook_result", H(5)),
    ("blocks.2.attn.hook_k", H(0), "blocks.2.hook_k_input", H(0)),
    ("blocks.2.hook_k_input", H(0), "blocks.0.hook_resid_pre", COL),
    ("blocks.2.hook_k_input", H(0), "blocks.0.attn.hook_result", H(5)),
    ("blocks.2.attn.hook_v", H(0), "blocks.2.hook_v_input", H(0)),
    ("blocks.2.hook_v_input", H(0), "blocks.1.attn.hook_result", H(4)),
    ("blocks.1.attn.hook_v", H(4), "blocks.1.hook_v_input", H(4)),
    ("blocks.1.hook_v_input", H(4), "blocks.0.hook_resid_pre", COL),
    ("blocks.1.attn.hook_q", H(2), "blocks.1.hook_q_input", H(2)),
    ("blocks.1.attn.hook_k", H(2), "blocks.1.hook_k_input", H(2)),
    ("blocks.1.hook_q_input", H(2), "blocks.0.hook_resid_pre", COL),
    ("blocks.1.hook_k_input", H(2), "blocks.0.hook_resid_pre", COL),
    ("blocks.1.hook_q_input", H(2), "blocks.0.attn.hook_result", H(5)),
    ("blocks.1.hook_k_input", H(2), "blocks.0.attn.hook_result", H(5)),
] + [
    row
    for h in (H(0), H(6))
    for row in [
        ("blocks.3.hook_resid_post", COL, "blocks.3.attn.hook_result", h),
        ("blocks.3.attn.hook_q", h, "blocks.3.hook_q_input", h),
        ("blocks.3.hook_q_input", h, "blocks.1.attn.hook_result", H(4)),
        ("blocks.3.attn.hook_v", h, "blocks.3.hook_v_input", h),
        ("blocks.3.hook_v_input", h, "blocks.0.hook_resid_pre", COL),
        ("blocks.3.hook_v_input", h, "blocks.0.attn.hook_result", H(5)),
        ("blocks.3.attn.hook_k", h, "blocks.3.hook_k_input", h),
        ("blocks.3.hook_k_input", h, "blocks.2.attn.hook_result", H(0)),
        ("blocks.3.hook_k_input", h, "blocks.1.attn.hook_result", H(2)),
    ]
]


def test_acdc_docstring_import_matches_the_shipped_file():
    assert len(DOCSTRING_ACDC) == 37
    c = from_acdc(dict.fromkeys(DOCSTRING_ACDC, True), model="attn-only-4l")
    shipped = load_circuit("attn-only-4l/docstring")
    assert c.edge_keys() == shipped.edge_keys()
    assert c.metadata["acdc"] == {"internal_edges": 13, "n_layers": 4}
    assert c.acdc_edge_count() == 37 == len(DOCSTRING_ACDC)
    # without a model, the layer count comes from the logits hook (blocks.3.hook_resid_post)
    assert from_acdc(dict.fromkeys(DOCSTRING_ACDC, True)).edge_keys() == shipped.edge_keys()


def test_acdc_forms_and_round_trips(tmp_path):
    ioi = load_circuit("gpt2-small/ioi").expand_edges()
    flat = to_acdc(ioi)
    assert len(flat) == 963
    assert ("blocks.9.hook_q_input", H(9), "blocks.7.attn.hook_result", H(3)) in flat
    assert ("blocks.11.hook_resid_post", COL, "blocks.0.hook_resid_pre", COL) in flat
    assert from_acdc(flat, model="gpt2-small").edge_keys() == ioi.edge_keys()
    nested = to_acdc(ioi, nested=True)
    assert from_acdc(nested, n_layers=12).edge_keys() == ioi.edge_keys()
    (tmp_path / "edges.json").write_text(json.dumps(to_acdc_rows(ioi)))
    assert read_acdc(tmp_path / "edges.json", n_layers=12).edge_keys() == ioi.edge_keys()
    # JSON nested form with TorchIndex strings
    js = {
        "blocks.1.hook_k_input": {"[:, :, 2]": {"blocks.0.attn.hook_result": {"[:, :, 5]": 0.25}}}
    }
    assert [(e.name, e.score) for e in from_acdc(js, n_layers=4).edges] == [
        ("a0.h5->a1.h2<k>", 0.25)
    ]


def test_acdc_values_and_hook_variants():
    key = ("blocks.2.hook_mlp_in", COL, "blocks.1.attn.hook_result", H(3))
    edges = {
        key: SimpleNamespace(present=True, effect_size=0.7),
        ("blocks.2.hook_mlp_in", COL, "blocks.0.hook_mlp_out", COL): SimpleNamespace(
            present=False, effect_size=0.01
        ),
        (
            "blocks.3.hook_resid_mid",
            COL,
            "hook_embed",
            COL,
        ): True,  # early ACDC: MLP input, token embedding
        ("blocks.3.hook_resid_mid", COL, "hook_pos_embed", COL): True,
    }
    c = from_acdc(edges, n_layers=4)
    assert {(e.name, e.score) for e in c.edges} == {("a1.h3->m2", 0.7), ("input->m3", None)}
    everything = from_acdc(edges, n_layers=4, present_only=False)
    assert [e.meta for e in everything.edges if e.src == "m0"] == [{"present": False}]
    assert parse_torch_index("[:]") == (None,) and parse_torch_index([None, None, 3]) == H(3)
    with pytest.raises(CircuitFormatError, match="not a TorchIndex"):
        parse_torch_index("[:, x]")
    with pytest.raises(CircuitFormatError, match="unknown TransformerLens hook"):
        from_acdc(
            {("blocks.1.hook_attn_in", H(0), "blocks.0.hook_resid_pre", COL): True}, n_layers=2
        )
    with pytest.raises(CircuitFormatError, match="cannot be the parent"):
        from_acdc(
            {("blocks.1.hook_q_input", H(0), "blocks.0.hook_q_input", H(1)): True}, n_layers=2
        )
    with pytest.raises(CircuitFormatError, match="backwards"):
        from_acdc(
            {("blocks.0.hook_q_input", H(0), "blocks.1.attn.hook_result", H(1)): True}, n_layers=2
        )
    with pytest.raises(CircuitFormatError, match="not an ACDC edge collection"):
        from_acdc(42)


def test_pickles_need_trusted(tmp_path):
    data = dict.fromkeys(DOCSTRING_ACDC, True)
    (tmp_path / "edges.pkl").write_bytes(pickle.dumps(data))
    with pytest.raises(UntrustedPickleError, match="trusted=True"):
        read_acdc(tmp_path / "edges.pkl")
    (tmp_path / "sneaky.json").write_bytes(pickle.dumps(data))  # a pickle by its first byte
    with pytest.raises(UntrustedPickleError):
        read_acdc(tmp_path / "sneaky.json")
    with pytest.raises(UntrustedPickleError):
        read_eap_ig(tmp_path / "edges.pkl")
    assert len(read_acdc(tmp_path / "edges.pkl", trusted=True).edges) == 24
    (tmp_path / "broken.pkl").write_bytes(b"\x80\x04garbage")
    with pytest.raises(CircuitFormatError, match="cannot unpickle"):
        read_acdc(tmp_path / "broken.pkl", trusted=True)


# -- auto-circuit and head lists ---------------------------------------------------------------------


def test_auto_circuit_names():
    c = from_auto_circuit(
        {"Resid Start->A0.1.Q": 0.1, "A0.1->MLP 0": 0.2, "MLP 0->Resid End": 0.3, "A1.2->A3.0": 0.4}
    )
    assert sorted(e.name for e in c.edges) == sorted(
        [
            "input->a0.h1<q>",
            "a0.h1->m0",
            "m0->logits",
            "a1.h2->a3.h0<q>",
            "a1.h2->a3.h0<k>",
            "a1.h2->a3.h0<v>",
        ]
    )
    assert to_auto_circuit(c, scores=True)["A1.2->A3.0.K"] == 0.4
    doc = load_circuit("attn-only-4l/docstring")
    names = to_auto_circuit(doc)
    assert "A0.5->A1.4.V" in names and "A3.6->Resid End" in names and "Resid Start->A3.0.V" in names
    assert from_auto_circuit(names).edge_keys() == doc.edge_keys()
    seq = from_auto_circuit({("A0.1->A2.3.Q", 5): 1.0, ("A0.1->A2.3.Q", 2): 0.5})
    assert seq.edges[0].positions == (2, 5) and seq.edges[0].meta["scores_by_position"] == {
        "5": 1.0,
        "2": 0.5,
    }
    for bad, pattern in [
        ("Block 0 Resid Mid->Resid End", "unknown node name"),
        ("A0.1 A2.3.Q", "no '->'"),
        ("A2.3->A0.1.Q", "backwards"),
    ]:
        with pytest.raises(CircuitFormatError, match=pattern):
            from_auto_circuit([bad])
    with pytest.raises(CircuitFormatError, match="repeats"):
        from_auto_circuit(["A0.1->A2.3.Q", "A0.1->A2.3"])


def test_head_lists():
    assert parse_heads("9.9, 10.0;9.6  a11.h10") == ["a9.h9", "a10.h0", "a9.h6", "a11.h10"]
    assert parse_heads([(9, 9), "10.0"]) == ["a9.h9", "a10.h0"]
    c = from_heads("9.9, 10.0", cls="name mover", model="gpt2-small")
    assert c.classes == {"name mover": ["a9.h9", "a10.h0"]} and to_heads(c) == "9.9, 10.0"
    assert to_heads(load_circuit("gpt2-small/ioi")).startswith("0.1, 0.10, 2.2, 3.0, 4.11, 5.5")
    with pytest.raises(CircuitFormatError, match=r"entry 1 \('9\.x'\) is not a head"):
        parse_heads("9.9, 9.x")
    with pytest.raises(CircuitFormatError, match="repeats a9.h9"):
        parse_heads("9.9 a9.h9")
    with pytest.raises(ShapeMismatchError, match="layer 9 is outside"):
        from_heads("9.9", shape=TOY)
