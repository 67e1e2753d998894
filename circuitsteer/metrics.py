"""Metrics: per example, tensors in, tensors out (aggregation is the caller's).

* task metrics at END: :func:`logit_diff`, :func:`prob_diff`, :func:`accuracy`,
  :func:`answer_loss` (cross-entropy of the answer), :func:`kl_at_end` (KL from the unmodified
  model's prediction);
* whole-sequence metrics (neutral text): :func:`loss`, :func:`kl_div`, :func:`top_token_change`;
* normalisation by the clean - corrupted gap: :func:`gap_fraction`, :func:`normalized`;
* :func:`bootstrap_ci`: a percentile bootstrap interval for the mean of any of these (or for a
  ratio of two means).

Task metrics read the logits at each example's ``END`` position. ``logits`` may be
``[batch, pos, vocab]`` (the full forward output) or ``[batch, vocab]`` (already at END).
The batch may also be K stacked copies of the task (``torch.cat`` of K variant batches,
variant-major, as ``engine.run_variants`` returns them): the result then has ``K * batch`` rows
in the same order.

Example:
    >>> import torch
    >>> from circuitsteer.tasks import ioi
    >>> from circuitsteer.zoo.tokenizer import toy_tokenizer
    >>> task = ioi(toy_tokenizer(), n=2, seed=0)
    >>> logits = torch.zeros(2, task.clean.shape[1], 484)
    >>> logit_diff(logits, task).tolist()
    [0.0, 0.0]
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from circuitsteer.errors import AnalysisError, ShapeMismatchError, TaskError


def _tile(t: torch.Tensor, k: int) -> torch.Tensor:
    return t if k == 1 else t.repeat(k, *([1] * (t.dim() - 1)))


def _copies(logits: torch.Tensor, task: Any) -> int:
    b, n = logits.shape[0], len(task)
    if b % n != 0:
        raise ShapeMismatchError(
            f"logits have batch {b}, not a multiple of the task's {n} examples",
            fix="pass the logits of a forward pass over task.clean or task.corrupted (or K stacked copies)",
        )
    return b // n


def end_logits(logits: torch.Tensor, task: Any) -> torch.Tensor:
    """Logits at each example's END position: ``[batch, vocab]``."""
    if logits.dim() == 2:
        _copies(logits, task)
        return logits
    if logits.dim() != 3:
        raise ShapeMismatchError(f"logits must be [batch, pos, vocab] or [batch, vocab], got {tuple(logits.shape)}",
                                 fix="pass the model's output logits")  # fmt: skip
    k = _copies(logits, task)
    end = _tile(task.positions["END"], k).to(logits.device)
    return logits[torch.arange(logits.shape[0], device=logits.device), end]


def _answer(t: torch.Tensor, k: int, device: torch.device) -> torch.Tensor:
    return _tile(t, k).to(device)[:, None]


def logit_diff(logits: torch.Tensor, task: Any) -> torch.Tensor:
    """logit(correct) - logit(incorrect) at END, per example: ``[batch]``.

    >>> import torch, types
    >>> class T(types.SimpleNamespace):  # any object with positions, answers and len() works
    ...     def __len__(self): return 1
    >>> t = T(positions={"END": torch.tensor([1])}, correct=torch.tensor([2]), incorrect=torch.tensor([0]))
    >>> logit_diff(torch.tensor([[[0., 0, 0], [1., 0, 3]]]), t).tolist()
    [2.0]
    """
    e = end_logits(logits, task)
    k = e.shape[0] // len(task)
    c = e.gather(1, _answer(task.correct, k, e.device))[:, 0]
    w = e.gather(1, _answer(task.incorrect, k, e.device))[:, 0]
    return c - w


def accuracy(logits: torch.Tensor, task: Any) -> torch.Tensor:
    """1.0 where logit(correct) > logit(incorrect) at END, else 0.0: ``[batch]`` floats."""
    return (logit_diff(logits, task) > 0).float()


def prob_diff(logits: torch.Tensor, task: Any) -> torch.Tensor:
    """sum p(candidates marked correct) - sum p(other candidates) at END: ``[batch]``.

    Probabilities are over the full vocabulary (Hanna et al.'s greater-than metric:
    sum_{y > YY} p(y) - sum_{y <= YY} p(y)). Needs ``task.candidates`` and ``task.correct_mask``.
    """
    if getattr(task, "candidates", None) is None or getattr(task, "correct_mask", None) is None:
        raise TaskError(
            f"task {getattr(task, 'name', '?')!r} has no candidate answer set",
            fix="use prob_diff with greater_than or sentiment tasks; use logit_diff otherwise",
        )
    e = end_logits(logits, task)
    k = e.shape[0] // len(task)
    p = torch.softmax(e.float(), dim=-1)[:, task.candidates.to(e.device)]
    mask = _tile(task.correct_mask, k).to(e.device)
    return (p * mask).sum(-1) - (p * ~mask).sum(-1)


def loss(
    logits: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean next-token cross-entropy per example over real positions: ``[batch]``.

    Position t predicts ``tokens[t + 1]``; with ``lengths`` only targets before each length count.

    >>> import torch, math
    >>> toks = torch.tensor([[0, 1, 1]])
    >>> round(loss(torch.zeros(1, 3, 4), toks).item(), 4) == round(math.log(4), 4)
    True
    """
    if logits.shape[:2] != tokens.shape:
        raise ShapeMismatchError(f"logits {tuple(logits.shape)} do not match tokens {tuple(tokens.shape)}",
                                 fix="pass the logits of a forward pass over these tokens")  # fmt: skip
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    tgt = tokens[:, 1:].to(lp.device)
    nll = -lp.gather(-1, tgt[..., None])[..., 0]
    if lengths is None:
        return nll.mean(-1)
    k = logits.shape[0] // lengths.shape[0] if lengths.shape[0] else 1
    real = _tile(lengths, k).to(lp.device)
    mask = torch.arange(1, tokens.shape[1], device=lp.device)[None, :] < real[:, None]
    return (nll * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def kl_div(
    logits_ref: torch.Tensor, logits_new: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """KL(ref || new) of the next-token distributions, averaged over (masked) positions: ``[batch]``.

    ``mask``: BoolTensor ``[batch, pos]`` (e.g. ``task.real_mask()``); True positions count.
    Also accepts ``[batch, vocab]`` logits (one position per example).

    >>> import torch
    >>> x = torch.randn(2, 3, 5)
    >>> kl_div(x, x).abs().max().item() < 1e-6
    True
    """
    if logits_ref.shape != logits_new.shape:
        raise ShapeMismatchError(f"logits shapes differ: {tuple(logits_ref.shape)} vs {tuple(logits_new.shape)}",
                                 fix="compare the outputs of two forward passes over the same tokens")  # fmt: skip
    ref = torch.log_softmax(logits_ref.float(), dim=-1)
    new = torch.log_softmax(logits_new.float(), dim=-1)
    kl = (ref.exp() * (ref - new)).sum(-1)
    if kl.dim() == 1:
        return kl
    if mask is None:
        return kl.mean(-1)
    if mask.shape[1] != kl.shape[1] or kl.shape[0] % mask.shape[0] != 0:
        raise ShapeMismatchError(f"mask {tuple(mask.shape)} does not fit logits {tuple(logits_ref.shape)}",
                                 fix="pass a [batch, pos] boolean mask, e.g. task.real_mask()")  # fmt: skip
    m = _tile(mask, kl.shape[0] // mask.shape[0]).to(kl.device).float()
    return (kl * m).sum(-1) / m.sum(-1).clamp(min=1)


def answer_loss(logits: torch.Tensor, task: Any) -> torch.Tensor:
    """Cross-entropy of the correct answer at END, ``-log p(correct)``, per example: ``[batch]``.

    >>> import torch, types, math
    >>> class T(types.SimpleNamespace):
    ...     def __len__(self): return 1
    >>> t = T(positions={"END": torch.tensor([0])}, correct=torch.tensor([1]), incorrect=torch.tensor([0]))
    >>> round(answer_loss(torch.zeros(1, 1, 4), t).item(), 4) == round(math.log(4), 4)
    True
    """
    e = end_logits(logits, task)
    k = e.shape[0] // len(task)
    lp = torch.log_softmax(e.float(), dim=-1)
    return -lp.gather(1, _answer(task.correct, k, e.device))[:, 0]


def kl_at_end(clean_logits: torch.Tensor, logits: torch.Tensor, task: Any) -> torch.Tensor:
    """KL(clean || new) of the next-token distribution at END, per example: ``[batch]``.

    ``clean_logits``: the unmodified model's logits on the task (``[batch, pos, vocab]`` or at END
    ``[batch, vocab]``); ``logits`` may hold K stacked copies (variant-major), compared each
    against the clean ones.

    >>> import torch, types
    >>> class T(types.SimpleNamespace):
    ...     def __len__(self): return 2
    >>> t = T(positions={"END": torch.tensor([1, 0])})
    >>> x = torch.randn(2, 2, 5)
    >>> kl_at_end(x, torch.cat([x, x]), t).abs().max().item() < 1e-6
    True
    """
    ref = end_logits(clean_logits, task)
    new = end_logits(logits, task)
    return kl_div(_tile(ref, new.shape[0] // ref.shape[0]), new)


def top_token_change(
    ref_logits: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Fraction of (masked) positions whose most likely next token differs from the reference's:
    ``[batch]``. ``mask``: BoolTensor ``[batch, pos]`` of the positions that count.

    >>> import torch
    >>> a = torch.tensor([[[1., 0], [0, 1]]])
    >>> top_token_change(a, a.flip(-1)).tolist(), top_token_change(a, a).tolist()
    ([1.0], [0.0])
    """
    if ref_logits.shape != logits.shape:
        raise ShapeMismatchError(f"logits shapes differ: {tuple(ref_logits.shape)} vs {tuple(logits.shape)}",
                                 fix="compare the outputs of two forward passes over the same tokens")  # fmt: skip
    changed = (ref_logits.argmax(-1) != logits.argmax(-1)).float()
    if changed.dim() == 1:
        return changed
    if mask is None:
        return changed.mean(-1)
    m = _tile(mask, changed.shape[0] // mask.shape[0]).to(changed.device).float()
    return (changed * m).sum(-1) / m.sum(-1).clamp(min=1)


def _mean(x: torch.Tensor | float) -> float:
    return float(x.float().mean()) if isinstance(x, torch.Tensor) else float(x)


def gap_fraction(
    values: torch.Tensor, clean: torch.Tensor | float, corrupted: torch.Tensor | float
) -> torch.Tensor:
    """The share of the clean - corrupted gap that an intervention removes, per example:
    ``(mean(clean) - values) / (mean(clean) - mean(corrupted))``: 0 = clean behaviour, 1 = the
    corrupted run's. The denominator is the gap of the means (per-example gaps can be ~0), so the
    mean of the result is the usual normalised number and a bootstrap of it is one of the mean.
    ``1 - gap_fraction`` is the normalised metric (1 = clean, 0 = corrupted; MIB's faithfulness).

    >>> import torch
    >>> gap_fraction(torch.tensor([3.0, 2.0, 1.0]), 3.0, 1.0).tolist()
    [0.0, 0.5, 1.0]
    """
    c, k = _mean(clean), _mean(corrupted)
    if c == k:
        return torch.full_like(values.float(), float("nan"))
    return (c - values.float()) / (c - k)


def normalized(
    values: torch.Tensor, clean: torch.Tensor | float, corrupted: torch.Tensor | float
) -> torch.Tensor:
    """``(values - mean(corrupted)) / (mean(clean) - mean(corrupted))``: 1 = clean, 0 = corrupted
    (``1 - gap_fraction``), per example.

    >>> import torch
    >>> normalized(torch.tensor([3.0, 1.0]), torch.tensor([3.0, 3.0]), 1.0).tolist()
    [1.0, 0.0]
    """
    return 1.0 - gap_fraction(values, clean, corrupted)


class CI(NamedTuple):
    """A mean and its bootstrap confidence interval (floats, or tensors for batched input)."""

    mean: Any
    lo: Any
    hi: Any


def bootstrap_ci(
    values: torch.Tensor,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    denominator: torch.Tensor | None = None,
) -> CI:
    """Percentile bootstrap confidence interval of the mean of per-example ``values``.

    ``values``: ``[n]`` (returns floats) or ``[R, n]`` (R rows over the same examples, each its
    own interval; returns ``[R]`` tensors; every row is resampled with the same draws, so
    differences between rows keep their pairing). ``denominator``: paired per-example values of
    the same shape: the interval is then of ``mean(values) / mean(denominator)`` (a ratio such as
    faithfulness, examples resampled together). Resamples are drawn with a CPU generator seeded
    with ``seed`` (the same seed gives the same interval).

    >>> import torch
    >>> ci = bootstrap_ci(torch.arange(100.0), seed=0)
    >>> ci.mean, ci.lo < 49.5 < ci.hi
    (49.5, True)
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise AnalysisError(f"n_boot must be a positive int, got {n_boot!r}", fix="pass e.g. n_boot=1000")  # fmt: skip
    if not 0.0 < level < 1.0:
        raise AnalysisError(f"level must be in (0, 1), got {level}", fix="pass e.g. level=0.95")  # fmt: skip
    x = values.detach().double().cpu()
    single = x.dim() == 1
    x = x[None] if single else x
    if x.dim() != 2 or x.shape[1] == 0:
        raise ShapeMismatchError(f"values must be [n] or [R, n] with n >= 1, got {tuple(values.shape)}",
                                 fix="pass per-example values")  # fmt: skip
    n = x.shape[1]
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n_boot, n), generator=g)
    counts = torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(
        1, idx, torch.ones(n_boot, n, dtype=torch.float64)
    )  # how often each example is drawn in each resample
    boot = x @ counts.T / n  # [R, n_boot] resampled means
    mean = x.mean(1)
    if denominator is not None:
        d = denominator.detach().double().cpu()
        d = d[None] if d.dim() == 1 else d
        if d.shape != x.shape:
            raise ShapeMismatchError(f"denominator {tuple(denominator.shape)} differs from values {tuple(values.shape)}",
                                     fix="pass paired per-example values of one shape")  # fmt: skip
        boot = boot / (d @ counts.T / n)
        mean = mean / d.mean(1)
    a = (1.0 - level) / 2
    q = torch.quantile(boot, torch.tensor([a, 1.0 - a], dtype=torch.float64), dim=1)
    if single:
        return CI(float(mean[0]), float(q[0, 0]), float(q[1, 0]))
    return CI(mean, q[0], q[1])
