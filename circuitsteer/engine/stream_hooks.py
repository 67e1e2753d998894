"""The hooks of the residual stream and the MLP: ``resid_pre``/``resid_mid``/``resid_post``
edits, pattern captures, MLP inputs (edge deltas), neurons, MLP outputs and the final norm's
input (edge deltas into the logits)."""

from __future__ import annotations

import torch

from circuitsteer.engine.hook_base import HookBase, keep_capture
from circuitsteer.engine.hook_state import apply_edits, summed


class StreamHooks(HookBase):
    """Hook builders for the residual stream and the MLP."""

    # -- residual stream ----------------------------------------------------------------------
    def _block_pre(self, L: int):
        edits = self.by_slot.get(("resid_pre", L), [])
        keep = ("resid_mid", L) in self.by_slot

        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            if edits:
                x = x.clone()
                apply_edits(x, edits, self.state, self.model)
            if keep:
                self.state.resid_pre[L] = x
            self._capture("resid_pre", L, x)
            if not edits:
                return None
            if args:
                return (x, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": x}

        return hook

    def _attn_post(self, L: int):
        edits = self.by_slot.get(("resid_mid", L), [])

        def hook(module, args, output):
            out, weights = output[0], output[1]
            for name, slot in self.captures.get(("pattern", L), ()):
                redone = self.state.patterns.get((L, slot.head or 0), ())
                p = weights[:, slot.head]
                p = p.clone() if redone else keep_capture(p)
                for (a, b), rows in redone:
                    p[a:b] = rows if torch.is_grad_enabled() else rows.detach()
                self.captured[name] = p
            if not edits:
                return None
            mid = self.state.resid_pre[L] + out
            new = mid.clone()
            apply_edits(new, edits, self.state, self.model)
            return (out + (new - mid), *output[1:])

        return hook

    # -- MLP ----------------------------------------------------------------------------------
    def _ln2_pre(self, L: int):
        def hook(module, args):
            x = args[0]
            self._capture("resid_mid", L, x)
            deltas = self.state.deltas.get(("mlp_in", L, -1, ""))
            if deltas:
                x = summed(x, deltas)
            elif torch.is_grad_enabled() and ("mlp_in", L) in self.captures:
                # the MLP's own input, not the residual stream it was read from: the gradient
                # at it then counts the MLP's path only, with or without edge deltas
                x = x.clone()
            self._capture("mlp_in", L, x)
            return (x,) if deltas or x is not args[0] else None

        return hook

    def _neurons_pre(self, L: int):
        edits = self.by_slot.get(("neurons", L), [])

        def hook(module, args):
            a = args[0]
            if edits:
                a = a.clone()
                for e in edits:
                    act = a if e.slot.cols is None else a[..., e.slot.cols]
                    apply_edits(act, [e], self.state, self.model)
            a_in = a
            a = self._capture("neurons", L, a)
            return (a,) if edits or a is not a_in else None

        return hook

    def _mlp_post(self, L: int):
        edits = self.by_slot.get(("mlp_out", L), [])

        def hook(module, args, out):
            if edits:
                out = out.clone()
                apply_edits(out, edits, self.state, self.model)
            self._capture("mlp_out", L, out)
            return out if edits else None

        return hook

    def _block_post(self, L: int):
        edits = self.by_slot.get(("resid_post", L), [])

        def hook(module, args, out):
            x = out[0] if isinstance(out, tuple) else out
            if edits:
                x = x.clone()
                apply_edits(x, edits, self.state, self.model)
            self._capture("resid_post", L, x)
            if not edits:
                return None
            return (x, *out[1:]) if isinstance(out, tuple) else x

        return hook

    def _final_norm_pre(self):
        def hook(module, args):
            x = args[0]
            deltas = self.state.deltas.get(("logits", -1, -1, ""))
            if deltas:
                x = summed(x, deltas)
            self._capture("logits_in", -1, x)
            return (x,) if deltas else None

        return hook
