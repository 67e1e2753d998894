"""Principal components of a site's activations, and of paired differences (RepE).

:func:`pca` answers the open question "decompose the residual stream over a batch and use the
principal directions as addition directions": activations are **centred** and the **first
token is left out** by default (otherwise the top components track BOS, position and outlier
dimensions). The covariance is accumulated in float64 as a stream (:class:`RunningMoments`), so
the batch may be any size; the components are its top eigenvectors (``torch.linalg.eigh``).
:func:`pca_from_activations` does the same in memory with an SVD.

:func:`pca_of_differences` is the representation-engineering variant (Zou et al. 2023): PCA of
``act(a_i) - act(b_i)`` over contrast pairs, **uncentred** by default (centring would subtract
the mean difference, the very direction the pairs share).

Sign convention (fixed, so runs are reproducible; an eigenvector's sign is otherwise arbitrary):

* :func:`pca`, :func:`pca_from_activations`: each component's coordinate of largest absolute
  value is positive (the first such coordinate on a tie; scikit-learn's ``svd_flip`` rule).
* :func:`pca_of_differences`: each component has a positive dot product with the mean
  difference ``mean(a - b)``, so it points from ``b`` to ``a``; a component orthogonal to it
  falls back to the largest-coordinate rule.

``explained_variance``: the eigenvalues, ``M2 / (n - 1)`` for centred data (the sample
covariance, as scikit-learn), ``E[x x^T]``'s eigenvalues (divided by n) for uncentred data;
``explained_variance_ratio`` divides by the trace (all components).

Example:
    >>> import torch, circuitsteer as cs
    >>> m = cs.random_gpt2(n_layers=2, n_heads=4, d_model=32)
    >>> p = pca(m, "resid_post.0", torch.randint(0, 256, (6, 8)), n_components=3)
    >>> torch.allclose(p.components @ p.components.T, torch.eye(3, dtype=torch.float64))
    True
    >>> list(p.table().columns)
    ['site', 'component', 'explained_variance', 'explained_variance_ratio', 'cumulative_ratio']
    >>> p.vector(0).method, round(p.vector(0).norm, 6)
    ('pca', 1.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
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
from circuitsteer.vectors.mean_diff import vector_dtype
from circuitsteer.vectors.stats import RunningMoments, paired
from circuitsteer.vectors.steering_vector import SteeringVector

SIGN_MAX_ABS = "largest-|coordinate| positive"
SIGN_MEAN_DIFF = "positive dot product with mean(a - b)"


def orient(components: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """Flip rows of ``components`` ``[k, width]`` to the sign convention (module docstring):
    ``reference`` None: each row's largest-|.| coordinate positive; else ``row . reference > 0``
    (rows orthogonal to it, within 1e-12 relative, use the first rule)."""
    idx = components.abs().argmax(dim=1)  # first maximum on ties
    sign = torch.sign(components.gather(1, idx[:, None]).squeeze(1))
    if reference is not None:
        dots = components @ reference.to(components)
        tol = 1e-12 * float(reference.norm())
        sign = torch.where(dots.abs() > tol, torch.sign(dots), sign)
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return components * sign[:, None]


@dataclass(frozen=True)
class PCA:
    """Principal components of a site's activations.

    ``components`` ``[k, width]`` (orthonormal rows, float64, oriented by ``sign``),
    ``explained_variance`` ``[k]``, ``explained_variance_ratio`` ``[k]``, ``mean`` ``[width]``
    (subtracted before projecting; zeros when ``centered`` is False), ``n`` rows seen."""

    components: torch.Tensor
    explained_variance: torch.Tensor
    explained_variance_ratio: torch.Tensor
    mean: torch.Tensor
    total_variance: float
    n: int
    centered: bool
    sign: str
    site: str = ""
    model: dict[str, Any] | None = None
    method: str = "pca"
    data: Any = None
    positions: Any = None
    dtype: torch.dtype = torch.float32  # of the SteeringVectors made from components

    @property
    def n_components(self) -> int:
        return self.components.shape[0]

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) @ components.T``: ``[..., k]`` projections (float64)."""
        x = x.detach().to(torch.float64).to(self.components.device)
        return (x - self.mean) @ self.components.T

    def table(self) -> pd.DataFrame:
        """One row per component: explained variance, its ratio and the cumulative ratio."""
        ratio = self.explained_variance_ratio.cpu()
        return pd.DataFrame(
            {
                "site": self.site,
                "component": range(self.n_components),
                "explained_variance": self.explained_variance.cpu().numpy(),
                "explained_variance_ratio": ratio.numpy(),
                "cumulative_ratio": ratio.cumsum(0).numpy(),
            }
        )

    def vector(self, i: int = 0, scale: str = "unit") -> SteeringVector:
        """Component ``i`` as a SteeringVector: unit norm (``scale="unit"``) or scaled by the
        standard deviation along it (``"std"``: ``sqrt(explained_variance[i])``)."""
        if not 0 <= i < self.n_components:
            raise VectorError(
                f"component {i} of {self.n_components}", fix=f"use 0..{self.n_components - 1}"
            )
        if scale not in ("unit", "std"):
            raise VectorError(f"unknown scale {scale!r}", fix="use 'unit' or 'std'")
        var = float(self.explained_variance[i])
        f = var**0.5 if scale == "std" else 1.0
        return SteeringVector(
            (self.components[i] * f).cpu().to(self.dtype),
            site=self.site,
            model=self.model,
            method=self.method,
            data=self.data,
            positions=self.positions,
            meta={
                "component": i,
                "scale": scale,
                "explained_variance": var,
                "explained_variance_ratio": float(self.explained_variance_ratio[i]),
                "n": self.n,
                "centered": self.centered,
                "sign": self.sign,
            },
        )

    def projections(
        self,
        model: Any,
        data: Any,
        positions: Positions = "all",
        exclude_first: bool = True,
        batch_size: int | None = None,
        max_bytes: int | None = None,
        progress: bool | None = None,
    ) -> torch.Tensor:
        """``[N, k]`` projections (float64, CPU) of ``data``'s activations at this site,
        streamed (only the k projections are kept)."""
        out = [
            self.project(ch.values[self.site]).cpu()
            for ch in stream(
                model,
                data,
                self.site,
                positions,
                exclude_first,
                batch_size,
                max_bytes,
                progress,
                "project",
            )
        ]
        return torch.cat(out)


def _check_k(n_components: int, width: int) -> int:
    if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components <= 0:
        raise VectorError(
            f"n_components must be a positive int, got {n_components!r}", fix="pass e.g. 10"
        )
    if n_components > width:
        raise VectorError(
            f"n_components {n_components} exceeds the site's width {width}",
            fix=f"pass n_components <= {width}",
        )
    return n_components


def _from_matrix(
    mat: torch.Tensor, mean: torch.Tensor, n: int, k: int, centered: bool, ref: torch.Tensor | None
) -> dict[str, Any]:
    evals, evecs = torch.linalg.eigh(mat)  # ascending
    order = torch.argsort(evals, descending=True)[:k]
    comps = orient(evecs[:, order].T.contiguous(), ref)
    ev = evals[order].clamp_min(0.0)
    total = float(torch.diagonal(mat).sum())
    return {
        "components": comps,
        "explained_variance": ev,
        "explained_variance_ratio": ev / total if total > 0 else torch.zeros_like(ev),
        "mean": mean if centered else torch.zeros_like(mean),
        "total_variance": total,
        "n": n,
        "centered": centered,
        "sign": SIGN_MAX_ABS if ref is None else SIGN_MEAN_DIFF,
    }


def _moments_pca(acc: RunningMoments, k: int, centered: bool, ref: torch.Tensor | None):
    if acc.n < 2:
        raise VectorError(
            f"PCA needs at least 2 activations, got {acc.n}", fix="pass more data or positions"
        )
    mat = acc.covariance() if centered else acc.second_moment()
    return _from_matrix(mat, acc.mean, acc.n, _check_k(k, mat.shape[0]), centered, ref)


def pca(
    model: Any,
    site: str,
    data: Any,
    n_components: int = 10,
    positions: Positions = "all",
    exclude_first: bool = True,
    center: bool = True,
    batch_size: int | None = None,
    max_bytes: int | None = None,
    progress: bool | None = None,
) -> PCA:
    """PCA of the activations at ``site`` over ``data`` (streamed covariance, float64; data and
    positions as in :mod:`circuitsteer.vectors.collect`). ``center=False``: PCA of the uncentred
    second moment. Sign convention: see the module docstring."""
    site = canonical(site)
    acc = RunningMoments()
    for ch in stream(
        model, data, site, positions, exclude_first, batch_size, max_bytes, progress, "pca"
    ):
        acc.update(ch.values[site])
    return PCA(
        **_moments_pca(acc, n_components, center, None),
        site=site,
        model=model_ref(model),
        dtype=vector_dtype(model),
        method="pca",
        data=describe(data),
        positions=describe_positions(positions, exclude_first),
    )


def pca_from_activations(
    x: torch.Tensor, n_components: int = 10, center: bool = True, site: str = "", model: Any = None
) -> PCA:
    """In-memory PCA of rows ``x`` ``[N, width]`` by an SVD (float64), same conventions as
    :func:`pca` (which gives the same result from a stream).

    >>> x = torch.randn(50, 4, dtype=torch.float64)
    >>> p = pca_from_activations(x, 2)
    >>> torch.allclose(p.explained_variance, torch.linalg.eigvalsh(torch.cov(x.T)).flip(0)[:2])
    True
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] < 2:
        raise VectorError(
            "pca_from_activations needs a tensor [N >= 2, width]", fix="pass activations"
        )
    k = _check_k(n_components, x.shape[1])
    x = x.detach().to(torch.float64)
    mean = x.mean(0)
    xc = x - mean if center else x
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    denom = x.shape[0] - 1 if center else x.shape[0]
    ev = s**2 / denom
    total = float(ev.sum())
    comps = orient(vh[:k].contiguous())
    return PCA(
        components=comps,
        explained_variance=ev[:k],
        explained_variance_ratio=ev[:k] / total if total > 0 else torch.zeros_like(ev[:k]),
        mean=mean if center else torch.zeros_like(mean),
        total_variance=total,
        n=x.shape[0],
        centered=center,
        sign=SIGN_MAX_ABS,
        site=canonical(site) if site else "",
        model=model_ref(model) if model is not None else None,
        method="pca",
        dtype=vector_dtype(model),
    )


def pca_of_differences(
    model: Any,
    site: str,
    a: Any,
    b: Any = None,
    n_components: int = 10,
    positions: Positions = "END",
    exclude_first: bool = True,
    center: bool = False,
    batch_size: int | None = None,
    max_bytes: int | None = None,
    progress: bool | None = None,
) -> PCA:
    """PCA of paired differences ``act(a_i) - act(b_i)`` at ``site`` (RepE). ``b`` None with a
    Task ``a``: its clean vs corrupted prompts. Pairs must select the same number of rows per
    example (a named or int position, or "all" over prompts of equal length), else
    :class:`VectorError`. Uncentred by default; components point from ``b`` to ``a``."""
    site = canonical(site)
    a, b = split_pair(a, b)
    acc = RunningMoments()
    for xa, xb in paired(
        model, a, b, site, positions, exclude_first, batch_size, max_bytes, progress, "pca-diff"
    ):
        acc.update(xa.to(torch.float64) - xb.to(torch.float64))
    if acc.n == 0:
        raise VectorError("no activations were selected", fix="check the data and positions")
    return PCA(
        **_moments_pca(acc, n_components, center, acc.mean),
        site=site,
        model=model_ref(model),
        dtype=vector_dtype(model),
        method="pca_differences",
        data={"a": describe(a), "b": describe(b)},
        positions=describe_positions(positions, exclude_first),
    )
