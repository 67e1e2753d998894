"""The Llama family (Llama, Qwen2, Mistral): RMSNorm, rotary embeddings, separate ``q_proj``,
``k_proj``, ``v_proj`` (``nn.Linear``, bias optional: Qwen2 has q/k/v bias), grouped-query
attention (``num_key_value_heads`` KV heads, each read by a group of query heads) and a gated
MLP (``down_proj(act(gate_proj(x)) * up_proj(x))``; its neurons are the input of ``down_proj``).
Sequential residual.

Under grouped-query attention a change to one query head's k or v input must reach that query
head only, while ``k_proj``/``v_proj`` compute one k/v per KV group; the engine core therefore
recomputes that head's attention from its own k/v (the adapter supplies the projection and the
rotary embedding) instead of editing the shared columns."""

from __future__ import annotations

from typing import Any

import torch

from circuitsteer.engine.arch.base import Adapter, cfg_get, rope
from circuitsteer.nodes import ModelShape

FAMILY = "llama"
MODEL_TYPES = ("llama", "qwen2", "mistral")

PATHS = {
    "block": "model.layers.{L}",
    "ln1": "model.layers.{L}.input_layernorm",
    "q": "model.layers.{L}.self_attn.q_proj",
    "k": "model.layers.{L}.self_attn.k_proj",
    "v": "model.layers.{L}.self_attn.v_proj",
    "attn": "model.layers.{L}.self_attn",
    "attn_out": "model.layers.{L}.self_attn.o_proj",
    "ln2": "model.layers.{L}.post_attention_layernorm",
    "mlp": "model.layers.{L}.mlp",
    "mlp_down": "model.layers.{L}.mlp.down_proj",
    "final_norm": "model.norm",
    "embed": "model.embed_tokens",
}


class LlamaAdapter(Adapter):
    def rotary(self, t: torch.Tensor, position_embeddings: Any) -> torch.Tensor:
        return rope(t, position_embeddings)


def shape_of(cfg: Any) -> ModelShape:
    d, H = cfg.hidden_size, cfg.num_attention_heads
    kv = cfg_get(cfg, "num_key_value_heads", default=H)
    return ModelShape(
        n_layers=cfg.num_hidden_layers,
        n_heads=H,
        d_model=d,
        d_head=cfg_get(cfg, "head_dim", default=d // H),
        d_mlp=cfg.intermediate_size,
        d_vocab=cfg.vocab_size,
        n_ctx=cfg.max_position_embeddings,
        n_kv_heads=None if kv == H else kv,
    )


def adapter(cfg: Any) -> Adapter:
    return LlamaAdapter(FAMILY, cfg.model_type, shape_of(cfg), PATHS)


def random_config(
    n_layers: int,
    n_heads: int,
    d_model: int,
    d_mlp: int | None,
    d_vocab: int,
    n_ctx: int,
    model_type: str = "llama",
    n_kv_heads: int | None = None,
    **extra,
) -> Any:
    from transformers import AutoConfig

    bos = min(256, d_vocab - 1)
    return AutoConfig.for_model(
        model_type,
        **{
            "num_hidden_layers": n_layers,
            "num_attention_heads": n_heads,
            "num_key_value_heads": n_kv_heads or n_heads,
            "hidden_size": d_model,
            "intermediate_size": d_mlp or 4 * d_model,
            "vocab_size": d_vocab,
            "max_position_embeddings": n_ctx,
            "bos_token_id": bos,
            "eos_token_id": bos,
            "attention_dropout": 0.0,
            "tie_word_embeddings": False,
            **extra,
        },
    )
