"""The loss a discovery method measures: one number per example, lower = closer to the clean
model.

* ``"kl"``: KL(clean || new) of the next-token distributions at each example's ``END``
  (ACDC's metric; 0 on the clean model).
* ``"logit_diff"``: the negated logit difference logit(correct) - logit(incorrect) at ``END``
  (ACDC's alternative; EAP's usual metric).
* a callable ``f(logits, task) -> [batch]`` tensor: used as given (lower = better), e.g.
  ``lambda lg, t: -cs.metrics.prob_diff(lg, t)``. Anything but one float per example raises
  :class:`~circuitsteer.discovery.DiscoveryError`.

Example:
    >>> import torch, circuitsteer as cs
    >>> m = cs.load_model("toy-ioi")                   # doctest: +SKIP
    >>> task = cs.tasks.ioi(m, n=4)                    # doctest: +SKIP
    >>> met = make_metric("kl", m, task)               # doctest: +SKIP
    >>> met(met.clean_logits).abs().max().item()       # doctest: +SKIP
    0.0
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from circuitsteer import metrics
from circuitsteer.discovery._common import DiscoveryError

METRICS = ("kl", "logit_diff")


@dataclass
class Metric:
    """A per-example loss bound to a task (and, for KL, to the clean logits at END). The clean
    forward runs once, when first needed (KL, or :meth:`clean_value`)."""

    name: str
    task: Any
    fn: Callable[..., Any]
    model: Any
    end_only: bool = False  # reads only the END logits (the built-in metrics): see _grads
    _clean: torch.Tensor | None = None

    @property
    def clean_logits(self) -> torch.Tensor:
        """``[batch, pos, vocab]`` of the clean forward."""
        out = self._clean
        if out is None:
            with torch.no_grad():
                out = self._clean = self.model(self.task.clean)
        return out

    def __call__(self, logits: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """Per-example loss ``[b]`` of ``logits`` (the task's rows ``rows``, default all)."""
        task = self.task if rows is None else _rows(self.task, rows)
        out = self.fn(logits, task) if self.name != "kl" else self._kl(logits, task, rows)
        return check_per_example(out, logits.shape[0], self.name)

    def _kl(self, logits: torch.Tensor, task: Any, rows: slice | None) -> torch.Tensor:
        end = metrics.end_logits(self.clean_logits, self.task)
        ref = end if rows is None else end[rows]
        return metrics.kl_div(ref.to(logits.device), metrics.end_logits(logits, task))

    def subset(self, idx: torch.Tensor, task: Any = None) -> Metric:
        """This metric on the task's rows ``idx`` (``Task.subset``: trimmed to their longest
        row; ``task``: that subset if the caller has it), reusing the clean logits if they were
        computed."""
        sub = self.task.subset(idx) if task is None else task
        clean = self._clean
        if clean is not None:
            clean = clean[idx.to(clean.device), : sub.clean.shape[1]]
        return Metric(self.name, sub, self.fn, self.model, self.end_only, clean)

    def clean_value(self) -> float:
        return float(self(self.clean_logits).mean())


def _rows(task: Any, rows: slice) -> Any:
    if rows == slice(0, len(task)):
        return task
    return task.subset(rows)


def check_per_example(out: Any, batch: int, name: str) -> torch.Tensor:
    """``out`` must be a float tensor of shape ``[batch]``."""
    if not isinstance(out, torch.Tensor) or out.shape != (batch,) or not out.is_floating_point():
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise DiscoveryError(
            f"metric {name!r} must return one float per example (shape ({batch},)), got {got}",
            fix="return a [batch] tensor, e.g. cs.metrics.logit_diff(logits, task); "
            "aggregate over examples is discovery's job",
        )
    return out


def make_metric(metric: Any, model: Any, task: Any, check: bool = True) -> Metric:
    """Bind ``metric`` ("kl", "logit_diff" or a callable) to ``task``. ``check``: run the clean
    forward now and check the metric gives one number per example there (else the first use
    checks it)."""
    if callable(metric):
        name, fn = getattr(metric, "__name__", "custom"), metric
    elif metric == "logit_diff":
        name, fn = "logit_diff", lambda lg, t: -metrics.logit_diff(lg, t)
    elif metric == "kl":
        name, fn = "kl", None
    else:
        raise DiscoveryError(
            f"unknown metric {metric!r}", fix=f"use one of {METRICS} or a callable(logits, task)"
        )
    m = Metric(name, task, fn or (lambda lg, t: lg), model, end_only=not callable(metric))
    if check:
        m(m.clean_logits)  # raises DiscoveryError unless one float per example
    return m
