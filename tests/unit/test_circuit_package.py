"""The circuit package: its import graph, its storage, the model registry it checks against, and
the speed of a full GPT-2-small circuit through the file format and the dense edge mask."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import networkx as nx
import pytest
import torch

import circuitsteer as cs
from circuitsteer.circuit import Circuit, full_edge_graph, load_circuit
from circuitsteer.engine.masks import EdgeMask
from circuitsteer.errors import CircuitFormatError, ShapeMismatchError
from circuitsteer.models import GPT2_SMALL, known_shape

ROOT = Path(cs.__file__).parent
CIRCUIT_LAYER = ("circuitsteer.circuit", "circuitsteer.formats")
BELOW = ("circuitsteer.nodes", "circuitsteer.edge_graph", "circuitsteer.errors")


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST, names: set[str], lazy: bool) -> set[str]:
    """The project modules a module imports: at module level, or (``lazy``) anywhere, leaving
    out ``if TYPE_CHECKING:`` blocks (never run)."""
    out: set[str] = set()
    todo = list(ast.iter_child_nodes(tree))
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("circuitsteer"):
            mod = node.module or ""
            subs = {f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in names}
            # ``from pkg import submodule`` needs the submodule, not what pkg/__init__ re-exports
            out |= subs if len(subs) == len(node.names) else {mod, *subs}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("circuitsteer")}
        if lazy or not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            todo += list(ast.iter_child_nodes(node))
    return out & names


def _import_graph(lazy: bool) -> nx.DiGraph:
    files = {_module(p): p for p in ROOT.rglob("*.py")}
    g = nx.DiGraph()
    g.add_nodes_from(files)
    for mod, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        g.add_edges_from((mod, dep) for dep in _imports(tree, set(files), lazy) if dep != mod)
    g.remove_node("circuitsteer")  # the top-level re-exports import everything
    return g


def test_circuit_layer_imports_have_no_cycle():
    top = _import_graph(lazy=False)
    cycles = [c for c in nx.simple_cycles(top) if any(m.startswith(CIRCUIT_LAYER) for m in c)]
    assert not cycles, cycles
    # within the package no module imports another that imports it back, not even in a function
    inner = _import_graph(lazy=True).subgraph(n for n in top if n.startswith(CIRCUIT_LAYER))
    assert nx.is_directed_acyclic_graph(inner), list(nx.simple_cycles(inner))
    # the grammar and the edge graph sit below the circuit layer, and the engine never imports
    # it at module level (EdgeMask.to_circuit imports Circuit when called)
    for low in (*BELOW, "circuitsteer.models", "circuitsteer.engine.masks"):
        assert not any(d.startswith(CIRCUIT_LAYER) for d in nx.descendants(top, low)), low


def test_public_surface():
    import circuitsteer.circuit as pkg
    import circuitsteer.formats
    from circuitsteer.formats import from_acdc

    assert set(pkg.__all__) <= set(dir(pkg))
    assert cs.Circuit is pkg.Circuit and cs.load_circuit is pkg.load_circuit
    assert cs.formats is circuitsteer.formats and from_acdc is pkg.formats.from_acdc
    assert all(not m.startswith("_") for m in pkg.__all__ if m != "formats")


# -- storage ------------------------------------------------------------------------------------


def test_graph_is_a_multidigraph_keyed_by_channel():
    c = Circuit("c")
    c.add_edge("a0.h0", "a1.h0", "q")
    c.add_edge("a0.h0", "a1.h0", "k", score=0.5)
    c.add_edge("a1.h0", "logits")
    assert isinstance(c.graph, nx.MultiDiGraph)
    assert sorted(c.graph.edges(keys=True), key=str) == [
        ("a0.h0", "a1.h0", "k"),
        ("a0.h0", "a1.h0", "q"),
        ("a1.h0", "logits", 0),  # networkx's default key: the one edge into a non-head
    ]
    assert c.graph.edges["a0.h0", "a1.h0", "k"]["score"] == 0.5
    assert c.edge_keys() == {
        ("a0.h0", "a1.h0", "q"),
        ("a0.h0", "a1.h0", "k"),
        ("a1.h0", "logits", None),
    }
    c.graph.add_edge("input", "logits")  # a direct edit in networkx's own terms is valid
    c.graph.add_nodes_from([("input", {"kind": "input", "layer": None, "head": None})])
    c.validate()
    c.graph.add_edge("input", "logits")  # a second default-keyed edge: not a channel
    with pytest.raises(CircuitFormatError, match="key 1 is no channel"):
        c.validate()


def test_edge_rules_come_from_the_grammar():
    # the file, the API and the importers refuse a backward edge in the grammar's own words
    with pytest.raises(cs.NodeNameError) as api:
        Circuit().add_edge("a3.h0", "a1.h0", "q")
    d = {"schema": cs.circuit.SCHEMA, "nodes": {"a3.h0": {}, "a1.h0": {}}}
    d["edges"] = [{"src": "a3.h0", "dst": "a1.h0", "channel": "q"}]
    with pytest.raises(CircuitFormatError) as file:
        Circuit.from_dict(d, file="f.json")
    with pytest.raises(CircuitFormatError) as importer:
        cs.formats.from_auto_circuit(["A3.0->A1.0.Q"])
    for e in (file, importer):
        assert api.value.message in str(e.value) and api.value.fix in str(e.value)


# -- the model a file names ---------------------------------------------------------------------


def test_known_shapes_come_from_the_model_registry():
    from transformers import GPT2Config

    from circuitsteer.engine import arch

    assert known_shape("gpt2-small") == known_shape("gpt2") == GPT2_SMALL
    assert known_shape("gpt2-small-shape") == arch.adapter_for(GPT2Config()).shape
    assert known_shape("attn-only-4l").d_mlp == 0 and known_shape("no-such-model") is None
    assert Circuit("c", model="gpt2-small").shape == GPT2_SMALL


def test_a_shape_that_contradicts_the_named_model_is_refused():
    d = {
        "schema": cs.circuit.SCHEMA,
        "model": "gpt2-small",
        "shape": {"n_layers": 4, "n_heads": 4, "d_mlp": 16},
        "nodes": {"a0.h0": {}},
    }
    with pytest.raises(
        ShapeMismatchError, match=r"x\.json: 'shape' is 4 layers.*'gpt2-small' is 12"
    ):
        Circuit.from_dict(d, file="x.json")


# -- circuit <-> mask ---------------------------------------------------------------------------


def test_from_mask_keeps_values_as_scores_and_refuses_foreign_edges():
    m = cs.random_gpt2(n_layers=2, n_heads=2, d_model=16)
    mask = EdgeMask(m, value=1.0)
    mask["a0.h1", "a1.h0", "v"] = 0.25
    c = Circuit.from_mask(mask, 0.5, scores=True)
    assert [(e.name, e.score) for e in c.edges] == [("a0.h1->a1.h0<v>", 0.25)]
    assert c.nodes == ["a0.h1", "a1.h0"] and c.shape == m.shape
    assert mask.to_circuit(0.5).edge_keys() == c.edge_keys()  # the engine's name for it
    big = Circuit("big", shape=m.shape)
    big.add_edge("a0.h0", "a3.h0", "q")  # layer 3: not in this model
    with pytest.raises(cs.InterventionError):
        big.to_mask(m)


def test_a_32k_edge_circuit_loads_and_becomes_a_mask_within_a_second(tmp_path):
    full = full_edge_graph(GPT2_SMALL, model="gpt2-small")
    full.save(tmp_path / "full.json")
    model = cs.random_gpt2(n_layers=12, n_heads=12, d_model=24)
    times = []
    for _ in range(3):  # best of three: a busy machine or a full garbage collection can stall one
        t0 = time.perf_counter()
        mask = load_circuit(tmp_path / "full.json").to_mask(model)
        times.append(time.perf_counter() - t0)
    assert mask.n_edges == 32491 and all(bool((t == 0).all()) for t in mask.tensors.values())
    assert min(times) < 1.0, times  # ~0.3 s measured (benchmarks/README.md)
    assert Circuit.from_mask(mask).edge_keys() == full.edge_keys()
    assert torch.equal(full.to_mask(model).tensors["logits"], mask.tensors["logits"])
