"""Circuits as graphs: typed nodes and q/k/v edges in a ``networkx.MultiDiGraph``.

Representation (docs/formats.md has the JSON side):

* ``circuit.graph`` nodes are node names (``input``, ``a9.h9``, ``m3``, ``logits``) with the
  attributes ``kind``, ``layer``, ``head``, ``class``, ``positions`` (tuple or None = all),
  ``score`` (float or None) and ``meta`` (dict).
* One graph edge per (sender, receiver, channel), keyed by the channel: ``"q"``, ``"k"`` or
  ``"v"`` into a head; an MLP or ``logits`` receiver has one edge per sender under networkx's
  default key ``0``. Edge attributes: ``positions``, ``score``, ``meta`` (None when empty).
  networkx queries (ancestors, descendants, paths) see the components; ``circuit.edges``
  yields one :class:`CircuitEdge` per edge.

Example:
    >>> c = Circuit("toy", model="gpt2-small")
    >>> c.add_edge("a5.h5", "a7.h3", "k", positions=["S2"])
    'a5.h5->a7.h3<k>'
    >>> c.add_edge("a5.h5", "a7.h3", "v")
    'a5.h5->a7.h3<v>'
    >>> [e.name for e in c.edges], sorted(c.graph.edges(keys=True))
    (['a5.h5->a7.h3<k>', 'a5.h5->a7.h3<v>'], [('a5.h5', 'a7.h3', 'k'), ('a5.h5', 'a7.h3', 'v')])
    >>> sorted(c.upstream("a7.h3"))
    ['a5.h5']
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import networkx as nx

from circuitsteer import edge_graph as eg
from circuitsteer.circuit import _checks, _derive, _draw, _io, _mask
from circuitsteer.circuit._parts import (
    NO_CHANNEL,
    CircuitEdge,
    add_keyed_edges,
    as_positions,
    as_score,
    channel_of,
    circuit_edge,
    circuit_node,
    clone,
    edge_data,
    graph_key,
    node_attrs,
)
from circuitsteer.errors import CircuitFormatError, ShapeMismatchError
from circuitsteer.models import known_shape
from circuitsteer.nodes import ModelShape


class Circuit:
    """A circuit: typed nodes and q/k/v edges of one model, with provenance.

    ``shape`` is the model shape the circuit was defined for (looked up from ``model`` when it
    names a known model: a zoo model or ``gpt2-small``, see ``models.known_shape``);
    ``metadata`` is free-form JSON.
    """

    def __init__(
        self,
        name: str = "circuit",
        *,
        model: str | None = None,
        source: str | None = None,
        shape: ModelShape | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.model = model
        self.source = source
        self.shape = shape if shape is not None else known_shape(model)
        self.metadata: dict[str, Any] = clone(dict(metadata or {}))
        self.graph: nx.MultiDiGraph = nx.MultiDiGraph()

    # -- building -------------------------------------------------------------------------
    def add_node(
        self,
        name: str,
        *,
        cls: str | None = None,
        positions: Iterable[int | str] | None = None,
        score: float | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> str:
        """Add (or update) a node; returns its canonical name.

        >>> Circuit().add_node("a9.h9", cls="name mover", positions=["END"])
        'a9.h9'
        """
        n = circuit_node(name)
        old = self.graph.nodes[n.name] if n.name in self.graph else {}
        self.graph.add_node(
            n.name,
            **node_attrs(
                n,
                cls if cls is not None else old.get("class"),
                as_positions(positions) if positions is not None else old.get("positions"),
                as_score(score) if score is not None else old.get("score"),
                dict(meta) if meta is not None else old.get("meta"),
            ),
        )
        return n.name

    def add_edge(
        self,
        src: str,
        dst: str,
        channel: str | None = None,
        *,
        positions: Iterable[int | str] | None = None,
        score: float | None = None,
        meta: Mapping[str, Any] | None = None,
        add_nodes: bool = True,
        replace: bool = False,
    ) -> str:
        """Add one edge; returns its name. Head receivers need a channel (one edge each).

        Raises ``NodeNameError`` for malformed or backward edges and ``CircuitFormatError``
        for a missing channel, an undeclared end (with ``add_nodes=False``) or a duplicate.
        """
        e = circuit_edge(src, dst, channel)
        for end in (e.src.name, e.dst.name):
            if end not in self.graph:
                if not add_nodes:
                    raise CircuitFormatError(
                        f"edge {e.name} uses node {end!r}, which the circuit does not declare",
                        fix=f"add {end!r} to the circuit's nodes",
                    )
                self.add_node(end)
        key = graph_key(channel)
        if self.graph.has_edge(e.src.name, e.dst.name, key) and not replace:
            raise CircuitFormatError(
                f"duplicate edge {e.name}", fix="list each (src, dst, channel) once"
            )
        self.graph.add_edge(
            e.src.name,
            e.dst.name,
            key,
            **edge_data(as_positions(positions), as_score(score), dict(meta or {})),
        )
        return e.name

    def remove_node(self, name: str) -> None:
        self.graph.remove_node(name)

    def remove_edge(self, src: str, dst: str, channel: str | None = None) -> None:
        self.graph.remove_edge(src, dst, graph_key(channel))

    # -- reading ----------------------------------------------------------------------------
    @property
    def nodes(self) -> list[str]:
        return list(self.graph.nodes)

    @property
    def heads(self) -> list[str]:
        return self.nodes_by_kind("head")

    @staticmethod
    def _records(edges: Iterable[tuple[str, str, Any, dict]]) -> list[CircuitEdge]:
        """Graph edges as records in canonical order (by receiver, channel, sender)."""
        out = [
            CircuitEdge(u, v, channel_of(k), d["positions"], d["score"], d["meta"] or {})
            for u, v, k, d in edges
        ]
        return sorted(out, key=lambda e: eg.edge_key(e.src, e.dst, e.channel))

    @property
    def edges(self) -> list[CircuitEdge]:
        """One item per (src, dst, channel), in canonical order."""
        return self._records(self.graph.edges(keys=True, data=True))

    def edge_keys(self) -> set[eg.EdgeKey]:
        return {(u, v, channel_of(k)) for u, v, k in self.graph.edges(keys=True)}

    def node(self, name: str) -> dict[str, Any]:
        """The node's attributes (a copy)."""
        return dict(self.graph.nodes[name])

    @property
    def classes(self) -> dict[str, list[str]]:
        """Class label -> nodes, in node order (nodes without a class are left out)."""
        out: dict[str, list[str]] = {}
        for n, cls in self.graph.nodes(data="class"):
            if isinstance(cls, str):
                out.setdefault(cls, []).append(n)
        return out

    def nodes_by_class(self, *classes: str) -> list[str]:
        return [n for n, c in self.graph.nodes(data="class") if c in classes]

    def nodes_by_layer(self, layer: int) -> list[str]:
        return [n for n, lay in self.graph.nodes(data="layer") if lay == layer]

    def nodes_by_kind(self, kind: str) -> list[str]:
        return [n for n, k in self.graph.nodes(data="kind") if k == kind]

    def edges_into(self, node: str, channel: str | None = None) -> list[CircuitEdge]:
        """Edges entering ``node`` (only those on ``channel`` when given), canonical order."""
        into = self.graph.in_edges(node, keys=True, data=True)
        return self._records(e for e in into if channel is None or channel_of(e[2]) == channel)

    def edges_from(self, node: str) -> list[CircuitEdge]:
        """Edges leaving ``node``, canonical order."""
        return self._records(self.graph.out_edges(node, keys=True, data=True))

    def upstream(self, node: str, channel: str | None = None) -> set[str]:
        """Every node with a path into ``node`` (networkx ancestors); with ``channel``, only
        through edges that enter ``node`` on that channel.

        >>> c = Circuit(); _ = c.add_edge("a0.h1", "a3.h0", "k"); _ = c.add_edge("a1.h2", "a3.h0", "q")
        >>> sorted(c.upstream("a3.h0", "q"))
        ['a1.h2']
        """
        if channel is None:
            return set(nx.ancestors(self.graph, node))
        firsts = {u for u, _, k in self.graph.in_edges(node, keys=True) if k == channel}
        return firsts.union(*(nx.ancestors(self.graph, s) for s in firsts))

    def downstream(self, node: str) -> set[str]:
        """Every node ``node`` has a path to (networkx descendants)."""
        return set(nx.descendants(self.graph, node))

    def __len__(self) -> int:
        return self.graph.number_of_nodes()

    def __contains__(self, node: object) -> bool:
        return node in self.graph

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Circuit) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (
            f"Circuit({self.name!r}, model={self.model!r}, {len(self)} nodes, "
            f"{self.graph.number_of_edges()} edges, classes={list(self.classes)})"
        )

    # -- derived circuits ---------------------------------------------------------------------
    def copy(self, name: str | None = None, *, nodes: Iterable[str] | None = None) -> Circuit:
        """A deep copy (of the subgraph induced by ``nodes``, when given)."""
        out = type(self)(name or self.name, model=self.model, source=self.source, shape=self.shape)
        out.metadata = clone(self.metadata)
        g = self.graph if nodes is None else self.graph.subgraph(nodes)
        out.graph.add_nodes_from((n, clone(a)) for n, a in g.nodes(data=True))
        add_keyed_edges(
            out.graph, ((u, v, k, clone(d)) for u, v, k, d in g.edges(keys=True, data=True))
        )
        return out

    def subcircuit(
        self,
        nodes: Iterable[str] | None = None,
        *,
        classes: Iterable[str] | None = None,
        name: str | None = None,
    ) -> Circuit:
        """The circuit restricted to ``nodes`` and/or the nodes of ``classes`` (induced edges).

        >>> c = Circuit(); _ = c.add_edge("a0.h1", "a3.h0", "k"); _ = c.add_edge("a3.h0", "logits")
        >>> c.subcircuit(["a0.h1", "a3.h0"]).nodes
        ['a0.h1', 'a3.h0']
        """
        keep = set(nodes or ())
        if classes is not None:
            keep |= set(self.nodes_by_class(*classes))
        unknown = keep - set(self.graph)
        if unknown:
            raise CircuitFormatError(
                f"subcircuit of {self.name!r}: nodes not in the circuit: {sorted(unknown)}",
                fix=f"choose from {self.nodes}",
            )
        return self.copy(name or f"{self.name}[sub]", nodes=keep)

    def union(self, other: Circuit, name: str | None = None) -> Circuit:
        """Nodes and edges of both; where both define a node or edge, ``self``'s attributes win."""
        return _derive.union(self, other, name)

    def intersection(self, other: Circuit, name: str | None = None) -> Circuit:
        """Nodes and edges present in both (``self``'s attributes)."""
        return _derive.intersection(self, other, name)

    __or__ = union
    __and__ = intersection

    def expand_edges(
        self,
        shape: Any = None,
        *,
        dense: Iterable[str] | None = None,
        name: str | None = None,
    ) -> Circuit:
        """The ACDC-style edge set this circuit implies in the model's full edge graph.

        ``input`` and ``logits`` are always included. A circuit without edges is a node
        circuit: every full-graph edge between its nodes is implied. A circuit with edges keeps
        them and adds every full-graph edge between its nodes that touches a *dense* node;
        ``dense`` lists kinds (``"mlp"``), classes or node names and defaults to
        ``metadata["dense"]`` (the IOI file marks MLPs dense, as ACDC's encoding does).
        Implied edges get positions from :func:`circuitsteer.edge_graph.edge_positions`.

        >>> c = Circuit(); _ = c.add_node("a0.h1")
        >>> len(c.expand_edges().edges)   # input->a0.h1 <q,k,v>, input->logits, a0.h1->logits
        5
        """
        return _derive.expand_edges(self, shape, dense, name)

    def acdc_edge_count(self) -> int:
        """Edges as ACDC counts them: residual edges plus one q/k/v-input -> q/k/v edge inside
        each head for every (head, channel) that receives an edge (docs/formats.md).

        >>> c = Circuit(); _ = c.add_edge("input", "a1.h2", "q"); _ = c.add_edge("input", "a1.h2", "k")
        >>> c.acdc_edge_count()
        4
        """
        keys = self.graph.edges(keys=True)
        return len(keys) + len({(d, k) for _, d, k in keys if k != NO_CHANNEL})

    # -- models ---------------------------------------------------------------------------
    def check_model(self, model_or_shape: Any) -> ModelShape:
        """Check the circuit fits a model (``Model`` or ``ModelShape``); returns its shape.

        Raises ``ShapeMismatchError`` naming the circuit's model when the shapes differ or a
        node or edge is outside the model.
        """
        shape = getattr(model_or_shape, "shape", model_or_shape)
        if not isinstance(shape, ModelShape):
            raise ShapeMismatchError(
                f"cannot check circuit {self.name!r} against {type(model_or_shape).__name__}",
                fix="pass a circuitsteer Model or a ModelShape",
            )
        return _checks.fits(self, shape, getattr(model_or_shape, "name", None))

    def validate(self, shape: ModelShape | None = None) -> None:
        """Re-check the graph (after direct edits of ``circuit.graph``): node names and kinds,
        acyclicity, each edge and its key; and the model shape when known."""
        _checks.validate(self, shape)

    # -- files, drawing and masks -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The ``circuitsteer.circuit/1`` JSON object (docs/formats.md)."""
        return _io.to_dict(self)

    @classmethod
    def from_dict(cls, d: Any, *, file: str | None = None, model: Any = None) -> Circuit:
        """Build from a ``circuitsteer.circuit/1`` object; typed errors name ``file``. The
        circuit is checked against its model's shape when the model is known, and against
        ``model`` (a ``Model`` or ``ModelShape``) when given."""
        return _io.from_dict(cls, d, file=file, model=model)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the JSON file atomically (temp file + rename)."""
        _io.save(self, path)

    def draw(
        self, path: str | os.PathLike[str] | None = None, score: Any = None, **kwargs: Any
    ) -> Any:
        """Draw the circuit layered by depth, coloured by class or by ``score``; returns the
        matplotlib Figure (and writes PNG/SVG/PDF to ``path`` when given). Options: see
        :func:`circuitsteer.circuit.draw_circuit`."""
        return _draw.draw_circuit(self, path, score=score, **kwargs)

    def to_mask(self, model: Any, inside: float = 0.0, outside: float = 1.0) -> Any:
        """The ``EdgeMask`` that runs this circuit on ``model``: its edges ``inside`` (0:
        clean), every other edge ``outside`` (1: patched). Positions are ignored."""
        return _mask.to_mask(self, model, inside, outside)

    @classmethod
    def from_mask(
        cls,
        mask: Any,
        threshold: float = 0.5,
        *,
        name: str = "from-mask",
        model: str | None = None,
        scores: bool = False,
    ) -> Circuit:
        """The circuit of ``mask``'s edges whose value is below ``threshold`` (the edges left
        clean) and their ends; with ``scores=True`` each edge's value becomes its score."""
        c = cls(name, model=model, shape=mask.shape)
        nodes, edges = _mask.clean_edges(mask, threshold, scores)
        c.graph.add_nodes_from((n, node_attrs(circuit_node(n))) for n in nodes)
        add_keyed_edges(c.graph, edges)
        return c


def full_edge_graph(shape: ModelShape, *, model: str | None = None, name: str = "full") -> Circuit:
    """Every node and edge of a model's ACDC-style edge graph.

    >>> len(full_edge_graph(known_shape("gpt2-small")).edges)
    32491
    """
    c = Circuit(name, model=model, shape=shape)
    c.graph.add_nodes_from((n, node_attrs(circuit_node(n))) for n in eg.all_nodes(shape))
    # no per-edge checks: the generator yields exactly the model's edges
    add_keyed_edges(
        c.graph, ((s, d, graph_key(ch), edge_data()) for s, d, ch in eg.full_edges(shape))
    )
    return c
