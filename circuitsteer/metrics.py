"""Metrics: per example, tensors in, tensors out (aggregation is the caller's).

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

from typing import Any

import torch

from circuitsteer.errors import ShapeMismatchError, TaskError


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
