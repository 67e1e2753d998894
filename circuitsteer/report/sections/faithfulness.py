"""The faithfulness section: ``F(C) / F(M)`` per ablation mode and level with its bootstrap
interval, MIB's faithfulness curves with their areas (CPR, CMD), and completeness/minimality
rows as tables.

Example:
    >>> import pandas as pd
    >>> from circuitsteer.report.sections._base import Context
    >>> rows = pd.DataFrame({"operation": "faithfulness", "node": "ioi", "mode": ["mean"],
    ...     "level": "node", "metric": "logit_diff", "value": [0.72], "value_lo": [0.62],
    ...     "value_hi": [0.81], "normalized": [0.71], "n": [200]})
    >>> print(faithfulness(Context(run=None), {"name": "f"}, rows, "f").headlines[0].text)
    The circuit ioi keeps 0.720 [95% CI 0.620, 0.810; bootstrap, n = 200] of the model's logit_diff (F(C)/F(M), node-level mean ablation).
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
    mean_of,
    params_of,
    summarise,
)
from circuitsteer.report.stats import Interval, fmt

FAITH_COLS = ("normalized", "circuit_value", "model_value", "ablated_value", "n_kept", "n_units")


def faithfulness(ctx: Context, entry: dict[str, Any], rows: Any, sid: str) -> Section:
    """Faithfulness ratios with intervals, a bar chart of them, and MIB curves."""
    sec = Section(sid, str(entry["name"]), "faithfulness", ABOUT, params_of(entry))
    d = rows.copy()
    if "operation" not in d.columns:
        d["operation"] = "faithfulness"
    for c in ("level", "mode"):
        if c not in d.columns:
            d[c] = None
    f = d[d["operation"] == "faithfulness"]
    if len(f):
        keys = ["node", "level", "mode", "metric"]
        t = summarise(f, keys, "value")
        t = t.merge(
            mean_of(f, keys, FAITH_COLS), on=[k for k in keys if k in f.columns], how="left"
        )
        sec.tables.append(Table(f"{sid}-ratios", "Faithfulness F(C)/F(M)", t,
                                "`value` = F(C)/F(M); `value_lo/_hi`: 95% interval (bootstrap: "
                                "examples resampled in pairs); `normalized` = (F(C) - F(∅)) / "
                                "(F(M) - F(∅))."))  # fmt: skip
        if len(t) > 1:
            cases = "; ".join(
                f"{r.level} {r.mode}: {fmt(r.value)} [{fmt(r.value_lo)}, {fmt(r.value_hi)}]"
                for r in t.itertuples(index=False)
            )
            methods = ", ".join(sorted(set(t["ci"].astype(str))))
            sec.headlines.append(Headline(
                f"F(C)/F(M) of the circuit {t['node'].iloc[0]} by ablation: {cases} "
                f"(95% intervals: {methods})."))  # fmt: skip
        for r in t.itertuples(index=False):
            iv = Interval(float(r.value), float(r.value_lo), float(r.value_hi), str(r.ci),
                          _n(f, r))  # fmt: skip
            sec.headlines.append(Headline(
                f"The circuit {r.node} keeps {iv.text()} of the model's {r.metric} (F(C)/F(M), "
                f"{r.level}-level {r.mode} ablation).", iv))  # fmt: skip
        t = t.assign(case=t["level"].astype(str) + " / " + t["mode"].astype(str))
        sec.figures.append(Figure(f"{sid}-ratios", "Faithfulness per ablation", F.interval_bars(
            t, "case", "value", f"{sec.title}: F(C)/F(M)", lo="value_lo", hi="value_hi",
            xlabel="F(C) / F(M)"), "Error bars: 95% intervals. 1 = the circuit alone behaves as "
            "the model; the number depends on the ablation (Miller et al. 2024)."))  # fmt: skip
    curve = d[d["operation"] == "faithfulness_curve"]
    if len(curve):
        src = (curve["scores"].astype(str) + ": ") if "scores" in curve.columns else ""
        curve = curve.assign(
            case=src + curve["level"].astype(str) + " / " + curve["mode"].astype(str)
        )
        pts = curve[curve["metric"] == "faithfulness"]
        if "fraction" in pts.columns and len(pts):
            c = mean_of(pts, ["case", "fraction"], ["value", "circuit_value", "n_kept"])
            sec.tables.append(Table(f"{sid}-curve", "Faithfulness curve f(k)", c,
                                    "`value` = (F(C_k) - F(∅)) / (F(M) - F(∅)) for the top "
                                    "fraction k of units by score."))  # fmt: skip
            sec.figures.append(Figure(f"{sid}-curve", "Faithfulness curve", F.lines(
                c, "fraction", "value", f"{sec.title}: f(k)", hue="case", hline=1.0,
                hline_label="the full model", xlabel="fraction of units kept k",
                ylabel="normalized faithfulness f(k)"), "MIB's curve; CPR is the area under it, "
                "CMD the area under |1 - f|."))  # fmt: skip
        areas = curve[curve["metric"].isin(["cpr", "cmd"])]
        if len(areas):
            a = mean_of(areas, ["case", "metric"], ["value"])
            w = a.pivot_table(index="case", columns="metric", values="value", aggfunc="mean").reset_index()  # fmt: skip
            w.columns.name = None
            sec.tables.append(Table(f"{sid}-areas", "Areas under the curve (CPR, CMD)", w,
                                    "CPR: higher is better; CMD: lower is better."))  # fmt: skip
            for r in w.to_dict("records"):
                sec.headlines.append(Headline(
                    f"Faithfulness curve ({r['case']}): CPR {fmt(r.get('cpr'))}, CMD "
                    f"{fmt(r.get('cmd'))}."))  # fmt: skip
    for op in ("completeness", "minimality"):
        sub = d[d["operation"] == op]
        if len(sub):
            data = sub.drop(columns=[c for c in ("analysis", "kind") if c in sub.columns])
            sec.tables.append(Table(f"{sid}-{op}", op.capitalize(), data.dropna(axis=1, how="all").reset_index(drop=True)))  # fmt: skip
    if not sec.headlines:
        sec.headlines.append(Headline(f"{len(rows)} rows; no faithfulness ratio among them."))
    return sec


def _n(rows: Any, r: Any) -> int | None:
    if "n" not in rows.columns:
        return None
    n = pd.to_numeric(rows["n"], errors="coerce").dropna()
    return int(n.iloc[0]) if len(n) and n.nunique() == 1 else None


ABOUT = (
    "How much of the model's behaviour the circuit alone keeps when everything outside it is "
    "ablated: F(C)/F(M) per ablation mode and level (node: heads and MLPs outside the circuit; "
    "edge: edges outside it), and MIB's faithfulness curve over the top fractions of scored units "
    "with its areas CPR and CMD."
)
