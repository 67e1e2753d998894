"""Circuit files on disk: load one by shipped name or path, list the shipped ones.

``load_circuit("gpt2-small/ioi")`` resolves to ``gpt2-small/ioi.json`` in the package's
``_circuits/`` (the repository's ``circuits/`` folder, shipped in the wheel); any other argument
is a path.

Example:
    >>> c = load_circuit("gpt2-small/ioi")
    >>> len(c.heads), len(c.classes)
    (26, 7)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from circuitsteer.circuit._graph import Circuit
from circuitsteer.circuit._json import loads_json
from circuitsteer.errors import CircuitFormatError

# package data: a symlink to the repository's circuits/ in a checkout, real files in a wheel
CIRCUIT_DIRS = (Path(__file__).resolve().parent.parent / "_circuits",)


def shipped_circuits() -> list[str]:
    """Names of the circuits shipped in ``circuits/``: ``['attn-only-4l/docstring', ...]``."""
    names = set()
    for root in CIRCUIT_DIRS:
        if root.is_dir():
            names |= {p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.json")}
    return sorted(names)


def resolve_circuit(name_or_path: str | os.PathLike[str]) -> Path:
    """The file of a shipped circuit name or a path (``CircuitFormatError`` if neither)."""
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

    The circuit is checked against the model its file names when that model is known, and
    against ``model`` (a ``Model`` or ``ModelShape``) when given: ``ShapeMismatchError``
    naming the circuit's model and the mismatch.
    """
    path = resolve_circuit(name_or_path)
    try:
        raw = path.read_bytes()
    except (OSError, ValueError) as e:
        raise CircuitFormatError(
            f"{path}: cannot read ({getattr(e, 'strerror', None) or e})", fix="check the path"
        ) from None
    return loads_circuit(raw, file=str(path), model=model)


def loads_circuit(text: str | bytes, *, file: str | None = None, model: Any = None) -> Circuit:
    """Parse circuit JSON text (what :func:`load_circuit` does after reading the file)."""
    return Circuit.from_dict(loads_json(text, file or "<circuit>"), file=file, model=model)
