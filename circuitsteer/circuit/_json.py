"""JSON text: read it strictly (no repeated keys, typed errors), write it readably and atomically.

Example:
    >>> loads_json('{"a": 1, "a": 2}', "x.json")
    Traceback (most recent call last):
    ...
    circuitsteer.errors.CircuitFormatError: x.json: key 'a': duplicate entry in a JSON object. Fix: list each node and key once (JSON would silently keep the last)
    >>> print(pretty({"nodes": {"a9.h9": {}}, "edges": []}, width=20))
    {
      "nodes": {"a9.h9": {}},
      "edges": []
    }
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from circuitsteer.circuit._schema import format_error


def loads_json(text: str | bytes, where: str) -> Any:
    """``json.loads`` that refuses duplicate keys and raises ``CircuitFormatError``."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) < len(pairs):  # only a file with a repeated key pays for finding it
            seen: set[str] = set()
            for k, _ in pairs:
                if k in seen:
                    raise format_error(
                        where,
                        f"key {k!r}",
                        "duplicate entry in a JSON object",
                        "list each node and key once (JSON would silently keep the last)",
                    )
                seen.add(k)
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


def pretty(obj: Any, indent: int = 0, width: int = 110) -> str:
    """JSON with short values on one line: one node, edge or rule per line keeps diffs readable."""
    flat = json.dumps(obj)
    if len(flat) + indent <= width or not isinstance(obj, dict | list) or not obj:
        return flat
    pad = " " * (indent + 2)
    if isinstance(obj, dict):
        items = [f"{pad}{json.dumps(k)}: {pretty(v, indent + 2, width)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    items = [f"{pad}{pretty(v, indent + 2, width)}" for v in obj]
    return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"


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
