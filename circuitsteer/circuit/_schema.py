"""The ``circuitsteer.circuit/1`` file format as pydantic models (docs/formats.md).

Structure and types are pydantic's: strict (no coercion: ``"0.5"`` is not a score, ``true`` is
not a position) and ``extra="forbid"`` (an unknown key is an error, not silently dropped). Names
and the edge rule are :mod:`circuitsteer.circuit._parts`' rules run as validators, so a file and
the Python API refuse the same things in the same words. Every problem becomes one
``CircuitFormatError`` naming the file, the entry and the fix. What needs the whole file (edge
ends declared, no duplicate edge, the model's shape) is checked where the circuit is built.

Example:
    >>> f = parse_file({"schema": SCHEMA, "nodes": {"a9.h9": {"class": "name mover"}}}, "x.json")
    >>> f.nodes["a9.h9"].cls
    'name mover'
    >>> parse_file({"schema": "x"}, "x.json")
    Traceback (most recent call last):
    ...
    circuitsteer.errors.CircuitFormatError: x.json: schema: unknown schema 'x'. Fix: set 'schema' to 'circuitsteer.circuit/1' (docs/formats.md)
"""

from __future__ import annotations

import difflib
from functools import lru_cache
from typing import Annotated, Any, Literal, Required

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)
from typing_extensions import TypedDict

from circuitsteer.circuit._parts import POSITIONS_FIX, Position, circuit_edge, circuit_node
from circuitsteer.errors import CircuitFormatError, CircuitSteerError
from circuitsteer.nodes import ModelShape, parse_edge

SCHEMA = "circuitsteer.circuit/1"
_STRICT = ConfigDict(strict=True, extra="forbid")
_MAX_INDEX = 10**6  # parse_node's bound on layer and head indices
_SHAPE_FIX = (
    "give 'shape' as {'n_layers': 12, 'n_heads': 12, 'd_mlp': 3072, ...} (d_mlp 0 = attention-only)"
)
_EDGE_FIX = "write {'src': ..., 'dst': ..., 'channel': 'q'|'k'|'v'|null} or 'a7.h3->a9.h9<q>'"


@lru_cache(maxsize=65536)  # a 32k-edge file names the same ~160 nodes over and over
def canonical_node(raw: str) -> str:
    """A circuit node name in canonical form (``a9.h9``, not ``a09.h9``), else an error."""
    n = circuit_node(raw)
    if n.name != raw:
        raise CircuitFormatError(
            f"node name {raw!r} is not in canonical form", fix=f"write it as {n.name!r}"
        )
    return raw


def _shorthand(item: Any) -> Any:
    """``'a5.h5->a7.h3<k>'`` -> the edge object it stands for (the grammar parses it)."""
    if not isinstance(item, str):
        return item
    e = parse_edge(item)
    return {"src": e.src.name, "dst": e.dst.name, "channel": e.channel}


def _edge_rule(e: EdgeEntry) -> EdgeEntry:
    circuit_edge(e["src"], e["dst"], e.get("channel"))
    return e


NodeName = Annotated[str, AfterValidator(canonical_node)]
Score = float | None  # strict float: ints become floats; bools, strings and huge ints refused


class ShapeEntry(BaseModel):
    """A model shape written into the file, for models not known by name."""

    model_config = _STRICT
    n_layers: int = Field(ge=1, le=_MAX_INDEX)
    n_heads: int = Field(ge=1, le=_MAX_INDEX)
    d_mlp: int = Field(ge=0, le=10**9)
    d_model: int = Field(0, ge=0, le=10**9)
    d_head: int = Field(0, ge=0, le=10**9)
    d_vocab: int = Field(0, ge=0, le=10**9)
    n_ctx: int = Field(1024, ge=0, le=10**9)
    n_kv_heads: int | None = Field(None, ge=1, le=_MAX_INDEX)
    parallel_residual: bool = False

    def to_shape(self) -> ModelShape:
        return ModelShape(**self.model_dump())


class NodeEntry(BaseModel):
    """A node's attributes (all optional)."""

    model_config = _STRICT
    cls: str | None = Field(None, alias="class")
    positions: list[Position] | None = None
    score: Score = None
    meta: dict[str, Any] | None = None


class EdgeEntry(TypedDict, total=False):
    """One edge. A TypedDict, not a BaseModel: validating 32k edges without building a model
    instance each is ~6x faster (the loader is timed in tests/unit/test_circuit_package.py)."""

    __pydantic_config__ = _STRICT  # type: ignore[misc]
    src: Required[NodeName]
    dst: Required[NodeName]
    channel: str | None
    positions: list[Position] | None
    score: Score
    meta: dict[str, Any] | None


EdgeItem = Annotated[EdgeEntry, BeforeValidator(_shorthand), AfterValidator(_edge_rule)]


class CircuitFile(BaseModel):
    """A whole circuit file."""

    model_config = _STRICT
    schema_: Literal["circuitsteer.circuit/1"] = Field(alias="schema")
    name: str | None = None
    model: str | None = None
    source: str | None = None
    shape: ShapeEntry | None = None
    nodes: dict[NodeName, NodeEntry]
    edges: list[EdgeItem] = []
    metadata: dict[str, Any] = {}


def parse_file(d: Any, where: str) -> CircuitFile:
    """Validate a decoded circuit file; ``CircuitFormatError`` (file, entry, fix) otherwise."""
    try:
        return CircuitFile.model_validate(d)
    except ValidationError as e:
        raise _as_format_error(dict(e.errors(include_url=False)[0]), where) from None


def format_error(where: str, entry: str, problem: str, fix: str) -> CircuitFormatError:
    return CircuitFormatError(f"{where}: {entry}: {problem}", fix=fix)


# -- pydantic's errors in the file's words ---------------------------------------------------

# key -> (what it must be, fix). Top-level and shape keys are named by the entry; node and edge
# attributes by the problem (the entry names the node or edge).
_MUST: dict[str, tuple[str, str]] = {
    "name": ("must be a string or null", "write 'name' as a string"),
    "model": ("must be a string or null", "write 'model' as a string"),
    "source": ("must be a string or null", "write 'source' as a string"),
    "shape": ("must be an object", _SHAPE_FIX),
    "nodes": (
        "must be an object of node name -> attributes",
        "write 'nodes': {'a9.h9': {'class': 'name mover', 'positions': ['END']}, ...}",
    ),
    "edges": (
        "must be a list",
        "write 'edges': [{'src': 'a7.h3', 'dst': 'a9.h9', 'channel': 'q'}, ...]",
    ),
    "metadata": ("must be an object", "use a JSON object"),
    "n_layers": (f"must be an int from 1 to {_MAX_INDEX}", _SHAPE_FIX),
    "n_heads": (f"must be an int from 1 to {_MAX_INDEX}", _SHAPE_FIX),
    "n_kv_heads": ("must be a positive int or null", _SHAPE_FIX),
    "parallel_residual": ("must be true or false", _SHAPE_FIX),
    "class": ("'class' must be a string", "write the class label as a string"),
    "positions": ("positions must be a list of ints and names", POSITIONS_FIX),
    "score": ("score must be a number or null", "write the score as a number, e.g. 0.12, or null"),
    "meta": ("'meta' must be an object", "use a JSON object"),
    "src": ("'src' must be a node name", "write names like 'a9.h9', 'm3', 'input' or 'logits'"),
    "dst": ("'dst' must be a node name", "write names like 'a9.h9', 'm3', 'input' or 'logits'"),
    "channel": ("'channel' must be a string or null", "use 'q', 'k', 'v', or null"),
}
_SHAPE_INT = ("must be a non-negative int", _SHAPE_FIX)
# what an item of a container must be, when the item itself has the wrong type
_ITEM: dict[str, tuple[str, str]] = {
    "top level": (
        "expected a JSON object",
        f"a circuit file is an object with 'schema': {SCHEMA!r}, 'nodes' and 'edges'",
    ),
    "nodes": ("attributes must be an object", "write {} or {'class': ..., 'positions': [...]}"),
    "edges": ("an edge must be an object", _EDGE_FIX),
}
_KEYS = {  # the keys each container allows, for "did you mean"
    "top level": CircuitFile,
    "nodes": NodeEntry,
    "edges": EdgeEntry,
    "shape": ShapeEntry,
}


def _got(err: dict[str, Any]) -> str:
    x = err.get("input")
    if err["type"].endswith("_type") or err["type"] in ("dict_type", "model_type"):
        return "null" if x is None else type(x).__name__
    return repr(x)


def _allowed(container: str) -> list[str]:
    model = _KEYS[container]
    if isinstance(model, type) and issubclass(model, BaseModel):
        return [f.alias or k for k, f in model.model_fields.items()]
    return [k for k in model.__annotations__ if not k.startswith("__")]


def _as_format_error(err: dict[str, Any], where: str) -> CircuitFormatError:
    loc, kind = tuple(err["loc"]), err["type"]
    # the container (top level, shape, nodes['x'], edges[3]), the key in it, and what is below
    if loc[:1] in (("nodes",), ("edges",)) and len(loc) >= 2:
        container, entry, key, below = loc[0], f"{loc[0]}[{loc[1]!r}]", loc[2:3], loc[3:]
    elif loc[:1] == ("shape",) and len(loc) >= 2:
        container, entry, key, below = "shape", "shape", loc[1:2], loc[2:]
    else:
        container, entry, key, below = "top level", "top level", loc[:1], loc[1:]
    name = str(key[0]) if key else None
    if kind == "value_error" or kind == "assertion_error":  # our validators: the grammar's words
        exc = err.get("ctx", {}).get("error")
        where_entry = f"{entry}.{name}" if name in ("src", "dst") else entry
        if isinstance(exc, CircuitSteerError):
            return format_error(where, where_entry, exc.message, exc.fix or "")
        return format_error(where, where_entry, str(exc or err["msg"]), _EDGE_FIX)
    if name == "schema":
        problem = "no 'schema' key" if kind == "missing" else f"unknown schema {err['input']!r}"
        return format_error(
            where, "schema", problem, f"set 'schema' to {SCHEMA!r} (docs/formats.md)"
        )
    if kind == "missing":
        return format_error(
            where, entry, f"missing {name!r}", f"give {name!r}; see docs/formats.md"
        )
    if kind == "extra_forbidden":
        allowed = _allowed(container)
        near = difflib.get_close_matches(str(name), allowed, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        return format_error(
            where,
            entry,
            f"unknown key {name!r}",
            f"{hint}allowed keys: {', '.join(allowed)}; put free-form data under "
            + ("'metadata'" if container == "top level" else "'meta'"),
        )
    if name == "[key]":  # a node name that is not a string
        return format_error(
            where, entry, f"node name must be a string, got {_got(err)}", _MUST["src"][1]
        )
    if name == "positions" and below:  # one position of the list
        problem = f"position {err['input']!r} is not an int or a position name"
        return format_error(where, entry, problem, POSITIONS_FIX)
    if name is None or (container != "top level" and not key):
        must, fix = _ITEM["top level" if not loc else container]
        return format_error(where, entry, f"{must}, got {_got(err)}", fix)
    must, fix = _MUST.get(name, _SHAPE_INT)
    if container == "top level" or container == "shape":  # the entry names the key
        entry = name if container == "top level" else f"shape.{name}"
    return format_error(where, entry, f"{must}, got {_got(err)}", fix)
