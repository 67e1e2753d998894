"""Do the principal directions of a site steer anything? The PCA study.

The top-``k`` principal components of the activations at a site
(:func:`circuitsteer.vectors.pca`: centred, first token left out, fixed sign) are added one at a
time, with both signs and several coefficients, next to two controls of the same norm per
component: an isotropic random direction (:func:`circuitsteer.vectors.random_like`) and a
direction drawn from the activations' own covariance
(:func:`circuitsteer.vectors.random_from_covariance`; a "typical" direction of the distribution,
which is what a principal component is compared against). Coefficients are in units of the
component's standard deviation (``scale="std"``) or of a unit vector (``"unit"``).

For every added direction: the task metric (mean, change, bootstrap interval), the KL from the
unmodified model at END, and the tokens it promotes: the ``top_tokens`` with the largest mean
logit change at END over the task (``token|change`` pairs).

Example:
    >>> import circuitsteer as cs
    >>> from circuitsteer.zoo.tokenizer import toy_tokenizer
    >>> model = cs.random_gpt2(n_layers=2, n_heads=2, d_model=16, d_vocab=484, tokenizer=toy_tokenizer())
    >>> task = cs.tasks.ioi(model, n=6)
    >>> df = pca_study(model, task, "resid_pre.1", k=2, coefs=[1.0], progress=False)
    >>> sorted(set(df.vector)), sorted(set(df.coef))
    (['covariance', 'pc0', 'pc1', 'random'], [-1.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from circuitsteer import engine, metrics
from circuitsteer.analysis._rows import (
    TaskMetrics,
    frame,
    metric_names,
    model_name,
    positions_label,
    summary,
    task_name,
)
from circuitsteer.errors import AnalysisError
from circuitsteer.interventions import PositionSpec

CONTROLS = ("random", "covariance")


def pca_study(
    model: Any,
    task: Any,
    site: str,
    data: Any = None,
    k: int = 3,
    coefs: Sequence[float] = (1.0, 2.0, 4.0),
    positions: PositionSpec = "all",
    scale: str = "std",
    controls: Sequence[str] = CONTROLS,
    metric: Any = "logit_diff",
    top_tokens: int = 5,
    seed: int = 0,
    n_boot: int = 1000,
    max_batch: int = 256,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Add each of the top-``k`` principal directions at ``site`` (both signs, each ``coefs``
    magnitude) and the matched controls; measure the task and the promoted tokens.

    ``data``: what the PCA (and the covariance control) is computed on (default: the task's
    clean prompts; any data :func:`circuitsteer.vectors.pca` takes). ``positions``: where the
    directions are added. ``controls``: ``"random"`` and/or ``"covariance"`` (one draw per
    component, matched to its norm, seeded with ``seed + component``).

    Returns one row per (direction, signed coefficient, metric) with the common columns
    (``node`` = the site) and ``vector`` (``pc{i}``, ``random``, ``covariance``), ``component``,
    ``explained_variance_ratio``, ``vector_norm`` (of ``coef * direction``), ``effect,
    effect_lo, effect_hi, effect_std, n`` and ``top_tokens``.
    """
    from circuitsteer import vectors as V

    if scale not in ("std", "unit"):
        raise AnalysisError(f"unknown scale {scale!r}", fix="use 'std' or 'unit'")
    controls = [controls] if isinstance(controls, str) else list(controls)
    bad = [c for c in controls if c not in CONTROLS]
    if bad:
        raise AnalysisError(f"unknown controls {bad}", fix=f"use some of {', '.join(CONTROLS)}")
    data = task if data is None else data
    p = V.pca(model, site, data, n_components=k, progress=progress)
    moments = V.activation_moments(model, site, data, progress=progress) if "covariance" in controls else None  # fmt: skip
    dirs: list[tuple[str, int, float, Any]] = []  # label, component, explained ratio, vector
    for i in range(p.n_components):
        v = p.vector(i, scale=scale)
        ratio = float(p.explained_variance_ratio[i])
        dirs.append((f"pc{i}", i, ratio, v))
        if "random" in controls:
            dirs.append(("random", i, float("nan"), V.random_like(v, seed=seed + i)))
        if "covariance" in controls:
            assert moments is not None
            dirs.append(("covariance", i, float("nan"), V.random_from_covariance(moments, like=v, seed=seed + i)))  # fmt: skip
    signed = sorted({s * float(c) for c in coefs for s in (1.0, -1.0)})
    cases, variants = [], []
    for label, i, ratio, v in dirs:
        for c in signed:
            cases.append({"vector": label, "component": i, "explained_variance_ratio": ratio,
                          "coef": c, "vector_norm": abs(c) * v.norm})  # fmt: skip
            variants.append(v.interventions(coef=c, positions=positions, model=model))
    names = metric_names(
        [*([metric] if isinstance(metric, str) or callable(metric) else metric), "kl"]
    )
    clean_l, _ = engine.run(model, task)
    clean_end = metrics.end_logits(clean_l, task)
    measure = TaskMetrics(task, names, clean_end)
    m = len(names)

    def reduce(logits: torch.Tensor) -> torch.Tensor:
        """Per-example metrics, then the mean END logit change over the task, in one vector."""
        per = measure.full(logits)  # [n, m]
        delta = (metrics.end_logits(logits, task).float() - clean_end.float()).mean(0)
        return torch.cat([per.flatten(), delta])

    res = engine.run_variants(model, task, variants, max_batch=max_batch, reduce=reduce,
                              progress=progress)  # fmt: skip
    n = len(task)
    per_ex = res.logits[:, : n * m].reshape(len(variants), n, m)
    delta = res.logits[:, n * m :]
    clean = measure.full(clean_l)
    tops = [_top_tokens(model, d, top_tokens) for d in delta]
    rows = []
    for j, (name, _) in enumerate(names):
        for case, st, tok in zip(cases, summary(per_ex[:, :, j], clean[:, j], n_boot, seed), tops, strict=True):  # fmt: skip
            rows.append({**case, "metric": name, **st, "top_tokens": tok})
    return frame(rows, model=model_name(model), task=task_name(task), seed=seed, node=site,
                 operation="add", positions=positions_label(positions), scale=scale)  # fmt: skip


def _top_tokens(model: Any, delta: torch.Tensor, k: int) -> str:
    """``"tok|+1.23 tok|+0.98 ..."``: the ``k`` tokens whose logit rises most."""
    if k <= 0:
        return ""
    vals, ids = delta.topk(min(k, delta.shape[0]))
    strs = model.to_str_tokens(ids.tolist())
    return " ".join(
        f"{s.strip() or repr(s)}|{v:+.3g}" for s, v in zip(strs, vals.tolist(), strict=True)
    )
