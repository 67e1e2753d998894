"""Mean difference (mass-mean probing; contrastive activation addition): the mean activation
over dataset ``a`` minus the mean over dataset ``b`` at a site, at chosen positions.

Rimsky et al.'s CAA takes it at the answer token of many A/B contrast pairs; Marks & Tegmark's
mass-mean direction is the same quantity over two labelled sets. The means are running float64
sums over a stream of forwards, so the data may be any size (a generator of token batches).

Example:
    >>> import circuitsteer as cs
    >>> m = cs.load_model("toy-ioi")                                          # doctest: +SKIP
    >>> task = cs.tasks.sentiment(m, n=200)   # clean: positive, corrupted: negative  # doctest: +SKIP
    >>> v = cs.vectors.mean_difference(m, "resid_pre.2", task, positions="END")  # doctest: +SKIP
    >>> steer = v.intervention(coef=4.0, positions="all")                     # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch

from circuitsteer.vectors._site import canonical, model_ref
from circuitsteer.vectors.collect import Positions, describe, describe_positions, split_pair, stream
from circuitsteer.vectors.stats import RunningMean
from circuitsteer.vectors.steering_vector import SteeringVector


def vector_dtype(model: Any) -> torch.dtype:
    """float32, or float64 for a float64 model (float16/bfloat16 models get float32 vectors)."""
    return torch.float64 if getattr(model, "dtype", None) == torch.float64 else torch.float32


def mean_activation(
    model: Any,
    site: str,
    data: Any,
    positions: Positions = "END",
    exclude_first: bool = True,
    batch_size: int | None = None,
    max_bytes: int | None = None,
    progress: bool | None = None,
) -> tuple[torch.Tensor, int]:
    """``(mean [width] in float64, rows averaged)`` of the activations at ``site`` over ``data``."""
    site = canonical(site)
    acc = RunningMean()
    for ch in stream(
        model, data, site, positions, exclude_first, batch_size, max_bytes, progress, "mean"
    ):
        acc.update(ch.values[site])
    return acc.mean.cpu(), acc.n


def mean_difference(
    model: Any,
    site: str,
    a: Any,
    b: Any = None,
    positions: Positions = "END",
    exclude_first: bool = True,
    batch_size: int | None = None,
    max_bytes: int | None = None,
    progress: bool | None = None,
) -> SteeringVector:
    """``mean(act(a)) - mean(act(b))`` at ``site`` and ``positions``.

    ``a``, ``b``: data as in :mod:`circuitsteer.vectors.collect` (Tasks, token tensors, lists
    of strings, generators); ``b`` None with a Task ``a``: its clean minus its corrupted prompts
    (for ``cs.tasks.sentiment``: positive minus negative). Each mean is over every selected
    activation (``positions="all"``: every real token but the first). ``meta`` records the row
    counts and the norms of both means.

    >>> import torch, circuitsteer as cs
    >>> m = cs.random_gpt2(n_layers=2, n_heads=4, d_model=32)
    >>> a, b = torch.randint(0, 256, (4, 6)), torch.randint(0, 256, (5, 6))
    >>> v = mean_difference(m, "a1.h0", a, b, positions=-1)
    >>> v.width, v.meta["n_a"], v.meta["n_b"]
    (8, 4, 5)
    """
    site = canonical(site)
    a, b = split_pair(a, b)
    mean_a, n_a = mean_activation(
        model, site, a, positions, exclude_first, batch_size, max_bytes, progress
    )
    mean_b, n_b = mean_activation(
        model, site, b, positions, exclude_first, batch_size, max_bytes, progress
    )
    return SteeringVector(
        (mean_a - mean_b).to(vector_dtype(model)),
        site=site,
        model=model_ref(model),
        method="mean_difference",
        data={"a": describe(a), "b": describe(b)},
        positions=describe_positions(positions, exclude_first),
        meta={
            "n_a": n_a,
            "n_b": n_b,
            "norm_mean_a": float(mean_a.norm()),
            "norm_mean_b": float(mean_b.norm()),
        },
    )
