"""EAP-IG graph JSON (Hanna et al. 2024, github.com/hannamw/EAP-IG, ``Graph.to_json``).

The file holds the *whole* edge graph: ``{"cfg": {"n_layers", "n_heads", "parallel_attn_mlp",
"d_model", ...}, "nodes": {name: {"in_graph": bool, "score"?: float, "neurons"?: ...}},
"edges": {name: {"score": float, "in_graph": bool}}}``; older versions write nodes as
``{name: bool}``. Names are circuitsteer's (``a0.h1->a2.h3<q>``, ``input->m0``, ``m11->logits``).

Import makes a circuit of the in-graph nodes and edges (their scores on the nodes and edges).
Everything else is kept in ``metadata["eap_ig"]`` (``cfg``, ``node_format``, the out-of-graph
``nodes_outside`` and ``edges_outside`` entries), so export reproduces the input exactly:
``to_eap_ig(from_eap_ig(d)) == d``, key order included when ``d`` is in EAP-IG's own order.

Example:
    >>> from circuitsteer.circuit import Circuit
    >>> from circuitsteer.models import known_shape
    >>> c = Circuit("tiny"); _ = c.add_edge("input", "a0.h0", "q", score=0.5)
    >>> d = to_eap_ig(c, shape=known_shape("gpt2-small"))
    >>> d["edges"]["input->a0.h0<q>"], len(d["edges"])
    ({'score': 0.5, 'in_graph': True}, 32491)
    >>> from_eap_ig(d).edges[0].name
    'input->a0.h0<q>'
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from circuitsteer import edge_graph as eg
from circuitsteer.circuit._graph import Circuit
from circuitsteer.circuit._json import atomic_write_text
from circuitsteer.circuit._parts import as_score, circuit_edge, clone, graph_key
from circuitsteer.circuit._schema import canonical_node
from circuitsteer.circuit.formats._common import read_input
from circuitsteer.errors import CircuitFormatError, NodeNameError
from circuitsteer.models import known_shape
from circuitsteer.nodes import Edge, ModelShape, parse_edge, parse_node

_FIX = "an EAP-IG graph is {'cfg': {...}, 'nodes': {name: {'in_graph': ...}}, 'edges': {name: {'score': ..., 'in_graph': ...}}}"


def _err(where: str, entry: str, problem: str, fix: str = _FIX) -> CircuitFormatError:
    return CircuitFormatError(f"{where}: {entry}: {problem}", fix=fix)


def _checked(where: str, entry: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, its typed errors re-raised naming the entry."""
    try:
        return fn(*args)
    except (NodeNameError, CircuitFormatError) as e:
        raise _err(where, entry, e.message, e.fix or _FIX) from None


def _shape_from_cfg(cfg: Any, where: str) -> ModelShape:
    if not isinstance(cfg, dict):
        raise _err(where, "cfg", "must be an object with n_layers and n_heads")
    vals = {}
    for k in ("n_layers", "n_heads"):
        v = cfg.get(k)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 100_000:
            raise _err(where, f"cfg.{k}", f"must be a positive int, got {v!r}")
        vals[k] = v
    if cfg.get("parallel_attn_mlp"):
        raise _err(
            where,
            "cfg.parallel_attn_mlp",
            "parallel attention/MLP blocks are not GPT-2's architecture",
            "circuitsteer's edge graph is GPT-2's (MLP L reads heads of layer L)",
        )
    d_model = cfg.get("d_model", 0)
    d_model = (
        d_model if isinstance(d_model, int) and not isinstance(d_model, bool) and d_model > 0 else 0
    )
    # EAP-IG graphs always have MLP nodes: d_mlp must be > 0 (0 means attention-only here)
    return ModelShape(
        n_layers=vals["n_layers"],
        n_heads=vals["n_heads"],
        d_model=d_model,
        d_head=d_model // vals["n_heads"],
        d_mlp=4 * d_model or 1,
        d_vocab=0,
    )


def from_eap_ig(
    graph: Any,
    *,
    name: str = "eap-ig",
    model: str | None = None,
    source: str | None = "EAP-IG",
    trusted: bool = False,
) -> Circuit:
    """A circuit from an EAP-IG graph: a dict or a path to its JSON (pickles need ``trusted``)."""
    d, file = read_input(graph, trusted=trusted, what="EAP-IG graph")
    where = file or "<EAP-IG graph>"
    if not isinstance(d, dict) or not all(k in d for k in ("cfg", "nodes", "edges")):
        raise _err(where, "top level", "missing 'cfg', 'nodes' or 'edges'")
    shape = _shape_from_cfg(d["cfg"], where)
    if known_shape(model) is not None:
        ks = known_shape(model)
        if ks and (ks.n_layers, ks.n_heads) != (shape.n_layers, shape.n_heads):
            raise _err(
                where,
                "cfg",
                f"is {shape.describe()}, but model {model!r} is {ks.describe()}",
                "pass the model the graph was computed on",
            )
        shape = ks or shape
    nodes, edges = d["nodes"], d["edges"]
    if not isinstance(nodes, dict) or not isinstance(edges, dict):
        raise _err(where, "nodes/edges", "must be objects keyed by name")
    kinds = {type(v) for v in nodes.values()}
    if not kinds <= {bool, dict} or len(kinds) > 1:
        raise _err(where, "nodes", "node values must all be booleans (old format) or all objects")
    node_format = "bool" if kinds == {bool} else "dict"
    state: dict[str, Any] = {
        "cfg": clone(d["cfg"]),
        "node_format": node_format,
        "nodes_outside": {},
        "edges_outside": {},
    }
    c = Circuit(name, model=model, source=source, shape=shape, metadata={"eap_ig": state})
    state = c.metadata["eap_ig"]  # Circuit copies its metadata; fill the copy
    for key, v in nodes.items():
        entry = f"nodes[{key!r}]"
        n = _checked(where, entry, canonical_node, key)
        in_graph = v if isinstance(v, bool) else v.get("in_graph")
        if not isinstance(in_graph, bool):
            raise _err(where, entry, f"'in_graph' must be a boolean, got {in_graph!r}")
        if not in_graph:
            state["nodes_outside"][key] = clone(v)
            continue
        extras = {} if isinstance(v, bool) else {k: x for k, x in v.items() if k != "in_graph"}
        score = extras.pop("score") if isinstance(extras.get("score"), int | float) else None
        c.add_node(
            n,
            score=_checked(where, entry, as_score, score),
            meta={"eap_ig": clone(extras)} if extras else None,
        )
    for key, v in edges.items():
        entry = f"edges[{key!r}]"
        if not isinstance(v, dict) or not isinstance(v.get("in_graph"), bool):
            raise _err(where, entry, "must be an object with a boolean 'in_graph'")
        if not isinstance(key, str):
            raise _err(where, entry, "edge names must be strings")
        e = _checked(where, entry, parse_edge, key)
        _checked(where, entry, circuit_edge, e.src.name, e.dst.name, e.channel)
        if e.name != key:
            raise _err(
                where, entry, "not an EAP-IG edge name", "write 'a0.h1->a2.h3<q>' or 'm0->logits'"
            )
        if not v["in_graph"]:
            state["edges_outside"][key] = clone(v)
            continue
        extras = {k: x for k, x in v.items() if k not in ("in_graph",)}
        score = extras.pop("score") if isinstance(extras.get("score"), int | float) else None
        for end in (e.src.name, e.dst.name):
            if end not in c.graph:  # an in-graph edge whose end EAP-IG marked out of the graph
                c.add_node(end, meta={"eap_ig_in_graph": False})
        if c.graph.has_edge(e.src.name, e.dst.name, graph_key(e.channel)):
            raise _err(where, entry, "duplicate edge", "list each edge once")
        c.add_edge(
            e.src.name,
            e.dst.name,
            e.channel,
            score=_checked(where, entry, as_score, score),
            meta={"eap_ig": clone(extras)} if extras else None,
        )
    c.check_model(shape)
    return c


def to_eap_ig(circuit: Circuit, *, shape: ModelShape | None = None) -> dict[str, Any]:
    """The EAP-IG graph dict: every node and edge of the model, ``in_graph`` where the circuit
    has it. A circuit imported from EAP-IG comes back exactly as it was read."""
    state = circuit.metadata.get("eap_ig") or {}
    shape = shape or circuit.shape
    if shape is None and "cfg" in state:
        shape = _shape_from_cfg(state["cfg"], f"circuit {circuit.name!r}")
    if shape is None:
        raise CircuitFormatError(
            f"circuit {circuit.name!r}: EAP-IG export needs the model shape",
            fix="pass shape= (e.g. model.shape) or set circuit.shape",
        )
    circuit.check_model(shape)
    cfg = clone(state.get("cfg")) or {
        "n_layers": shape.n_layers,
        "n_heads": shape.n_heads,
        "parallel_attn_mlp": False,
        "d_model": shape.d_model,
    }
    from_file = "edges_outside" in state
    nodes_outside, edges_outside = state.get("nodes_outside", {}), state.get("edges_outside", {})
    node_format = state.get("node_format", "dict")
    any_node_score = any(s is not None for _, s in circuit.graph.nodes(data="score"))

    nodes: dict[str, Any] = {}
    names = eg.all_nodes(shape) + [n for n in nodes_outside if n not in set(eg.all_nodes(shape))]
    for n in names:
        if n in nodes_outside:
            nodes[n] = clone(nodes_outside[n])
        elif n in circuit.graph:
            a = circuit.graph.nodes[n]
            if node_format == "bool":
                nodes[n] = True
                continue
            v: dict[str, Any] = {"in_graph": True}
            if a.get("score") is not None:
                v["score"] = a["score"]
            v.update(clone(a.get("meta", {}).get("eap_ig", {})))
            nodes[n] = v
        elif not from_file:
            nodes[n] = (
                False
                if node_format == "bool"
                else {"in_graph": False, **({"score": 0.0} if any_node_score else {})}
            )

    have = {e.key: e for e in circuit.edges}
    edges: dict[str, Any] = {}
    for src, dst, ch in eg.full_edges(shape):
        key = Edge(parse_node(src), parse_node(dst), ch).name  # type: ignore[arg-type]
        if (src, dst, ch) in have:
            e = have.pop((src, dst, ch))
            v = {"score": 0.0 if e.score is None else e.score, "in_graph": True}
            v.update(clone(e.meta.get("eap_ig", {})))
            edges[key] = v
        elif key in edges_outside:
            edges[key] = clone(edges_outside[key])
        elif not from_file:
            edges[key] = {"score": 0.0, "in_graph": False}
    return {"cfg": cfg, "nodes": nodes, "edges": edges}


def read_eap_ig(path: str | os.PathLike[str], *, trusted: bool = False, **kwargs: Any) -> Circuit:
    """Read an EAP-IG JSON file (``Graph.to_json``)."""
    return from_eap_ig(path, trusted=trusted, **kwargs)


def write_eap_ig(
    circuit: Circuit, path: str | os.PathLike[str], *, shape: ModelShape | None = None
) -> None:
    """Write an EAP-IG JSON file that ``eap.graph.Graph.from_json`` reads."""
    atomic_write_text(path, json.dumps(to_eap_ig(circuit, shape=shape)))


__all__ = ["from_eap_ig", "read_eap_ig", "to_eap_ig", "write_eap_ig"]
