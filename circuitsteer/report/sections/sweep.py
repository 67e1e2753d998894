"""The coefficient-sweep section: task metric and neutral-text KL against the coefficient, the
break point marked, and the breakdown diagnostics per layer.

The break point is computed from the rows with :func:`circuitsteer.analysis.break_point` (the
smallest ``|c|`` per sign whose neutral-text KL reaches the threshold: the entry's
``kl_threshold``, default 1 nat).

Example:
    >>> import pandas as pd
    >>> from circuitsteer.report.sections._base import Context
    >>> rows = pd.DataFrame({"level": "coef", "data": "neutral", "metric": "kl", "node": "resid_pre.2",
    ...                      "coef": [0.0, 4.0, 16.0], "value": [0.0, 0.2, 2.5]})
    >>> s = coefficient_sweep(Context(run=None), {"name": "sweep"}, rows, "sweep")
    >>> s.headlines[0].text
    'Adding the vector at resid_pre.2 breaks the model at c = 16 (neutral-text KL 2.500 ≥ 1 nat; at c = 4 it is 0.200).'
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from circuitsteer.report import figures as F
from circuitsteer.report.sections._base import (
    Context,
    Figure,
    Headline,
    Section,
    Table,
    first_metric,
    mean_of,
    params_of,
)
from circuitsteer.report.stats import fmt

DIAGNOSTICS = ("vec_ratio", "resid_norm_ratio", "norm_scale_ratio", "attn_entropy", "attn_bos")


def break_coef(rows: Any, threshold: float) -> tuple[float | None, float | None, float | None]:
    """``(coef, kl, previous coef)`` at the break point on the positive side (or the first side
    that breaks), or ``(None, None, None)`` when the sweep never reaches ``threshold``."""
    import circuitsteer as cs

    kl = rows[(rows["level"] == "coef") & (rows["data"] == "neutral") & (rows["metric"] == "kl")]
    kl = mean_of(kl, ["coef", "level", "data", "metric"], ["value"])
    if "level" not in rows.columns or kl.empty:
        return None, None, None
    probe = kl.copy()
    probe.attrs["kl_threshold"] = threshold
    layer = rows[rows["level"] == "layer"] if (rows["level"] == "layer").any() else None
    if layer is None:  # break_point reads the layer rows; give it one placeholder per coef
        layer = probe.assign(level="layer")
    bp = cs.analysis.break_point(pd.concat([probe, layer], ignore_index=True), threshold)
    if bp.empty:
        return None, None, None
    first = bp[bp["side"] == bp["side"].iloc[0]]
    return (
        float(first["coef"].iloc[0]),
        float(first["kl"].iloc[0]),
        float(first["prev_coef"].iloc[0]),
    )


def coefficient_sweep(ctx: Context, entry: dict[str, Any], rows: Any, sid: str) -> Section:
    """Curves of the sweep with the break point marked, a per-coefficient table and the
    breakdown diagnostics."""
    sec = Section(sid, str(entry["name"]), "coefficient_sweep", ABOUT, params_of(entry))
    thr = float(entry.get("kl_threshold", 1.0) or 1.0)
    d = rows.copy()
    for c in ("level", "data"):
        if c not in d.columns:
            d[c] = "coef" if c == "level" else "task"
    site = str(d["node"].dropna().iloc[0]) if "node" in d.columns and d["node"].notna().any() else "the site"  # fmt: skip
    coef_rows = d[d["level"] == "coef"]
    bc, bkl, prev = break_coef(d, thr)
    # per-coefficient table: one column per (data, metric)
    t = mean_of(
        coef_rows, ["data", "metric", "coef"], ["value", "effect", "effect_lo", "effect_hi"]
    )
    t["column"] = t["data"].astype(str) + " " + t["metric"].astype(str)
    wide = t.pivot_table(index="coef", columns="column", values="value", aggfunc="mean")
    diag = d[(d["level"] == "layer") & d["metric"].isin(DIAGNOSTICS)]
    if len(diag):
        dm = mean_of(diag, ["metric", "layer", "coef"], ["value"])
        vr: Any = dm[dm["metric"] == "vec_ratio"].groupby("coef")["value"].mean()
        if len(vr):
            wide["vec_ratio"] = vr
    wide = wide.reset_index()
    wide.columns.name = None
    if bc is not None:
        wide.insert(1, "broken", (wide["coef"].abs() >= abs(bc)) & (wide["coef"] * bc > 0))
    sec.tables.append(Table(f"{sid}-coefs", "Per coefficient", wide,
                            "`task <metric>`: mean over the task's examples; `neutral kl`: KL from "
                            "the unmodified model on neutral text (nats, mean over positions); "
                            "`vec_ratio`: ||c v|| / ||x|| at the site."))  # fmt: skip
    task_metric = first_metric(coef_rows[coef_rows["data"] == "task"])
    if bc is not None:
        sec.headlines.append(Headline(
            f"Adding the vector at {site} breaks the model at c = {bc:g} (neutral-text KL "
            f"{fmt(bkl)} ≥ {thr:g} nat; at c = {prev:g} it is "
            f"{fmt(_kl_at(t, prev))})."))  # fmt: skip
    else:
        kl = t[(t["data"] == "neutral") & (t["metric"] == "kl")]
        top = f"; the largest neutral-text KL is {fmt(kl['value'].max())}" if len(kl) else ""
        sec.headlines.append(Headline(
            f"Adding the vector at {site} does not break the model within the sweep (threshold "
            f"{thr:g} nat{top})."))  # fmt: skip
    panels = [("neutral", "kl"), ("task", task_metric)] if task_metric else [("neutral", "kl")]
    for data, metric in panels:
        sub: Any = t[(t["data"] == data) & (t["metric"] == metric)].copy()
        if sub.empty:
            continue
        lo = hi = None
        if "effect_lo" in sub.columns and sub["effect_lo"].notna().any():
            sub["lo"] = sub["value"] + sub["effect_lo"] - sub["effect"]
            sub["hi"] = sub["value"] + sub["effect_hi"] - sub["effect"]
            lo, hi = "lo", "hi"
        sec.figures.append(Figure(f"{sid}-{data}-{metric}", f"{metric} on {data} prompts", F.lines(
            sub, "coef", "value", f"{sec.title}: {data} {metric}", lo=lo, hi=hi, vline=bc,
            vline_label=None if bc is None else f"break point c = {bc:g}",
            hline=thr if metric == "kl" and data == "neutral" else None,
            hline_label=f"threshold {thr:g}" if metric == "kl" else None, xlabel="coefficient c",
            ylabel=f"{metric} ({data})", symlog=True),
            "Dashed red line: the break point; band: 95% bootstrap interval over examples."))  # fmt: skip
        if data == "task" and bc is not None:
            at = sub[sub["coef"] == bc]
            if len(at):
                sec.headlines.append(Headline(
                    f"At the break point the task's {metric} is {fmt(at['value'].iloc[0])} "
                    f"(at c = 0: {fmt(sub.loc[sub['coef'].abs().idxmin(), 'value'])})."))  # fmt: skip
    for metric in ("resid_norm_ratio", "attn_entropy"):
        sub = d[(d["level"] == "layer") & (d["metric"] == metric)]
        if sub.empty:
            continue
        m = mean_of(sub, ["layer", "coef"], ["value"])
        m["layer"] = "L" + m["layer"].astype("Int64").astype(str)
        sec.figures.append(Figure(f"{sid}-{metric}", f"Diagnostic: {metric} per layer", F.lines(
            m, "coef", "value", f"{sec.title}: {metric}", hue="layer", vline=bc,
            vline_label=None if bc is None else "break point", xlabel="coefficient c",
            ylabel=metric, symlog=True),
            "Mean over the diagnostic prompts' positions, one curve per layer."))  # fmt: skip
    return sec


def _kl_at(t: Any, c: float | None) -> float:
    kl = t[(t["data"] == "neutral") & (t["metric"] == "kl") & (t["coef"] == c)]
    return float(kl["value"].iloc[0]) if len(kl) else float("nan")


ABOUT = (
    "A steering vector added at growing coefficients c. The task metric and the KL from the "
    "unmodified model on neutral text are measured at each c; the break point is the smallest |c| "
    "whose neutral-text KL reaches the threshold. The diagnostics show what changes on the way: "
    "the residual norm growth per layer and the attention entropy."
)
