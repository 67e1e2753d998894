"""Running statistics in float64, so extraction over any amount of data keeps O(width^2) memory.

* :class:`RunningMean`: count and sum.
* :class:`RunningMoments`: count, mean and the centred scatter matrix
  ``M2 = sum (x - mean)(x - mean)^T``, merged batch by batch with Chan, Golub & LeVeque's
  pairwise update (numerically stable where the naive ``E[xx^T] - mean mean^T`` loses digits).
* :func:`activation_moments`: mean and covariance of a site's activations over data, streamed.

Example:
    >>> import torch
    >>> x = torch.randn(100, 3, dtype=torch.float64)
    >>> m = RunningMoments()
    >>> for part in x.split(7):
    ...     m.update(part)
    >>> torch.allclose(m.covariance(), torch.cov(x.T)), torch.allclose(m.mean, x.mean(0))
    (True, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from circuitsteer.vectors._site import canonical, model_ref
from circuitsteer.vectors.collect import (
    Positions,
    describe,
    describe_positions,
    split_pair,
    stream,
)
from circuitsteer.vectors.errors import VectorError


class RunningMean:
    """Mean of rows seen so far, accumulated in float64."""

    def __init__(self) -> None:
        self.n = 0
        self.total: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        if x.shape[0] == 0:
            return
        s = x.detach().to(torch.float64).sum(0)
        self.total = s if self.total is None else self.total + s
        self.n += x.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        if self.total is None:
            raise VectorError(
                "no activations were selected", fix="check the data and positions (none matched)"
            )
        return self.total / self.n


class RunningMoments:
    """Mean and centred scatter of rows seen so far (float64, Chan et al.'s merge)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean_: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        nb = x.shape[0]
        if nb == 0:
            return
        x = x.detach().to(torch.float64)
        mb = x.mean(0)
        xc = x - mb
        m2b = xc.T @ xc
        if self.mean_ is None or self.m2 is None:
            self.n, self.mean_, self.m2 = nb, mb, m2b
            return
        na, n = self.n, self.n + nb
        delta = mb - self.mean_
        self.mean_ = self.mean_ + delta * (nb / n)
        self.m2 = self.m2 + m2b + torch.outer(delta, delta) * (na * nb / n)
        self.n = n

    def _check(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mean_ is None or self.m2 is None:
            raise VectorError(
                "no activations were selected", fix="check the data and positions (none matched)"
            )
        return self.mean_, self.m2

    @property
    def mean(self) -> torch.Tensor:
        return self._check()[0]

    def covariance(self, ddof: int = 1) -> torch.Tensor:
        """``M2 / (n - ddof)`` (``ddof=1``: the unbiased sample covariance, as ``torch.cov``)."""
        _, m2 = self._check()
        if self.n - ddof <= 0:
            raise VectorError(
                f"a covariance needs more than {ddof} rows, got {self.n}", fix="pass more data"
            )
        return m2 / (self.n - ddof)

    def second_moment(self) -> torch.Tensor:
        """The uncentred ``E[x x^T]`` (divided by n)."""
        mean, m2 = self._check()
        return m2 / self.n + torch.outer(mean, mean)


@dataclass(frozen=True)
class ActivationMoments:
    """Mean ``[width]`` and covariance ``[width, width]`` (float64) of a site's activations."""

    site: str
    model: dict[str, Any]
    n: int
    mean: torch.Tensor
    covariance: torch.Tensor
    data: Any = None
    positions: Any = None


def activation_moments(
    model: Any,
    site: str,
    data: Any,
    positions: Positions = "all",
    exclude_first: bool = True,
    batch_size: int | None = None,
    max_bytes: int | None = None,
    progress: bool | None = None,
) -> ActivationMoments:
    """Mean and covariance of the activations at ``site`` over ``data``, streamed (see
    :mod:`circuitsteer.vectors.collect` for data and positions).

    >>> import torch, circuitsteer as cs
    >>> m = cs.random_gpt2(n_layers=2, n_heads=4, d_model=32)
    >>> mom = activation_moments(m, "m0", torch.randint(0, 256, (4, 6)))
    >>> mom.n, tuple(mom.covariance.shape)
    (20, (32, 32))
    """
    site = canonical(site)
    acc = RunningMoments()
    for ch in stream(
        model, data, site, positions, exclude_first, batch_size, max_bytes, progress, "moments"
    ):
        acc.update(ch.values[site])
    return ActivationMoments(
        site=site,
        model=model_ref(model),
        n=acc.n,
        mean=acc.mean,
        covariance=acc.covariance(),
        data=describe(data),
        positions=describe_positions(positions, exclude_first),
    )


def paired(
    model: Any,
    a: Any,
    b: Any,
    site: str,
    positions: Positions,
    exclude_first: bool,
    batch_size: int | None,
    max_bytes: int | None,
    progress: bool | None,
    desc: str,
):
    """Yield ``(acts_a, acts_b)`` chunk by chunk for paired data (row i of a with row i of b).

    ``b`` None and ``a`` a Task: the task's clean and corrupted prompts (contrast pairs)."""
    a, b = split_pair(a, b)
    sa = stream(model, a, site, positions, exclude_first, batch_size, max_bytes, progress, desc)
    sb = stream(model, b, site, positions, exclude_first, batch_size, max_bytes, False, desc)
    buf_b: list[tuple[torch.Tensor, torch.Tensor]] = []  # (values, example) not yet paired
    for ca in sa:
        k = ca.example.shape[0]
        while sum(e.shape[0] for _, e in buf_b) < k:
            nxt = next(sb, None)
            if nxt is None:
                raise _unpaired()
            buf_b.append((nxt.values[site], nxt.example))
        xb = torch.cat([v for v, _ in buf_b])
        eb = torch.cat([e for _, e in buf_b])
        if not torch.equal(eb[:k], ca.example):
            raise _unpaired()
        buf_b = [(xb[k:], eb[k:])] if xb.shape[0] > k else []
        yield ca.values[site], xb[:k]
    if buf_b or next(sb, None) is not None:
        raise _unpaired()


def _unpaired() -> VectorError:
    return VectorError(
        "a and b select different numbers of activations, so they do not pair up",
        fix="pass paired data (row i of a with row i of b) and a named or int position, "
        "or the contrast pairs of one Task",
    )
