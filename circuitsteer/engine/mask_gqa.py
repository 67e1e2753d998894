"""Grouped-query attention in a masked forward (a mixin of
:class:`circuitsteer.engine.mask_hooks.MaskHooks`): a KV group's k/v columns are shared by its
query heads, so they stay clean, each query head's own k/v delta is kept apart, and the heads
whose k/v can differ get their attention recomputed from their own k/v.

Example:
    >>> GQAHeads.__name__
    'GQAHeads'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from circuitsteer.engine.masks import EdgeMask


class GQAHeads:
    """Per-head k/v deltas and recomputed attention (methods of ``MaskHooks``)."""

    model: Any
    arch: Any
    mask: EdgeMask | None
    attn_kw: dict[int, tuple[Any, Any]]
    proj: dict[tuple[int, str], torch.Tensor]
    kv_delta: dict[tuple[int, str], torch.Tensor]

    def _gqa_heads(self, L: int, z: torch.Tensor) -> torch.Tensor:
        """``z`` with the attention of every query head whose k/v can differ from its group's
        recomputed from its own k/v (the group's clean k/v plus the head's own delta)."""
        assert self.mask is not None
        s, arch = self.model.shape, self.arch
        H, dh = s.n_heads, s.d_head
        m = self.mask.tensors[f"a{L}"]
        if torch.is_grad_enabled() and m.requires_grad:
            heads = list(range(H))
        else:
            with torch.no_grad():
                nz = (m[:, H:] != 0).any(0)
                heads = (nz[:H] | nz[H:]).nonzero().flatten().tolist()
        if not heads:
            return z
        B, P = z.shape[:2]
        idx = torch.tensor(heads, device=z.device)

        def stack(c: str) -> torch.Tensor:  # [n, B, P, dh]
            out = self.proj[(L, c)]
            t = torch.stack([out[..., arch.qkv_cols(c, h)] for h in heads])
            d = self.kv_delta.get((L, c))
            return t if d is None else t + d.index_select(0, idx)

        pos_emb, amask = self.attn_kw[L]
        q = arch.rotary(stack("q"), pos_emb)
        k = arch.rotary(stack("k"), pos_emb)
        v = stack("v")
        scores = (q @ k.transpose(-1, -2)) * arch.attn_scale(
            self.model.module(arch.path("attn", L))
        )
        if amask is None:
            causal = torch.ones(P, P, dtype=torch.bool, device=scores.device).tril()
            scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
        else:
            am = amask[:, 0, :, -P:]
            if am.dtype == torch.bool:
                scores = scores.masked_fill(~am, torch.finfo(scores.dtype).min)
            else:
                scores = scores + am
        sm_dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
        zh = torch.softmax(scores, dim=-1, dtype=sm_dtype).to(v.dtype) @ v  # [n, B, P, dh]
        z = z.clone()
        z.view(B, P, H, dh)[:, :, heads] = zh.permute(1, 2, 0, 3)
        return z

    def _gqa_qkv(
        self,
        L: int,
        channels: tuple[str, ...],
        out: torch.Tensor,
        idx: torch.Tensor,
        contrib: torch.Tensor,
    ) -> torch.Tensor:
        """Grouped-query attention: q columns get their deltas as usual; k/v columns are shared
        by a KV group, so they stay clean and each query head's own delta is kept apart."""
        H, dh = self.model.shape.n_heads, self.model.shape.d_head
        new = out
        for i, ch in enumerate(channels):
            part = contrib[i * H : (i + 1) * H]  # [H, BP, dh]
            if ch == "q":
                q_idx = idx[i * H * dh : (i + 1) * H * dh]
                new = new.index_add(-1, q_idx, part.transpose(0, 1).reshape(*out.shape[:-1], -1))
            else:
                self.kv_delta[(L, ch)] = part.view(H, *out.shape[:-1], dh)
        for ch in channels:
            self.proj[(L, ch)] = new if ch == "q" else out
        return new
