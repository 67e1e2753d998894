"""Coefficient sweeps of a steering vector, with the diagnostics that show *why* a large
coefficient breaks the model.

For each coefficient ``c`` the vector is added (``c * v`` at its site and positions) and:

* on the task (``data="task"``, stacked in ``engine.run_variants``): the task metric, the KL
  from the unmodified model at END, the answer's cross-entropy, accuracy and whether the top
  token at END changed, each a mean with a bootstrap interval of its change;
* on neutral text (``data="neutral"``, :func:`circuitsteer.tasks.neutral`): the KL from the
  unmodified model's next-token distributions (mean over real positions), the language-model
  loss and the fraction of positions whose top token changed;
* breakdown diagnostics on the first ``n_diag`` neutral prompts, per layer and position
  (``level="layer_pos"``) and averaged over positions (``level="layer"``, ``position`` NA):
  ``vec_ratio = ||c v|| / ||x||`` at the site (``x`` the unmodified activation there, edited
  positions only); per layer L (``L = n_layers``: the final norm) ``resid_norm`` (the residual
  entering the layer), ``resid_norm_ratio`` (over its unmodified norm: the residual norm
  growth), ``norm_scale`` and ``norm_scale_ratio`` (the LayerNorm/RMSNorm divisor
  ``sqrt(var(x) + eps)`` or ``sqrt(mean(x^2) + eps)`` of the layer's first norm); and per
  attention layer, averaged over heads, ``attn_entropy`` (nats), ``attn_bos`` (mass on the first
  token), ``attn_self`` (mass on the query's own position) and, when the edit is at chosen
  positions, ``attn_edited`` (mass on the edited positions).

The **break point** is the smallest ``|c|`` (per sign) whose neutral-text KL reaches
``kl_threshold``; :func:`break_point` returns the diagnostics there, so the mechanism is read
off the data: ``df.attrs["break_point"]`` holds the same summary.

Example:
    >>> import torch, circuitsteer as cs
    >>> from circuitsteer.zoo.tokenizer import toy_tokenizer
    >>> model = cs.random_gpt2(n_layers=2, n_heads=2, d_model=16, d_vocab=484, tokenizer=toy_tokenizer())
    >>> v = cs.vectors.SteeringVector(torch.randn(16, generator=torch.Generator().manual_seed(0)), site="resid_pre.1")
    >>> df = coefficient_sweep(model, v, coefs=[0.1, 10, 1000], task=cs.tasks.ioi(model, n=4),
    ...                        neutral=cs.tasks.neutral(model, n=4), kl_threshold=5e-3, n_diag=2,
    ...                        progress=False)
    >>> kl = df[(df.level == "coef") & (df.data == "neutral") & (df.metric == "kl")]
    >>> kl.coef.tolist(), kl.value.tolist()[0], df.attrs["break_point"]["coef"]
    ([0.0, 0.1, 10.0, 1000.0], 0.0, 10.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from circuitsteer import engine, metrics
from circuitsteer.analysis._common import chunks
from circuitsteer.analysis._rows import (
    TaskMetrics,
    frame,
    metric_names,
    model_name,
    positions_label,
    summary,
    task_name,
)
from circuitsteer.analysis.attribution import _final_norm
from circuitsteer.engine.chunking import progress
from circuitsteer.errors import AnalysisError
from circuitsteer.interventions import PositionSpec
from circuitsteer.nodes import all_heads, parse_capture

COEFS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
DIAGNOSTICS = ("vec_ratio", "resid_norm", "resid_norm_ratio", "norm_scale", "norm_scale_ratio",
               "attn_entropy", "attn_bos", "attn_self", "attn_edited")  # fmt: skip


def coefficient_sweep(
    model: Any,
    vector: Any,
    site: str | None = None,
    coefs: Sequence[float] = COEFS,
    task: Any = None,
    neutral: Any = None,
    positions: PositionSpec = "all",
    metric: Any = "logit_diff",
    kl_threshold: float = 1.0,
    n_diag: int = 32,
    seed: int = 0,
    n_boot: int = 1000,
    max_batch: int = 256,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Sweep ``coefs`` of ``vector`` (a :class:`~circuitsteer.vectors.SteeringVector`, or a
    tensor with ``site``) added at ``site`` (default: the vector's) and ``positions``.

    ``task``: measured with ``metric`` when given. ``neutral``: a neutral-text Task (default
    ``cs.tasks.neutral(model, n=100, seed=seed)``). ``kl_threshold``: the neutral-text KL (nats,
    mean over positions) at which the model counts as broken. Coefficient 0 is added when
    missing (the diagnostics' baseline).

    Returns rows with the common columns and ``level`` (``coef``, ``layer``, ``layer_pos``),
    ``data`` (``task`` / ``neutral``), ``layer``, ``position``, ``effect, effect_lo, effect_hi,
    effect_std, n`` (coefficient rows) and ``broken`` (neutral KL >= threshold).
    ``df.attrs["break_point"]``: see :func:`break_point`.
    """
    from circuitsteer.tasks import neutral as make_neutral
    from circuitsteer.vectors import SteeringVector

    sv = vector if isinstance(vector, SteeringVector) else _wrap(vector, site)
    site = sv.site if site is None else site
    cs_ = sorted({0.0, *(float(c) for c in coefs)}, key=lambda c: (abs(c), c))
    neutral = make_neutral(model, n=100, seed=seed) if neutral is None else neutral

    def ivs(c: float) -> list[Any]:
        pos = None if sv.per_position else positions
        return list(sv.interventions(coef=c, positions=pos, model=model, site=site))

    _edited(neutral, sv, positions, 1, neutral.clean.shape[1])  # named positions it lacks
    variants = [ivs(c) for c in cs_]
    common = {"model": model_name(model), "seed": seed, "node": site, "operation": "add",
              "positions": positions_label(positions)}  # fmt: skip
    rows: list[dict[str, Any]] = []
    if task is not None:
        names = metric_names([*_list(metric), "kl", "answer_loss", "accuracy", "top_token_change"])
        clean_l, _ = engine.run(model, task)
        measure = TaskMetrics(task, names, metrics.end_logits(clean_l, task))
        res = engine.run_variants(model, task, variants, max_batch=max_batch, reduce=measure,
                                  progress=progress)  # fmt: skip
        clean = measure.full(clean_l)
        for j, (name, _) in enumerate(names):
            for c, st in zip(cs_, summary(res.logits[:, :, j], clean[:, j], n_boot, seed), strict=True):  # fmt: skip
                rows.append({"task": task_name(task), "coef": c, "metric": name, "level": "coef",
                             "data": "task", **st})  # fmt: skip
    nv = _neutral_metrics(model, neutral, variants, max_batch, progress)  # [K, n, 3]
    kl_by_coef = {}
    for j, name in enumerate(("kl", "loss", "top_token_change")):
        base = nv[0, :, j] if name == "loss" else torch.zeros_like(nv[0, :, j])
        for c, st in zip(cs_, summary(nv[:, :, j], base, n_boot, seed), strict=True):
            if name == "kl":
                kl_by_coef[c] = st["value"]
            rows.append({"task": task_name(neutral), "coef": c, "metric": name, "level": "coef",
                         "data": "neutral", **st})  # fmt: skip
    diag = _diagnostics(model, neutral, sv, site, positions, cs_, ivs, min(n_diag, len(neutral)),
                        progress)  # fmt: skip
    rows += [{"task": task_name(neutral), "data": "neutral", **r} for r in diag]
    df = frame(rows, **common)
    df["broken"] = df["coef"].map(lambda c: kl_by_coef.get(c, float("nan")) >= kl_threshold)
    df["layer"] = df["layer"].astype("Int64")
    df["position"] = df["position"].astype("Int64")
    df.attrs["kl_threshold"] = kl_threshold
    df.attrs["break_point"] = _summary(break_point(df, kl_threshold), kl_threshold)
    return df


def break_point(df: pd.DataFrame, kl_threshold: float | None = None) -> pd.DataFrame:
    """The per-layer diagnostics (``level="layer"``) at the break point of a sweep: per sign of
    the coefficient, the smallest ``|c|`` whose neutral-text KL reaches ``kl_threshold`` (default:
    the sweep's), with columns ``side`` (+1/-1), ``kl`` and ``prev_coef`` (the largest ``|c|``
    below it, to compare). Empty when the model never breaks in the sweep."""
    thr = df.attrs.get("kl_threshold", 1.0) if kl_threshold is None else kl_threshold
    kl = df[(df.level == "coef") & (df.data == "neutral") & (df.metric == "kl")]
    out = []
    for side in (1.0, -1.0):
        sub = kl[(kl.coef * side > 0)]
        sub = sub.iloc[sub.coef.abs().argsort()]
        hit = sub[sub.value >= thr]
        if hit.empty:
            continue
        c = float(hit.coef.iloc[0])
        below = sub[sub.coef.abs() < abs(c)]
        layer = df[(df.level == "layer") & (df.coef == c)].copy()
        layer["side"] = side
        layer["kl"] = float(hit.value.iloc[0])
        layer["prev_coef"] = float(below.coef.iloc[-1]) if len(below) else 0.0
        out.append(layer)
    return pd.concat(out, ignore_index=True) if out else df.iloc[0:0]


def _summary(bp: pd.DataFrame, thr: float) -> dict[str, Any]:
    if bp.empty:
        return {"kl_threshold": thr, "coef": None}
    first = bp[bp.side == bp.side.iloc[0]]
    diag: dict[int, dict[str, float]] = {}
    for r in first.itertuples():
        diag.setdefault(int(r.layer), {})[str(r.metric)] = float(r.value)  # type: ignore[arg-type]
    return {"kl_threshold": thr, "coef": float(first.coef.iloc[0]), "kl": float(first.kl.iloc[0]),
            "diagnostics": diag}  # fmt: skip


def _list(x: Any) -> list[Any]:
    return [x] if isinstance(x, str) or callable(x) else list(x)


def _wrap(vector: Any, site: str | None) -> Any:
    from circuitsteer.vectors import SteeringVector

    if site is None:
        raise AnalysisError(
            "a plain tensor needs site=", fix="pass site='resid_pre.2' or a SteeringVector"
        )
    return SteeringVector(torch.as_tensor(vector, dtype=torch.float32), site=site)


def _neutral_metrics(model: Any, neutral: Any, variants, max_batch, progress) -> torch.Tensor:
    """``[K, n, 3]``: KL from the unmodified model, LM loss, top-token change, per example, in
    row chunks whose clean logits stay under 256 MiB."""
    P, V = neutral.clean.shape[1], model.shape.d_vocab
    out = []
    for sl in chunks(len(neutral), max(1, 2**26 // (P * V))):
        toks, lengths = neutral.clean[sl], neutral.lengths[sl]
        pos = {k: v[sl] for k, v in neutral.positions.items()}
        real = torch.arange(P)[None, :] < lengths[:, None]
        clean, _ = engine.run(model, toks, positions=pos)

        def reduce(lg: torch.Tensor, r: slice, clean=clean, toks=toks, lengths=lengths, real=real):
            ref = clean[r].to(lg.device)
            return torch.stack([metrics.kl_div(ref, lg, real[r]), metrics.loss(lg, toks[r], lengths[r]),
                                metrics.top_token_change(ref, lg, real[r])], -1).float()  # fmt: skip

        res = engine.run_variants(model, toks, variants, positions=pos, max_batch=max_batch,
                                  reduce=reduce, progress=progress)  # fmt: skip
        out.append(res.logits)
    return torch.cat(out, dim=1)


def _edited(task: Any, sv: Any, positions: PositionSpec, n: int, P: int) -> torch.Tensor:
    """BoolTensor ``[n, P]``: where the vector is added."""
    m = torch.zeros(n, P, dtype=torch.bool)
    if sv.per_position:
        m[:, : sv.vector.shape[0]] = True
        return m
    for p in positions if isinstance(positions, tuple) else (positions,):
        if p == "all":
            m[:] = True
        elif isinstance(p, str):
            if p not in task.positions:
                raise AnalysisError(
                    f"the neutral text has no position {p!r}",
                    fix=f"steer at 'all', an int, or one of {', '.join(task.positions)}",
                )
            m[torch.arange(n), task.positions[p][:n].long()] = True
        else:
            m[:, p] = True
    return m


@torch.no_grad()
def _diagnostics(model, task, sv, site, positions, coefs, ivs, n, bar) -> list[dict[str, Any]]:
    s = model.shape
    toks, lengths = task.clean[:n], task.lengths[:n]
    P = toks.shape[1]
    pos = {k: v[:n] for k, v in task.positions.items()}
    real = torch.arange(P)[None, :] < lengths[:, None]
    edited = _edited(task, sv, positions, n, P) & real
    resid = [f"resid_pre.{L}" for L in range(s.n_layers)] + ["logits:in"]
    heads = all_heads(s)
    cap = [*resid, *(f"{h}:pattern" for h in heads), parse_capture(site).name]
    norms = [_norm_fn(model, L) for L in range(s.n_layers)] + [_norm_fn(model, None)]
    base: dict[str, torch.Tensor] = {}
    rows: list[dict[str, Any]] = []
    vnorm = sv.vector.double().norm(dim=-1)  # [] or [n_pos]
    for c in progress(coefs, len(coefs), "sweep diagnostics", bar):
        _, dev = engine.run(model, toks, ivs(c), capture=cap, positions=pos)
        cache = {k: v.cpu() for k, v in dev.items()}
        per: dict[tuple[str, int], torch.Tensor] = {}  # (metric, layer) -> [n, P]
        x_site = cache[parse_capture(site).name].double().norm(dim=-1)
        if c == 0.0:
            base["site"] = x_site
        cv = abs(c) * (vnorm if vnorm.dim() == 0 else _front(vnorm, P))
        ratio = cv / base["site"].clamp_min(1e-30)
        per[("vec_ratio", _site_layer(site))] = torch.where(edited, ratio, torch.nan)
        for L, name in enumerate(resid):
            x = cache[name].double()
            xn, sc = x.norm(dim=-1), norms[L](x)
            if c == 0.0:
                base[f"n{L}"], base[f"s{L}"] = xn, sc
            per[("resid_norm", L)], per[("norm_scale", L)] = xn, sc
            per[("resid_norm_ratio", L)] = xn / base[f"n{L}"].clamp_min(1e-30)
            per[("norm_scale_ratio", L)] = sc / base[f"s{L}"].clamp_min(1e-30)
        for L in range(s.n_layers):
            p = torch.stack([cache[f"{h}:pattern"] for h in heads[L * s.n_heads : (L + 1) * s.n_heads]], 1).double()  # fmt: skip
            ent = -(p * p.clamp_min(1e-30).log()).sum(-1)  # [n, H, P]
            per[("attn_entropy", L)] = ent.mean(1)
            per[("attn_bos", L)] = p[..., 0].mean(1)
            per[("attn_self", L)] = p.diagonal(dim1=-2, dim2=-1).mean(1)
            if not (positions == "all" and not sv.per_position):
                per[("attn_edited", L)] = (p * edited[:, None, None, :]).sum(-1).mean(1)
        for (metric, L), v in per.items():
            ok = real & ~v.isnan()
            for t in range(P):
                if bool(ok[:, t].any()):
                    rows.append({"coef": c, "metric": metric, "value": float(v[ok[:, t], t].mean()),
                                 "level": "layer_pos", "layer": L, "position": t})  # fmt: skip
            if bool(ok.any()):
                rows.append({"coef": c, "metric": metric, "value": float(v[ok].mean()),
                             "level": "layer", "layer": L, "position": None})  # fmt: skip
    return rows


def _front(v: torch.Tensor, P: int) -> torch.Tensor:
    out = torch.zeros(P, dtype=v.dtype)
    k = min(P, v.shape[0])
    out[:k] = v[:k]
    return out


def _site_layer(site: str) -> int:
    node = parse_capture(site).node
    return int(node.layer) if node.layer is not None else 0


def _norm_fn(model: Any, layer: int | None):
    """The divisor of the norm reading the residual: a block's first norm, or the final norm."""
    if layer is None:
        mod, centre, eps = _final_norm(model)
    else:
        mod = model.module(model.arch.path("ln1", layer))
        centre = isinstance(mod, torch.nn.LayerNorm)
        eps = float(getattr(mod, "eps", getattr(mod, "variance_epsilon", 1e-5)))

    def scale(x: torch.Tensor) -> torch.Tensor:
        xc = x - x.mean(-1, keepdim=True) if centre else x
        return (xc.pow(2).mean(-1) + eps).sqrt()

    return scale
