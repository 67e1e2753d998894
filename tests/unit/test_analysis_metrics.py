"""The analysis layer's metrics (answer loss, KL at END, top-token change, gap normalisation,
bootstrap intervals) against hand computations and numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_metrics import _task  # the hand-made two-example task

from circuitsteer import metrics
from circuitsteer.errors import AnalysisError, ShapeMismatchError


def test_answer_loss_and_kl_at_end_by_hand():
    t = _task()
    x = torch.randn(2, 3, 4)
    lp0 = torch.log_softmax(x[0, 2], -1)
    lp1 = torch.log_softmax(x[1, 1], -1)
    assert metrics.answer_loss(x, t).tolist() == pytest.approx([-lp0[3].item(), -lp1[0].item()])
    y = torch.randn(2, 3, 4)
    q0, q1 = torch.log_softmax(y[0, 2], -1), torch.log_softmax(y[1, 1], -1)
    want = [float((lp0.exp() * (lp0 - q0)).sum()), float((lp1.exp() * (lp1 - q1)).sum())]
    assert metrics.kl_at_end(x, y, t).tolist() == pytest.approx(want, abs=1e-6)
    # K stacked variants are each compared with the one clean batch; identical logits give 0
    kl = metrics.kl_at_end(x, torch.cat([y, x]), t)
    assert kl[:2].tolist() == pytest.approx(want, abs=1e-6) and kl[2:].tolist() == [0.0, 0.0]


def test_top_token_change_counts_masked_positions():
    ref = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])
    new = torch.tensor([[[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]])
    assert metrics.top_token_change(ref, new).tolist() == pytest.approx([2 / 3])
    mask = torch.tensor([[True, True, False]])
    assert metrics.top_token_change(ref, new, mask).tolist() == [0.5]
    with pytest.raises(ShapeMismatchError):
        metrics.top_token_change(ref, new[:, :2])


def test_gap_fraction_uses_the_gap_of_the_means():
    clean = torch.tensor([4.0, 2.0])  # mean 3
    corrupted = torch.tensor([0.0, 2.0])  # mean 1
    v = torch.tensor([3.0, 1.0, 2.0])
    assert metrics.gap_fraction(v, clean, corrupted).tolist() == [0.0, 1.0, 0.5]
    assert metrics.normalized(v, clean, corrupted).tolist() == [1.0, 0.0, 0.5]
    assert math.isnan(metrics.gap_fraction(v, 1.0, 1.0)[0])


def test_bootstrap_ci_matches_a_numpy_percentile_bootstrap():
    x = torch.randn(50, dtype=torch.float64) + 2.0
    ci = metrics.bootstrap_ci(x, n_boot=2000, seed=3)
    # the same resamples drawn independently: torch's generator, numpy's percentiles
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(0, 50, (2000, 50), generator=g).numpy()
    means = x.numpy()[idx].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    assert ci.mean == pytest.approx(float(x.mean()))
    assert (ci.lo, ci.hi) == (pytest.approx(lo), pytest.approx(hi))
    # batched rows share the draws; a ratio resamples numerator and denominator together
    rows = metrics.bootstrap_ci(torch.stack([x, 2 * x]), n_boot=2000, seed=3)
    assert rows.lo[1].item() == pytest.approx(2 * ci.lo) and rows.hi[0].item() == pytest.approx(
        ci.hi
    )
    d = x + 1.0
    r = metrics.bootstrap_ci(x, n_boot=2000, seed=3, denominator=d)
    ratios = x.numpy()[idx].mean(1) / d.numpy()[idx].mean(1)
    assert r.mean == pytest.approx(float(x.mean() / d.mean()))
    assert (r.lo, r.hi) == (pytest.approx(np.percentile(ratios, 2.5)), pytest.approx(np.percentile(ratios, 97.5)))  # fmt: skip
    # a constant sample has a zero-width interval
    c = metrics.bootstrap_ci(torch.full((10,), 1.5))
    assert (c.mean, c.lo, c.hi) == (1.5, 1.5, 1.5)


def test_bootstrap_ci_errors():
    with pytest.raises(AnalysisError, match="n_boot"):
        metrics.bootstrap_ci(torch.ones(3), n_boot=0)
    with pytest.raises(AnalysisError, match="level"):
        metrics.bootstrap_ci(torch.ones(3), level=1.5)
    with pytest.raises(ShapeMismatchError):
        metrics.bootstrap_ci(torch.ones(3), denominator=torch.ones(4))
