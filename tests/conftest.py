"""Shared fixtures. Tiers (markers): unit (no model files), integration (zoo models),
acceptance (hub models; skipped offline). Every test starts from a fixed seed."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from circuitsteer.models import GPT2_TOKENIZER_DIR  # the package's own copy


def pytest_collection_modifyitems(config, items):
    # the folder names the tier, so a test cannot forget its marker
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in ("unit", "integration", "acceptance"):
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_model():
    """2 layers, 4 heads, d_model 32, byte-level vocab: a random GPT-2 built from a config."""
    from circuitsteer.models import random_gpt2

    return random_gpt2(n_layers=2, n_heads=4, d_model=32, seed=0)


@pytest.fixture(scope="session")
def tiny_model_3l():
    from circuitsteer.models import random_gpt2

    return random_gpt2(n_layers=3, n_heads=4, d_model=48, d_mlp=96, seed=1)


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    if not (GPT2_TOKENIZER_DIR / "encoder.json").exists():
        pytest.skip(f"GPT-2 tokenizer files not found at {GPT2_TOKENIZER_DIR} (the package's copy)")
    from circuitsteer.models import gpt2_tokenizer as load

    return load(required=True)
