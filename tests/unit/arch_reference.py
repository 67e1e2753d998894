"""An independent, hand-written forward for every supported family (GPT-2, GPT-NeoX, the Llama
family), computed from the weights, for checking the engine.

Like ``gpt2_reference.py`` it computes every head's q, k and v from its *own* input (under
grouped-query attention each query head computes its own k and v from its own input with its
KV group's weights), every head's z and d_model result separately, and calls
``edit(point, layer, head, channel, tensor)`` at each activation. Points: ``resid_pre``,
``qkv_in``, ``z``, ``head_resid``, ``resid_mid`` (sequential residual only), ``mlp_in``,
``neurons``, ``mlp_out``, ``resid_post``, ``logits_in``; ``pattern`` is recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN

Edit = Callable[[str, int, int | None, str | None, torch.Tensor], torch.Tensor]


def _no_edit(point, layer, head, channel, t):
    return t


def _layer_norm(mod):
    return lambda x: F.layer_norm(x, (x.shape[-1],), mod.weight, mod.bias, mod.eps)


def _rms_norm(mod):
    def f(x):
        return mod.weight * (
            x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + mod.variance_epsilon)
        )

    return f


def _rotary(dh: int, rot: int, theta: float, P: int):
    if rot == 0:
        return lambda t: t
    inv = 1.0 / (theta ** (torch.arange(0, rot, 2, dtype=torch.float) / rot))
    freqs = torch.arange(P, dtype=torch.float)[:, None] * inv[None]
    emb = torch.cat((freqs, freqs), -1)
    cos, sin = emb.cos(), emb.sin()

    def f(t):
        r, rest = t[..., :rot], t[..., rot:]
        x1, x2 = r[..., : rot // 2], r[..., rot // 2 :]
        return torch.cat((r * cos + torch.cat((-x2, x1), -1) * sin, rest), -1)

    return f


def _theta(cfg) -> float:
    rp = getattr(cfg, "rope_parameters", None) or {}
    return float(rp.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))


def layers(model, P: int):
    """Per-layer weights in one layout: per query head (W [d, dh], b [dh]) for q, k, v."""
    hf, s, fam = model.hf, model.shape, model.arch.family
    cfg = hf.config
    H, dh, d = s.n_heads, s.d_head, s.d_model
    out = []
    if fam == "gpt2":
        tr = hf.transformer
        for blk in tr.h:
            W, b = blk.attn.c_attn.weight, blk.attn.c_attn.bias  # Conv1D [d, 3d]
            heads = []
            for h in range(H):
                heads.append(
                    {
                        ch: (
                            W[:, i * d + h * dh : i * d + (h + 1) * dh],
                            b[i * d + h * dh : i * d + (h + 1) * dh],
                        )
                        for i, ch in enumerate("qkv")
                    }
                )
            act = ACT2FN[cfg.activation_function]
            out.append(
                SimpleNamespace(
                    ln1=_layer_norm(blk.ln_1),
                    ln2=_layer_norm(blk.ln_2),
                    heads=heads,
                    W_O=blk.attn.c_proj.weight,  # [H*dh, d]
                    b_O=blk.attn.c_proj.bias,
                    neurons=lambda x, m=blk.mlp, act=act: act(x @ m.c_fc.weight + m.c_fc.bias),
                    W_down=blk.mlp.c_proj.weight,
                    b_down=blk.mlp.c_proj.bias,
                    rotary=lambda t: t,
                    scale=dh**-0.5,
                )
            )
        emb = lambda toks: tr.wte.weight[toks] + tr.wpe.weight[torch.arange(toks.shape[1])][None]  # noqa: E731
        return out, emb, _layer_norm(tr.ln_f), False
    if fam == "gpt_neox":
        rot = int(dh * cfg.rope_parameters.get("partial_rotary_factor", 1.0))
        rotary = _rotary(dh, rot, _theta(cfg), P)
        for blk in hf.gpt_neox.layers:
            qkv = blk.attention.query_key_value  # Linear [3d, d], per head [q k v]
            heads = []
            for h in range(H):
                heads.append(
                    {
                        ch: (
                            qkv.weight[h * 3 * dh + i * dh : h * 3 * dh + (i + 1) * dh].T,
                            qkv.bias[h * 3 * dh + i * dh : h * 3 * dh + (i + 1) * dh],
                        )
                        for i, ch in enumerate("qkv")
                    }
                )
            act = ACT2FN[cfg.hidden_act]
            out.append(
                SimpleNamespace(
                    ln1=_layer_norm(blk.input_layernorm),
                    ln2=_layer_norm(blk.post_attention_layernorm),
                    heads=heads,
                    W_O=blk.attention.dense.weight.T,
                    b_O=blk.attention.dense.bias,
                    neurons=lambda x, m=blk.mlp, act=act: act(
                        F.linear(x, m.dense_h_to_4h.weight, m.dense_h_to_4h.bias)
                    ),
                    W_down=blk.mlp.dense_4h_to_h.weight.T,
                    b_down=blk.mlp.dense_4h_to_h.bias,
                    rotary=rotary,
                    scale=dh**-0.5,
                )
            )
        emb = lambda toks: hf.gpt_neox.embed_in.weight[toks]  # noqa: E731
        return out, emb, _layer_norm(hf.gpt_neox.final_layer_norm), bool(cfg.use_parallel_residual)
    # the Llama family
    rotary = _rotary(dh, dh, _theta(cfg), P)
    group = H // s.kv_heads
    for blk in hf.model.layers:
        a = blk.self_attn

        def wb(lin, g):
            w = lin.weight[g * dh : (g + 1) * dh].T
            return w, None if lin.bias is None else lin.bias[g * dh : (g + 1) * dh]

        heads = [
            {"q": wb(a.q_proj, h), "k": wb(a.k_proj, h // group), "v": wb(a.v_proj, h // group)}
            for h in range(H)
        ]
        act = ACT2FN[cfg.hidden_act]
        m = blk.mlp
        out.append(
            SimpleNamespace(
                ln1=_rms_norm(blk.input_layernorm),
                ln2=_rms_norm(blk.post_attention_layernorm),
                heads=heads,
                W_O=a.o_proj.weight.T,
                b_O=a.o_proj.bias,
                neurons=lambda x, m=m, act=act: (
                    act(x @ m.gate_proj.weight.T) * (x @ m.up_proj.weight.T)
                ),
                W_down=m.down_proj.weight.T,
                b_down=m.down_proj.bias,
                rotary=rotary,
                scale=dh**-0.5,
            )
        )
    emb = lambda toks: hf.model.embed_tokens.weight[toks]  # noqa: E731
    return out, emb, _rms_norm(hf.model.norm), False


def _lin(x, wb):
    w, b = wb
    return x @ w if b is None else x @ w + b


@torch.no_grad()
def forward(
    model, tokens: torch.Tensor, edit: Edit = _no_edit, record: dict | None = None
) -> torch.Tensor:
    s = model.shape
    d, H, dh = s.d_model, s.n_heads, s.d_head
    B, P = tokens.shape
    rec = record if record is not None else {}
    blocks, embed, final_norm, parallel = layers(model, P)
    causal = torch.ones(P, P, dtype=torch.bool).tril()
    x = embed(tokens)
    for L, w in enumerate(blocks):
        x = edit("resid_pre", L, None, None, x)
        rec[("resid_pre", L)] = x
        attn_out = torch.zeros(B, P, d) if w.b_O is None else w.b_O.expand(B, P, d).clone()
        for h in range(H):
            qkv = {}
            for ch in "qkv":
                inp = edit("qkv_in", L, h, ch, x)
                rec[("qkv_in", L, h, ch)] = inp
                qkv[ch] = _lin(w.ln1(inp), w.heads[h][ch])
            q, k = w.rotary(qkv["q"]), w.rotary(qkv["k"])
            scores = (q @ k.transpose(-1, -2)) * w.scale
            scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
            pattern = scores.softmax(-1)
            rec[("pattern", L, h)] = pattern
            z = edit("z", L, h, None, pattern @ qkv["v"])
            rec[("z", L, h)] = z
            result = edit("head_resid", L, h, None, z @ w.W_O[h * dh : (h + 1) * dh])
            rec[("head_resid", L, h)] = result
            attn_out = attn_out + result
        if parallel:
            mlp_in = edit("mlp_in", L, None, None, x)
        else:
            mid = edit("resid_mid", L, None, None, x + attn_out)
            rec[("resid_mid", L)] = mid
            mlp_in = edit("mlp_in", L, None, None, mid)
        rec[("mlp_in", L)] = mlp_in
        neurons = edit("neurons", L, None, None, w.neurons(w.ln2(mlp_in)))
        rec[("neurons", L)] = neurons
        mlp_out = neurons @ w.W_down + (0.0 if w.b_down is None else w.b_down)
        out = edit("mlp_out", L, None, None, mlp_out)
        rec[("mlp_out", L)] = out
        x = edit("resid_post", L, None, None, (x + attn_out + out) if parallel else (mid + out))
        rec[("resid_post", L)] = x
    x = edit("logits_in", -1, None, None, x)
    rec[("logits_in", -1)] = x
    return final_norm(x) @ model.hf.get_output_embeddings().weight.T
