"""The ``circuitsteer.circuit/1`` schema: parse and validate circuit objects.

Every problem raises a typed error whose message names the file, the entry (``nodes['a1h2']``,
``edges[3]``) and the fix: ``CircuitFormatError`` for the format, ``ShapeMismatchError`` for
nodes outside the model. docs/formats.md documents the schema; :mod:`circuitsteer.circuit_io`
reads and writes files.

Example:
    >>> c = circuit_from_dict({"schema": SCHEMA, "nodes": {"a9.h9": {"class": "name mover"}}})
    >>> c.heads
    ['a9.h9']
    >>> circuit_from_dict({"schema": "x"})
    Traceback (most recent call last):
    ...
    circuitsteer.errors.CircuitFormatError: <circuit>: schema: unknown schema 'x'. Fix: set 'schema' to 'circuitsteer.circuit/1' (docs/formats.md)
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import networkx as nx

from circuitsteer import edge_graph as eg
from circuitsteer.circuit_parts import CIRCUIT_KINDS, MAX_INDEX, clone, parse_circuit_edge
from circuitsteer.errors import CircuitFormatError, NodeNameError, ShapeMismatchError
from circuitsteer.graph import Circuit
from circuitsteer.nodes import CHANNELS, ModelShape, Node, parse_node

SCHEMA = "circuitsteer.circuit/1"
TOP_KEYS = ("schema", "name", "model", "source", "shape", "nodes", "edges", "metadata")
NODE_KEYS = ("class", "positions", "score", "meta")
EDGE_KEYS = ("src", "dst", "channel", "positions", "score", "meta")
SHAPE_KEYS = ("n_layers", "n_heads", "d_model", "d_head", "d_mlp", "d_vocab", "n_ctx")
# architecture facts, written only when they differ from GPT-2's (grouped-query attention, a
# parallel residual)
ARCH_KEYS = ("n_kv_heads", "parallel_residual")

_GPT2_SMALL = ModelShape(
    n_layers=12, n_heads=12, d_model=768, d_head=64, d_mlp=3072, d_vocab=50257, n_ctx=1024
)
# attn-only-4l as TransformerLens configures it; d_mlp = 0 marks it attention-only
_ATTN_ONLY_4L = ModelShape(
    n_layers=4, n_heads=8, d_model=512, d_head=64, d_mlp=0, d_vocab=48262, n_ctx=2048
)
KNOWN_SHAPES: dict[str, ModelShape] = {
    "gpt2-small": _GPT2_SMALL,
    "gpt2": _GPT2_SMALL,
    "gpt2-small-shape": _GPT2_SMALL,
    "attn-only-4l": _ATTN_ONLY_4L,
}


def known_shape(model: str | None) -> ModelShape | None:
    """Shape of a model the project knows by name (``gpt2-small``, ``attn-only-4l``)."""
    return KNOWN_SHAPES.get(model) if isinstance(model, str) else None


def format_error(where: str, entry: str, problem: str, fix: str) -> CircuitFormatError:
    return CircuitFormatError(f"{where}: {entry}: {problem}", fix=fix)


def _type(x: Any) -> str:
    return "null" if x is None else type(x).__name__


def _check_keys(obj: dict, allowed: tuple[str, ...], where: str, entry: str) -> None:
    for k in obj:
        if k not in allowed:
            near = difflib.get_close_matches(str(k), allowed, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise format_error(
                where,
                entry,
                f"unknown key {k!r}",
                f"{hint}allowed keys: {', '.join(allowed)}; put free-form data under 'meta'",
            )


# -- parsing pieces ---------------------------------------------------------------------------


def parse_circuit_node(raw: Any, where: str, entry: str) -> Node:
    """A canonical circuit-node name, or a ``CircuitFormatError`` naming the entry."""
    if not isinstance(raw, str):
        raise format_error(
            where,
            entry,
            f"node name must be a string, got {_type(raw)}",
            "write names like 'a9.h9', 'm3', 'input' or 'logits'",
        )
    try:
        n = parse_node(raw)
    except NodeNameError as e:
        raise format_error(where, entry, e.message, e.fix or "") from None
    if n.kind not in CIRCUIT_KINDS:
        raise format_error(
            where,
            entry,
            f"{raw!r} is a {n.kind} site, not a circuit node",
            "circuits hold 'input', heads 'a{L}.h{H}', MLPs 'm{L}' and 'logits'",
        )
    if max(n.layer or 0, n.head or 0) > MAX_INDEX:
        raise format_error(
            where,
            entry,
            f"{raw!r} has an implausible layer or head index",
            f"layers and heads are below {MAX_INDEX}",
        )
    if n.name != raw:
        raise format_error(
            where, entry, f"node name {raw!r} is not in canonical form", f"write it as {n.name!r}"
        )
    return n


def parse_positions(raw: Any, where: str, entry: str) -> tuple[int | str, ...] | None:
    if raw is None:
        return None
    fix = "write positions as a list of ints and names, e.g. ['END'] or [0, -1]; null = all"
    if not isinstance(raw, list):
        raise format_error(where, entry, f"positions must be a list, got {_type(raw)}", fix)
    for p in raw:
        if isinstance(p, bool) or not isinstance(p, int | str) or p == "":
            raise format_error(where, entry, f"position {p!r} is not an int or a name", fix)
    return tuple(raw)


def parse_score(raw: Any, where: str, entry: str) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise format_error(
            where,
            entry,
            f"score must be a number or null, got {_type(raw)}",
            "write the score as a number, e.g. 0.12, or null",
        )
    try:
        return float(raw)
    except OverflowError:
        raise format_error(
            where, entry, "score is too large for a float", "use a float value"
        ) from None


def _opt_str(d: dict, key: str, where: str) -> str | None:
    v = d.get(key)
    if v is not None and not isinstance(v, str):
        raise format_error(
            where, key, f"must be a string or null, got {_type(v)}", f"write {key!r} as a string"
        )
    return v


def _meta(raw: Any, where: str, entry: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise format_error(
            where, entry, f"'meta' must be an object, got {_type(raw)}", "use a JSON object"
        )
    return _clone_checked(raw, where, entry)


def _clone_checked(raw: Any, where: str, entry: str) -> Any:
    try:
        return clone(raw)
    except RecursionError:
        raise format_error(where, entry, "nested too deeply", "flatten the data") from None


def parse_shape(raw: Any, where: str) -> ModelShape | None:
    if raw is None:
        return None
    fix = "give 'shape' as {'n_layers': 12, 'n_heads': 12, 'd_mlp': 3072, ...} (d_mlp 0 = attention-only)"
    if not isinstance(raw, dict):
        raise format_error(where, "shape", f"must be an object, got {_type(raw)}", fix)
    _check_keys(raw, SHAPE_KEYS + ARCH_KEYS, where, "shape")
    parallel = raw.get("parallel_residual", False)
    if not isinstance(parallel, bool):
        raise format_error(
            where, "shape.parallel_residual", f"must be true or false, got {parallel!r}", fix
        )
    kv = raw.get("n_kv_heads")
    if kv is not None and (isinstance(kv, bool) or not isinstance(kv, int) or kv < 1):
        raise format_error(where, "shape.n_kv_heads", f"must be a positive int, got {kv!r}", fix)
    vals: dict[str, int] = {}
    for k in SHAPE_KEYS:
        v = raw.get(k)
        if v is None and k in ("n_layers", "n_heads", "d_mlp"):
            raise format_error(where, "shape", f"missing {k!r}", fix)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 10**9:
            raise format_error(where, f"shape.{k}", f"must be a non-negative int, got {v!r}", fix)
        vals[k] = v
    if not 1 <= vals["n_layers"] <= MAX_INDEX or not 1 <= vals["n_heads"] <= MAX_INDEX:
        raise format_error(where, "shape", "n_layers and n_heads must be at least 1", fix)
    return ModelShape(
        n_layers=vals["n_layers"],
        n_heads=vals["n_heads"],
        d_model=vals.get("d_model", 0),
        d_head=vals.get("d_head", 0),
        d_mlp=vals["d_mlp"],
        d_vocab=vals.get("d_vocab", 0),
        n_ctx=vals.get("n_ctx", 1024),
        n_kv_heads=kv,
        parallel_residual=parallel,
    )


# -- whole circuits ---------------------------------------------------------------------------


def circuit_from_dict(d: Any, *, file: str | None = None, model: Any = None) -> Circuit:
    """Parse and validate a ``circuitsteer.circuit/1`` object (see docs/formats.md); with
    ``model`` (a ``Model`` or ``ModelShape``), also check the circuit fits it."""
    where = file or "<circuit>"
    if not isinstance(d, dict):
        raise format_error(
            where,
            "top level",
            f"expected a JSON object, got {_type(d)}",
            f"a circuit file is an object with 'schema': {SCHEMA!r}, 'nodes' and 'edges'",
        )
    schema = d.get("schema")
    if schema != SCHEMA:
        problem = "no 'schema' key" if "schema" not in d else f"unknown schema {schema!r}"
        raise format_error(
            where, "schema", problem, f"set 'schema' to {SCHEMA!r} (docs/formats.md)"
        )
    _check_keys(d, TOP_KEYS, where, "top level")
    name = _opt_str(d, "name", where) or (Path(file).stem if file else "circuit")
    metadata = d.get("metadata", {})
    if not isinstance(metadata, dict):
        raise format_error(
            where, "metadata", f"must be an object, got {_type(metadata)}", "use a JSON object"
        )
    c = Circuit(
        name,
        model=_opt_str(d, "model", where),
        source=_opt_str(d, "source", where),
        shape=None,
        metadata=_clone_checked(metadata, where, "metadata"),
    )
    file_shape = parse_shape(d.get("shape"), where)
    if file_shape is not None:
        c.shape = file_shape

    nodes = d.get("nodes")
    if not isinstance(nodes, dict):
        raise format_error(
            where,
            "nodes",
            f"must be an object of node name -> attributes, got {_type(nodes)}",
            "write 'nodes': {'a9.h9': {'class': 'name mover', 'positions': ['END']}, ...}",
        )
    for key, val in nodes.items():
        entry = f"nodes[{key!r}]"
        n = parse_circuit_node(key, where, entry)
        if not isinstance(val, dict):
            raise format_error(
                where,
                entry,
                f"attributes must be an object, got {_type(val)}",
                "write {} or {'class': ..., 'positions': [...]}",
            )
        _check_keys(val, NODE_KEYS, where, entry)
        cls = val.get("class")
        if cls is not None and not isinstance(cls, str):
            raise format_error(
                where,
                entry,
                f"'class' must be a string, got {_type(cls)}",
                "write the class label as a string",
            )
        c.graph.add_node(
            n.name,
            kind=n.kind,
            layer=n.layer,
            head=n.head,
            **{"class": cls},
            positions=parse_positions(val.get("positions"), where, entry),
            score=parse_score(val.get("score"), where, entry),
            meta=_meta(val.get("meta"), where, entry),
        )

    edges = d.get("edges", [])
    if not isinstance(edges, list):
        raise format_error(
            where,
            "edges",
            f"must be a list, got {_type(edges)}",
            "write 'edges': [{'src': 'a7.h3', 'dst': 'a9.h9', 'channel': 'q'}, ...]",
        )
    for i, e in enumerate(edges):
        _add_file_edge(c, e, where, f"edges[{i}]")

    validate_graph(c, where=where, shape=c.shape)
    if model is not None:
        _check_model_in(c, model, where)
    return c


def _add_file_edge(c: Circuit, e: Any, where: str, entry: str) -> None:
    if isinstance(e, str):  # shorthand 'a5.h5->a7.h3<k>'
        try:
            parsed = parse_circuit_edge(e)
        except NodeNameError as err:
            raise format_error(where, entry, err.message, err.fix or "") from None
        e = {"src": parsed.src.name, "dst": parsed.dst.name, "channel": parsed.channel}
    if not isinstance(e, dict):
        raise format_error(
            where,
            entry,
            f"an edge must be an object, got {_type(e)}",
            "write {'src': ..., 'dst': ..., 'channel': 'q'|'k'|'v'|null}",
        )
    _check_keys(e, EDGE_KEYS, where, entry)
    for k in ("src", "dst"):
        if k not in e:
            raise format_error(where, entry, f"missing {k!r}", "every edge names 'src' and 'dst'")
    src = parse_circuit_node(e["src"], where, f"{entry}.src")
    dst = parse_circuit_node(e["dst"], where, f"{entry}.dst")
    ch = e.get("channel")
    label = f"{src.name}->{dst.name}" + (f"<{ch}>" if isinstance(ch, str) else "")
    for end in (src, dst):
        if end.name not in c.graph:
            raise format_error(
                where,
                entry,
                f"edge {label} uses node {end.name!r}, which 'nodes' does not declare",
                f"add {end.name!r} to 'nodes'",
            )
    if ch is not None and ch not in CHANNELS:
        raise format_error(
            where,
            entry,
            f"unknown channel {ch!r}",
            "use 'q', 'k', 'v', or null for MLP/logits receivers",
        )
    if not (eg.is_sender(src) and eg.is_receiver(dst)):
        raise format_error(
            where,
            entry,
            f"edge {label} joins nodes that cannot be joined",
            "edges run from 'input', heads or MLPs to heads, MLPs or 'logits'",
        )
    if ch is not None and dst.kind != "head":
        raise format_error(
            where,
            entry,
            f"channel {ch!r} on edge {label}, but {dst.name} is not a head",
            "drop the channel: only heads read q, k and v",
        )
    if ch is None and dst.kind == "head":
        raise format_error(
            where,
            entry,
            f"edge {label} enters head {dst.name} without a channel",
            "add 'channel': 'q', 'k' or 'v' (one edge per channel)",
        )
    if not src.depth() < dst.depth():
        raise format_error(
            where,
            entry,
            f"edge {label} points backwards (or sideways) in depth",
            "a sender must come earlier than its receiver (heads of layer L feed MLP L and later layers)",
        )
    if c.graph.has_edge(src.name, dst.name) and ch in c.graph.edges[src.name, dst.name]["channels"]:
        raise format_error(
            where, entry, f"duplicate edge {label}", "list each (src, dst, channel) once"
        )
    c.add_edge(
        src.name,
        dst.name,
        ch,
        positions=parse_positions(e.get("positions"), where, entry),
        score=parse_score(e.get("score"), where, entry),
        meta=_meta(e.get("meta"), where, entry),
        add_nodes=False,
    )


def validate_graph(c: Circuit, *, where: str, shape: ModelShape | None) -> None:
    """Checks that hold for any circuit, also after direct edits of ``circuit.graph``."""
    for n, kind in c.graph.nodes(data="kind"):
        if parse_circuit_node(n, where, f"nodes[{n!r}]").kind != kind:
            raise format_error(
                where,
                f"nodes[{n!r}]",
                f"node attribute kind={kind!r} does not match its name",
                "add nodes with Circuit.add_node",
            )
    if not nx.is_directed_acyclic_graph(c.graph):
        cycle = " -> ".join(u for u, _ in nx.find_cycle(c.graph))
        raise format_error(
            where,
            "edges",
            f"the edges form a cycle ({cycle})",
            "remove the edge that closes the cycle; circuits run forward through the model",
        )
    for u, v, chans in c.graph.edges(data="channels"):
        su, sv = parse_node(u), parse_node(v)
        entry = f"edge {u}->{v}"
        if not isinstance(chans, dict) or not chans:
            raise format_error(
                where, entry, "edge has no channels", "add edges with Circuit.add_edge"
            )
        if not (eg.is_sender(su) and eg.is_receiver(sv)) or not su.depth() < sv.depth():
            raise format_error(
                where,
                entry,
                "edge points backwards in depth or joins the wrong kinds",
                "a sender must come earlier than its receiver",
            )
        for ch in chans:
            if (ch is None) != (sv.kind != "head") or (ch is not None and ch not in CHANNELS):
                raise format_error(
                    where,
                    f"{entry}<{ch}>",
                    "channel does not fit the receiver",
                    "head receivers take 'q', 'k' or 'v'; MLPs and logits take none",
                )
    if shape is not None:
        _check_model_in(c, shape, where)


def _check_model_in(c: Circuit, shape: Any, where: str) -> None:
    try:
        got = c.check_model(shape)
    except ShapeMismatchError as e:
        raise ShapeMismatchError(f"{where}: {e.message}", fix=e.fix) from None
    if c.shape is None:
        c.shape = got
