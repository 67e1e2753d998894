"""What a circuit is made of: its node kinds, its edge rule, how the graph stores nodes and
edges, the edge record, and the value types of positions and scores.

The edge rule is :func:`circuitsteer.nodes.make_edge` (depth, kinds, channels) plus the one rule
that is the circuit's own: a head reads a sender through q, k or v, so an edge into a head names
its channel. The Python API, the file schema and the importers all check edges here.

Storage (``circuit.graph``, a ``networkx.MultiDiGraph``): an edge into a head is keyed by its
channel (``"q"``, ``"k"``, ``"v"``); an MLP or ``logits`` receiver has one edge per sender, under
networkx's default key ``0`` (networkx reserves the key ``None`` for "pick a new key"). An
edge's ``meta`` is None when empty: a dict holding only scalars is not tracked by Python's
cyclic garbage collector, so 32k plain edges do not set off full collections of the process
heap (0.4 s each with torch loaded).

Example:
    >>> circuit_edge("a5.h5", "a7.h3", "k").name
    'a5.h5->a7.h3<k>'
    >>> circuit_edge("a5.h5", "a7.h3")
    Traceback (most recent call last):
    ...
    circuitsteer.errors.CircuitFormatError: edge a5.h5->a7.h3 enters head a7.h3 without a channel. Fix: give the channel it reads, 'q', 'k' or 'v' (one edge per channel)
    >>> as_positions("END"), as_score(1)
    (('END',), 1.0)
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Annotated, Any

import networkx as nx
from pydantic import ConfigDict, Field, StrictInt, StrictStr, TypeAdapter, ValidationError

from circuitsteer.edge_graph import EdgeKey
from circuitsteer.errors import CircuitFormatError, NodeNameError
from circuitsteer.nodes import Edge, ModelShape, Node, make_edge, parse_node

CIRCUIT_KINDS = ("input", "head", "mlp", "logits")
NO_CHANNEL = 0  # the graph key of an edge into an MLP or logits (networkx's default key)

# a position is an int or a name ("END", "S1+1"); strict: no bools, no floats, no empty names
Position = StrictInt | Annotated[StrictStr, Field(min_length=1)]
_POSITIONS: TypeAdapter[list[int | str]] = TypeAdapter(
    list[Position], config=ConfigDict(strict=True)
)
_SCORE: TypeAdapter[float] = TypeAdapter(float, config=ConfigDict(strict=True))  # ints -> float
POSITIONS_FIX = "give positions as a list of ints and names, e.g. ['END'] or [0, -1]; null = all"


def circuit_node(name: Any) -> Node:
    """Parse a name and check it can be a circuit node (not a neuron or residual site)."""
    if not isinstance(name, str):
        return parse_node(name)  # raises the grammar's NodeNameError
    return _circuit_node(name)


@lru_cache(maxsize=65536)  # a 32k-edge file names the same ~160 nodes over and over
def _circuit_node(name: str) -> Node:
    n = parse_node(name)
    if n.kind not in CIRCUIT_KINDS:
        raise NodeNameError(
            f"{name!r} is a {n.kind} site, not a circuit node",
            fix="circuits hold 'input', heads 'a{L}.h{H}', MLPs 'm{L}' and 'logits'",
        )
    return n


def circuit_edge(src: Any, dst: Any, channel: Any = None, shape: ModelShape | None = None) -> Edge:
    """The validated edge ``src->dst<channel>``: ``NodeNameError`` for the grammar's refusals
    (backwards, wrong kinds, a channel on a non-head), ``CircuitFormatError`` for a head
    receiver without a channel."""
    e = make_edge(circuit_node(src), circuit_node(dst), channel, shape)
    if e.dst.kind == "head" and channel is None:
        raise CircuitFormatError(
            f"edge {e.name} enters head {e.dst.name} without a channel",
            fix="give the channel it reads, 'q', 'k' or 'v' (one edge per channel)",
        )
    return e


def graph_key(channel: str | None) -> str | int:
    """The MultiDiGraph key of an edge on ``channel``."""
    return NO_CHANNEL if channel is None else channel


def channel_of(key: Any) -> Any:
    """The channel of a MultiDiGraph edge key (the key itself for heads, None for the default)."""
    return None if key == NO_CHANNEL else key


def node_attrs(
    n: Node,
    cls: str | None = None,
    positions: tuple[int | str, ...] | None = None,
    score: float | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A graph node's attributes."""
    return {
        "kind": n.kind,
        "layer": n.layer,
        "head": n.head,
        "class": cls,
        "positions": positions,
        "score": score,
        "meta": meta if meta is not None else {},
    }


def edge_data(
    positions: tuple[int | str, ...] | None = None,
    score: float | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A graph edge's attributes."""
    return {"positions": positions, "score": score, "meta": meta or None}


def add_keyed_edges(g: nx.MultiDiGraph, edges: Iterable[tuple[str, str, Any, dict]]) -> None:
    """``g.add_edges_from`` of ``(u, v, key, data)`` edges (networkx's stubs only know 2- and
    3-tuples)."""
    g.add_edges_from(edges)  # pyright: ignore[reportArgumentType]


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
    def key(self) -> EdgeKey:
        return (self.src, self.dst, self.channel)


def as_positions(p: Iterable[int | str] | None) -> tuple[int | str, ...] | None:
    """Positions as a tuple of ints and names (None = all); a bare name is one position."""
    if p is None:
        return None
    try:
        return tuple(_POSITIONS.validate_python([p] if isinstance(p, str) else list(p)))
    except TypeError:
        raise CircuitFormatError(f"positions {p!r} are not a list", fix=POSITIONS_FIX) from None
    except ValidationError as e:
        bad = e.errors()[0]["input"]
        raise CircuitFormatError(
            f"position {bad!r} is not an int or a position name", fix=POSITIONS_FIX
        ) from None


def as_score(x: Any) -> float | None:
    """A score as float (None stays None); anything else is a ``CircuitFormatError``."""
    if x is None:
        return None
    try:
        return _SCORE.validate_python(x)
    except ValidationError:
        raise CircuitFormatError(
            f"score {x!r} is not a number", fix="give scores as numbers or None"
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
