"""A circuit to and from its ``circuitsteer.circuit/1`` object: the graph side of the file format.

:mod:`._schema` validates each entry; here the validated file becomes a graph, with the checks
that need the whole file (edge ends declared, no edge twice) and the model's: a file is checked
against the shape of the model it names whenever that model is known (a zoo model, or a hub
model the shipped circuits name: :func:`circuitsteer.models.known_shape`), and against the
``shape`` it writes. ``to_dict`` writes the canonical object.

Example:
    >>> from circuitsteer.circuit import Circuit
    >>> d = {"schema": SCHEMA, "model": "toy-ioi", "nodes": {"a99.h0": {}}}
    >>> Circuit.from_dict(d, file="t.json")
    Traceback (most recent call last):
    ...
    circuitsteer.errors.ShapeMismatchError: t.json: a99.h0: layer 99 is outside the model (4 layers x 4 heads, d_model 128, d_mlp 512), the shape of toy-ioi. Fix: use layers 0..3, or use a circuit found on toy-ioi
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from circuitsteer.circuit._checks import check_in
from circuitsteer.circuit._json import atomic_write_text, pretty
from circuitsteer.circuit._parts import (
    CircuitEdge,
    add_keyed_edges,
    channel_of,
    circuit_node,
    clone,
    edge_data,
    graph_key,
    node_attrs,
)
from circuitsteer.circuit._schema import SCHEMA, format_error, parse_file
from circuitsteer.errors import CircuitFormatError, ShapeMismatchError
from circuitsteer.models import known_shape

if TYPE_CHECKING:
    from circuitsteer.circuit._graph import Circuit

C = TypeVar("C", bound="Circuit")


def _copied(x: Any, where: str, entry: str) -> Any:
    try:
        return clone(x)
    except RecursionError:
        raise format_error(where, entry, "nested too deeply", "flatten the data") from None


def from_dict(cls: type[C], d: Any, *, file: str | None = None, model: Any = None) -> C:
    """Build a ``cls`` circuit from a ``circuitsteer.circuit/1`` object (``file`` names it in
    errors); with ``model`` (a ``Model`` or ``ModelShape``), also check the circuit fits it."""
    where = file or "<circuit>"
    f = parse_file(d, where)
    c = cls(
        f.name or (Path(file).stem if file else "circuit"),
        model=f.model,
        source=f.source,
        shape=f.shape.to_shape() if f.shape is not None else None,
    )
    c.metadata = _copied(f.metadata, where, "metadata")
    c.graph.add_nodes_from(
        (
            n,
            node_attrs(
                circuit_node(n),
                a.cls,
                _tuple(a.positions),
                a.score,
                _copied(a.meta, where, f"nodes[{n!r}]") if a.meta else {},
            ),
        )
        for n, a in f.nodes.items()
    )
    keys = [(e["src"], e["dst"], graph_key(e.get("channel"))) for e in f.edges]
    _check_ends_and_repeats(keys, f.nodes, where)
    add_keyed_edges(
        c.graph,
        (
            (
                u,
                v,
                k,
                edge_data(
                    _tuple(e.get("positions")),
                    e.get("score"),
                    _copied(e.get("meta"), where, f"edges[{i}]"),
                ),
            )
            for i, ((u, v, k), e) in enumerate(zip(keys, f.edges, strict=True))
        ),
    )
    known = known_shape(c.model)
    if f.shape is not None and known is not None:
        s = c.shape
        if s is not None and (s.n_layers, s.n_heads) != (known.n_layers, known.n_heads):
            raise ShapeMismatchError(
                f"{where}: 'shape' is {s.describe()}, but model {c.model!r} is {known.describe()}",
                fix="drop 'shape' (the model's name implies it), or correct 'model'",
            )
    for shape in {id(s): s for s in (c.shape, known) if s is not None}.values():
        check_in(c, shape, where, c.model)
    if model is not None:
        check_in(c, model, where)
    return c


def _tuple(positions: list[int | str] | None) -> tuple[int | str, ...] | None:
    return None if positions is None else tuple(positions)


def _check_ends_and_repeats(keys: list[tuple[str, str, Any]], nodes: Any, where: str) -> None:
    seen: set[tuple[str, str, Any]] = set()
    for i, key in enumerate(keys):
        u, v, k = key
        if u not in nodes or v not in nodes:
            end = u if u not in nodes else v
            raise format_error(
                where,
                f"edges[{i}]",
                f"edge {_name(key)} uses node {end!r}, which 'nodes' does not declare",
                f"add {end!r} to 'nodes'",
            )
        if key in seen:
            raise format_error(
                where,
                f"edges[{i}]",
                f"duplicate edge {_name(key)}",
                "list each (src, dst, channel) once",
            )
        seen.add(key)


def _name(key: tuple[str, str, Any]) -> str:
    return CircuitEdge(key[0], key[1], channel_of(key[2])).name


def to_dict(c: Circuit) -> dict[str, Any]:
    """The canonical JSON object: nodes in the circuit's order, edges by receiver, channel,
    sender; ``shape`` only when it is not implied by a known ``model`` name."""
    d: dict[str, Any] = {"schema": SCHEMA, "name": c.name, "model": c.model, "source": c.source}
    if c.shape is not None and c.shape != known_shape(c.model):
        # grouped-query attention and a parallel residual only when present
        d["shape"] = {k: v for k, v in asdict(c.shape).items() if v is not None and v is not False}
    d["nodes"] = {n: _node_dict(a) for n, a in c.graph.nodes(data=True)}
    d["edges"] = [
        {
            "src": e.src,
            "dst": e.dst,
            "channel": e.channel,
            "positions": None if e.positions is None else list(e.positions),
            "score": e.score,
            **({"meta": clone(e.meta)} if e.meta else {}),
        }
        for e in c.edges
    ]
    d["metadata"] = clone(c.metadata)
    return d


def _node_dict(attrs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("class", "positions", "score"):
        if attrs.get(key) is not None:
            out[key] = list(attrs[key]) if key == "positions" else attrs[key]
    if attrs.get("meta"):
        out["meta"] = clone(attrs["meta"])
    return out


def dumps_circuit(c: Circuit) -> str:
    """The canonical JSON text of a circuit."""
    try:
        return pretty(to_dict(c)) + "\n"
    except (TypeError, ValueError, RecursionError) as e:
        raise CircuitFormatError(
            f"circuit {c.name!r} holds data JSON cannot write ({e})",
            fix="keep scores, positions, meta and metadata JSON-serialisable",
        ) from None


def save(c: Circuit, path: str | os.PathLike[str]) -> None:
    """Write the circuit's JSON atomically."""
    atomic_write_text(path, dumps_circuit(c))
