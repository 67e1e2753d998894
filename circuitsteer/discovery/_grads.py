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
) -> dict[str, torch.Tensor]:
    """Like :func:`circuitsteer.discovery.eap.receiver_grads`: per mask group, the gradient of
    ``loss_fn(logits)`` (a scalar) at every receiver's input, ``[n_receivers, B*P*d]``.
    ``input_value``: the residual entering block 0 (else the model's own embedding).
    ``senders``: a list that receives this forward's sender outputs, in
    :func:`~circuitsteer.engine.masks.sender_outputs`'s layout (``input``, each layer's heads
    ``z_h W_O_h``, its MLP), so a clean pass need not be recorded again."""
    arch, s = model.arch, model.shape
    mod = lambda role, L=None: model.module(arch.path(role, L))  # noqa: E731
    norm_in: dict[int, torch.Tensor] = {}
    proj_out: dict[tuple[int, str], torch.Tensor] = {}
    copies: dict[str, torch.Tensor] = {}
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
            copies[key] = x
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
    keys = list(proj_out) + list(copies)
    with torch.enable_grad():
        grads = torch.autograd.grad(loss_fn(logits), [proj_out.get(k, copies.get(k)) for k in keys])  # type: ignore[arg-type]
    g = dict(zip(keys, grads, strict=True))
    out: dict[str, torch.Tensor] = {}
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
        u = torch.bmm(torch.stack([cols[i] for i in idx]), torch.stack([ws[i] for i in idx]))
        # the norm's VJP for every receiver at once: the norm acts on the last dim, so R
        # stacked copies of its input make one forward and one backward
        x = norm_in[L].detach()
        xr = x.unsqueeze(0).expand(len(idx), *x.shape).contiguous().requires_grad_(True)
        with torch.enable_grad():
            (gx,) = torch.autograd.grad(mod("ln1", L).forward(xr), xr, u.view(xr.shape))
        out[f"a{L}"] = gx.reshape(len(idx), -1)
        if s.d_mlp > 0:
            out[f"m{L}"] = g[f"m{L}"].reshape(1, -1)
    out["logits"] = g["logits"].reshape(1, -1)
    return {k: v.detach() for k, v in out.items()}
