"""Direct logit attribution (DLA): each node's direct share of the logit difference at END.

The final residual at END is a sum of parts: the embeddings (``input``), every head's output
``z_h W_O_h``, every MLP's output, and what no node owns (``bias``: in GPT-2 each layer's
attention output bias). The final LayerNorm is linear in its input once its scale is frozen at
the value of the clean run (the standard convention, e.g. TransformerLens's
``apply_ln_to_stack``), so each part maps to logits on its own:
``centre(part) / scale * ln_f.weight @ (W_U[correct] - W_U[incorrect])``. The final LayerNorm's
bias adds a constant of its own (row ``ln_final``), and the rows sum exactly to the model's logit
difference. An RMSNorm (Llama) is handled the same way, without centring.

Example:
    >>> import circuitsteer as cs, torch
    >>> from circuitsteer.zoo.tokenizer import toy_tokenizer
    >>> model = cs.random_gpt2(d_vocab=484, tokenizer=toy_tokenizer())
    >>> task = cs.tasks.ioi(model, n=4)
    >>> df = cs.analysis.direct_logit_attribution(model, task)
    >>> ld = cs.metrics.logit_diff(cs.engine.run(model, task)[0], task).mean().item()
    >>> bool(abs(df["dla"].sum() - ld) < 1e-4)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from circuitsteer import engine, metrics
from circuitsteer.analysis._common import chunks, rows
from circuitsteer.errors import AnalysisError
from circuitsteer.nodes import all_heads, all_mlps, parse_node

EXTRA_ROWS = ("input", "bias", "ln_final")
_FINAL_NORMS = ("ln_f", "final_layer_norm", "norm")  # GPT-2, GPT-NeoX, Llama attribute names


def _final_norm(model: Any) -> tuple[torch.nn.Module, bool, float]:
    """(final norm, whether it centres (LayerNorm) or not (RMSNorm), its epsilon)."""
    base = model.hf.base_model
    norm = next((getattr(base, a) for a in _FINAL_NORMS if hasattr(base, a)), None)
    if isinstance(norm, torch.nn.LayerNorm):
        return norm, True, norm.eps
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    if norm is not None and type(norm).__name__.endswith("RMSNorm") and eps is not None:
        return norm, False, float(eps)
    raise AnalysisError(
        f"{model.name}: DLA needs a final LayerNorm or RMSNorm, found {type(norm).__name__}",
        fix="use a GPT-2, GPT-NeoX or Llama-family model",
    )


def _row_meta(name: str) -> dict[str, Any]:
    if name in ("bias", "ln_final"):
        return {"kind": "bias", "layer": pd.NA, "head": pd.NA}
    node = parse_node(name)
    return {"kind": node.kind, "layer": node.layer if node.layer is not None else pd.NA,
            "head": node.head if node.head is not None else pd.NA}  # fmt: skip


@torch.no_grad()
def direct_logit_attribution(
    model: Any, task: Any, nodes: Sequence[str] | None = None, batch: int = 100
) -> pd.DataFrame:
    """Per node, its direct contribution to ``logit(correct) - logit(incorrect)`` at END.

    Rows (all by default, or those named in ``nodes``): every head ``a{L}.h{H}``, every MLP
    ``m{L}``, ``input`` (the embeddings), ``bias`` (the rest of the final residual: the attention
    output biases) and ``ln_final`` (the final norm's bias). Columns: ``node, kind, layer, head,
    dla`` (mean over examples), ``dla_std``, ``frac_of_logit_diff`` (``dla`` / the mean logit
    difference). Over all rows ``dla`` sums to the model's mean logit difference;
    ``df.attrs["logit_diff"]`` holds it.
    """
    s = model.shape
    heads, mlps = all_heads(s), all_mlps(s)
    order = [*heads, *mlps, *EXTRA_ROWS]
    wanted = order if nodes is None else ([nodes] if isinstance(nodes, str) else list(nodes))
    unknown = [n for n in wanted if n not in order]
    if unknown or not wanted:
        raise AnalysisError(
            f"no DLA row for {unknown or 'an empty node list'}",
            fix="name heads 'a{L}.h{H}', MLPs 'm{L}', 'input', 'bias' or 'ln_final' (or pass None)",
        )
    ln_f, centre, eps = _final_norm(model)
    unembed = model.hf.get_output_embeddings()
    w_u, b_u = unembed.weight, getattr(unembed, "bias", None)  # [vocab, d_model], [vocab]
    capture = [f"{h}:result" for h in heads] + mlps + ["input", "logits:in"]
    per_node: dict[str, list[torch.Tensor]] = {n: [] for n in order}
    actual: list[torch.Tensor] = []
    for sl in chunks(len(task), batch):
        part = rows(task, sl)
        logits, cache = engine.run(model, part.clean, [], capture=capture)
        actual.append(metrics.logit_diff(logits, part).float().cpu())
        r = torch.arange(len(part), device=logits.device)
        end = part.positions["END"].to(logits.device)
        x = cache["logits:in"][r, end].float()
        xc = x - x.mean(-1, keepdim=True) if centre else x
        scale = (xc.pow(2).mean(-1) + eps).sqrt()[:, None]  # frozen at the clean run's value
        direction = (w_u[part.correct.to(w_u.device)] - w_u[part.incorrect.to(w_u.device)]).float()
        weight = getattr(ln_f, "weight", None)
        gain = weight.float() if weight is not None else torch.ones_like(x[0])

        def direct(v: torch.Tensor, scale=scale, direction=direction, gain=gain) -> torch.Tensor:
            v = v.float().expand_as(direction)
            v = v - v.mean(-1, keepdim=True) if centre else v
            return ((v / scale * gain) * direction).sum(-1).cpu()

        parts = {h: cache[f"{h}:result"][r, end] for h in heads}
        parts |= {m: cache[m][r, end] for m in mlps}
        parts["input"] = cache["input"][r, end]
        # what no node owns (GPT-2: the attention output biases); as a remainder it needs no
        # knowledge of the architecture's biases (the tests check it equals GPT-2's sum of b_O)
        parts["bias"] = cache["logits:in"][r, end] - torch.stack(list(parts.values())).sum(0)
        for name, v in parts.items():
            per_node[name].append(direct(v))
        bias = getattr(ln_f, "bias", None)
        const = (
            direction @ bias.float()
            if bias is not None
            else torch.zeros(len(part), device=direction.device)
        )
        if b_u is not None:  # an unembedding bias is also a constant no node owns
            const = (
                const
                + (b_u[part.correct.to(b_u.device)] - b_u[part.incorrect.to(b_u.device)]).float()
            )
        per_node["ln_final"].append(const.cpu())
    ld = torch.cat(actual)
    ld_mean = float(ld.mean())
    out = []
    for name in wanted:
        v = torch.cat(per_node[name])
        out.append({"node": name, **_row_meta(name), "dla": float(v.mean()),
                    "dla_std": float(v.std()) if len(v) > 1 else 0.0,
                    "frac_of_logit_diff": float(v.mean()) / ld_mean if ld_mean != 0 else float("nan")})  # fmt: skip
    df = pd.DataFrame(out)
    df["layer"] = df["layer"].astype("Int64")
    df["head"] = df["head"].astype("Int64")
    df.attrs["logit_diff"] = ld_mean
    return df
