"""The parts a circuit is made of: node and edge checks, the edge record, fast copies.

Kept apart from :mod:`circuitsteer.graph` so the schema and importers can use them without the
Circuit class.

Example:
    >>> circuit_node("a9.h9").kind
    'head'
    >>> CircuitEdge("a5.h5", "a7.h3", "k").name
    'a5.h5->a7.h3<k>'
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from circuitsteer import edge_graph as eg
from circuitsteer.errors import CircuitFormatError, NodeNameError
from circuitsteer.nodes import Edge, Node, make_edge, parse_edge, parse_node

CIRCUIT_KINDS = ("input", "head", "mlp", "logits")
MAX_INDEX = 1_000_000  # no model has this many layers or heads; keeps depth arithmetic finite


@dataclass(frozen=True)
class CircuitEdge:
    """One (src, dst, channel) edge with its positions (None = all) and score."""

    src: str
    dst: str
    channel: str | None = None
    positions: tuple[int | str, ...] | None = None
    score: float | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def name(self) -> str:
        return make_edge(parse_node(self.src), parse_node(self.dst), self.channel).name

    @property
    def key(self) -> eg.EdgeKey:
        return (self.src, self.dst, self.channel)


def circuit_node(name: str) -> Node:
    """Parse a name and check it can be a circuit node (not a neuron or residual site)."""
    n = parse_node(name)
    if n.kind not in CIRCUIT_KINDS:
        raise NodeNameError(
            f"{name!r} is a {n.kind} site, not a circuit node",
            fix="circuits hold 'input', heads 'a{L}.h{H}', MLPs 'm{L}' and 'logits'",
        )
    if max(n.layer or 0, n.head or 0) > MAX_INDEX:
        raise NodeNameError(
            f"{name!r} has an implausible layer or head index",
            fix=f"layers and heads are below {MAX_INDEX}",
        )
    return n


def parse_circuit_edge(name: str) -> Edge:
    """``nodes.parse_edge`` for circuit edges; absurd indices raise ``NodeNameError`` (they
    would overflow the depth comparison)."""
    try:
        return parse_edge(name)
    except OverflowError:
        raise NodeNameError(
            f"edge {name!r} has an implausible layer or head index",
            fix=f"layers and heads are below {MAX_INDEX}",
        ) from None


def clone(x: Any) -> Any:
    """Copy JSON-like data (dicts, lists, tuples, scalars); much faster than ``deepcopy`` on the
    large score tables importers keep (32k entries for GPT-2 small)."""
    if isinstance(x, dict):
        return {k: clone(v) for k, v in x.items()}
    if isinstance(x, list):
        return [clone(v) for v in x]
    if isinstance(x, tuple):
        return tuple(clone(v) for v in x)
    if x is None or isinstance(x, str | int | float):
        return x
    return copy.deepcopy(x)


def clone_graph(g: nx.DiGraph, nodes: Iterable[str] | None = None) -> nx.DiGraph:
    keep = set(g) if nodes is None else set(nodes)
    out = nx.DiGraph()
    out.add_nodes_from((n, clone(a)) for n, a in g.nodes(data=True) if n in keep)
    out.add_edges_from(
        (u, v, {"channels": clone(ch)})
        for u, v, ch in g.edges(data="channels")
        if u in keep and v in keep
    )
    return out


def as_positions(p: Iterable[int | str] | None) -> tuple[int | str, ...] | None:
    """Positions as a tuple of ints and names (None = all); a bare name is one position."""
    if p is None:
        return None
    out = (p,) if isinstance(p, str) else tuple(p)
    for x in out:
        if isinstance(x, bool) or not isinstance(x, int | str) or x == "":
            raise CircuitFormatError(
                f"position {x!r} is not an int or a position name",
                fix="give positions as ints and names, e.g. ['END'] or [0, -1]; None = all",
            )
    return out


def as_score(x: Any) -> float | None:
    """A score as float (None stays None); anything else is a ``CircuitFormatError``."""
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise CircuitFormatError(
            f"score {x!r} is not a number", fix="give scores as numbers or None"
        )
    try:
        return float(x)
    except OverflowError:
        raise CircuitFormatError(
            "score is too large for a float", fix="use a float value"
        ) from None
