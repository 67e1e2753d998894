"""GPT-2: LayerNorm with bias, learned positions, a fused q/k/v projection ``c_attn`` laid out
``[q heads | k heads | v heads]``, and Conv1D weights (``[in, out]``, the transpose of
``nn.Linear``). Sequential residual: ``resid_mid`` exists and the MLP reads it."""

from __future__ import annotations

from typing import Any

import torch

from circuitsteer.engine.arch.base import Adapter
from circuitsteer.nodes import ModelShape

FAMILY = "gpt2"
MODEL_TYPES = ("gpt2",)

PATHS = {
    "block": "transformer.h.{L}",
    "ln1": "transformer.h.{L}.ln_1",
    "q": "transformer.h.{L}.attn.c_attn",
    "k": "transformer.h.{L}.attn.c_attn",
    "v": "transformer.h.{L}.attn.c_attn",
    "attn": "transformer.h.{L}.attn",
    "attn_out": "transformer.h.{L}.attn.c_proj",
    "ln2": "transformer.h.{L}.ln_2",
    "mlp": "transformer.h.{L}.mlp",
    "mlp_down": "transformer.h.{L}.mlp.c_proj",
    "final_norm": "transformer.ln_f",
    "embed": "transformer.wte",
}
# the role names circuitsteer used before adapters (nodes.hf_module)
_OLD_ROLES = {
    "ln_1": "ln1",
    "c_attn": "q",
    "attn_c_proj": "attn_out",
    "ln_2": "ln2",
    "mlp_c_proj": "mlp_down",
}


class GPT2Adapter(Adapter):
    def qkv_cols(self, channel: str, head: int) -> slice:
        d, dh = self.shape.n_heads * self.shape.d_head, self.shape.d_head
        start = "qkv".index(channel) * d + head * dh
        return slice(start, start + dh)

    def project(self, module: Any, cols: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # Conv1D: y = x @ W[:, cols] + b[cols]
        out = torch.addmm(module.bias[cols], x.reshape(-1, x.shape[-1]), module.weight[:, cols])
        return out.view(*x.shape[:-1], -1)

    def in_cols(self, module: Any, cols: torch.Tensor) -> torch.Tensor:
        return module.weight[:, cols]

    def out_rows(self, module: Any, rows: slice) -> torch.Tensor:
        return module.weight[rows]


def shape_of(cfg: Any) -> ModelShape:
    d = cfg.n_embd
    return ModelShape(
        n_layers=cfg.n_layer,
        n_heads=cfg.n_head,
        d_model=d,
        d_head=d // cfg.n_head,
        d_mlp=cfg.n_inner or 4 * d,
        d_vocab=cfg.vocab_size,
        n_ctx=cfg.n_positions,
    )


def adapter(cfg: Any) -> Adapter:
    return GPT2Adapter(FAMILY, cfg.model_type, shape_of(cfg), PATHS)


def module_path(role: str, layer: int | None = None) -> str:
    """GPT-2 module path of a role (also the old names ``ln_1``, ``c_attn``, ``attn_c_proj``,
    ``ln_2``, ``mlp_c_proj``)."""
    role = _OLD_ROLES.get(role, role)
    from circuitsteer.errors import NodeNameError

    if role not in PATHS:
        raise NodeNameError(f"unknown module role {role!r}", fix=f"use one of {sorted(PATHS)}")
    return PATHS[role].replace("{L}", str(layer))


def random_config(
    n_layers: int, n_heads: int, d_model: int, d_mlp: int | None, d_vocab: int, n_ctx: int, **extra
) -> Any:
    from transformers import GPT2Config

    bos = min(256, d_vocab - 1)
    return GPT2Config(
        **{
            "n_layer": n_layers,
            "n_head": n_heads,
            "n_embd": d_model,
            "vocab_size": d_vocab,
            "n_positions": n_ctx,
            "n_inner": d_mlp,
            "bos_token_id": bos,
            "eos_token_id": bos,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            **extra,
        }
    )


__all__ = ["FAMILY", "MODEL_TYPES", "PATHS", "adapter", "module_path", "shape_of"]
