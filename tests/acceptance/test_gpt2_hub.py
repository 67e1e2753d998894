"""Real GPT-2 small from the hub or the HF cache. Skipped where it cannot be had (offline)."""

from __future__ import annotations

import pytest
import torch

import circuitsteer as cs


@pytest.fixture(scope="module")
def gpt2():
    try:
        return cs.load_model("gpt2")
    except cs.ModelNotAvailableError as e:
        pytest.skip(f"GPT-2 small not available offline: {e.message}")


def test_gpt2_logits_match_hf(gpt2):
    from transformers import GPT2LMHeadModel

    raw = GPT2LMHeadModel.from_pretrained("gpt2", attn_implementation="eager").eval()
    tokens = gpt2.to_tokens("When Mary and John went to the store, John gave a drink to")
    with torch.no_grad():
        torch.testing.assert_close(gpt2(tokens), raw(tokens).logits, atol=1e-5, rtol=0)
