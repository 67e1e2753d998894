"""GPT-NeoX / Pythia: LayerNorm, rotary embeddings on the first ``rotary_pct`` of each head's
dims, a fused q/k/v projection ``query_key_value`` laid out per head (``[h0: q k v | h1: q k v
| ...]``), ``nn.Linear`` weights, and (``use_parallel_residual``, Pythia's default) a parallel
residual: attention and MLP both read the layer's input, so there is no ``resid_mid`` and the
heads of a layer do not feed its MLP."""

from __future__ import annotations

from typing import Any

import torch

from circuitsteer.engine.arch.base import Adapter, rope
from circuitsteer.nodes import ModelShape

FAMILY = "gpt_neox"
MODEL_TYPES = ("gpt_neox",)

PATHS = {
    "block": "gpt_neox.layers.{L}",
    "ln1": "gpt_neox.layers.{L}.input_layernorm",
    "q": "gpt_neox.layers.{L}.attention.query_key_value",
    "k": "gpt_neox.layers.{L}.attention.query_key_value",
    "v": "gpt_neox.layers.{L}.attention.query_key_value",
    "attn": "gpt_neox.layers.{L}.attention",
    "attn_out": "gpt_neox.layers.{L}.attention.dense",
    "ln2": "gpt_neox.layers.{L}.post_attention_layernorm",
    "mlp": "gpt_neox.layers.{L}.mlp",
    "mlp_down": "gpt_neox.layers.{L}.mlp.dense_4h_to_h",
    "final_norm": "gpt_neox.final_layer_norm",
    "embed": "gpt_neox.embed_in",
}


class GPTNeoXAdapter(Adapter):
    def qkv_cols(self, channel: str, head: int) -> slice:
        dh = self.shape.d_head
        start = head * 3 * dh + "qkv".index(channel) * dh
        return slice(start, start + dh)

    def rotary(self, t: torch.Tensor, position_embeddings: Any) -> torch.Tensor:
        return rope(t, position_embeddings)


def shape_of(cfg: Any) -> ModelShape:
    d, H = cfg.hidden_size, cfg.num_attention_heads
    return ModelShape(
        n_layers=cfg.num_hidden_layers,
        n_heads=H,
        d_model=d,
        d_head=d // H,
        d_mlp=cfg.intermediate_size,
        d_vocab=cfg.vocab_size,
        n_ctx=cfg.max_position_embeddings,
        parallel_residual=bool(cfg.use_parallel_residual),
    )


def adapter(cfg: Any) -> Adapter:
    return GPTNeoXAdapter(FAMILY, cfg.model_type, shape_of(cfg), PATHS)


def random_config(
    n_layers: int, n_heads: int, d_model: int, d_mlp: int | None, d_vocab: int, n_ctx: int, **extra
) -> Any:
    from transformers import GPTNeoXConfig

    bos = min(256, d_vocab - 1)
    return GPTNeoXConfig(
        **{
            "num_hidden_layers": n_layers,
            "num_attention_heads": n_heads,
            "hidden_size": d_model,
            "intermediate_size": d_mlp or 4 * d_model,
            "vocab_size": d_vocab,
            "max_position_embeddings": n_ctx,
            "rotary_pct": 0.5,
            "bos_token_id": bos,
            "eos_token_id": bos,
            "hidden_dropout": 0.0,
            "attention_dropout": 0.0,
            **extra,
        }
    )
