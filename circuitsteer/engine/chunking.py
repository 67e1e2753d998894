"""Splitting work into forwards that fit a memory budget, and the progress bar for long work.

A forward's peak memory grows with its rows (batch) times the sequence length: logits
``[rows, pos, vocab]``, attention scores ``[rows, heads, pos, pos]``, MLP activations and a few
residual-sized buffers. :func:`rows_per_forward` turns a byte budget into a row count from the
model's shape, so ``engine.run``/``run_variants`` (and the reference runs behind mean/resample
ablation) never send more rows at once than fit, whatever the number of prompts.

The budget is ``max_bytes`` when given, else the environment variable
``CIRCUITSTEER_MAX_BYTES``, else 1 GiB. ``CIRCUITSTEER_QUIET=1`` turns progress bars off
everywhere (``progress=False`` per call).

Example:
    >>> import circuitsteer as cs
    >>> m = cs.random_gpt2()
    >>> rows_per_forward(m, seq=16, max_bytes=2**20) < rows_per_forward(m, seq=16, max_bytes=2**30)
    True
    >>> spans(10, 4)
    [(0, 4), (4, 8), (8, 10)]
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from circuitsteer.errors import InterventionError

DEFAULT_MAX_BYTES = 2**30
T = TypeVar("T")


def budget(max_bytes: int | None = None) -> int:
    """The memory budget per forward in bytes (argument, ``CIRCUITSTEER_MAX_BYTES``, 1 GiB)."""
    if max_bytes is None:
        env = os.environ.get("CIRCUITSTEER_MAX_BYTES")
        try:
            max_bytes = int(float(env)) if env else DEFAULT_MAX_BYTES
        except ValueError as e:
            raise InterventionError(
                f"CIRCUITSTEER_MAX_BYTES={env!r} is not a number of bytes",
                fix="set it to an integer such as 2000000000, or unset it",
            ) from e
    if max_bytes <= 0:
        raise InterventionError(
            f"max_bytes must be positive, got {max_bytes}", fix="pass a budget such as 2**30"
        )
    return max_bytes


def bytes_per_row(model: Any, seq: int, grad: bool = False) -> int:
    """A generous estimate of one row's peak forward memory (a row = one prompt of ``seq``
    tokens). With ``grad`` every layer's activations stay alive for the backward pass."""
    s = model.shape
    item = getattr(model.dtype, "itemsize", 4)
    per_layer = 3 * s.n_heads * seq + 3 * s.d_mlp + 12 * s.d_model
    live = per_layer * (s.n_layers if grad else 1)
    return item * seq * (2 * s.d_vocab + live)


def rows_per_forward(
    model: Any,
    seq: int,
    max_batch: int | None = None,
    max_bytes: int | None = None,
    grad: bool = False,
) -> int:
    """Rows one forward may take: at most ``max_batch`` and within the byte budget (>= 1)."""
    rows = max(1, budget(max_bytes) // max(1, bytes_per_row(model, seq, grad)))
    return max(1, min(rows, max_batch)) if max_batch is not None else rows


def spans(n: int, size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` chunks of ``range(n)`` of at most ``size``."""
    return [(a, min(a + size, n)) for a in range(0, n, max(1, size))]


def quiet() -> bool:
    return os.environ.get("CIRCUITSTEER_QUIET", "").strip().lower() not in ("", "0", "false", "no")


def progress(items: Iterable[T], total: int, desc: str, enabled: bool | None = None) -> Iterator[T]:
    """Iterate with a progress bar that appears only when the work lasts over ~2 s and there is
    more than one step. ``enabled`` False (or ``CIRCUITSTEER_QUIET``) hides it."""
    if enabled is False or total <= 1 or (enabled is None and quiet()):
        yield from items
        return
    from tqdm.auto import tqdm

    yield from tqdm(items, total=total, desc=desc, delay=2.0, leave=False, file=sys.stderr)
