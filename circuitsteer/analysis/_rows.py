"""What the effect analyses share: the tidy columns, metrics computed per forward inside
``engine.run_variants``, and summaries of per-example values with bootstrap intervals.

Every result of :mod:`~circuitsteer.analysis.compare`, :mod:`~circuitsteer.analysis.effects`,
:mod:`~circuitsteer.analysis.sweep`, :mod:`~circuitsteer.analysis.faithfulness` and
:mod:`~circuitsteer.analysis.pca_study` starts with :data:`COLUMNS` (``model, task, seed, node,
operation, mode, coef, positions, metric, value``), one row per measured case, so tables from
different calls concatenate (``pd.concat``); each adds its own columns after them.

Example:
    >>> df = frame([{"node": "a0.h1", "metric": "logit_diff", "value": 1.5, "effect": -0.5}],
    ...            model="toy", task="ioi", seed=0, operation="ablate", mode="zero")
    >>> list(df.columns)[:10] == list(COLUMNS), float(df.loc[0, "effect"])
    (True, -0.5)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from circuitsteer import metrics
from circuitsteer.analysis._common import resolve_metric
from circuitsteer.errors import AnalysisError

COLUMNS = ("model", "task", "seed", "node", "operation", "mode", "coef", "positions", "metric", "value")  # fmt: skip


def positions_label(p: Any) -> str:
    """A position spec as a string column value: ``"all"``, ``"END"``, ``"S2,END"``, ``"3"``."""
    if p is None:
        return "all"
    if isinstance(p, (list, tuple)):
        return ",".join(positions_label(x) for x in p)
    if isinstance(p, slice):
        return f"{p.start}:{p.stop}" + (f":{p.step}" if p.step is not None else "")
    return str(p)


def frame(rows: Sequence[dict[str, Any]], **common: Any) -> pd.DataFrame:
    """A DataFrame with :data:`COLUMNS` first (filled from ``common`` where a row lacks them,
    else None), then the rows' other columns in first-seen order."""
    out = [{**{c: common.get(c) for c in COLUMNS}, **common, **r} for r in rows]
    extra = list(dict.fromkeys(k for r in out for k in r if k not in COLUMNS))
    df = pd.DataFrame(out, columns=[*COLUMNS, *extra])
    df["coef"] = pd.to_numeric(df["coef"], errors="coerce")  # None -> NaN, a float column
    for col in ("n", "n_kept", "n_units"):
        if col in df:
            df[col] = df[col].astype("Int64")
    return df


def model_name(model: Any) -> str:
    return str(getattr(model, "name", type(model).__name__))


def task_name(task: Any) -> str:
    return str(getattr(task, "name", type(task).__name__))


@dataclass(frozen=True)
class TaskRows:
    """The part of a task (rows ``sl``) a metric reads: positions, answers, candidate sets."""

    positions: dict[str, torch.Tensor]
    correct: torch.Tensor
    incorrect: torch.Tensor
    candidates: torch.Tensor | None
    correct_mask: torch.Tensor | None

    def __len__(self) -> int:
        return self.correct.shape[0]


def task_rows(task: Any, sl: slice) -> TaskRows:
    mask = getattr(task, "correct_mask", None)
    return TaskRows(
        positions={k: v[sl] for k, v in task.positions.items()},
        correct=task.correct[sl],
        incorrect=task.incorrect[sl],
        candidates=getattr(task, "candidates", None),
        correct_mask=None if mask is None else mask[sl],
    )


TASK_METRICS = ("logit_diff", "prob_diff", "accuracy", "answer_loss", "kl", "top_token_change")
_VS_CLEAN = ("kl", "top_token_change")  # compared with the unmodified model's END logits


def metric_names(metric: str | Callable | Sequence[str | Callable]) -> list[tuple[str, Any]]:
    """``[(name, fn)]`` for one metric or several. ``"answer_loss"`` is the answer's
    cross-entropy at END; ``"kl"`` the KL from the unmodified model at END and
    ``"top_token_change"`` whether the most likely token there changed (their ``fn`` is the
    name: :class:`TaskMetrics` computes them against the clean logits)."""
    items = [metric] if isinstance(metric, str) or callable(metric) else list(metric)
    if not items:
        raise AnalysisError("no metric given", fix="pass metric='logit_diff' or a list of names")
    out: list[tuple[str, Any]] = []
    for m in items:
        if m in _VS_CLEAN:
            out.append((str(m), m))
        elif m == "answer_loss":
            out.append(("answer_loss", metrics.answer_loss))
        else:
            try:
                out.append(resolve_metric(m))
            except AnalysisError as e:
                raise AnalysisError(
                    f"unknown metric {m!r}",
                    fix=f"use one of {', '.join(TASK_METRICS)}, or a function (logits, task) -> [batch]",
                ) from e
    return out


class TaskMetrics:
    """``reduce(logits, rows)`` for ``engine.run_variants``: the named metrics of each example
    of the forward's rows, ``[rows, n_metrics]`` (float32). ``clean_end``: the unmodified
    model's END logits ``[batch, vocab]`` (needed for ``"kl"``)."""

    def __init__(self, task: Any, names: list[tuple[str, Any]], clean_end: torch.Tensor | None):
        self.task, self.names, self.clean_end = task, names, clean_end
        if any(fn in _VS_CLEAN for _, fn in names) and clean_end is None:
            raise AnalysisError("metrics 'kl', 'top_token_change' need the clean END logits", fix="pass clean_end")  # fmt: skip

    def __call__(self, logits: torch.Tensor, rows: slice) -> torch.Tensor:
        part = task_rows(self.task, rows)
        cols = []
        for _, fn in self.names:
            if fn in _VS_CLEAN:
                assert self.clean_end is not None
                ref = self.clean_end[rows]
                if fn == "kl":
                    cols.append(metrics.kl_at_end(ref, logits, part))
                else:
                    cols.append(metrics.top_token_change(ref, metrics.end_logits(logits, part)))
            else:
                cols.append(fn(logits, part).float())
        return torch.stack([c.float().to(logits.device) for c in cols], dim=-1)

    def full(self, logits: torch.Tensor) -> torch.Tensor:
        """The metrics of a whole-task forward, ``[batch, n_metrics]``."""
        return self(logits, slice(0, len(self.task)))


def summary(
    values: torch.Tensor, clean: torch.Tensor, n_boot: int, seed: int, level: float = 0.95
) -> list[dict[str, float]]:
    """Per row of ``values`` ``[R, n]`` (per-example metric under R interventions): the mean, the
    effect ``mean(values - clean)`` and its bootstrap interval (pairs kept), the std and n."""
    v = values.detach().double().cpu()
    d = v - clean.detach().double().cpu()[None]
    ci = metrics.bootstrap_ci(d, n_boot=n_boot, level=level, seed=seed)
    n = v.shape[1]
    std = d.std(1) if n > 1 else torch.zeros(v.shape[0], dtype=torch.float64)
    return [
        {"value": float(v[r].mean()), "effect": float(ci.mean[r]), "effect_lo": float(ci.lo[r]),
         "effect_hi": float(ci.hi[r]), "effect_std": float(std[r]), "n": n}
        for r in range(v.shape[0])
    ]  # fmt: skip
