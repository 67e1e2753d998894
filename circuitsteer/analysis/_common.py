"""Helpers the analysis modules share: argument checks, metrics by name, batching over a task."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from circuitsteer import metrics
from circuitsteer.errors import AnalysisError, PositionError
from circuitsteer.nodes import Node, all_heads, validate_node

Metric = Callable[[torch.Tensor, Any], torch.Tensor]
METRICS: dict[str, Metric] = {
    "logit_diff": metrics.logit_diff,
    "prob_diff": metrics.prob_diff,
    "accuracy": metrics.accuracy,
}


def resolve_metric(metric: str | Metric) -> tuple[str, Metric]:
    """``(name, fn)`` for a metric name or a callable ``(logits, task) -> [batch]``."""
    if isinstance(metric, str):
        if metric not in METRICS:
            raise AnalysisError(
                f"unknown metric {metric!r}",
                fix=f"use one of {', '.join(METRICS)}, or pass a function (logits, task) -> [batch]",
            )
        return metric, METRICS[metric]
    if callable(metric):
        return getattr(metric, "__name__", type(metric).__name__), metric
    raise AnalysisError(
        f"metric {metric!r} is neither a name nor a function", fix="pass 'logit_diff'"
    )


def head_nodes(model: Any, heads: str | Sequence[str] | None) -> list[Node]:
    """Parsed, validated heads; ``None`` means every head of the model."""
    names = (
        all_heads(model.shape)
        if heads is None
        else [heads]
        if isinstance(heads, str)
        else list(heads)
    )
    if not names:
        raise AnalysisError(
            "no heads given", fix="pass head names such as ['a1.h2'], or None for all heads"
        )
    out = []
    for name in names:
        node = validate_node(name, model.shape)  # NodeNameError / ShapeMismatchError
        if node.kind != "head":
            raise AnalysisError(
                f"{name!r} is not an attention head", fix="name heads as 'a{L}.h{H}'"
            )
        out.append(node)
    return out


def check_positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise AnalysisError(
            f"{name} must be a positive int, got {value!r}", fix=f"pass {name} >= 1"
        )
    return value


def chunks(n: int, batch: int) -> Iterator[slice]:
    check_positive("batch", batch)
    for start in range(0, n, batch):
        yield slice(start, min(n, start + batch))


def named_position(task: Any, name: str) -> torch.Tensor:
    """The task's per-example index for ``name``, checked to lie on real (unpadded) tokens."""
    positions = getattr(task, "positions", None) or {}
    if name not in positions:
        have = ", ".join(positions) or "none"
        raise PositionError(f"the task has no position {name!r}", fix=f"use one of: {have}")
    idx = positions[name].long()
    lengths = getattr(task, "lengths", None)
    if lengths is not None and bool((idx >= lengths.to(idx.device)).any()):
        raise PositionError(
            f"position {name!r} points at padding in some rows",
            fix="rebuild the task; named positions must be < each row's length",
        )
    return idx


@dataclass(frozen=True)
class Rows:
    """A slice of a task's examples with what the metrics need (positions, answers, tokens)."""

    clean: torch.Tensor
    corrupted: torch.Tensor | None
    positions: dict[str, torch.Tensor]
    correct: torch.Tensor
    incorrect: torch.Tensor

    def __len__(self) -> int:
        return self.clean.shape[0]


def rows(task: Any, sl: slice) -> Rows:
    corrupted = getattr(task, "corrupted", None)
    return Rows(
        clean=task.clean[sl],
        corrupted=None if corrupted is None else corrupted[sl],
        positions={k: v[sl] for k, v in task.positions.items()},
        correct=task.correct[sl],
        incorrect=task.incorrect[sl],
    )
