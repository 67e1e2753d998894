"""Sender outputs for EAP, with each layer's heads kept factored (``z_h @ W_O_h``).

EAP and EAP-IG need every sender's ``ablated - clean`` output only inside their contraction
with the receivers' gradients (:func:`circuitsteer.discovery._grads.contract`), a few positions
at a time. A layer's head outputs ``[H, N, d]`` are ``H`` times the residual stream (8x on the
zoo model), while their factors ``z`` ``[N, H, dh]`` are the size of the residual stream; so
the heads are recorded as ``z`` (the input of the attention's output projection) and
multiplied by ``W_O`` per chunk of positions, in the cache. The other senders (the input
embedding, each MLP's output) are dense ``[1, N*d]`` rows, as in
:class:`~circuitsteer.engine.masks.SenderOutputs`, whose sender order this keeps.

Example:
    >>> import torch
    >>> b = HeadBlock(torch.ones(3, 2, 4), torch.ones(2, 4, 5))   # N=3, H=2, dh=4, d=5
    >>> b.rows, tuple(b.dense().shape), float(b.dense()[0, 0])
    (2, (2, 15), 4.0)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from circuitsteer.discovery._common import mean_per_position, position_mask

Block = Any  # torch.Tensor [rows, N*d] | HeadBlock


@dataclass
class HeadBlock:
    """One layer's head outputs as factors: ``z`` ``[N, H, dh]``, ``w`` (``W_O``) ``[H, dh, d]``."""

    z: torch.Tensor
    w: torch.Tensor

    @property
    def rows(self) -> int:
        return self.w.shape[0]

    def dense(self) -> torch.Tensor:
        """``[H, N*d]``: every head's output ``z_h @ W_O_h``."""
        return torch.bmm(self.z.transpose(0, 1), self.w).reshape(self.rows, -1)

    def chunk(self, i: int, j: int) -> torch.Tensor:
        """Positions ``i:j`` of every head's output, ``[H, j - i, d]``."""
        return torch.bmm(self.z[i:j].transpose(0, 1), self.w)


def rows(block: Block) -> int:
    return block.rows if isinstance(block, HeadBlock) else block.shape[0]


def sender_hooks(model: Any, out: list[Block], input_value: torch.Tensor | None = None) -> list:
    """Forward hooks that append this forward's sender outputs to ``out`` in the mask's sender
    order (the residual entering block 0, then per layer its heads as a :class:`HeadBlock` and
    its MLP's output), detached. Returns the handles (the caller removes them)."""
    arch, s = model.arch, model.shape
    mod = lambda role, L=None: model.module(arch.path(role, L))  # noqa: E731

    def heads(L: int) -> Callable:
        w = arch.out_rows(mod("attn_out", L), slice(0, s.n_heads * s.d_head))
        w = w.detach().reshape(s.n_heads, s.d_head, -1)

        def hook(module, args):
            out.append(HeadBlock(args[0].detach().reshape(-1, s.n_heads, s.d_head), w))

        return hook

    def mlp_output(module, args, y):
        out.append(y.detach().reshape(1, -1))

    handles = []
    for L in range(s.n_layers):
        handles.append(mod("attn_out", L).register_forward_pre_hook(heads(L)))
        if s.d_mlp > 0:
            handles.append(mod("mlp", L).register_forward_hook(mlp_output))
    return handles


class _Done(Exception):
    """Raised at the final norm: every sender has been recorded."""


def record_senders(model: Any, tokens: torch.Tensor) -> list[Block]:
    """Every sender's output on ``tokens`` (one forward without autograd, stopped before the
    final norm and the unembedding), heads factored."""
    out: list[Block] = []

    def first(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        out.append(x.detach().reshape(1, -1))

    def done(module, args):
        raise _Done

    arch = model.arch
    handles = [
        model.module(arch.path("block", 0)).register_forward_pre_hook(first, with_kwargs=True),
        model.module(arch.path("final_norm")).register_forward_pre_hook(done),
    ]
    try:
        handles += sender_hooks(model, out)
        with torch.no_grad():
            model(tokens)
    except _Done:
        pass
    finally:
        for h in handles:
            h.remove()
    return out


def _as4(block: Block, B: int, P: int) -> torch.Tensor:
    """``block`` seen as ``[rows, B, P, width]`` (a head block's ``z``; a view)."""
    if isinstance(block, HeadBlock):
        return block.z.view(B, P, block.rows, -1).permute(2, 0, 1, 3)
    return block.view(block.shape[0], B, P, -1)


def _from4(t: torch.Tensor, like: Block) -> Block:
    """The inverse of :func:`_as4` for a new ``[rows, B, P, width]`` tensor."""
    if isinstance(like, HeadBlock):
        return HeadBlock(t.permute(1, 2, 0, 3).reshape(-1, like.rows, t.shape[-1]), like.w)
    return t.reshape(t.shape[0], -1)


def batch_means(model: Any, task: Any) -> list[torch.Tensor]:
    """Each sender block's mean over ``task``'s corrupted run per position (over the rows that
    are real tokens there), ``[rows, P, width]``: mean ablation's values, computed once for a
    batch that is then run in groups of rows (:func:`ablated_blocks`' ``means``)."""
    B, P = task.clean.shape
    return [
        mean_per_position(_as4(a, B, P), task.lengths)[:, 0]
        for a in record_senders(model, task.corrupted)
    ]


def ablated_blocks(
    model: Any,
    task: Any,
    ablation: str,
    positions: Any,
    clean: list[Block],
    means: list[torch.Tensor] | None = None,
) -> list[Block]:
    """The senders' ablated values in ``clean``'s layout, as
    :func:`~circuitsteer.discovery._common.references` builds them (resample: the corrupted
    run; mean: its mean over the batch per position, or ``means`` from :func:`batch_means`
    when ``task`` is a group of a larger batch's rows; zero; only at ``positions``)."""
    B, P = task.clean.shape
    if ablation == "zero":
        abl = [_from4(torch.zeros_like(_as4(c, B, P)), c) for c in clean]
    elif ablation == "mean" and means is not None:
        abl = [
            _from4(mu[:, None, :P].expand(-1, B, -1, -1), c)
            for mu, c in zip(means, clean, strict=True)
        ]
    else:
        abl = record_senders(model, task.corrupted)
        if ablation == "mean":
            abl = [_from4(mean_per_position(_as4(a, B, P), task.lengths), a) for a in abl]
    where = position_mask(task, positions)
    if where is None:
        return abl
    keep = where.to(task.clean.device)[None, :, :, None]
    return [
        _from4(torch.where(keep, _as4(a, B, P), _as4(c, B, P)), c)
        for a, c in zip(abl, clean, strict=True)
    ]


def write_deltas(
    ablated: list[Block], clean: list[Block], i: int, j: int, d: int, buf: torch.Tensor, top: int
) -> None:
    """Rows ``:top`` of ``buf`` (``[>= top, >= (j-i)*d]``) <- ``ablated - clean`` at positions
    ``i:j``: dense rows by one subtraction, head blocks by ``(z_abl - z_clean) @ W_O``."""
    cols, w = slice(i * d, j * d), (j - i) * d
    r = 0
    for a, c in zip(ablated, clean, strict=True):
        if r >= top:
            return
        m = min(rows(c), top - r)
        if isinstance(c, HeadBlock):
            dz = (a.z[i:j] - c.z[i:j]).transpose(0, 1)  # [H, w, dh]
            buf[r : r + m, :w].view(m, j - i, d).copy_(torch.bmm(dz[:m], c.w[:m]))
        else:
            torch.sub(a[:m, cols], c[:m, cols], out=buf[r : r + m, :w])
        r += m
