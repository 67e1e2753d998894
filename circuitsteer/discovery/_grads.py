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

from circuitsteer.discovery._contract import HeadGrads
from circuitsteer.discovery._senders import sender_hooks
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
    senders: list[Any] | None = None,
    copies: int = 1,
    into: dict[str, Any] | None = None,
    factored: bool = False,
    end: torch.Tensor | None = None,
    consts: dict | None = None,
) -> dict[str, Any]:
    """Like :func:`circuitsteer.discovery.eap.receiver_grads`: per mask group, the gradient of
    ``loss_fn(logits)`` (a scalar) at every receiver's input, ``[n_receivers, B*P*d]``.
    ``input_value``: the residual entering block 0 (else the model's own embedding).
    ``senders``: a list that receives this forward's sender outputs in the mask's sender order
    (:func:`~circuitsteer.discovery._senders.sender_hooks`: ``input``, each layer's heads as a
    factored :class:`~circuitsteer.discovery._senders.HeadBlock`, its MLP), so a clean pass
    need not be recorded again. ``copies``: the batch
    is that many stacked copies of ``B`` rows (EAP-IG's steps); the gradients are summed over
    them. ``into``: add the gradients into these (and return them). ``factored``: leave each
    layer's head gradients as a :class:`HeadGrads` (summing passes is cheaper before
    :meth:`HeadGrads.dense`). ``end``: each row's END position (``[batch]``) when the loss
    reads only the END logits: the unembedding then runs on those rows alone and ``loss_fn``
    gets ``[batch, vocab]`` END logits (which ``cs.metrics`` accept as they are). ``consts``: a
    dict that keeps each layer's constant head factors (:func:`_head_consts`) between the calls
    of one discovery run (the weights do not change within it)."""
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
        x = x.detach().requires_grad_(True)  # the leaf every gradient flows back to
        return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})

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
            handles += sender_hooks(model, senders)
        handles.append(mod("final_norm").register_forward_pre_hook(private("logits")))
        if end is not None:  # the unembedding reads each row's END only
            head = model.hf.get_output_embeddings()
            handles.append(head.register_forward_pre_hook(_end_rows(end)))
        with torch.enable_grad():
            logits = model(tokens)
            if end is not None:
                logits = logits[:, 0]  # [batch, vocab]: END logits, as metrics.end_logits gives
    finally:
        for h in handles:
            h.remove()
    keys = list(proj_out) + list(private_in)
    wrt = [proj_out[k] if k in proj_out else private_in[k] for k in keys]  # type: ignore[index]
    with torch.enable_grad():
        grads = torch.autograd.grad(loss_fn(logits), wrt)
    g = dict(zip(keys, grads, strict=True))
    out: dict[str, Any] = {} if into is None else into
    consts = {} if consts is None else consts

    def add(key: str, v: torch.Tensor, rows: int = 1) -> None:
        # v: [rows, copies * B*P*d] values, summed over the copies
        v = v.reshape(rows, copies, -1).sum(1) if copies > 1 else v.reshape(rows, -1)
        if key in out:
            out[key].add_(v)
        else:
            out[key] = v.detach()

    for L in range(s.n_layers):
        key, norm = f"a{L}", mod("ln1", L)
        if L not in consts:
            consts[L] = _head_consts(model, L, norm, proj_out[next(iter(proj_out))].dtype)
        W, shift, runs = consts[L]
        G, Q = _head_grads(g, proj_out, L, runs, s.d_head)
        x = norm_in[L].detach()
        x = x.reshape(-1, x.shape[-1])
        acc = out.get(key)
        if acc is None:
            acc = out[key] = HeadGrads()
        if norm_vjp(norm, x, G, W, copies, acc, Q, shift) is None:
            # an unknown norm: autograd over R stacked copies of its input
            u = torch.bmm(G, W)
            xr = x.unsqueeze(0).expand(len(W), *x.shape).contiguous().requires_grad_(True)
            with torch.enable_grad():
                (gx,) = torch.autograd.grad(norm.forward(xr), xr, u.view(xr.shape))
            acc.add_rest(gx.reshape(len(W), copies, -1, x.shape[-1]).sum(1))
        if s.d_mlp > 0:
            add(f"m{L}", g[f"m{L}"])
    add("logits", g["logits"])
    if not factored:
        for k, v in out.items():
            if isinstance(v, HeadGrads):
                out[k] = v.flat()
    return out


def _end_rows(end: torch.Tensor) -> Callable:
    """A forward pre-hook giving the unembedding each row's END hidden state only."""

    def hook(module, args):
        h = args[0]
        rows = torch.arange(len(end), device=h.device)
        return (h[rows, end.to(h.device)][:, None], *args[1:])

    return hook


def _head_consts(model: Any, L: int, norm: Any, dtype: torch.dtype) -> tuple:
    """Layer ``L``'s constant head-receiver factors in the mask's column order (channel-major:
    q heads, k heads, v heads): ``W`` their weights ``[R, dh, d]``, ``shift`` the projection of
    the norm's shift (bias included, ``[R, dh]``: ``Q - shift = (gain * xh) @ W_r.T``, what the
    norm VJP needs), and per q/k/v module its role, output columns and whether those are
    ``0, 1, 2, ...`` (then its gradient needs no gather)."""
    arch, s = model.arch, model.shape
    dh = s.d_head
    beta = norm_shift(norm)  # the norm's bias (None: a zero vector) projected below
    beta = torch.zeros(s.d_model, dtype=dtype, device=model.device) if beta is None else beta
    shifts, ws, runs = [], [], []
    for role, idx in _columns(arch, s):
        m = model.module(arch.path(role, L))
        shift = arch.project(m, idx, beta.detach().to(dtype)[None])
        shifts.append(shift.detach().to(dtype).view(-1, dh))
        ws.append(arch.in_cols(m, idx).detach().T.reshape(-1, dh, s.d_model))
        runs.append((role, idx.to(model.device), bool((idx == torch.arange(len(idx))).all())))
    cat = lambda t: t[0] if len(t) == 1 else torch.cat(t)  # noqa: E731
    return cat(ws), cat(shifts), runs


def _head_grads(g: dict, proj_out: dict, L: int, runs: list, dh: int) -> tuple:
    """Layer ``L``'s head receivers' ``G`` ``dL/d(their projection columns)`` ``[R, N, dh]``
    and ``Q`` those columns' values (transposed views of ``[N, R, dh]`` tensors)."""
    gs, qs = [], []
    for role, idx, in_order in runs:
        gr, qr = g[(L, role)], proj_out[(L, role)].detach()
        gr, qr = gr.reshape(-1, gr.shape[-1]), qr.reshape(-1, qr.shape[-1])
        if not (in_order and len(idx) == gr.shape[-1]):  # else every column, in order: no copy
            gr, qr = gr[:, idx], qr[:, idx]
        gs.append(gr)
        qs.append(qr)
    cat = lambda t: t[0] if len(t) == 1 else torch.cat(t, dim=-1)  # noqa: E731
    G = cat(gs).view(len(gs[0]), -1, dh).transpose(0, 1)
    Q = cat(qs).view(len(qs[0]), -1, dh).transpose(0, 1)
    return G, Q


def _columns(arch: Any, s: Any) -> list[tuple[str, torch.Tensor]]:
    """Per run of q/k/v modules in the mask's column order, the module's role and the output
    columns its receivers read (GPT-2: one run, ``c_attn``'s columns in order; Llama: q, k,
    v projections; GPT-NeoX: ``query_key_value`` with its per-head interleaving)."""
    items = sorted(
        (CHANNELS.index(ch), h, role, arch.qkv_cols(ch, h))
        for role, chans in arch.qkv_modules().items()
        for ch in chans
        for h in range(s.n_heads)
    )
    runs: list[tuple[str, list[slice]]] = []
    for _, _, role, sl in items:
        if runs and runs[-1][0] == role:
            runs[-1][1].append(sl)
        else:
            runs.append((role, [sl]))
    return [(r, torch.cat([torch.arange(c.start, c.stop) for c in sls])) for r, sls in runs]


def _norm_kind(norm: Any) -> tuple[str, float, torch.Tensor | None, torch.Tensor | None] | None:
    """("layer" | "rms", eps, gain, bias) of a LayerNorm or an RMSNorm (Llama's, Qwen2's);
    None for any other module."""
    if isinstance(norm, torch.nn.LayerNorm) and len(norm.normalized_shape) == 1:
        return "layer", float(norm.eps), norm.weight, norm.bias
    eps = getattr(norm, "variance_epsilon", None)
    w = getattr(norm, "weight", None)
    if type(norm).__name__.endswith("RMSNorm") and eps is not None and w is not None:
        return "rms", float(eps), w, None
    return None


def norm_shift(norm: Any) -> torch.Tensor | None:
    """The norm's additive output term (a LayerNorm's bias; None if it has none), so that
    ``norm(x) = gain * xh + shift``: :func:`fast_receiver_grads` subtracts its projection from
    the projection outputs to get ``(gain * xh) @ W_r.T`` without another product."""
    kind = _norm_kind(norm)
    return None if kind is None else kind[3]


def norm_vjp(
    norm: Any,
    x: torch.Tensor,
    G: torch.Tensor,
    W: torch.Tensor,
    copies: int = 1,
    out: torch.Tensor | HeadGrads | None = None,
    V: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
) -> torch.Tensor | HeadGrads | None:
    """``d/dx`` of ``sum_r G[r] . (norm(x) @ W[r].T)`` for each receiver ``r``, ``[R, N, d]``:
    the norm's vector-Jacobian product at ``x`` (``[N, d]``) of the cotangents ``G[r] @ W[r]``
    (``G`` ``[R, N, dh]``, ``W`` ``[R, dh, d]``), in closed form without copies of ``x``.
    ``copies``: ``x``'s rows are that many stacked copies of ``N / copies`` rows, and the result
    is summed over them (``[R, N / copies, d]``). ``out``: a tensor to add the result into in
    place, or a :class:`HeadGrads` to accumulate it into (returned, still factored). ``V``:
    ``(gain * xh) @ W[r].T + shift[r]`` (``[R, N, dh]``) if the caller has it (the projection's
    outputs; ``shift`` ``[R, dh]`` their part from the norm's bias and the projection's),
    else one product computes it.

    LayerNorm, ``xh = (x - mean) * rstd``, ``g = gain * u``: ``dx = rstd * (g - mean(g) - xh *
    mean(g * xh))`` (RMSNorm: no ``mean(g)`` term, ``xh = x * rstd``). ``rstd`` is folded into
    ``G``, the gain and the ``mean(g)`` term into ``W`` (``gain * W`` centred over ``d``), so
    the linear part is ``(rstd G) @ B`` for all copies at once; ``mean(g * xh)`` is ``(rstd G)
    . V / d``, and ``-c * xh`` one ``addcmul`` per copy. None for a norm that is neither (the
    caller differentiates it)."""
    kind = _norm_kind(norm)
    if kind is None:
        return None
    name, eps, gain, _ = kind
    d = x.shape[-1]
    R, N, dh = G.shape
    n = N // copies
    xf = x.to(torch.float32) if x.dtype in (torch.float16, torch.bfloat16) else x
    if name == "layer":  # one fused kernel for xh and rstd (var_mean is ~6x slower here)
        xh, _, rstd = torch.native_layer_norm(xf, [d], None, None, eps)
    else:
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        xh = xf * rstd
    xh = xh.to(x.dtype)
    acc = out if isinstance(out, HeadGrads) else HeadGrads()
    if V is None or acc.B is None:
        gw = W if gain is None else W * gain.detach().to(W.dtype)  # [R, dh, d]
        if acc.B is None:  # the mean(g) term folded in: mean over d of G @ gw is G @ mean(gw)
            acc.B = gw - gw.mean(-1, keepdim=True) if name == "layer" else gw
        if V is None:
            V = (xh @ gw.permute(2, 0, 1).reshape(d, R * dh)).view(N, R, dh).transpose(0, 1)
    Gn, r = G.transpose(0, 1), rstd.to(G.dtype)  # [N, R, dh] (a view of G's own rows)
    # c[i, r] = rstd * mean over d of (g * xh) = rstd * G[r] . (V[r] - shift[r]) / d: the dots
    # as one batched product of 1 x dh rows (faster here than einsum's or a mul + sum)
    Vn = V.transpose(0, 1)
    gv = torch.bmm(Gn.reshape(N * R, 1, dh), Vn.reshape(N * R, dh, 1)).view(N, R)
    if shift is not None:  # G[r] . shift[r] for every r: one product with a block diagonal
        gv.addmm_(Gn.reshape(N, R * dh), torch.block_diag(*shift.unsqueeze(-1)), alpha=-1)
    c = (gv * r).div_(d).T  # [R, N]
    # the linear part's factor rstd * G, summed over copies into the accumulator in place
    acc.add_lin(Gn.reshape(copies, n, R, dh), r.view(copies, n, 1, 1))
    for j in range(copies):
        acc.add_term(c[:, j * n : (j + 1) * n], xh[j * n : (j + 1) * n])
    if isinstance(out, HeadGrads):
        return out
    got = acc.dense()
    return got if out is None else out.add_(got)
