"""Circuits made from circuits: unions, intersections and the edges a circuit implies.

Example:
    >>> from circuitsteer.circuit import Circuit
    >>> a = Circuit(); _ = a.add_edge("a0.h1", "a3.h0", "k")
    >>> b = Circuit(); _ = b.add_edge("a0.h1", "a3.h0", "k"); _ = b.add_edge("a3.h0", "logits")
    >>> [e.name for e in (a | b).edges], [e.name for e in (a & b).edges]
    (['a0.h1->a3.h0<k>', 'a3.h0->logits'], ['a0.h1->a3.h0<k>'])
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from circuitsteer import edge_graph as eg
from circuitsteer.circuit._parts import add_keyed_edges, clone, edge_data, graph_key
from circuitsteer.errors import CircuitFormatError, ShapeMismatchError

if TYPE_CHECKING:
    from circuitsteer.circuit._graph import Circuit


def union(c: Circuit, other: Circuit, name: str | None = None) -> Circuit:
    """Nodes and edges of both; where both define a node or edge, ``c``'s attributes win."""
    same_model(c, other, "union")
    out = c.copy(name or f"{c.name}|{other.name}")
    out.shape = c.shape or other.shape
    g = out.graph
    g.add_nodes_from((n, clone(a)) for n, a in other.graph.nodes(data=True) if n not in g)
    add_keyed_edges(
        g,
        (
            (u, v, k, clone(d))
            for u, v, k, d in other.graph.edges(keys=True, data=True)
            if not g.has_edge(u, v, k)
        ),
    )
    return out


def intersection(c: Circuit, other: Circuit, name: str | None = None) -> Circuit:
    """Nodes and edges present in both (``c``'s attributes)."""
    same_model(c, other, "intersection")
    out = c.copy(name or f"{c.name}&{other.name}")
    theirs = other.graph
    out.graph.remove_edges_from(
        [(u, v, k) for u, v, k in c.graph.edges(keys=True) if not theirs.has_edge(u, v, k)]
    )
    out.graph.remove_nodes_from([n for n in c.graph if n not in theirs])
    return out


def same_model(c: Circuit, other: Circuit, op: str) -> None:
    """``ShapeMismatchError`` when the two circuits are for models of different shapes."""
    mine, theirs = c.shape, other.shape
    if mine and theirs and (mine.n_layers, mine.n_heads) != (theirs.n_layers, theirs.n_heads):
        raise ShapeMismatchError(
            f"{op} of circuits for different models: {c.name!r} ({c.model}, "
            f"{mine.describe()}) and {other.name!r} ({other.model}, {theirs.describe()})",
            fix="combine circuits of the same model",
        )


def expand_edges(
    c: Circuit, shape: Any = None, dense: Iterable[str] | None = None, name: str | None = None
) -> Circuit:
    """``c.expand_edges``: the edge set ``c`` implies in the model's full edge graph."""
    arch_shape = c.check_model(shape) if shape is not None else c.shape
    out = c.copy(name or f"{c.name}[expanded]")
    for end in ("input", "logits"):
        if end not in out.graph:
            out.add_node(end)
    dense = c.metadata.get("dense", []) if dense is None else dense
    if not isinstance(dense, list | tuple) or not all(isinstance(x, str) for x in dense):
        raise CircuitFormatError(
            f"circuit {c.name!r}: dense must be a list of kinds, classes or node names, "
            f"got {dense!r}",
            fix='write e.g. "dense": ["mlp"]',
        )
    attrs, marks = out.graph.nodes, set(dense)
    dense_nodes = {n for n, a in attrs(data=True) if {n, a["kind"], a.get("class")} & marks}
    every = c.graph.number_of_edges() == 0
    for src, dst, ch in eg.implied_edges(out.graph.nodes, arch_shape):
        key = graph_key(ch)
        if out.graph.has_edge(src, dst, key) or not (every or {src, dst} & dense_nodes):
            continue
        pos = eg.edge_positions(attrs[src]["positions"], attrs[dst]["positions"], ch)
        out.graph.add_edge(src, dst, key, **edge_data(pos))
    return out
