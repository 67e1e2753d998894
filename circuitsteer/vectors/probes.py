"""Per-head linear probes and Inference-Time Intervention (Li et al. 2023).

:func:`probe_heads` collects every head's ``z`` (its own d_head space, before W_O) at the chosen
positions for two classes of data (``a`` = label 1, ``b`` = label 0), splits the *examples* into
train and held-out sets (a contrast pair stays on one side, and so do all positions of one
prompt), fits one L2-regularized logistic regression per head on the train set and scores it on
the held-out set. For each head it also keeps a unit direction, the **mass mean** (train mean of
``a`` minus train mean of ``b``; ITI's best) or the **probe** weights, oriented towards ``a``, and
``sigma``, the standard deviation of all the head's activations (both classes, both splits)
projected on that direction, as ITI computes it.

:meth:`HeadProbes.interventions` turns the top-K heads by held-out accuracy into ITI's edit with
one call: ``alpha * sigma * direction`` added to each chosen head's ``z`` at every position
(ITI's defaults: K=48, alpha=15; K is capped at the number of heads probed).

The probes: logistic regression on features standardized with the train set's mean and std,
penalty ``||w||^2 / (2 C n_train)`` on the weights (not the bias), i.e. scikit-learn's
``LogisticRegression(C=1.0)`` objective divided by n (ITI used scikit-learn on raw features;
standardizing only rescales the penalty per feature). All heads are fitted at once by Newton's
method with a backtracking line search, in float64, deterministic.

Example:
    >>> import circuitsteer as cs
    >>> m = cs.load_model("toy-ioi")                                   # doctest: +SKIP
    >>> task = cs.tasks.sentiment(m, n=300, polarity="mixed")          # doctest: +SKIP
    >>> probes = cs.vectors.probe_heads(m, task, positions="END")      # doctest: +SKIP
    >>> probes.table.sort_values("rank").head()                        # doctest: +SKIP
    >>> ivs = probes.interventions(k=8, alpha=5.0)                      # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from circuitsteer.interventions import Add
from circuitsteer.nodes import all_heads, validate_node
from circuitsteer.vectors._site import model_ref
from circuitsteer.vectors.collect import (
    Positions,
    collect,
    describe,
    describe_positions,
    split_pair,
)
from circuitsteer.vectors.errors import VectorError
from circuitsteer.vectors.mean_diff import vector_dtype
from circuitsteer.vectors.steering_vector import SteeringVector

DIRECTIONS = ("mass_mean", "probe")


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, l2: float, steps: int = 100, tol: float = 1e-10
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit ``H`` independent logistic regressions at once: ``x`` ``[H, N, d]``, labels ``y``
    ``[N]`` in {0, 1}; minimizes ``mean(log(1 + e^z) - y z) + l2/2 ||w||^2`` with ``z = x w + b``.
    Returns ``(w [H, d], b [H])`` in float64.

    >>> x = torch.tensor([[[0.0], [1.0], [2.0], [3.0]]], dtype=torch.float64)
    >>> w, b = fit_logistic(x, torch.tensor([0.0, 0.0, 1.0, 1.0]), l2=0.1)
    >>> bool(w[0, 0] > 0), round(float(-b[0] / w[0, 0]), 6)   # boundary halfway, at 1.5
    (True, 1.5)
    """
    x = x.to(torch.float64)
    y = y.to(x)
    H, N, d = x.shape
    xb = torch.cat([x, torch.ones(H, N, 1, dtype=x.dtype, device=x.device)], dim=2)
    reg = torch.full((d + 1,), float(l2), dtype=x.dtype, device=x.device)
    reg[-1] = 0.0
    w = torch.zeros(H, d + 1, dtype=x.dtype, device=x.device)
    ridge = 1e-10 * torch.eye(d + 1, dtype=x.dtype, device=x.device)
    ts = 0.5 ** torch.arange(0, 30, dtype=x.dtype, device=x.device)  # step sizes to try

    def loss(wt: torch.Tensor) -> torch.Tensor:  # wt [..., H, d+1] -> [..., H]
        z = torch.einsum("hnd,...hd->...hn", xb, wt)
        data = (torch.nn.functional.softplus(z) - y * z).mean(-1)
        return data + 0.5 * (reg * wt**2).sum(-1)

    for _ in range(steps):
        z = torch.einsum("hnd,hd->hn", xb, w)
        p = torch.sigmoid(z)
        g = torch.einsum("hnd,hn->hd", xb, p - y) / N + reg * w
        s = p * (1 - p)
        hess = torch.einsum("hnd,hn,hne->hde", xb, s, xb) / N + torch.diag(reg) + ridge
        step = torch.linalg.solve(hess, g)
        cur = loss(w)
        trial = loss(w[None] - ts[:, None, None] * step[None])  # [T, H]
        ok = trial <= cur[None] - 1e-4 * ts[:, None] * (g * step).sum(-1)[None]
        first = torch.where(ok.any(0), ok.float().argmax(0), torch.full_like(cur, len(ts)).long())
        t = torch.cat([ts, ts.new_zeros(1)])[first]  # no acceptable step: stay
        delta = t[:, None] * step
        w = w - delta
        if float(delta.abs().max()) < tol:
            break
    return w[:, :d], w[:, d]


@dataclass(frozen=True)
class HeadProbes:
    """Probe results for every head: ``table`` (one row per head: ``node``, ``layer``, ``head``,
    ``train_accuracy``, ``val_accuracy``, ``sigma``, ``rank`` (1 = best held-out accuracy;
    ties: higher train accuracy, then earlier head), ``n_train``, ``n_val``, and the run's
    parameters), unit ``directions`` per head (``[d_head]``, towards ``a``) and ``sigmas``."""

    table: pd.DataFrame
    directions: dict[str, torch.Tensor]
    sigmas: dict[str, float]
    direction: str
    model: dict[str, Any]
    data: Any
    positions: Any
    seed: int
    dtype: torch.dtype = torch.float32

    def top(self, k: int) -> list[str]:
        """The ``k`` best heads by held-out accuracy (fewer if fewer were probed)."""
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise VectorError(f"k must be a positive int, got {k!r}", fix="pass e.g. k=8")
        return self.table.sort_values("rank")["node"].head(k).tolist()

    def vector(self, head: str) -> SteeringVector:
        """``sigma * direction`` of ``head`` as a SteeringVector at the head's z."""
        if head not in self.directions:
            raise VectorError(f"head {head!r} was not probed", fix="use a head in probes.table")
        row = self.table.set_index("node").loc[head]
        return SteeringVector(
            (self.directions[head] * self.sigmas[head]).to(self.dtype),
            site=head,
            model=self.model,
            method=f"probe_{self.direction}",
            data=self.data,
            positions=self.positions,
            seed=self.seed,
            meta={
                "sigma": self.sigmas[head],
                "val_accuracy": float(row["val_accuracy"]),
                "train_accuracy": float(row["train_accuracy"]),
                "rank": int(row["rank"]),
                "direction": self.direction,
            },
        )

    def vectors(self, k: int | None = None) -> list[SteeringVector]:
        """``sigma * direction`` for the top ``k`` heads (all heads when None), best first."""
        heads = self.top(k) if k is not None else self.top(len(self.table))
        return [self.vector(h) for h in heads]

    def interventions(
        self, k: int = 48, alpha: float = 15.0, positions: Positions = "all"
    ) -> list[Add]:
        """ITI: ``Add(Site(head, positions), sigma * direction, coef=alpha, space="z")`` for each
        of the top ``k`` heads."""
        return [v.intervention(alpha, positions) for v in self.vectors(k)]


def _split(n_examples: int, val_frac: float, seed: int) -> torch.Tensor:
    """Boolean ``[n_examples]``: True for held-out examples (a seeded random ``val_frac``)."""
    if not 0.0 < val_frac < 1.0:
        raise VectorError(f"val_frac must be in (0, 1), got {val_frac}", fix="pass e.g. 0.3")
    n_val = min(n_examples - 1, max(1, round(val_frac * n_examples)))
    if n_examples < 2:
        raise VectorError(
            "probes need at least 2 examples (train and held-out)", fix="pass more data"
        )
    g = torch.Generator().manual_seed(seed)
    val = torch.zeros(n_examples, dtype=torch.bool)
    val[torch.randperm(n_examples, generator=g)[:n_val]] = True
    return val


def _heads(model: Any, heads: str | Sequence[str] | None) -> list[str]:
    names = (
        all_heads(model.shape)
        if heads is None
        else [heads]
        if isinstance(heads, str)
        else list(heads)
    )
    if not names:
        raise VectorError("no heads given", fix="pass head names such as ['a1.h2'], or None")
    for h in names:
        if validate_node(h, model.shape).kind != "head":
            raise VectorError(f"{h!r} is not an attention head", fix="name heads as 'a{L}.h{H}'")
    return names


def probe_heads(
    model: Any,
    a: Any,
    b: Any = None,
    positions: Positions = "END",
    heads: str | Sequence[str] | None = None,
    direction: str = "mass_mean",
    val_frac: float = 0.3,
    seed: int = 0,
    C: float = 1.0,
    shuffle_labels: bool = False,
    exclude_first: bool = True,
    batch_size: int | None = None,
    max_bytes: int | None = None,
    progress: bool | None = None,
) -> HeadProbes:
    """Probe every head (or ``heads``) for ``a`` (label 1) vs ``b`` (label 0); see the module
    docstring. ``b`` None with a Task ``a``: its clean vs corrupted prompts (contrast pairs).
    ``shuffle_labels=True`` permutes the labels (seeded) before the split: the control, whose
    held-out accuracy should sit at chance."""
    if direction not in DIRECTIONS:
        raise VectorError(f"unknown direction {direction!r}", fix=f"use one of {DIRECTIONS}")
    if not C > 0:
        raise VectorError(f"C must be positive, got {C}", fix="pass e.g. C=1.0")
    names = _heads(model, heads)
    a, b = split_pair(a, b)
    ca = collect(model, a, names, positions, exclude_first, batch_size, max_bytes, progress)
    cb = collect(model, b, names, positions, exclude_first, batch_size, max_bytes, progress)
    if len(ca) == 0 or len(cb) == 0:
        raise VectorError("a class has no activations", fix="check the data and positions")
    x = torch.stack(
        [torch.cat([ca.values[h], cb.values[h]]).to(torch.float64) for h in names]
    )  # [H, N, d]
    y = torch.cat([torch.ones(len(ca)), torch.zeros(len(cb))]).to(torch.float64)
    example = torch.cat([ca.example, cb.example])
    g = torch.Generator().manual_seed(seed + 1)
    if shuffle_labels:
        y = y[torch.randperm(len(y), generator=g)]
    val = _split(int(example.max()) + 1, val_frac, seed)[example]
    tr = ~val
    if y[tr].min() == y[tr].max():
        raise VectorError("the train split has one class only", fix="pass more data per class")
    xt = x[:, tr]
    mu, sd = xt.mean(1, keepdim=True), xt.std(1, keepdim=True)
    sd = torch.where(sd > 1e-12, sd, torch.ones_like(sd))
    n_train = int(tr.sum())
    w, bias = fit_logistic((xt - mu) / sd, y[tr], l2=1.0 / (C * n_train))

    def accuracy(mask: torch.Tensor) -> torch.Tensor:
        z = torch.einsum("hnd,hd->hn", (x[:, mask] - mu) / sd, w) + bias[:, None]
        return ((z > 0).to(torch.float64) == y[mask]).to(torch.float64).mean(1)

    acc_tr, acc_val = accuracy(tr), accuracy(val)
    if direction == "mass_mean":
        d = xt[:, y[tr] == 1].mean(1) - xt[:, y[tr] == 0].mean(1)
    else:
        d = w / sd.squeeze(1)  # the probe's weights in the raw activation space
    unit = d / d.norm(dim=1, keepdim=True).clamp_min(1e-300)
    sigma = torch.einsum("hnd,hd->hn", x, unit).std(1, correction=0)
    rows = []
    for i, h in enumerate(names):
        node = validate_node(h, model.shape)
        rows.append({
            "node": h, "layer": node.layer, "head": node.head,
            "train_accuracy": float(acc_tr[i]), "val_accuracy": float(acc_val[i]),
            "sigma": float(sigma[i]), "direction": direction,
            "n_train": n_train, "n_val": int(val.sum()), "shuffled": shuffle_labels,
            "seed": seed,
        })  # fmt: skip
    table = pd.DataFrame(rows)
    order = table.sort_values(
        ["val_accuracy", "train_accuracy", "layer", "head"],
        ascending=[False, False, True, True],
        kind="mergesort",
    ).index
    table.loc[order, "rank"] = range(1, len(table) + 1)
    table["rank"] = table["rank"].astype(int)
    return HeadProbes(
        table=table,
        directions={h: unit[i].cpu() for i, h in enumerate(names)},
        sigmas={h: float(sigma[i]) for i, h in enumerate(names)},
        direction=direction,
        model=model_ref(model),
        data={"a": describe(a), "b": describe(b), "shuffled_labels": shuffle_labels},
        positions=describe_positions(positions, exclude_first),
        seed=seed,
        dtype=vector_dtype(model),
    )
