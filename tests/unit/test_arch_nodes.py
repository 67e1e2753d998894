"""The one grammar (receivers, capture points, depth per architecture) and the edge graph of
each family: with a parallel residual (GPT-NeoX/Pythia) an MLP has no edges from its own
layer's heads and there is no resid_mid."""

from __future__ import annotations

from dataclasses import replace

import pytest

import circuitsteer as cs
from circuitsteer import edge_graph as eg
from circuitsteer.errors import NodeNameError, ShapeMismatchError
from circuitsteer.nodes import (
    ModelShape,
    capture_name,
    depth,
    feeds,
    parse_capture,
    parse_node,
    parse_receiver,
    validate_node,
)

GPT2 = ModelShape(n_layers=12, n_heads=12, d_model=768, d_head=64, d_mlp=3072, d_vocab=50257)
PYTHIA = replace(GPT2, parallel_residual=True)
LLAMA = ModelShape(4, 8, 64, 8, 128, 100, n_kv_heads=2)


@pytest.mark.parametrize(
    "name,node,point",
    [
        ("a1.h2", "a1.h2", "out"),
        ("a1.h2:pattern", "a1.h2", "pattern"),
        ("a1.h2:result", "a1.h2", "result"),
        ("a9.h9<q>", "a9.h9", "q"),
        ("m3", "m3", "out"),
        ("m3:in", "m3", "in"),
        ("m3:neurons", "m3", "neurons"),
        ("m3.n5", "m3.n5", "out"),
        ("resid_mid.2", "resid_mid.2", "out"),
        ("input", "input", "out"),
        ("logits:in", "logits", "in"),
    ],
)
def test_capture_names_round_trip(name, node, point):
    c = parse_capture(name)
    assert (c.node.name, c.point, c.name) == (node, point, name)
    assert capture_name(c.node, c.point) == name


@pytest.mark.parametrize(
    "bad",
    ["logits", "m3:pattern", "a1.h2:in", "a1.h2<x>", "a1.h2<q>:result", "m3<q>", "a1.h2:", "x:in"],
)
def test_bad_capture_names(bad):
    with pytest.raises(NodeNameError):
        parse_capture(bad)


def test_receivers():
    assert parse_receiver("a9.h9<k>") == (parse_node("a9.h9"), "k")
    assert parse_receiver("m5") == (parse_node("m5"), None)
    assert parse_receiver("logits") == (parse_node("logits"), None)
    for bad in ("m5<q>", "resid_pre.1", "a1.h1<x>", "a1.h1:in", "input"):
        with pytest.raises(NodeNameError):
            parse_receiver(bad)
    with pytest.raises(NodeNameError):
        cs.Site("a0.h0", to=("a1.h1<x>",))


def test_depth_per_architecture():
    h, m = parse_node("a3.h0"), parse_node("m3")
    assert depth(m, GPT2) > depth(h, GPT2) and feeds(h, m, GPT2)
    assert depth(m, PYTHIA) == depth(h, PYTHIA) and not feeds(h, m, PYTHIA)
    assert feeds(m, parse_node("a4.h0"), PYTHIA) and feeds(parse_node("a2.h1"), m, PYTHIA)
    assert feeds(h, m, LLAMA)


def test_resid_mid_exists_only_with_a_sequential_residual():
    assert validate_node("resid_mid.3", GPT2).name == "resid_mid.3"
    with pytest.raises(ShapeMismatchError, match="parallel residual"):
        validate_node("resid_mid.3", PYTHIA)


def test_parallel_full_edge_graph_has_no_same_layer_head_to_mlp_edges():
    seq, par = cs.full_edge_graph(GPT2), cs.full_edge_graph(PYTHIA)
    assert len(seq.edges) == eg.count_full_edges(GPT2) == 32491
    assert len(par.edges) == eg.count_full_edges(PYTHIA) == 32491 - 144
    seq_keys, par_keys = set(seq.edge_keys()), set(par.edge_keys())
    assert seq_keys - par_keys == {
        (f"a{L}.h{h}", f"m{L}", None) for L in range(12) for h in range(12)
    }
    assert ("a3.h0", "m4", None) in par_keys and ("m3", "a4.h0", "q") in par_keys
    assert len(cs.full_edge_graph(LLAMA).edges) == eg.count_full_edges(LLAMA)


def test_circuit_checks_edges_against_a_parallel_residual(tmp_path):
    c = cs.Circuit("c", shape=PYTHIA)
    c.add_edge("a2.h1", "m2")  # sequentially valid; the model says no
    with pytest.raises(ShapeMismatchError, match="parallel residual"):
        c.check_model(PYTHIA)
    c2 = cs.Circuit("c2", shape=PYTHIA)
    c2.add_edge("a2.h1", "m3")
    c2.save(tmp_path / "c2.json")
    back = cs.load_circuit(tmp_path / "c2.json")
    assert back.shape == PYTHIA and back.edge_keys() == c2.edge_keys()
    d = c.to_dict()
    assert d["shape"]["parallel_residual"] is True
    with pytest.raises(ShapeMismatchError, match="parallel residual"):
        cs.Circuit.from_dict(d)
    node_circuit = cs.Circuit("n", shape=PYTHIA)
    for n in ("a2.h1", "m2", "m3"):
        node_circuit.add_node(n)
    implied = set(node_circuit.expand_edges().edge_keys())
    assert ("a2.h1", "m2", None) not in implied and ("a2.h1", "m3", None) in implied


def test_model_shape_describes_its_architecture():
    m = cs.random_model("gpt_neox", n_layers=2)
    assert m.shape.parallel_residual and "parallel residual" in m.shape.describe()
    full = cs.full_edge_graph(m.shape)
    assert not any(e.src == "a1.h0" and e.dst == "m1" for e in full.edges)
