"""Random control directions: what a steering effect must beat.

* :func:`random_like`: an isotropic Gaussian direction with the same norm as a given vector
  (row by row for a per-position vector), at the same site, seeded.
* :func:`random_from_covariance`: a direction drawn from ``N(0, Sigma)``, the covariance of the
  site's own activations (:func:`~circuitsteer.vectors.stats.activation_moments`), scaled to a
  given vector's norm: a "typical" direction of the activation distribution rather than a
  uniformly random one, which in a residual stream mostly points along its few high-variance
  (outlier) dimensions.

Draws use a CPU ``torch.Generator`` in float64 seeded with ``seed``, so the same seed gives the
same direction on every device.

Example:
    >>> import torch
    >>> from circuitsteer.vectors import SteeringVector
    >>> v = SteeringVector(torch.tensor([3.0, 4.0, 0.0]), site="resid_pre.0")
    >>> r = random_like(v, seed=1)
    >>> round(r.norm, 5), r.method, r.seed, torch.equal(r.vector, random_like(v, seed=1).vector)
    (5.0, 'random', 1, True)
"""

from __future__ import annotations

import torch

from circuitsteer.vectors.errors import VectorError, VectorMismatchError
from circuitsteer.vectors.stats import ActivationMoments
from circuitsteer.vectors.steering_vector import SteeringVector


def _generator(seed: int) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise VectorError(f"seed must be an int, got {seed!r}", fix="pass an integer seed")
    return torch.Generator().manual_seed(seed)


def _rescale(x: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` scaled to ``norms`` (a zero target row stays zero)."""
    n = x.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    return x / n * norms[..., None]


def random_like(vector: SteeringVector, seed: int = 0) -> SteeringVector:
    """A seeded Gaussian direction with ``vector``'s norm (per row for a per-position vector:
    rows that are zero, such as BOS in an ActAdd vector, stay zero), same site, model and
    positions. ``data`` records the matched vector's provenance."""
    g = _generator(seed)
    v = vector.vector.detach().cpu().to(torch.float64)
    x = torch.randn(v.shape, generator=g, dtype=torch.float64)
    out = _rescale(x, v.norm(dim=-1))
    return SteeringVector(
        out.to(vector.vector.dtype),
        site=vector.site,
        model=vector.model,
        method="random",
        data={"matched": vector.provenance},
        positions=vector.positions,
        seed=seed,
        meta={"norm": float(out.norm()), "distribution": "isotropic gaussian"},
    )


def random_from_covariance(
    moments: ActivationMoments,
    like: SteeringVector | None = None,
    norm: float | None = None,
    seed: int = 0,
) -> SteeringVector:
    """A seeded direction drawn from ``N(0, moments.covariance)`` (``Sigma^(1/2) z`` with ``z``
    standard normal, through an eigendecomposition; negative eigenvalues from round-off count as
    zero), scaled to the norm of ``like`` (per row for a per-position vector) or to ``norm``;
    with neither, the draw itself is returned (its norm is then typical of centred activations).

    >>> import torch, circuitsteer as cs
    >>> m = cs.random_gpt2(n_layers=2, n_heads=4, d_model=32)
    >>> mom = cs.vectors.activation_moments(m, "resid_pre.1", torch.randint(0, 256, (4, 8)))
    >>> r = random_from_covariance(mom, norm=2.0, seed=3)
    >>> r.site, round(r.norm, 5)
    ('resid_pre.1', 2.0)
    """
    g = _generator(seed)
    if like is not None and like.site != moments.site:
        raise VectorMismatchError(
            f"the covariance is of {moments.site!r} but the vector to match is at {like.site!r}",
            fix="compute activation_moments at the vector's site",
        )
    if like is not None and like.width != moments.covariance.shape[0]:
        raise VectorMismatchError(
            f"the vector to match has width {like.width}, the covariance {moments.covariance.shape[0]}",
            fix="compute activation_moments on the vector's model",
        )
    if norm is not None and not (float(norm) >= 0.0 and float(norm) < float("inf")):
        raise VectorError(f"norm must be finite and >= 0, got {norm}", fix="pass e.g. norm=1.0")
    cov = moments.covariance.detach().cpu().to(torch.float64)
    evals, evecs = torch.linalg.eigh(cov)
    root = evecs * evals.clamp_min(0.0).sqrt()[None, :]  # Sigma^(1/2) up to rotation
    shape = like.vector.shape if like is not None else cov.shape[:1]
    z = torch.randn(*shape[:-1], cov.shape[0], generator=g, dtype=torch.float64)
    x = z @ root.T
    if like is not None:
        x = _rescale(x, like.vector.detach().cpu().to(torch.float64).norm(dim=-1))
    elif norm is not None:
        x = _rescale(x, torch.tensor(float(norm), dtype=torch.float64))
    dtype = like.vector.dtype if like is not None else torch.float32
    return SteeringVector(
        x.to(dtype),
        site=moments.site,
        model=moments.model,
        method="random_covariance",
        data={
            "covariance_of": {"data": moments.data, "positions": moments.positions, "n": moments.n},
            "matched": like.provenance if like is not None else None,
        },
        positions=like.positions if like is not None else None,
        seed=seed,
        meta={"norm": float(x.norm()), "distribution": "gaussian with the activations' covariance"},
    )
