"""The tiny random models the architecture, mask and mask-prefix tests share: seeded weights
from a config, then every parameter moved off its initial value (biases off 0, norm gains off 1)
so that the tests exercise them.

>>> m = perturbed_model("gpt2", {})
>>> m.shape.n_layers, m.shape.n_heads, m.shape.d_model
(3, 4, 32)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import circuitsteer as cs


def perturbed_model(family: str, cfg: dict[str, Any], dtype: torch.dtype | None = None) -> Any:
    """3 layers x 4 heads, d_model 32, d_mlp 48 of ``family`` (Hugging Face config ``cfg``)."""
    model = cs.models.random_model(
        family, n_layers=3, n_heads=4, d_model=32, d_mlp=48, seed=2, **cfg
    )
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.hf.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    if dtype is not None:
        model.hf.to(dtype)
    return model


def builder(families: dict[str, tuple[str, dict[str, Any]]]) -> Callable[..., Any]:
    """``build(key, dtype=None)``: the perturbed model of ``families[key]`` (family, config)."""

    def build(key: str, dtype: torch.dtype | None = None) -> Any:
        family, cfg = families[key]
        return perturbed_model(family, cfg, dtype)

    return build


def model_fixture(families: dict[str, tuple[str, dict[str, Any]]]) -> Any:
    """A module-scoped ``model`` fixture over every entry of ``families``."""
    build = builder(families)

    @pytest.fixture(scope="module", params=list(families))
    def model(request):
        return build(request.param)

    return model
