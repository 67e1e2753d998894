"""Reading importer input: Python objects as they are, JSON files, and pickles only when trusted.

A pickle runs code when it is loaded, so a pickle (by suffix or by its first byte) is refused
with ``UntrustedPickleError`` unless the caller passes ``trusted=True``.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

from circuitsteer.circuit._json import loads_json
from circuitsteer.errors import CircuitFormatError, UntrustedPickleError

PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth")


def read_input(
    source: Any, *, trusted: bool = False, what: str = "graph"
) -> tuple[Any, str | None]:
    """``(object, file name or None)`` for a path (JSON or pickle) or an in-memory object."""
    if not isinstance(source, str | os.PathLike):
        return source, None
    path = Path(source)
    try:
        raw = path.read_bytes()
    except (OSError, ValueError) as e:  # ValueError: e.g. a NUL byte in the path
        reason = getattr(e, "strerror", None) or str(e)
        raise CircuitFormatError(
            f"{str(path)!r}: cannot read the {what} ({reason})", fix="check the path"
        ) from None
    # protocol 2+ pickles start with 0x80; torch zip files with 'PK'
    looks_pickled = path.suffix in PICKLE_SUFFIXES or raw[:1] == b"\x80" or raw[:2] == b"PK"
    if not looks_pickled:
        return loads_json(raw, str(path)), str(path)
    if not trusted:
        raise UntrustedPickleError(
            f"{path} is a pickle; loading a pickle runs code stored in it",
            fix="pass trusted=True only for files you made or trust, or convert the "
            + what
            + " to JSON",
        )
    try:
        if raw[:2] == b"PK":
            import torch

            return torch.load(path, map_location="cpu", weights_only=False), str(path)
        return pickle.loads(raw), str(path)  # noqa: S301 - the caller vouched for it (trusted=True)
    except Exception as e:  # unpickling can raise anything, e.g. a missing class's module
        raise CircuitFormatError(
            f"{path}: cannot unpickle the {what} ({type(e).__name__}: {e})",
            fix="install the package whose classes the pickle holds (e.g. acdc), or export it as JSON",
        ) from None
