"""The adapter interface: what the engine core asks of a model family.

An adapter is data (where each activation lives: module paths per *role*; which module's output
holds each head's q, k and v columns; the model's shape, including grouped-query attention and
a parallel residual) plus a few small functions (how to compute chosen q/k/v columns from a
normalized input, a head's or neuron's output weights as ``[k, d_model]`` rows, the position
rotation of one head's q or k). The engine core (plan, hooks, sources, api) asks only these, so
it holds no architecture specifics.

Roles (module paths; ``{L}`` is the layer):

========== ===========================================================================
role       what the engine reads or writes there
========== ===========================================================================
block      a transformer block: input ``resid_pre``, output ``resid_post``
ln1        the attention input norm: its input is what every head reads (``resid_pre``)
q, k, v    the projection whose output holds that channel (one fused module may hold all)
attn       the attention module: output ``(out, pattern, ...)``; its keyword arguments carry
           the attention mask and the rotary ``position_embeddings``
attn_out   the attention output projection: input = concatenated head outputs ``z``
ln2        the MLP input norm: its input is the MLP's input (``resid_mid``, or ``resid_pre``
           with a parallel residual)
mlp        the MLP: output ``mlp_out``
mlp_down   the MLP's output projection: input = neuron activations
final_norm the final norm: input = the final residual (``logits:in``)
embed      the token embedding
========== ===========================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from circuitsteer.errors import NodeNameError
from circuitsteer.nodes import CHANNELS, ModelShape

ROLES = (
    "block",
    "ln1",
    "q",
    "k",
    "v",
    "attn",
    "attn_out",
    "ln2",
    "mlp",
    "mlp_down",
    "final_norm",
    "embed",
)


@dataclass(frozen=True)
class Adapter:
    """One loaded model's architecture facts. Subclasses (one per family) override the small
    functions where their weight layout differs; the defaults fit ``nn.Linear`` weights and
    separate q/k/v projections with grouped-query attention."""

    family: str
    model_type: str
    shape: ModelShape
    paths: Mapping[str, str]

    # -- where ------------------------------------------------------------------------------
    def path(self, role: str, layer: int | None = None) -> str:
        """Module path of ``role`` (in block ``layer`` for per-layer roles)."""
        if role not in self.paths:
            raise NodeNameError(
                f"unknown module role {role!r} for {self.family}", fix=f"use one of {ROLES}"
            )
        template = self.paths[role]
        if "{L}" in template and layer is None:
            raise NodeNameError(f"role {role!r} needs a layer", fix="pass layer=")
        return template.replace("{L}", str(layer))

    @property
    def parallel_residual(self) -> bool:
        return self.shape.parallel_residual

    def qkv_modules(self) -> dict[str, tuple[str, ...]]:
        """Role of each distinct q/k/v module -> the channels its output holds."""
        out: dict[str, list[str]] = {}
        for ch in CHANNELS:
            out.setdefault(self.paths[ch], []).append(ch)
        roles = {self.paths[ch]: ch for ch in reversed(CHANNELS)}
        return {roles[p]: tuple(chs) for p, chs in out.items()}

    def qkv_cols(self, channel: str, head: int) -> slice:
        """Columns of the ``channel`` module's output that query head ``head`` reads (under
        grouped-query attention, k and v columns belong to the head's KV group)."""
        dh = self.shape.d_head
        h = head if channel == "q" else self.shape.kv_head(head)
        return slice(h * dh, (h + 1) * dh)

    # -- how --------------------------------------------------------------------------------
    def project(self, module: Any, cols: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``module``'s output columns ``cols`` for a (normalized) input ``x``: ``[..., len(cols)]``."""
        b = module.bias
        return F.linear(x, module.weight[cols], None if b is None else b[cols])

    def in_cols(self, module: Any, cols: torch.Tensor) -> torch.Tensor:
        """Weights of ``module``'s output columns ``cols`` as ``[d_in, len(cols)]`` (no bias):
        ``project(module, cols, x) == x @ in_cols(module, cols) + bias[cols]``."""
        return module.weight[cols].T

    def out_rows(self, module: Any, rows: slice) -> torch.Tensor:
        """Output-projection weights of input features ``rows`` as ``[k, d_out]`` (a head's W_O
        from ``attn_out`` with ``rows`` its z columns; neurons' output weights from ``mlp_down``)."""
        return module.weight[:, rows].T

    def rotary(self, t: torch.Tensor, position_embeddings: Any) -> torch.Tensor:
        """Rotate one head's q or k ``[batch, pos, d_head]`` by position (identity without
        rotary embeddings)."""
        return t

    def attn_scale(self, attn: Any) -> float:
        """Score scale of an attention module (``q k^T * scale``)."""
        return float(attn.scaling)


def rope(t: torch.Tensor, position_embeddings: Any) -> torch.Tensor:
    """Rotary position embedding (rotate-half convention) on the first ``cos.shape[-1]`` dims of
    ``t`` ``[batch, pos, d_head]``; the rest pass through (partial rotary, GPT-NeoX)."""
    cos, sin = position_embeddings
    r = cos.shape[-1]
    rot = t[..., :r]
    x1, x2 = rot[..., : r // 2], rot[..., r // 2 :]
    out = rot * cos + torch.cat((-x2, x1), dim=-1) * sin
    return out if r == t.shape[-1] else torch.cat((out, t[..., r:]), dim=-1)


def cfg_get(cfg: Any, *names: str, default: Any = None) -> Any:
    """The first of ``names`` the config sets (families spell the same fact differently)."""
    for n in names:
        v = getattr(cfg, n, None)
        if v is not None:
            return v
    return default
