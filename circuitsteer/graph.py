"""Circuits as graphs: typed nodes and edges in a ``networkx.DiGraph``.

Representation (docs/formats.md has the JSON side):

* ``circuit.graph`` nodes are node names (``input``, ``a9.h9``, ``m3``, ``logits``) with the
  attributes ``kind``, ``layer``, ``head``, ``class``, ``positions`` (tuple or None = all),
  ``score`` (float or None) and ``meta`` (dict).
* One DiGraph edge per (sender, receiver) pair. A head reads a sender through up to three
  channels, so the edge attribute ``channels`` maps each channel (``"q"``/``"k"``/``"v"``, or
  ``None`` for MLP and logits receivers) to ``{"positions", "score", "meta"}``. networkx
  queries (ancestors, descendants, paths) therefore see components, while ``circuit.edges``
  yields one :class:`CircuitEdge` per (src, dst, channel).

Example:
    >>> c = Circuit("toy", model="gpt2-small")
    >>> c.add_edge("a5.h5", "a7.h3", "k", positions=["S2"])
    'a5.h5->a7.h3<k>'
    >>> c.add_edge("a5.h5", "a7.h3", "v")
    'a5.h5->a7.h3<v>'
    >>> [e.name for e in c.edges]
    ['a5.h5->a7.h3<k>', 'a5.h5->a7.h3<v>']
    >>> sorted(c.upstream("a7.h3"))
    ['a5.h5']
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import networkx as nx

from circuitsteer import edge_graph as eg
from circuitsteer.circuit_parts import (
    CIRCUIT_KINDS,
    MAX_INDEX,
    CircuitEdge,
    as_positions,
    as_score,
    circuit_node,
    clone,
    clone_graph,
    parse_circuit_edge,
)
from circuitsteer.errors import CircuitFormatError, ShapeMismatchError
from circuitsteer.nodes import CHANNELS, ModelShape, feeds, make_edge, parse_node, validate_node


class Circuit:
    """A circuit: typed nodes and q/k/v edges of one model, with provenance.

    ``shape`` is the model shape the circuit was defined for (looked up from ``model`` when it
    names a known model, e.g. ``gpt2-small``); ``metadata`` is free-form JSON.
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
        from circuitsteer.circuit_schema import known_shape

        self.name = name
        self.model = model
        self.source = source
        self.shape = shape if shape is not None else known_shape(model)
        self.metadata: dict[str, Any] = clone(dict(metadata or {}))
        self.graph: nx.DiGraph = nx.DiGraph()

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
        attrs = self.graph.nodes[n.name] if n.name in self.graph else {}
        self.graph.add_node(
            n.name,
            kind=n.kind,
            layer=n.layer,
            head=n.head,
            **{"class": cls if cls is not None else attrs.get("class")},
            positions=as_positions(positions) if positions is not None else attrs.get("positions"),
            score=as_score(score) if score is not None else attrs.get("score"),
            meta=dict(meta) if meta is not None else attrs.get("meta", {}),
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
        e = make_edge(circuit_node(src), circuit_node(dst), channel)
        if e.dst.kind == "head" and channel is None:
            raise CircuitFormatError(
                f"edge {e.name} enters head {e.dst.name} without a channel",
                fix="add one edge per channel read: '<q>', '<k>' or '<v>'",
            )
        for end in (e.src.name, e.dst.name):
            if end not in self.graph:
                if not add_nodes:
                    raise CircuitFormatError(
                        f"edge {e.name} uses node {end!r}, which the circuit does not declare",
                        fix=f"add {end!r} to the circuit's nodes",
                    )
                self.add_node(end)
        if not self.graph.has_edge(e.src.name, e.dst.name):
            self.graph.add_edge(e.src.name, e.dst.name, channels={})
        chans = self.graph.edges[e.src.name, e.dst.name]["channels"]
        if channel in chans and not replace:
            raise CircuitFormatError(
                f"duplicate edge {e.name}", fix="list each (src, dst, channel) once"
            )
        chans[channel] = {
            "positions": as_positions(positions),
            "score": as_score(score),
            "meta": dict(meta or {}),
        }
        return e.name

    def remove_node(self, name: str) -> None:
        self.graph.remove_node(name)

    def remove_edge(self, src: str, dst: str, channel: str | None = None) -> None:
        chans = self.graph.edges[src, dst]["channels"]
        del chans[channel]
        if not chans:
            self.graph.remove_edge(src, dst)

    # -- reading ----------------------------------------------------------------------------
    @property
    def nodes(self) -> list[str]:
        return list(self.graph.nodes)

    @property
    def heads(self) -> list[str]:
        return self.nodes_by_kind("head")

    @property
    def edges(self) -> list[CircuitEdge]:
        """One item per (src, dst, channel), in canonical order (by receiver, channel, sender)."""
        out = [
            CircuitEdge(u, v, ch, d["positions"], d["score"], d["meta"])
            for u, v, chans in self.graph.edges(data="channels")
            for ch, d in chans.items()
        ]
        return sorted(out, key=lambda e: eg.edge_key(e.src, e.dst, e.channel))

    def edge_keys(self) -> set[eg.EdgeKey]:
        return {(u, v, ch) for u, v, chans in self.graph.edges(data="channels") for ch in chans}

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
        out = [
            CircuitEdge(u, node, ch, d["positions"], d["score"], d["meta"])
            for u, _, chans in self.graph.in_edges(node, data="channels")
            for ch, d in chans.items()
            if channel is None or ch == channel
        ]
        return sorted(out, key=lambda e: eg.edge_key(e.src, e.dst, e.channel))

    def edges_from(self, node: str) -> list[CircuitEdge]:
        """Edges leaving ``node``, canonical order."""
        out = [
            CircuitEdge(node, v, ch, d["positions"], d["score"], d["meta"])
            for _, v, chans in self.graph.out_edges(node, data="channels")
            for ch, d in chans.items()
        ]
        return sorted(out, key=lambda e: eg.edge_key(e.src, e.dst, e.channel))

    def upstream(self, node: str, channel: str | None = None) -> set[str]:
        """Every node with a path into ``node`` (networkx ancestors); with ``channel``, only
        through edges that enter ``node`` on that channel.

        >>> c = Circuit(); _ = c.add_edge("a0.h1", "a3.h0", "k"); _ = c.add_edge("a1.h2", "a3.h0", "q")
        >>> sorted(c.upstream("a3.h0", "q"))
        ['a1.h2']
        """
        if channel is None:
            return set(nx.ancestors(self.graph, node))
        firsts = {e.src for e in self.edges_into(node, channel)}
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
            f"{len(self.edges)} edges, classes={list(self.classes)})"
        )

    # -- derived circuits ---------------------------------------------------------------------
    def copy(self, name: str | None = None) -> Circuit:
        out = Circuit(
            name or self.name,
            model=self.model,
            source=self.source,
            shape=self.shape,
            metadata=self.metadata,
        )
        out.graph = clone_graph(self.graph)
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
        out = self.copy(name or f"{self.name}[sub]")
        out.graph = clone_graph(self.graph, keep)
        return out

    def union(self, other: Circuit, name: str | None = None) -> Circuit:
        """Nodes and edges of both; where both define a node or edge, ``self``'s attributes win."""
        self._check_same_model(other, "union")
        out = self.copy(name or f"{self.name}|{other.name}")
        out.shape = self.shape or other.shape
        for n, attrs in other.graph.nodes(data=True):
            if n not in out.graph:
                out.graph.add_node(n, **clone(attrs))
        have = out.edge_keys()
        for e in other.edges:
            if e.key not in have:
                out.add_edge(
                    e.src, e.dst, e.channel, positions=e.positions, score=e.score, meta=e.meta
                )
        return out

    def intersection(self, other: Circuit, name: str | None = None) -> Circuit:
        """Nodes and edges present in both (``self``'s attributes)."""
        self._check_same_model(other, "intersection")
        out = self.copy(name or f"{self.name}&{other.name}")
        common = other.edge_keys()
        for src, dst, ch in self.edge_keys() - common:
            out.remove_edge(src, dst, ch)
        out.graph.remove_nodes_from([n for n in self.graph if n not in other.graph])
        return out

    __or__ = union
    __and__ = intersection

    def _check_same_model(self, other: Circuit, op: str) -> None:
        mine, theirs = self.shape, other.shape
        if mine and theirs and (mine.n_layers, mine.n_heads) != (theirs.n_layers, theirs.n_heads):
            raise ShapeMismatchError(
                f"{op} of circuits for different models: {self.name!r} ({self.model}, "
                f"{self.shape.describe()}) and {other.name!r} ({other.model}, {other.shape.describe()})",
                fix="combine circuits of the same model",
            )

    def expand_edges(
        self,
        shape: ModelShape | None = None,
        *,
        dense: Sequence[str] | None = None,
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
        if shape is not None:
            self.check_model(shape)
        out = self.copy(name or f"{self.name}[expanded]")
        for end in ("input", "logits"):
            if end not in out.graph:
                out.add_node(end)
        dense = self.metadata.get("dense", []) if dense is None else dense
        if not isinstance(dense, list | tuple) or not all(isinstance(x, str) for x in dense):
            raise CircuitFormatError(
                f"circuit {self.name!r}: dense must be a list of kinds, classes or node names, "
                f"got {dense!r}",
                fix='write e.g. "dense": ["mlp"]',
            )
        dense_nodes = {
            n
            for n, a in out.graph.nodes(data=True)
            if n in dense or a["kind"] in dense or a.get("class") in dense
        }
        have = out.edge_keys()
        arch_shape = shape.shape if hasattr(shape, "shape") else shape
        for src, dst, ch in eg.implied_edges(out.graph.nodes, arch_shape or self.shape):
            if (src, dst, ch) in have:
                continue
            if self.graph.number_of_edges() == 0 or src in dense_nodes or dst in dense_nodes:
                pos = eg.edge_positions(
                    out.graph.nodes[src]["positions"], out.graph.nodes[dst]["positions"], ch
                )
                out.add_edge(src, dst, ch, positions=pos)
        return out

    def acdc_edge_count(self) -> int:
        """Edges as ACDC counts them: residual edges plus one q/k/v-input -> q/k/v edge inside
        each head for every (head, channel) that receives an edge (docs/formats.md).

        >>> c = Circuit(); _ = c.add_edge("input", "a1.h2", "q"); _ = c.add_edge("input", "a1.h2", "k")
        >>> c.acdc_edge_count()
        4
        """
        keys = self.edge_keys()
        return len(keys) + len({(d, ch) for _, d, ch in keys if ch is not None})

    # -- models ---------------------------------------------------------------------------
    def check_model(self, model_or_shape: Any) -> ModelShape:
        """Check the circuit fits a model (``Model`` or ``ModelShape``); returns its shape.

        Raises ``ShapeMismatchError`` naming the circuit's model when the shapes differ or a
        node is outside the model.
        """
        shape = getattr(model_or_shape, "shape", model_or_shape)
        if not isinstance(shape, ModelShape):
            raise ShapeMismatchError(
                f"cannot check circuit {self.name!r} against {type(model_or_shape).__name__}",
                fix="pass a circuitsteer Model or a ModelShape",
            )
        other = getattr(model_or_shape, "name", None) or "the model"
        mine = self.shape
        if mine is not None and (mine.n_layers, mine.n_heads) != (shape.n_layers, shape.n_heads):
            raise ShapeMismatchError(
                f"circuit {self.name!r} is for {self.model or 'a model'} ({mine.describe()}), "
                f"but {other} has {shape.describe()}",
                fix="load the circuit defined for this model, or rediscover one on it",
            )
        for n in self.graph:
            node = validate_node(n, shape)
            if node.kind == "mlp" and not eg.has_mlps(shape):
                raise ShapeMismatchError(
                    f"circuit {self.name!r} uses {n}, but {other} is attention-only",
                    fix="drop MLP nodes for attention-only models",
                )
        if shape.parallel_residual:
            for u, v in self.graph.edges:
                if not feeds(parse_node(u), parse_node(v), shape):
                    raise ShapeMismatchError(
                        f"circuit {self.name!r} has edge {u}->{v}, but {other} has a parallel "
                        f"residual: {v} reads its layer's input, not that layer's heads",
                        fix="drop edges from a layer's heads to its own MLP for GPT-NeoX/Pythia models",
                    )
        return shape

    def validate(self, shape: ModelShape | None = None) -> None:
        """Re-check the graph (after direct edits of ``circuit.graph``): node names and kinds,
        acyclicity, forward edges, channels; and the model shape when known."""
        from circuitsteer.circuit_schema import validate_graph

        validate_graph(self, where=f"circuit {self.name!r}", shape=shape or self.shape)

    # -- I/O and drawing --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The ``circuitsteer.circuit/1`` JSON object (docs/formats.md)."""
        from circuitsteer.circuit_io import circuit_to_dict

        return circuit_to_dict(self)

    @classmethod
    def from_dict(cls, d: Any, *, file: str | None = None, model: Any = None) -> Circuit:
        """Build from a ``circuitsteer.circuit/1`` object; typed errors name ``file``."""
        from circuitsteer.circuit_schema import circuit_from_dict

        return circuit_from_dict(d, file=file, model=model)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the JSON file atomically (temp file + rename)."""
        from circuitsteer.circuit_io import save_circuit

        save_circuit(self, path)

    def draw(
        self, path: str | os.PathLike[str] | None = None, score: Any = None, **kwargs: Any
    ) -> Any:
        """Draw the circuit layered by depth, coloured by class or by ``score``; returns the
        matplotlib Figure (and writes PNG/SVG/PDF to ``path`` when given). See
        :func:`circuitsteer.graph_draw.draw_circuit` for the options."""
        from circuitsteer.graph_draw import draw_circuit

        return draw_circuit(self, path, score=score, **kwargs)


def full_edge_graph(shape: ModelShape, *, model: str | None = None, name: str = "full") -> Circuit:
    """Every node and edge of a model's ACDC-style edge graph.

    >>> from circuitsteer.circuit_schema import known_shape
    >>> len(full_edge_graph(known_shape("gpt2-small")).edges)
    32491
    """
    c = Circuit(name, model=model, shape=shape)
    for n in eg.all_nodes(shape):
        c.add_node(n)
    g = c.graph
    # bypass add_edge's per-edge validation: the generator only yields valid forward edges
    for src, dst, ch in eg.full_edges(shape):
        if not g.has_edge(src, dst):
            g.add_edge(src, dst, channels={})
        g.edges[src, dst]["channels"][ch] = {"positions": None, "score": None, "meta": {}}
    return c


def load_circuit(name_or_path: str | os.PathLike[str], model: Any = None) -> Circuit:
    """Load a shipped circuit (``"gpt2-small/ioi"``) or a JSON file; see
    :func:`circuitsteer.circuit_io.load_circuit`."""
    from circuitsteer.circuit_io import load_circuit as _load

    return _load(name_or_path, model=model)


__all__ = [
    "CHANNELS",
    "CIRCUIT_KINDS",
    "MAX_INDEX",
    "Circuit",
    "CircuitEdge",
    "circuit_node",
    "clone",
    "full_edge_graph",
    "load_circuit",
    "parse_circuit_edge",
]
