"""Circuit files: write canonical JSON atomically, read JSON safely, find shipped circuits.

``load_circuit("gpt2-small/ioi")`` resolves to ``gpt2-small/ioi.json`` in the package's
``_circuits/`` (the repository's ``circuits/`` folder, shipped in the wheel); any other
argument is a path.
Parsing and validation live in :mod:`circuitsteer.circuit_schema`.

Example:
    >>> c = load_circuit("gpt2-small/ioi")
    >>> len(c.heads), len(c.classes)
    (26, 7)
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from circuitsteer.circuit_parts import clone
from circuitsteer.circuit_schema import (
    ARCH_KEYS,
    KNOWN_SHAPES,
    SCHEMA,
    SHAPE_KEYS,
    circuit_from_dict,
    format_error,
    known_shape,
    parse_circuit_node,
    parse_score,
)
from circuitsteer.errors import CircuitFormatError
from circuitsteer.graph import Circuit

# package data: a symlink to the repository's circuits/ in a checkout, real files in a wheel
CIRCUIT_DIRS = (Path(__file__).resolve().parent / "_circuits",)


def _node_to_dict(attrs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if attrs.get("class") is not None:
        out["class"] = attrs["class"]
    if attrs.get("positions") is not None:
        out["positions"] = list(attrs["positions"])
    if attrs.get("score") is not None:
        out["score"] = attrs["score"]
    if attrs.get("meta"):
        out["meta"] = clone(attrs["meta"])
    return out


def circuit_to_dict(c: Circuit) -> dict[str, Any]:
    """The canonical JSON object: nodes in the circuit's order, edges by receiver, channel,
    sender; ``shape`` only when it is not implied by a known ``model`` name."""
    d: dict[str, Any] = {"schema": SCHEMA, "name": c.name, "model": c.model, "source": c.source}
    if c.shape is not None and c.shape != known_shape(c.model):
        d["shape"] = {k: getattr(c.shape, k) for k in SHAPE_KEYS}
        d["shape"].update({k: getattr(c.shape, k) for k in ARCH_KEYS if getattr(c.shape, k)})
    d["nodes"] = {n: _node_to_dict(a) for n, a in c.graph.nodes(data=True)}
    edges = []
    for e in c.edges:
        item: dict[str, Any] = {
            "src": e.src,
            "dst": e.dst,
            "channel": e.channel,
            "positions": None if e.positions is None else list(e.positions),
            "score": e.score,
        }
        if e.meta:
            item["meta"] = clone(e.meta)
        edges.append(item)
    d["edges"] = edges
    d["metadata"] = clone(c.metadata)
    return d


def _pretty(obj: Any, indent: int = 0, width: int = 110) -> str:
    """JSON with short values on one line: one node, edge or rule per line keeps diffs readable."""
    flat = json.dumps(obj)
    if len(flat) + indent <= width or not isinstance(obj, dict | list) or not obj:
        return flat
    pad = " " * (indent + 2)
    if isinstance(obj, dict):
        items = [f"{pad}{json.dumps(k)}: {_pretty(v, indent + 2, width)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    items = [f"{pad}{_pretty(v, indent + 2, width)}" for v in obj]
    return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"


def dumps_circuit(c: Circuit) -> str:
    """The canonical JSON text of a circuit."""
    try:
        return _pretty(circuit_to_dict(c)) + "\n"
    except (TypeError, ValueError, RecursionError) as e:
        raise CircuitFormatError(
            f"circuit {c.name!r} holds data JSON cannot write ({e})",
            fix="keep scores, positions, meta and metadata JSON-serialisable",
        ) from None


def save_circuit(c: Circuit, path: str | os.PathLike[str]) -> None:
    """Write the circuit's JSON atomically."""
    atomic_write_text(path, dumps_circuit(c))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write via a temp file in the same folder and ``os.replace``: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a circuit file is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def loads_json(text: str | bytes, where: str) -> Any:
    """``json.loads`` that refuses duplicate keys and raises ``CircuitFormatError``."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise format_error(
                    where,
                    f"key {k!r}",
                    "duplicate entry in a JSON object",
                    "list each node and key once (JSON would silently keep the last)",
                )
            out[k] = v
        return out

    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as e:
        raise format_error(
            where,
            f"line {e.lineno} column {e.colno}",
            f"invalid JSON ({e.msg})",
            "fix the JSON syntax (a validator or `python -m json.tool FILE` shows where)",
        ) from None
    except UnicodeDecodeError:
        raise format_error(
            where, "bytes", "not UTF-8 text", "save the file as UTF-8 JSON"
        ) from None
    except RecursionError:
        raise format_error(
            where, "top level", "JSON nested too deeply", "flatten the file"
        ) from None


def shipped_circuits() -> list[str]:
    """Names of the circuits shipped in ``circuits/``: ``['attn-only-4l/docstring', ...]``."""
    names = set()
    for root in CIRCUIT_DIRS:
        if root.is_dir():
            names |= {p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.json")}
    return sorted(names)


def resolve_circuit(name_or_path: str | os.PathLike[str]) -> Path:
    p = Path(name_or_path)
    if p.is_file():
        return p
    rel = p.as_posix().removesuffix(".json") + ".json"
    for root in CIRCUIT_DIRS:
        if (root / rel).is_file():
            return root / rel
    raise CircuitFormatError(
        f"no circuit file {str(name_or_path)!r} and no shipped circuit of that name",
        fix=f"give a path to a JSON file or one of {shipped_circuits()}",
    )


def load_circuit(name_or_path: str | os.PathLike[str], model: Any = None) -> Circuit:
    """Load a shipped circuit name (``"gpt2-small/ioi"``) or a JSON path.

    ``model`` (a ``Model`` or ``ModelShape``) checks the circuit fits it, else
    ``ShapeMismatchError`` naming the circuit's model and the mismatch.
    """
    path = resolve_circuit(name_or_path)
    try:
        raw = path.read_bytes()
    except (OSError, ValueError) as e:
        raise CircuitFormatError(
            f"{path}: cannot read ({getattr(e, 'strerror', None) or e})", fix="check the path"
        ) from None
    return circuit_from_dict(loads_json(raw, str(path)), file=str(path), model=model)


def loads_circuit(text: str | bytes, *, file: str | None = None, model: Any = None) -> Circuit:
    """Parse circuit JSON text (what :func:`load_circuit` does after reading the file)."""
    return circuit_from_dict(loads_json(text, file or "<circuit>"), file=file, model=model)


__all__ = [
    "KNOWN_SHAPES",
    "SCHEMA",
    "atomic_write_text",
    "circuit_from_dict",
    "circuit_to_dict",
    "dumps_circuit",
    "known_shape",
    "load_circuit",
    "loads_circuit",
    "loads_json",
    "parse_circuit_node",
    "parse_score",
    "resolve_circuit",
    "save_circuit",
    "shipped_circuits",
]
