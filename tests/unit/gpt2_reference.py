"""An independent, hand-written GPT-2 forward for checking the engine.

It computes every head's q, k and v from its *own* input (split q/k/v inputs), every head's z and
d_model result separately, and calls ``edit(point, layer, head, channel, tensor)`` at each
activation, so a test can change any value by hand and compare with the engine's hooks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN

Edit = Callable[[str, int, int | None, str | None, torch.Tensor], torch.Tensor]


def _no_edit(point, layer, head, channel, t):
    return t


@torch.no_grad()
def forward(
    model, tokens: torch.Tensor, edit: Edit = _no_edit, record: dict | None = None
) -> torch.Tensor:
    hf = model.hf
    tr = hf.transformer
    s = model.shape
    d, H, dh = s.d_model, s.n_heads, s.d_head
    act = ACT2FN[hf.config.activation_function]
    B, P = tokens.shape
    rec = record if record is not None else {}

    x = tr.wte.weight[tokens] + tr.wpe.weight[torch.arange(P)][None]
    causal = torch.ones(P, P, dtype=torch.bool).tril()
    for L, blk in enumerate(tr.h):
        x = edit("resid_pre", L, None, None, x)
        rec[("resid_pre", L)] = x
        W, b = blk.attn.c_attn.weight, blk.attn.c_attn.bias  # Conv1D: [d, 3d]
        W_O, b_O = blk.attn.c_proj.weight, blk.attn.c_proj.bias
        attn_out = b_O.expand(B, P, d).clone()
        for h in range(H):
            qkv = {}
            for i, ch in enumerate("qkv"):
                inp = edit("qkv_in", L, h, ch, x)
                rec[("qkv_in", L, h, ch)] = inp
                ln = F.layer_norm(inp, (d,), blk.ln_1.weight, blk.ln_1.bias, blk.ln_1.eps)
                cols = slice(i * d + h * dh, i * d + (h + 1) * dh)
                qkv[ch] = ln @ W[:, cols] + b[cols]
            scores = qkv["q"] @ qkv["k"].transpose(-1, -2) / math.sqrt(dh)
            scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
            pattern = scores.softmax(-1)
            rec[("pattern", L, h)] = pattern
            z = edit("z", L, h, None, pattern @ qkv["v"])
            rec[("z", L, h)] = z
            result = edit("head_resid", L, h, None, z @ W_O[h * dh : (h + 1) * dh])
            rec[("head_resid", L, h)] = result
            attn_out = attn_out + result
        mid = edit("resid_mid", L, None, None, x + attn_out)
        rec[("resid_mid", L)] = mid
        mlp_in = edit("mlp_in", L, None, None, mid)
        rec[("mlp_in", L)] = mlp_in
        ln2 = F.layer_norm(mlp_in, (d,), blk.ln_2.weight, blk.ln_2.bias, blk.ln_2.eps)
        neurons = edit("neurons", L, None, None, act(ln2 @ blk.mlp.c_fc.weight + blk.mlp.c_fc.bias))
        rec[("neurons", L)] = neurons
        out = edit("mlp_out", L, None, None, neurons @ blk.mlp.c_proj.weight + blk.mlp.c_proj.bias)
        rec[("mlp_out", L)] = out
        x = edit("resid_post", L, None, None, mid + out)
        rec[("resid_post", L)] = x
    x = edit("logits_in", -1, None, None, x)
    rec[("logits_in", -1)] = x
    final = F.layer_norm(x, (d,), tr.ln_f.weight, tr.ln_f.bias, tr.ln_f.eps)
    return final @ hf.lm_head.weight.T
