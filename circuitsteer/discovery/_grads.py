"""Receiver-input gradients from one plain forward + backward (the fast path of EAP and EAP-IG).

Every receiver of the edge graph reads the residual stream through its own door: a head's q, k
or v input through the layer's first norm and that head's columns of the q/k/v projection; an
MLP through the second norm; the logits through the final norm. So ``dL/d(input of receiver)``
is, for a head, the norm's vector-Jacobian product of ``dL/d(its q/k/v columns) @ W_cols^T``
at the norm's input, and for an MLP or the logits the gradient at its norm's input through
that norm alone. One forward with hooks records the norm inputs and routes the MLP and final
norm through private copies; one ``autograd.grad`` gives the projection-output and copy
gradients; the head receivers' products are then computed for all heads of a layer at once
(one batched matmul, one batched norm VJP). This uses the model's architecture adapter
(``model.arch``: module paths, q/k/v column layout) and no engine hooks.

Under grouped-query attention a KV group's k/v columns are shared by several query heads, so
their gradient is the group's sum, not a head's: :func:`supported` is False there and EAP uses
the engine's per-head captures instead (:func:`circuitsteer.discovery.eap.receiver_grads`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from circuitsteer.nodes import CHANNELS


def supported(model: Any) -> bool:
    """Whether the fast path applies (no grouped k/v heads)."""
    return not model.shape.grouped_kv


def _input_of(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def fast_receiver_grads(
    model: Any,
    tokens: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    input_value: torch.Tensor | None = None,
    senders: list[torch.Tensor] | None = None,
    copies: int = 1,
    into: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Like :func:`circuitsteer.discovery.eap.receiver_grads`: per mask group, the gradient of
    ``loss_fn(logits)`` (a scalar) at every receiver's input, ``[n_receivers, B*P*d]``.
    ``input_value``: the residual entering block 0 (else the model's own embedding).
    ``senders``: a list that receives this forward's sender outputs, in
    :func:`~circuitsteer.engine.masks.sender_outputs`'s layout (``input``, each layer's heads
    ``z_h W_O_h``, its MLP), so a clean pass need not be recorded again. ``copies``: the batch
    is that many stacked copies of ``B`` rows (EAP-IG's steps); the gradients are summed over
    them. ``into``: add the gradients into these tensors in place (and return them)."""
    arch, s = model.arch, model.shape
    mod = lambda role, L=None: model.module(arch.path(role, L))  # noqa: E731
    norm_in: dict[int, torch.Tensor] = {}
    proj_out: dict[tuple[int, str], torch.Tensor] = {}
    private_in: dict[str, torch.Tensor] = {}
    handles = []

    def feed(module, args, kwargs):
        x = (_input_of(args, kwargs) if input_value is None else input_value).detach()
        if senders is not None:
            senders.append(x.reshape(1, -1))
        x = x.requires_grad_(True)  # the leaf every gradient flows back to
        return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})

    def head_outputs(module, args):
        z = args[0].detach()
        w_o = arch.out_rows(module, slice(0, s.n_heads * s.d_head)).detach()
        zh = z.reshape(-1, s.n_heads, s.d_head).transpose(0, 1)  # [H, B*P, dh]
        out = torch.bmm(zh, w_o.reshape(s.n_heads, s.d_head, -1))
        senders.append(out.reshape(s.n_heads, -1))  # type: ignore[union-attr]

    def mlp_output(module, args, out):
        senders.append(out.detach().reshape(1, -1))  # type: ignore[union-attr]

    def keep_norm_in(L):
        def hook(module, args):
            norm_in[L] = args[0].detach()

        return hook

    def keep_out(L, role):
        def hook(module, args, out):
            proj_out[(L, role)] = out

        return hook

    def private(key):
        def hook(module, args):
            x = args[0] + 0  # a copy only this norm reads
            private_in[key] = x
            return (x, *args[1:])

        return hook

    roles = arch.qkv_modules()
    try:
        handles.append(mod("block", 0).register_forward_pre_hook(feed, with_kwargs=True))
        for L in range(s.n_layers):
            handles.append(mod("ln1", L).register_forward_pre_hook(keep_norm_in(L)))
            for role in roles:
                handles.append(mod(role, L).register_forward_hook(keep_out(L, role)))
            if s.d_mlp > 0:
                handles.append(mod("ln2", L).register_forward_pre_hook(private(f"m{L}")))
            if senders is not None:
                handles.append(mod("attn_out", L).register_forward_pre_hook(head_outputs))
                if s.d_mlp > 0:
                    handles.append(mod("mlp", L).register_forward_hook(mlp_output))
        handles.append(mod("final_norm").register_forward_pre_hook(private("logits")))
        with torch.enable_grad():
            logits = model(tokens)
    finally:
        for h in handles:
            h.remove()
    keys = list(proj_out) + list(private_in)
    wrt = [proj_out[k] if k in proj_out else private_in[k] for k in keys]  # type: ignore[index]
    with torch.enable_grad():
        grads = torch.autograd.grad(loss_fn(logits), wrt)
    g = dict(zip(keys, grads, strict=True))
    out: dict[str, torch.Tensor] = {} if into is None else into

    def add(key: str, v: torch.Tensor, rows: int = 1) -> None:
        # v: [rows, copies * B*P*d] values, summed over the copies
        v = v.reshape(rows, copies, -1).sum(1) if copies > 1 else v.reshape(rows, -1)
        if key in out:
            out[key].add_(v)
        else:
            out[key] = v.detach()

    H, dh = s.n_heads, s.d_head
    for L in range(s.n_layers):
        cols, ws = [], []
        for role, chans in roles.items():
            m = mod(role, L)
            for ch in chans:
                for h in range(H):
                    c = arch.qkv_cols(ch, h)
                    cols.append(g[(L, role)][..., c].reshape(-1, dh))
                    ws.append(arch.in_cols(m, c).T)  # [dh, d]
        # channel-major order of the mask's columns: q heads, k heads, v heads
        order = [
            CHANNELS.index(ch) for role, chans in roles.items() for ch in chans for _ in range(H)
        ]
        idx = sorted(range(len(cols)), key=lambda i: (order[i], i))
        G = torch.stack([cols[i] for i in idx])  # [R, BP, dh]: dL/d(each head's columns)
        W = torch.stack([ws[i] for i in idx])  # [R, dh, d]
        x = norm_in[L].detach()
        key = f"a{L}"
        acc = out.get(key)
        got = norm_vjp(mod("ln1", L), x.reshape(-1, x.shape[-1]), G, W, copies,
                       None if acc is None else acc.view(len(idx), -1, x.shape[-1]))  # fmt: skip
        if got is None:  # an unknown norm: autograd over R stacked copies of its input
            u = torch.bmm(G, W)
            xr = x.unsqueeze(0).expand(len(idx), *x.shape).contiguous().requires_grad_(True)
            with torch.enable_grad():
                (gx,) = torch.autograd.grad(mod("ln1", L).forward(xr), xr, u.view(xr.shape))
            add(key, gx, len(idx))
        elif acc is None:
            out[key] = got.reshape(len(idx), -1)
        if s.d_mlp > 0:
            add(f"m{L}", g[f"m{L}"])
    add("logits", g["logits"])
    return out


def _norm_kind(norm: Any) -> tuple[str, float, torch.Tensor | None] | None:
    """("layer" | "rms", eps, gain) of a LayerNorm or an RMSNorm (Llama's, Qwen2's); None
    for any other module."""
    if isinstance(norm, torch.nn.LayerNorm) and len(norm.normalized_shape) == 1:
        return "layer", float(norm.eps), norm.weight
    eps = getattr(norm, "variance_epsilon", None)
    w = getattr(norm, "weight", None)
    if type(norm).__name__.endswith("RMSNorm") and eps is not None and w is not None:
        return "rms", float(eps), w
    return None


def norm_vjp(
    norm: Any,
    x: torch.Tensor,
    G: torch.Tensor,
    W: torch.Tensor,
    copies: int = 1,
    out: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """``d/dx`` of ``sum_r G[r] . (norm(x) @ W[r].T)`` for each receiver ``r``, ``[R, N, d]``:
    the norm's vector-Jacobian product at ``x`` (``[N, d]``) of the cotangents ``G[r] @ W[r]``
    (``G`` ``[R, N, dh]``, ``W`` ``[R, dh, d]``), in closed form without copies of ``x``.
    ``copies``: ``x``'s rows are that many stacked copies of ``N / copies`` rows, and the result
    is summed over them (``[R, N / copies, d]``); ``out``: add it into this tensor in place.

    LayerNorm, ``xh = (x - mean) * rstd``, ``g = gain * u``: ``dx = rstd * (g - mean(g) - xh *
    mean(g * xh))`` (RMSNorm: no ``mean(g)`` term, ``xh = x * rstd``). The gain and ``rstd`` are
    folded into ``W`` and ``G``, ``mean(g)`` into the same batched product (one more column,
    and linear in ``G``, so copies are summed before the product), ``mean(g * xh)`` is
    ``G[r] . (gain * xh) @ W[r].T / d`` (one matmul for every receiver); what is left is one
    pass per copy adding ``-c * xh``. None for a norm that is neither (the caller
    differentiates it)."""
    kind = _norm_kind(norm)
    if kind is None:
        return None
    name, eps, gain = kind
    d = x.shape[-1]
    R, N, dh = G.shape
    n = N // copies
    xf = x.to(torch.float32) if x.dtype in (torch.float16, torch.bfloat16) else x
    if name == "layer":
        var, mean = torch.var_mean(xf, dim=-1, keepdim=True, correction=0)
        xc = xf - mean
    else:
        var, xc = xf.pow(2).mean(-1, keepdim=True), xf
    rstd = torch.rsqrt(var + eps)  # [N, 1]
    xh = (xc * rstd).to(x.dtype)  # [N, d]
    gw = W if gain is None else W * gain.detach().to(W.dtype)  # [R, dh, d]: gain folded in
    Gs = G * rstd.to(G.dtype)  # [R, N, dh]
    # c2[r, n] = mean over d of (gain * u_r * xh) = G[r] . (xh @ gw[r].T) / d: one product
    V = (xh @ gw.permute(2, 0, 1).reshape(d, R * dh)).view(N, R, dh).transpose(0, 1)
    c2 = (Gs * V).sum(-1, keepdim=True) / d  # [R, N, 1], rstd included
    Gsum = Gs.view(R, copies, n, dh).sum(1) if copies > 1 else Gs
    if name == "layer":
        # -mean(g) * rstd as one more column of the product: G . (gw @ 1) / d
        c1 = torch.bmm(Gsum, gw.sum(-1, keepdim=True)) / d  # [R, n, 1]
        A = torch.cat([Gsum, -c1], dim=-1)
        B = torch.cat([gw, torch.ones_like(gw[:, :1])], dim=1)
    else:
        A, B = Gsum, gw
    if out is None:
        out = torch.bmm(A, B)
    else:
        out.baddbmm_(A, B)
    c2 = c2.to(out.dtype)
    for j in range(copies):
        out.addcmul_(c2[:, j * n : (j + 1) * n], xh[j * n : (j + 1) * n].unsqueeze(0), value=-1.0)
    return out
