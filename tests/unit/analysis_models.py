"""Random GPT-2 models for the analysis tests whose heads matter.

``cs.random_gpt2`` initialises weights like GPT-2 (std 0.02), so attention is almost uniform and a
path-patching effect is ~1e-5: a comparison at that tolerance would prove nothing. Here every
weight is redrawn at unit scale (std 1/sqrt(fan_in)), LayerNorm gains and biases are perturbed,
and attention is sharp, so effects and attributions are O(0.1-1).
"""

from __future__ import annotations

import torch

import circuitsteer as cs
from circuitsteer.zoo.tokenizer import toy_tokenizer


@torch.no_grad()
def strong_gpt2(seed: int = 0, n_layers: int = 3, n_heads: int = 4, d_model: int = 48):
    m = cs.random_gpt2(
        n_layers=n_layers, n_heads=n_heads, d_model=d_model, d_mlp=2 * d_model, d_vocab=484,
        tokenizer=toy_tokenizer(), seed=seed,
    )  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    for name, p in m.hf.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        if ".ln_" in name or "ln_f" in name:
            p.copy_(1.0 + 0.2 * noise if name.endswith("weight") else 0.1 * noise)
        elif name.endswith("bias"):
            p.copy_(0.1 * noise)
        elif "wte" in name or "wpe" in name:
            p.copy_(noise)  # wte is tied to the unembedding
        else:  # Conv1D weights are [fan_in, fan_out]; q and k twice as large: sharper attention
            p.copy_(noise / p.shape[0] ** 0.5 * (2.0 if "c_attn" in name else 1.0))
    return m
