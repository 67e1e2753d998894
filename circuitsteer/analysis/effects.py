"""Downstream effects of an intervention: how every node's output, attention and direct logit
attribution change, split into the part carried along a circuit's edges and the rest.

Three forwards over the task, each one batch (so values that should be equal are bit-equal):

* **clean**: no intervention;
* **total**: the intervention (``engine.apply``);
* **through the circuit**: the intervention and the circuit's dense edge mask
  (:func:`circuitsteer.engine.run_with_mask`, reference = the clean run's sender outputs): every
  edge of the circuit reads its sender's output in this forward, every other edge reads the
  sender's *clean* output. So a change of a node's output travels on to a reader only along a
  circuit edge; off-circuit edges carry the unmodified value. The intervention's own edit acts
  as in the total run: an edit of a node's output (a head's ``z``, an MLP) leaves the node only
  through its circuit edges (none if the node is not in the circuit), an edge-restricted edit
  reaches its receivers, and an edit that is not a node output (a residual site, a d_model
  ``Add`` on a head's output) reaches every reader directly; from there on, again only circuit
  edges carry the resulting changes.

``rest = total - through`` (changes, not a separate run): what flows through the other edges,
interactions included. With the full edge graph as the circuit, ``through == total`` exactly
and ``rest == 0``; nodes that are not downstream of the intervention have exactly 0 in every
part.

Measures per node (at each ``at`` position): ``out_delta_norm`` (mean ``||o' - o||``),
``out_cosine`` (mean cosine of ``o'`` with the clean ``o``), ``dla_delta`` (change of the direct
logit attribution to ``logit(correct) - logit(incorrect)`` through the final norm with its scale
frozen at the clean run, so it is linear in the output change), and for heads ``attn_delta``
(change of the attention from ``at`` to each named position, column ``to``). The ``logits`` row
gives the task metric's change. Node outputs are a head's ``z W_O`` (``:result``) and an MLP's
output.

Example:
    >>> import circuitsteer as cs
    >>> from circuitsteer.zoo.tokenizer import toy_tokenizer
    >>> model = cs.random_gpt2(n_layers=2, n_heads=2, d_model=16, d_vocab=484, tokenizer=toy_tokenizer())
    >>> task = cs.tasks.ioi(model, n=4)
    >>> full = cs.full_edge_graph(model.shape)
    >>> df = downstream_effects(model, task, full, cs.Ablate(cs.Site("a0.h1"), mode="zero"))
    >>> changes = df[df.metric != "out_cosine"]
    >>> float(changes[changes.part == "rest"].value.abs().max())
    0.0
    >>> float(changes[changes.relation == "upstream"].value.abs().max())
    0.0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from circuitsteer import engine
from circuitsteer.analysis._common import resolve_metric
from circuitsteer.analysis._rows import frame, model_name, positions_label, task_name
from circuitsteer.analysis.attribution import _final_norm
from circuitsteer.engine.masks import run_with_mask, sender_outputs
from circuitsteer.errors import AnalysisError
from circuitsteer.interventions import INTERVENTION_TYPES, Intervention
from circuitsteer.nodes import all_heads, all_mlps, depth, parse_node, parse_receiver, validate_node

PARTS = ("total", "through_circuit", "rest")


@torch.no_grad()
def downstream_effects(
    model: Any,
    task: Any,
    circuit: Any,
    intervention: Intervention | Sequence[Intervention],
    nodes: str | Sequence[str] | None = None,
    at: str | Sequence[str] = "END",
    metric: Any = "logit_diff",
) -> pd.DataFrame:
    """Per node: the change of its output, attention and direct logit attribution under
    ``intervention`` (one or a list applied together), in total and split into the part
    through ``circuit``'s edges and the rest (module docstring). An empty list changes nothing:
    every change comes out exactly 0 (a check of the pipeline).

    Args:
        circuit: a :class:`circuitsteer.Circuit` (``cs.full_edge_graph(model.shape)`` for the
            whole model), or None: totals only.
        nodes: heads/MLPs to measure; default the circuit's (every node without a circuit);
            ``"all"``: every head and MLP of the model.
        at: named position(s) where outputs and attention (as the query) are read.

    Returns rows with the common columns (``node`` is the measured node, ``metric`` the
    measure, ``value`` its mean over examples) and ``site, relation`` (``upstream``: not
    downstream of the intervention; ``site``; ``downstream``), ``kind, layer, head, at, to,
    part, mean_abs`` (mean of the absolute per-example value), ``n``.
    """
    ivs = [intervention] if isinstance(intervention, INTERVENTION_TYPES) else list(intervention)
    at_names = [at] if isinstance(at, str) else list(at)
    for a in at_names:
        if a not in task.positions:
            raise AnalysisError(f"the task has no position {a!r}", fix=f"use one of {', '.join(task.positions)}")  # fmt: skip
    names = _measured(model, circuit, nodes)
    mname, mfn = resolve_metric(metric)
    caps = ["logits:in"]
    for n in names:
        caps += [f"{n}:result", f"{n}:pattern"] if _is_head(n) else [n]

    clean_l, clean = _forward(model, task, [], caps)
    runs = {"total": _forward(model, task, ivs, caps)}
    if circuit is not None:
        mask = circuit.to_mask(model)
        ref = sender_outputs(model, task.clean)
        runs["through_circuit"] = _forward(model, task, ivs, caps, mask=mask, ref=ref)
    dla = _dla_fn(model, task, clean["logits:in"])
    r = torch.arange(len(task))
    first = min((_site_depth(model, iv) for iv in ivs), default=float("inf"))
    sites = {iv.site.node for iv in ivs}
    rows: list[dict[str, Any]] = []

    def emit(node: str, metric: str, per_part: dict[str, torch.Tensor], **extra: Any) -> None:
        if "through_circuit" in per_part and "rest" not in per_part:
            per_part["rest"] = per_part["total"] - per_part["through_circuit"]
        for part, v in per_part.items():
            v = v.double()
            rows.append({"node": node, "metric": metric, "value": float(v.mean()), **extra,
                         "part": part, "mean_abs": float(v.abs().mean()), "n": len(v)})  # fmt: skip

    for node in names:
        nd = validate_node(node, model.shape)
        d = depth(nd, model.shape)
        rel = "site" if node in sites else "downstream" if d > first else "upstream"
        meta = {"relation": rel, "kind": nd.kind, "layer": nd.layer, "head": nd.head}
        key = f"{node}:result" if _is_head(node) else node
        for a in at_names:
            idx = task.positions[a].long()
            o = clean[key][r, idx].double()
            deltas = {p: c[key][r, idx].double() - o for p, (_, c) in runs.items()}
            if "through_circuit" in deltas:
                deltas["rest"] = deltas["total"] - deltas["through_circuit"]
            emit(
                node, "out_delta_norm", {p: v.norm(dim=-1) for p, v in deltas.items()}, at=a, **meta
            )
            cos = {p: _cosine(o + v, o, v) for p, v in deltas.items()}
            emit(node, "out_cosine", cos, at=a, **meta)
            if a == "END":
                emit(node, "dla_delta", {p: dla(v) for p, v in deltas.items()}, at=a, **meta)
            if _is_head(node):
                pk = f"{node}:pattern"
                for to, kidx in task.positions.items():
                    p0 = clean[pk][r, idx, kidx.long()].double()
                    ch = {p: c[pk][r, idx, kidx.long()].double() - p0 for p, (_, c) in runs.items()}
                    emit(node, "attn_delta", ch, at=a, to=to, **meta)
    m0 = mfn(clean_l, task).double()
    emit("logits", mname, {p: mfn(lg, task).double() - m0 for p, (lg, _) in runs.items()},
         relation="downstream", kind="logits", at="END")  # fmt: skip
    df = frame(rows, model=model_name(model), task=task_name(task), **_describe(ivs))
    df["layer"] = df["layer"].astype("Int64")
    df["head"] = df["head"].astype("Int64")
    return df


def _is_head(name: str) -> bool:
    return parse_node(name).kind == "head"


def _measured(model: Any, circuit: Any, nodes: str | Sequence[str] | None) -> list[str]:
    if nodes == "all" or (nodes is None and circuit is None):
        names = all_heads(model.shape) + all_mlps(model.shape)
    elif nodes is None:
        names = [n for n in circuit.nodes if parse_node(n).kind in ("head", "mlp")]
    else:
        names = [nodes] if isinstance(nodes, str) else list(nodes)
    for n in names:
        if validate_node(n, model.shape).kind not in ("head", "mlp"):
            raise AnalysisError(f"{n!r} is not a head or an MLP", fix="measure heads 'a{L}.h{H}' and MLPs 'm{L}'")  # fmt: skip
    if not names:
        raise AnalysisError("no nodes to measure", fix="pass nodes=[...] or nodes='all'")
    return list(dict.fromkeys(names))


def _forward(
    model, task, ivs, caps, mask: Any = None, ref: Any = None
) -> tuple[torch.Tensor, dict]:
    """One forward over the whole task (one batch) with ``ivs`` (and a mask); its captures."""
    with engine.apply(model, ivs, capture=caps, tokens=task) as cache:
        logits = model(task.clean) if mask is None else run_with_mask(model, task.clean, mask, ref)
    return logits, {k: v.cpu() for k, v in cache.items()}


def _cosine(a: torch.Tensor, b: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """cos(a, b) per row; exactly 1 where ``delta`` (a - b) is exactly zero."""
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-30)
    return torch.where((delta == 0).all(-1), torch.ones_like(cos), cos)


def _dla_fn(model: Any, task: Any, logits_in: torch.Tensor):
    """``dla(v [n, d_model]) -> [n]``: the direct effect of ``v`` (at END) on logit(correct) -
    logit(incorrect) at END, the final norm's scale frozen at the clean run."""
    ln_f, centre, eps = _final_norm(model)
    r, end = torch.arange(len(task)), task.positions["END"].long()
    x = logits_in[r, end].double()
    xc = x - x.mean(-1, keepdim=True) if centre else x
    scale = (xc.pow(2).mean(-1) + eps).sqrt()[:, None]
    w_u = model.hf.get_output_embeddings().weight.detach().double().cpu()
    u = w_u[task.correct] - w_u[task.incorrect]
    weight = getattr(ln_f, "weight", None)
    u = u * (weight.detach().double().cpu() if weight is not None else 1.0)

    def dla(v: torch.Tensor) -> torch.Tensor:
        v = v - v.mean(-1, keepdim=True) if centre else v
        return (v / scale * u).sum(-1)

    return dla


def _site_depth(model: Any, iv: Intervention) -> float:
    """Depth of the first activation an intervention changes (its receivers' for an edge-
    restricted site; a head's input channel counts as the head)."""
    site = iv.site
    if site.to:
        return min(depth(parse_receiver(r)[0], model.shape) for r in site.to) - 0.5
    return depth(validate_node(site.node, model.shape), model.shape)


def _describe(ivs: list[Intervention]) -> dict[str, Any]:
    modes = [getattr(iv, "mode", None) for iv in ivs]
    coefs = {float(iv.coef) for iv in ivs if hasattr(iv, "coef")}
    return {
        "operation": "+".join(type(iv).__name__.lower() for iv in ivs) or "none",
        "mode": "+".join(m for m in modes if m) or None,
        "coef": coefs.pop() if len(coefs) == 1 else None,
        "positions": "; ".join(positions_label(iv.site.positions) for iv in ivs),
        "site": "; ".join(str(iv.site) for iv in ivs),
    }
