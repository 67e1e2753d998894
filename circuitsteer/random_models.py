"""Models with seeded random weights built from a config, for every supported family (unit tests
need no files).

Example:
    >>> m = random_gpt2(n_layers=2, n_heads=4, d_model=32)
    >>> m.shape.n_layers, m.source
    (2, 'random')
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from circuitsteer.engine import arch
from circuitsteer.tokenizers import byte_tokenizer

if TYPE_CHECKING:
    from circuitsteer.models import Model

# eager attention: what exposes attention patterns (as in circuitsteer.models)
_EAGER = {"attn_implementation": "eager"}


def random_model(
    family: str = "gpt2",
    n_layers: int = 2,
    n_heads: int = 4,
    d_model: int = 32,
    d_vocab: int = 257,
    n_ctx: int = 64,
    seed: int = 0,
    d_mlp: int | None = None,
    tokenizer: Any = None,
    name: str | None = None,
    **cfg: Any,
) -> Model:
    """A model of ``family`` with seeded random weights, built from a config (unit tests).

    ``family``: ``gpt2``, ``gpt_neox`` (parallel residual, rotary on half of each head by
    default), ``llama``, ``qwen2`` (q/k/v bias) or ``mistral``. ``n_kv_heads`` gives the Llama
    family grouped-query attention; other keywords are Hugging Face config fields
    (``rotary_pct``, ``use_parallel_residual``, ``attention_bias``, ...).

    >>> m = random_model("llama", n_layers=2, n_heads=4, n_kv_heads=2, d_model=32)
    >>> m.arch.family, m.shape.n_heads, m.shape.kv_heads, m.shape.d_head
    ('llama', 4, 2, 8)
    """
    from transformers import AutoModelForCausalLM

    config = arch.random_config(
        family,
        n_layers=n_layers,
        n_heads=n_heads,
        d_model=d_model,
        d_mlp=d_mlp,
        d_vocab=d_vocab,
        n_ctx=n_ctx,
        **cfg,
    )
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(config, **_EAGER)
    torch.random.set_rng_state(gen_state)
    from circuitsteer.models import Model  # models imports this module: no cycle at import time

    tok = tokenizer if tokenizer is not None else byte_tokenizer()
    return Model(
        hf,
        tok,
        name=name or f"random-{family}-{n_layers}l{n_heads}h{d_model}d-s{seed}",
        source="random",
    )


def random_gpt2(
    n_layers: int = 2,
    n_heads: int = 4,
    d_model: int = 32,
    d_vocab: int = 257,
    n_ctx: int = 64,
    seed: int = 0,
    d_mlp: int | None = None,
    tokenizer: Any = None,
    name: str | None = None,
) -> Model:
    """A GPT-2-architecture model with seeded random weights, built from a config (unit tests).

    >>> m = random_gpt2(n_layers=2, n_heads=4, d_model=32)
    >>> m.shape.n_heads, m.shape.d_head
    (4, 8)
    """
    return random_model(
        "gpt2",
        n_layers=n_layers,
        n_heads=n_heads,
        d_model=d_model,
        d_vocab=d_vocab,
        n_ctx=n_ctx,
        seed=seed,
        d_mlp=d_mlp,
        tokenizer=tokenizer,
        name=name or f"random-gpt2-{n_layers}l{n_heads}h{d_model}d-s{seed}",
    )
