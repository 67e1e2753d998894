"""Metrics against hand computations."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from circuitsteer import metrics
from circuitsteer.errors import ShapeMismatchError, TaskError
from circuitsteer.tasks import Task


def _task(end=(2, 1), correct=(3, 0), incorrect=(1, 2), candidates=None, mask=None) -> Task:
    b = len(end)
    toks = torch.zeros(b, 3, dtype=torch.long)
    return Task(
        name="hand", clean=toks, corrupted=toks, positions={"END": torch.tensor(end)},
        correct=torch.tensor(correct), incorrect=torch.tensor(incorrect),
        lengths=torch.tensor([e + 1 for e in end]), prompts=[""] * b, corrupted_prompts=[""] * b,
        meta=pd.DataFrame(index=range(b)), candidates=candidates, correct_mask=mask,
    )  # fmt: skip


def _logits() -> torch.Tensor:
    x = torch.zeros(2, 3, 4)
    x[0, 2] = torch.tensor([0.0, 1.0, 2.0, 5.0])  # example 0, END = 2
    x[1, 1] = torch.tensor([4.0, 0.0, 6.0, 1.0])  # example 1, END = 1
    x[1, 2] = 100.0  # past END: must be ignored
    return x


def test_logit_diff_and_accuracy():
    t = _task()
    ld = metrics.logit_diff(_logits(), t)
    assert ld.tolist() == [5.0 - 1.0, 4.0 - 6.0]
    assert metrics.accuracy(_logits(), t).tolist() == [1.0, 0.0]
    # logits already at END, and K stacked variants (variant-major)
    e = metrics.end_logits(_logits(), t)
    assert torch.equal(metrics.logit_diff(e, t), ld)
    stacked = torch.cat([_logits(), 2 * _logits()])
    assert metrics.logit_diff(stacked, t).tolist() == [4.0, -2.0, 8.0, -4.0]
    with pytest.raises(ShapeMismatchError):
        metrics.logit_diff(torch.zeros(3, 3, 4), t)


def test_prob_diff_by_hand():
    cands = torch.tensor([0, 2, 3])
    mask = torch.tensor([[False, True, True], [True, False, False]])
    t = _task(candidates=cands, mask=mask)
    x = _logits()
    p0 = torch.softmax(x[0, 2], -1)
    p1 = torch.softmax(x[1, 1], -1)
    want = [(p0[2] + p0[3] - p0[0]).item(), (p1[0] - p1[2] - p1[3]).item()]
    assert metrics.prob_diff(x, t).tolist() == pytest.approx(want, abs=1e-6)
    with pytest.raises(TaskError, match="no candidate answer set"):
        metrics.prob_diff(x, _task())


def test_loss_by_hand():
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0], [5.0, 5.0]]])  # [1, 3, 2]
    tokens = torch.tensor([[0, 1, 0]])
    # position 0 predicts token 1: p = 3/4; position 1 predicts token 0: p = 1/2
    full = -(math.log(0.75) + math.log(0.5)) / 2
    assert metrics.loss(logits, tokens).item() == pytest.approx(full)
    # length 2: only the first target is real
    assert metrics.loss(logits, tokens, torch.tensor([2])).item() == pytest.approx(-math.log(0.75))
    with pytest.raises(ShapeMismatchError):
        metrics.loss(logits, tokens[:, :2])


def test_kl_by_hand():
    ref = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]]]))
    new = torch.log(torch.tensor([[[0.25, 0.75], [0.9, 0.1]]]))
    kl0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert metrics.kl_div(ref, new).item() == pytest.approx(kl0 / 2, abs=1e-6)
    mask = torch.tensor([[True, False]])
    assert metrics.kl_div(ref, new, mask).item() == pytest.approx(kl0, abs=1e-6)
    assert metrics.kl_div(ref[:, 0], new[:, 0]).item() == pytest.approx(kl0, abs=1e-6)
    assert metrics.kl_div(ref, ref).abs().max().item() < 1e-7
    with pytest.raises(ShapeMismatchError):
        metrics.kl_div(ref, new[:, :1])


def test_metrics_on_a_real_task():
    from circuitsteer.tasks import ioi
    from circuitsteer.zoo.tokenizer import toy_tokenizer

    tok = toy_tokenizer()
    t = ioi(tok, n=8, seed=0)
    logits = torch.randn(8, t.clean.shape[1], len(tok))
    ar = torch.arange(len(t))
    end = logits[ar, t.positions["END"]]
    assert torch.allclose(metrics.logit_diff(logits, t), end[ar, t.correct] - end[ar, t.incorrect])
    per_ex = metrics.loss(logits, t.clean, t.lengths)
    for i in range(len(t)):
        n = int(t.lengths[i])
        ce = torch.nn.functional.cross_entropy(logits[i, : n - 1], t.clean[i, 1:n])
        assert per_ex[i].item() == pytest.approx(ce.item(), rel=1e-5)
    kl = metrics.kl_div(logits, logits + torch.randn_like(logits), t.real_mask())
    assert kl.shape == (8,) and (kl > 0).all()
