"""Circuits as graphs: shipped definitions, counts, queries, set operations, expansion, drawing."""

from __future__ import annotations

import doctest
import importlib
import itertools
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from circuitsteer import edge_graph as eg
from circuitsteer.circuit import (
    Circuit,
    dumps_circuit,
    full_edge_graph,
    load_circuit,
    resolve_circuit,
    shipped_circuits,
    wire,
    wired_edges,
)
from circuitsteer.errors import CircuitFormatError, NodeNameError, ShapeMismatchError
from circuitsteer.models import known_shape
from circuitsteer.nodes import ModelShape

GPT2 = ModelShape(n_layers=12, n_heads=12, d_model=768, d_head=64, d_mlp=3072, d_vocab=50257)
ATTN_ONLY_4L = ModelShape(n_layers=4, n_heads=8, d_model=512, d_head=64, d_mlp=0, d_vocab=48262)

# REFERENCE.md's IOI table, typed in independently of the shipped file
IOI_CLASSES = {
    "name mover": (["9.9", "10.0", "9.6"], "END"),
    "backup name mover": (["10.10", "10.6", "10.2", "10.1", "11.2", "9.7", "9.0", "11.9"], "END"),
    "negative name mover": (["10.7", "11.10"], "END"),
    "S-inhibition": (["7.3", "7.9", "8.6", "8.10"], "END"),
    "induction": (["5.5", "5.8", "5.9", "6.9"], "S2"),
    "duplicate token": (["0.1", "0.10", "3.0"], "S2"),
    "previous token": (["2.2", "4.11"], "S1+1"),
}


def head(lh: str) -> str:
    layer, h = lh.split(".")
    return f"a{layer}.h{h}"


@pytest.fixture(scope="module")
def ioi() -> Circuit:
    return load_circuit("gpt2-small/ioi")


# -- shipped files ------------------------------------------------------------------------------


def test_ioi_has_26_heads_in_7_classes_with_positions(ioi):
    assert len(ioi.heads) == 26
    assert set(ioi.classes) == set(IOI_CLASSES)
    for cls, (heads, position) in IOI_CLASSES.items():
        assert ioi.nodes_by_class(cls) == [head(h) for h in heads]
        for h in heads:
            assert ioi.node(head(h))["positions"] == (position,)
    assert ioi.model == "gpt2-small" and "Wang et al. 2022" in (ioi.source or "")
    assert ioi.node("logits")["positions"] == ("END",)
    assert ioi.nodes_by_kind("mlp") == [f"m{i}" for i in range(12)]


def test_shipped_circuits_are_listed_and_cite_sources():
    names = shipped_circuits()
    assert {"gpt2-small/ioi", "gpt2-small/greater-than", "attn-only-4l/docstring"} <= set(names)
    for name in names:
        c = load_circuit(name)
        assert c.source and any(str(y) in c.source for y in (2022, 2023, 2024))


@pytest.mark.parametrize(
    "name", ["gpt2-small/ioi", "gpt2-small/greater-than", "attn-only-4l/docstring"]
)
def test_shipped_files_are_canonical_and_round_trip_exactly(name, tmp_path):
    path = resolve_circuit(name)
    c = load_circuit(name)
    assert dumps_circuit(c) == path.read_text(encoding="utf-8")
    c.save(tmp_path / "copy.json")
    again = load_circuit(tmp_path / "copy.json")
    assert again.to_dict() == c.to_dict()
    assert (tmp_path / "copy.json").read_bytes() == path.read_bytes()


def test_ioi_explicit_edges_are_its_wiring(ioi):
    assert sorted(ioi.edge_keys(), key=lambda e: eg.edge_key(*e)) == wired_edges(ioi)
    bare = ioi.copy()
    for e in ioi.edges:
        bare.remove_edge(e.src, e.dst, e.channel)
    assert wire(bare).to_dict()["edges"] == ioi.to_dict()["edges"]
    # positions follow the rule: q at the receiver's position, k/v at the sender's
    sinh_to_nm = [e for e in ioi.edges if e.src == "a7.h3" and e.dst == "a9.h9"]
    assert [(e.channel, e.positions) for e in sinh_to_nm] == [("q", ("END",))]
    prev_to_ind = {e.channel: e.positions for e in ioi.edges_into("a5.h5") if e.src == "a4.h11"}
    assert prev_to_ind == {"k": ("S1+1",), "v": ("S1+1",)}


# -- counts -------------------------------------------------------------------------------------


def test_gpt2_small_full_edge_graph_has_32491_edges():
    full = full_edge_graph(GPT2, model="gpt2-small")
    assert len(full.edges) == 32491 == eg.count_full_edges(GPT2)
    assert len(full) == 1 + 144 + 12 + 1


@pytest.mark.parametrize("n_layers,n_heads,d_mlp", [(1, 1, 4), (2, 4, 128), (3, 2, 0), (4, 8, 0)])
def test_full_edge_count_matches_brute_force(n_layers, n_heads, d_mlp):
    shape = ModelShape(
        n_layers=n_layers, n_heads=n_heads, d_model=8, d_head=2, d_mlp=d_mlp, d_vocab=5
    )
    nodes = eg.all_nodes(shape)
    brute = set(eg.implied_edges(nodes))  # every forward sender -> receiver pair
    generated = list(eg.full_edges(shape))
    assert len(generated) == len(set(generated)) == len(brute) == eg.count_full_edges(shape)
    assert set(generated) == brute


def acdc_ioi_true_edges() -> set[tuple[str, str, str | None]]:
    """An independent re-implementation of ACDC's get_ioi_true_edges (acdc/ioi/utils.py):
    start from every edge among input, MLPs, the 26 heads and the output; remove every
    input->head, head->head and head->output edge; add the class wiring, with INPUT = the
    embeddings and all MLP outputs and OUTPUT = the output and all MLP inputs."""
    groups = {k: [head(h) for h in v[0]] for k, v in IOI_CLASSES.items()}
    heads = [h for g in groups.values() for h in g]

    def layer(n):  # ACDC's "layer_from/layer_to" bookkeeping
        return -1 if n == "input" else 13 if n == "logits" else int(n[1:].split(".")[0])

    def depth(n):
        return 0 if n == "input" else 99 if n == "logits" else 2 * layer(n) + (1 if "." in n else 2)

    mlps = [f"m{i}" for i in range(12)]
    nodes = ["input", *mlps, *heads, "logits"]
    edges = set()
    for s, d in itertools.product(nodes, nodes):
        if s != "logits" and d != "input" and depth(s) < depth(d):
            for ch in ("q", "k", "v") if "." in d else (None,):
                edges.add((s, d, ch))
    edges = {
        e
        for e in edges
        if not (e[1] in heads and e[0] in ["input", *heads])
        and not (e[0] in heads and e[1] == "logits")
    }
    conns = [
        ("INPUT", "previous token", "qkv"),
        ("INPUT", "duplicate token", "qkv"),
        ("INPUT", "S-inhibition", "q"),
        ("INPUT", "negative name mover", "kv"),
        ("INPUT", "name mover", "kv"),
        ("INPUT", "backup name mover", "kv"),
        ("previous token", "induction", "kv"),
        ("induction", "S-inhibition", "kv"),
        ("duplicate token", "S-inhibition", "kv"),
        ("S-inhibition", "negative name mover", "q"),
        ("S-inhibition", "name mover", "q"),
        ("S-inhibition", "backup name mover", "q"),
        ("negative name mover", "OUTPUT", ""),
        ("name mover", "OUTPUT", ""),
        ("backup name mover", "OUTPUT", ""),
    ]
    for src, dst, chans in conns:
        froms = ["input", *mlps] if src == "INPUT" else groups[src]
        tos = (
            [("logits", None)] + [(m, None) for m in mlps]
            if dst == "OUTPUT"
            else [(h, c) for h in groups[dst] for c in chans]
        )
        for f in froms:
            for t, c in tos:
                if layer(t) > layer(f):
                    edges.add((f, t, c))
    return edges


def test_ioi_expansion_is_acdcs_edge_set(ioi):
    x = ioi.expand_edges(GPT2)
    assert len(x.edges) == 963
    assert x.edge_keys() == acdc_ioi_true_edges()
    # ACDC also counts one q/k/v-input -> q/k/v edge inside each of the 26 heads' 3 inputs
    assert x.acdc_edge_count() == 963 + 78 == 1041
    assert ioi.metadata["counts"] == {
        "explicit_edges": 498,
        "expand_edges_gpt2_small": 963,
        "acdc_edge_count": 1041,
        "acdc_reported": 1041,
    }
    # the node-level reading (every edge between the 40 nodes) is larger
    assert (
        len(ioi.expand_edges(dense=["mlp", "head", "input", "logits"]).edges)
        == len(eg.implied_edges(ioi.nodes))
        == 1770
    )


def test_greater_than_and_docstring_counts():
    gt = load_circuit("gpt2-small/greater-than")
    assert gt.heads == [
        "a0.h3",
        "a0.h5",
        "a0.h1",
        "a5.h5",
        "a6.h1",
        "a6.h9",
        "a7.h10",
        "a8.h11",
        "a9.h1",
    ]
    assert gt.nodes_by_class("MEARLY") == ["m0", "m1", "m2", "m3"]
    assert gt.nodes_by_class("MLATE") == ["m8", "m9", "m10", "m11"]
    assert len(gt.edges) == 235 and gt.acdc_edge_count() == 262  # ACDC's ~262
    assert gt.expand_edges(GPT2).edge_keys() == gt.edge_keys()
    doc = load_circuit("attn-only-4l/docstring")
    assert sorted(doc.heads) == sorted(["a0.h5", "a1.h2", "a1.h4", "a2.h0", "a3.h0", "a3.h6"])
    assert len(doc.edges) == 24 and doc.acdc_edge_count() == 37
    assert doc.check_model(ATTN_ONLY_4L) == ATTN_ONLY_4L


# -- queries and set operations -----------------------------------------------------------------


def test_queries(ioi):
    assert ioi.nodes_by_layer(9) == ["a9.h9", "a9.h6", "a9.h7", "a9.h0", "m9"]
    assert set(ioi.upstream("a9.h9", "q")) == {
        "a7.h3",
        "a7.h9",
        "a8.h6",
        "a8.h10",
        "a5.h5",
        "a5.h8",
        "a5.h9",
        "a6.h9",
        "a0.h1",
        "a0.h10",
        "a3.h0",
        "a2.h2",
        "a4.h11",
        "input",
        *[f"m{i}" for i in range(8)],
    }
    assert ioi.upstream("a0.h1") == {"input"}
    assert ioi.downstream("a2.h2") == {
        *ioi.nodes_by_class("induction", "S-inhibition"),
        *ioi.nodes_by_class("name mover", "backup name mover", "negative name mover"),
        "logits",
    }
    assert {e.channel for e in ioi.edges_into("a7.h3") if e.src == "a5.h5"} == {"k", "v"}
    assert all(e.src == "a9.h9" for e in ioi.edges_from("a9.h9"))
    assert "a9.h9" in ioi and "a1.h1" not in ioi


def test_subcircuit_union_intersection(ioi):
    sub = ioi.subcircuit(classes=["S-inhibition", "name mover"])
    assert sorted(sub.nodes) == sorted(ioi.nodes_by_class("S-inhibition", "name mover"))
    assert all(e.src in sub and e.dst in sub for e in sub.edges) and len(sub.edges) == 4 * 3
    other = sub.subcircuit(["a7.h3", "a9.h9"])
    assert [e.name for e in other.edges] == ["a7.h3->a9.h9<q>"]
    x = ioi.expand_edges()
    both = ioi & x
    assert both.edge_keys() == ioi.edge_keys() and set(both.nodes) == set(ioi.nodes)
    assert (ioi | x).edge_keys() == x.edge_keys()
    extra = Circuit("extra", model="gpt2-small")
    extra.add_edge("a1.h1", "a9.h9", "v", score=0.5)
    joined = ioi | extra
    assert ("a1.h1", "a9.h9", "v") in joined.edge_keys() and len(joined.edges) == len(ioi.edges) + 1
    assert (ioi & extra).edges == [] and set((ioi & extra).nodes) == {"a9.h9"}
    with pytest.raises(CircuitFormatError, match="not in the circuit"):
        ioi.subcircuit(["a1.h1"])
    small = Circuit("toy", shape=ATTN_ONLY_4L)
    small.add_node("a0.h0")
    with pytest.raises(ShapeMismatchError, match="different models"):
        ioi | small


def test_node_circuit_expansion_and_positions():
    c = Circuit("pair", model="gpt2-small")
    c.add_node("a1.h0", cls="prev", positions=["S1+1"])
    c.add_node("a2.h3", cls="ind", positions=["S2"])
    x = c.expand_edges(GPT2)
    assert (
        len(x.edges) == 3 + 3 + 3 + 3
    )  # input->a1.h0, input->a2.h3, a1.h0->a2.h3 (q,k,v); 3 ->logits
    pos = {(e.src, e.dst, e.channel): e.positions for e in x.edges}
    assert pos[("a1.h0", "a2.h3", "q")] == ("S2",) and pos[("a1.h0", "a2.h3", "k")] == ("S1+1",)
    assert pos[("input", "a1.h0", "v")] is None


def test_check_model(ioi):
    assert ioi.check_model(GPT2) == GPT2
    assert ioi.check_model(
        SimpleNamespace(shape=known_shape("gpt2-small-shape"), name="gpt2-small-shape")
    )
    toy = SimpleNamespace(
        shape=ModelShape(n_layers=4, n_heads=4, d_model=128, d_head=32, d_mlp=512, d_vocab=200),
        name="toy-ioi",
    )
    with pytest.raises(ShapeMismatchError, match=r"gpt2-small .*12 layers.*toy-ioi has 4 layers"):
        ioi.check_model(toy)
    with pytest.raises(ShapeMismatchError, match="attention-only"):
        _mlp_circuit().check_model(ATTN_ONLY_4L)
    with pytest.raises(ShapeMismatchError, match="cannot check"):
        ioi.check_model("gpt2")


def _mlp_circuit() -> Circuit:
    c = Circuit("m")
    c.add_node("m0")
    return c


def test_building_api_errors():
    c = Circuit("api")
    with pytest.raises(CircuitFormatError, match="without a channel"):
        c.add_edge("a0.h0", "a1.h0")
    with pytest.raises(NodeNameError, match="backwards"):
        c.add_edge("a3.h0", "a1.h0", "q")
    with pytest.raises(NodeNameError, match="not a head"):
        c.add_edge("a0.h0", "m0", "q")
    with pytest.raises(NodeNameError, match="not a circuit node"):
        c.add_node("m0.n5")
    c.add_edge("a0.h0", "a1.h0", "q")
    with pytest.raises(CircuitFormatError, match="duplicate"):
        c.add_edge("a0.h0", "a1.h0", "q")
    with pytest.raises(CircuitFormatError, match="does not declare"):
        c.add_edge("input", "a1.h0", "q", add_nodes=False)
    with pytest.raises(CircuitFormatError, match="not an int or a position name"):
        c.add_node("a2.h0", positions=[1.5])
    with pytest.raises(CircuitFormatError, match="not a number"):
        c.add_edge("a0.h0", "a1.h0", "k", score="high")
    assert c.add_node("a2.h0", positions="END") and c.node("a2.h0")["positions"] == ("END",)


def test_validate_catches_cycles_and_bad_direct_edits():
    c = Circuit("edited")
    c.add_edge("a0.h0", "a1.h0", "q")
    c.graph.add_edge("a1.h0", "a0.h0", "q", positions=None, score=None, meta={})
    with pytest.raises(CircuitFormatError, match="cycle"):
        c.validate()
    c.graph.remove_edge("a1.h0", "a0.h0")
    c.graph.add_edge("a1.h0", "m1", "q")
    c.graph.nodes["m1"].update(kind="mlp", layer=1, head=None)
    with pytest.raises(CircuitFormatError, match="channel does not fit"):
        c.validate()


# -- drawing ------------------------------------------------------------------------------------


def test_draw_writes_png_and_svg(ioi, tmp_path):
    fig = ioi.draw(tmp_path / "ioi.png")
    assert (tmp_path / "ioi.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert fig.axes
    table = pd.DataFrame({"node": ["a9.h9", "a10.h7", "a7.h3"], "effect": [1.2, -0.8, 0.3]})
    ioi.draw(tmp_path / "ioi.svg", score="effect", table=table)
    assert b"<svg" in (tmp_path / "ioi.svg").read_bytes()[:500]
    load_circuit("attn-only-4l/docstring").draw(tmp_path / "d.png", score={"a3.h0": 1.0})
    with pytest.raises(CircuitFormatError, match="png"):
        ioi.draw(tmp_path / "ioi.txt")
    with pytest.raises(CircuitFormatError, match="no column"):
        ioi.draw(None, score="missing", table=table)


# -- docstring examples stay true -----------------------------------------------------------------


@pytest.mark.parametrize(
    "module",
    [
        "circuit",
        "circuit._graph",
        "circuit._parts",
        "edge_graph",
        "circuit._io",
        "circuit._files",
        "circuit._json",
        "circuit._schema",
        "circuit._wiring",
        "circuit._mask",
        "formats",
        "circuit.formats",
        "circuit.formats.acdc",
        "circuit.formats.eap_ig",
        "circuit.formats.auto_circuit",
        "circuit.formats.heads",
    ],
)
def test_docstring_examples(module):
    mod = importlib.import_module(f"circuitsteer.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_repo_layout():
    # package data (circuitsteer/_circuits) that is the repository's circuits/ folder
    found = Path(resolve_circuit("gpt2-small/ioi"))
    assert found.parts[-3:] == ("_circuits", "gpt2-small", "ioi.json")
    assert found.resolve().parts[-3:] == ("circuits", "gpt2-small", "ioi.json")
