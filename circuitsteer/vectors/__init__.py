"""Steering vectors: contrast pairs (ActAdd), mean difference, PCA, per-head probes (ITI) and
matched random controls, at any site the engine supports (residual stream, a head's own z, a
head's output, q/k/v inputs, MLP output, neurons) on every supported architecture.

* :class:`SteeringVector`: tensor + site + provenance; arithmetic; ``save``/``load``
  (safetensors + JSON sidecar, no pickle); ``.intervention(coef, positions)`` -> ``cs.Add``.
* :func:`contrast_pair`: ActAdd, ``act(A) - act(B)`` per position (front-aligned) or averaged.
* :func:`mean_difference`: mean over dataset ``a`` minus mean over ``b`` at named positions.
* :func:`pca`, :func:`pca_of_differences`, :func:`pca_from_activations`: principal directions
  (centred, first token left out, fixed sign convention) and RepE's PCA of paired differences.
* :func:`probe_heads`: a logistic probe per head, top-K heads, ITI's ``alpha * sigma * direction``.
* :func:`random_like`, :func:`random_from_covariance`: seeded matched-norm controls.
* :func:`collect`, :func:`activations`, :func:`stream`, :func:`activation_moments`: the
  streaming collection underneath (chunks within the engine's memory budget, a progress bar,
  running float64 sums: memory does not grow with the data).

Example:
    >>> import torch, circuitsteer as cs
    >>> m = cs.random_gpt2(n_layers=2, n_heads=4, d_model=32)
    >>> a, b = torch.randint(0, 256, (8, 6)), torch.randint(0, 256, (8, 6))
    >>> v = cs.vectors.mean_difference(m, "resid_pre.1", a, b, positions=-1)
    >>> control = cs.vectors.random_like(v, seed=0)
    >>> round(control.norm / v.norm, 6)
    1.0
    >>> logits, _ = cs.engine.run(m, a, [v.intervention(coef=4.0, model=m)])
"""

from circuitsteer.vectors.collect import Chunk as Chunk
from circuitsteer.vectors.collect import Collected as Collected
from circuitsteer.vectors.collect import activations as activations
from circuitsteer.vectors.collect import collect as collect
from circuitsteer.vectors.collect import corrupted_side as corrupted_side
from circuitsteer.vectors.collect import stream as stream
from circuitsteer.vectors.contrast import contrast_pair as contrast_pair
from circuitsteer.vectors.errors import VectorError as VectorError
from circuitsteer.vectors.errors import VectorMismatchError as VectorMismatchError
from circuitsteer.vectors.mean_diff import mean_activation as mean_activation
from circuitsteer.vectors.mean_diff import mean_difference as mean_difference
from circuitsteer.vectors.pca import PCA as PCA
from circuitsteer.vectors.pca import pca as pca
from circuitsteer.vectors.pca import pca_from_activations as pca_from_activations
from circuitsteer.vectors.pca import pca_of_differences as pca_of_differences
from circuitsteer.vectors.probes import HeadProbes as HeadProbes
from circuitsteer.vectors.probes import fit_logistic as fit_logistic
from circuitsteer.vectors.probes import probe_heads as probe_heads
from circuitsteer.vectors.random import random_from_covariance as random_from_covariance
from circuitsteer.vectors.random import random_like as random_like
from circuitsteer.vectors.stats import ActivationMoments as ActivationMoments
from circuitsteer.vectors.stats import RunningMean as RunningMean
from circuitsteer.vectors.stats import RunningMoments as RunningMoments
from circuitsteer.vectors.stats import activation_moments as activation_moments
from circuitsteer.vectors.steering_vector import SteeringVector as SteeringVector
from circuitsteer.vectors.steering_vector import load as load
from circuitsteer.vectors.steering_vector import save as save

__all__ = [
    "PCA", "ActivationMoments", "Chunk", "Collected", "HeadProbes", "RunningMean",
    "RunningMoments", "SteeringVector", "VectorError", "VectorMismatchError", "activation_moments",
    "activations", "collect", "contrast_pair", "corrupted_side", "fit_logistic", "load",
    "mean_activation", "mean_difference", "pca", "pca_from_activations", "pca_of_differences",
    "probe_heads", "random_from_covariance", "random_like", "save", "stream",
]  # fmt: skip
