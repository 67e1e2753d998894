"""Sections for ablation versus addition (``compare_ablation_addition``) and downstream effects
(``downstream_effects``).

Example:
    >>> import pandas as pd
    >>> from circuitsteer.report.sections._base import Context
    >>> rows = pd.DataFrame({"node": ["a1.h3", "a1.h3"], "operation": ["ablate", "add"],
    ...     "mode": ["resample", None], "vector": [None, "mean_diff"], "coef": [None, 1.0],
    ...     "metric": "logit_diff", "value": [3.2, 3.4], "effect": [-0.8, -0.6]})
    >>> s = compare_ablation_addition(Context(run=None), {"name": "cmp"}, rows, "cmp")
    >>> s.tables[0].data.columns.tolist()
    ['node', 'metric', 'resample', 'mean_diff c=1']
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
    circuit_scores,
    first_metric,
    mean_of,
    params_of,
    summarise,
)
from circuitsteer.report.stats import Interval, fmt

ADD_COLS = ("frac_of_resample", "frac_of_mean", "frac_of_zero", "corr_with_resample", "vector_norm")


def _label(r: dict[str, Any]) -> str:
    if r.get("operation") == "ablate":
        return str(r.get("mode"))
    coef = r.get("coef")
    c = f" c={float(coef):g}" if coef is not None and not pd.isna(coef) else ""
    return f"{r.get('vector') or r.get('operation')}{c}"


def _tracking(pts: Any, ref_mode: str) -> Headline | None:
    """How well each addition's per-node effects track the ablation's across nodes (Pearson r
    over nodes, at least 3): the best mean-difference addition against its random control."""
    rs: dict[str, tuple[float, int]] = {}
    for label, g in pts.groupby("addition", sort=False):
        g = g.dropna(subset=["effect"])
        if len(g) >= 3 and g["effect"].std() > 0 and g["ablation"].std() > 0:
            rs[str(label)] = (float(g["effect"].corr(g["ablation"])), len(g))
    md = {k: v for k, v in rs.items() if not k.startswith("random")}
    if not md:
        return None
    best = max(md, key=lambda k: md[k][0])
    r, n = md[best]
    text = (
        f"Across {n} nodes, the effects of adding {best} track those of {ref_mode} "
        f"ablation with r = {fmt(r)}"
    )
    control = "random" + best[len(best.split(" ")[0]) :] if " " in best else None
    if control in rs:
        text += f" (matched random direction {control}: r = {fmt(rs[control][0])})"
    return Headline(text + ".")


def compare_ablation_addition(ctx: Context, entry: dict[str, Any], rows: Any, sid: str) -> Section:
    """Per node: the effect of each ablation mode and of each addition, side by side; the
    scatter of addition against ablation; the circuit coloured by the resample ablation."""
    sec = Section(sid, str(entry["name"]), "compare_ablation_addition", ABOUT["compare"],
                  params_of(entry))  # fmt: skip
    d = rows.copy()
    d["label"] = [_label(r) for r in d.to_dict("records")]
    keys = ["node", "metric", "operation", "label"]
    long = summarise(d, keys, "effect")
    extra = mean_of(d, keys, ["value", "clean", "corrupted", "frac_of_gap", *ADD_COLS])
    long = long.merge(extra, on=[k for k in keys if k in d.columns], how="left")
    labels = list(dict.fromkeys(d["label"]))
    wide = long.pivot_table(index=["node", "metric"], columns="label", values="effect",
                            aggfunc="mean", sort=False)  # fmt: skip
    wide = wide[[c for c in labels if c in wide.columns]].reset_index()
    wide.columns.name = None
    sec.tables.append(Table(f"{sid}-effects", "Effect of each ablation and addition, per node",
                            wide, "Mean change of the metric from the clean run. Ablation columns "
                            "are modes; addition columns are `vector c=coef`."))  # fmt: skip
    sec.tables.append(Table(f"{sid}-long", "Every case with its interval", long,
                            "`effect_lo/_hi`: 95% interval (`ci`: bootstrap = the analysis's "
                            "paired bootstrap over examples); `frac_of_resample`: the addition's "
                            "effect over the resample ablation's."))  # fmt: skip
    metric = first_metric(d)
    m = long[long["metric"] == metric] if metric else long
    abl = m[m["operation"] == "ablate"]
    add = m[m["operation"] != "ablate"]
    ref_mode = next((x for x in ("resample", "mean", "zero") if x in set(abl["label"])), None)
    if ref_mode is not None:
        ref: Any = abl[abl["label"] == ref_mode].set_index("node")["effect"]
        top = abl[abl["label"] == ref_mode].iloc[[int(abl[abl["label"] == ref_mode]["effect"].abs().argmax())]].iloc[0]  # fmt: skip
        iv = Interval(float(top["effect"]), float(top["effect_lo"]), float(top["effect_hi"]), str(top["ci"]))  # fmt: skip
        sec.headlines.append(Headline(
            f"{ref_mode.capitalize()}-ablating {top['node']} changes {metric} the most: {iv.text()}.", iv))  # fmt: skip
        if len(add):
            pts = add.assign(ablation=add["node"].map(ref), addition=add["label"])
            pts = pts.dropna(subset=["ablation"])
            track = _tracking(pts, ref_mode)
            if track is not None:  # the section's question answered first
                sec.headlines.insert(0, track)
            if len(pts):
                sec.figures.append(Figure(f"{sid}-scatter", "Addition versus ablation", F.scatter(
                    pts, "ablation", "effect", f"{sec.title}: {metric}", label="node", hue="addition",
                    xlabel=f"effect of {ref_mode} ablation", ylabel="effect of the addition"),
                    "One point per node and addition; on the dotted diagonal the addition "
                    "reproduces the ablation's mean effect."))  # fmt: skip
            md: Any = add[add["label"].str.startswith("mean_diff")]
            if "frac_of_resample" in md.columns and md["frac_of_resample"].notna().any():
                b = md.loc[md["frac_of_resample"].abs().idxmax()]
                sec.headlines.append(Headline(
                    f"The largest ratio of a mean-difference addition's effect to the resample "
                    f"ablation's is {fmt(b['frac_of_resample'])} ({b['node']}, {b['label']})."))  # fmt: skip
        scores = circuit_scores(ctx, ref.to_dict())
        if scores:
            sec.figures.append(Figure(f"{sid}-circuit", "The circuit coloured by the ablation effect",
                                      F.circuit_graph(ctx.circuit, scores,
                                                      f"{ctx.circuit.name}: effect of {ref_mode} ablation on {metric}",
                                                      "effect"), "Nodes filled by the effect of "
                                      f"{ref_mode}-ablating them; white: not measured."))  # fmt: skip
    bars = m.copy()
    if len(bars):
        sec.figures.append(Figure(f"{sid}-bars", "Effects per node", F.interval_bars(
            bars, "node", "effect", f"{sec.title}: change of {metric}", hue="label",
            lo="effect_lo", hi="effect_hi"), "Error bars: 95% intervals."))  # fmt: skip
    return sec


def downstream_effects(ctx: Context, entry: dict[str, Any], rows: Any, sid: str) -> Section:
    """Per node downstream of the intervention: the change of its direct logit attribution and
    output, in total and split into the part through the circuit's edges and the rest."""
    sec = Section(sid, str(entry["name"]), "downstream_effects", ABOUT["downstream"],
                  params_of(entry))  # fmt: skip
    d = rows.copy()
    if "part" not in d.columns:
        d["part"] = "total"
    site = str(d["site"].dropna().iloc[0]) if "site" in d.columns and d["site"].notna().any() else "the intervention"  # fmt: skip
    logit_rows = d[d["node"] == "logits"]
    nodes = d[d["node"] != "logits"]
    if "relation" in nodes.columns:
        nodes = nodes[nodes["relation"] != "upstream"]
    keys = ["node", "metric", "part"] + (["to"] if "to" in d.columns else [])
    parts = list(dict.fromkeys(d["part"].astype(str)))
    if len(logit_rows):
        lt = mean_of(logit_rows, ["metric", "part"], ["value", "mean_abs"])
        sec.tables.append(Table(f"{sid}-metric", "Change of the task metric", lt,
                                "`value`: mean change over examples; `through_circuit`: only "
                                "along the circuit's edges; `rest` = total - through."))  # fmt: skip
        tot = lt[lt["part"] == "total"]
        if len(tot):
            metric = str(tot["metric"].iloc[0])
            text = f"{site} changes {metric} by {fmt(tot['value'].iloc[0])} in total"
            thr = lt[lt["part"] == "through_circuit"]
            rest = lt[lt["part"] == "rest"]
            if len(thr) and len(rest):
                text += (f": {fmt(thr['value'].iloc[0])} through the circuit's edges and "
                         f"{fmt(rest['value'].iloc[0])} through the rest")  # fmt: skip
            sec.headlines.append(Headline(text + "."))
    for metric, title in (("dla_delta", "direct logit attribution"), ("out_delta_norm", "output change (norm)")):  # fmt: skip
        sub = nodes[nodes["metric"] == metric]
        if sub.empty:
            continue
        t = mean_of(sub, keys, ["value", "mean_abs"])
        wide = t.pivot_table(
            index="node", columns="part", values="value", aggfunc="mean", sort=False
        )
        wide = wide[[p for p in parts if p in wide.columns]].reset_index()
        wide.columns.name = None
        sec.tables.append(Table(f"{sid}-{metric}", f"Change of each node's {title}", wide,
                                f"Mean over examples of the change of `{metric}` per part."))  # fmt: skip
        sec.figures.append(Figure(f"{sid}-{metric}-bars", f"Downstream change: {title}",
                                  F.interval_bars(t, "node", "value", f"{sec.title}: {metric}",
                                                  hue="part", xlabel=f"change of {metric}"),
                                  "Bars per part: total, through the circuit's edges, rest."))  # fmt: skip
        if metric == "dla_delta":
            tot = t[t["part"] == "total"]
            if len(tot):
                top = tot.loc[tot["value"].abs().idxmax()]
                sec.headlines.append(Headline(
                    f"The largest downstream change of direct logit attribution is "
                    f"{top['node']}'s: {fmt(top['value'])}."))  # fmt: skip
                scores = circuit_scores(ctx, dict(zip(tot["node"], tot["value"], strict=True)))
                if scores:
                    sec.figures.append(Figure(f"{sid}-circuit", "The circuit coloured by the DLA change",
                                              F.circuit_graph(ctx.circuit, scores, f"{ctx.circuit.name}: DLA change under {site}", "dla_delta"),
                                              "Nodes filled by the total change of their direct "
                                              "logit attribution; white: not measured."))  # fmt: skip
    att = nodes[nodes["metric"] == "attn_delta"]
    if len(att) and "to" in att.columns:
        t = mean_of(att[att["part"] == "total"], ["node", "to"], ["value"])
        wide = t.pivot_table(index="node", columns="to", values="value", aggfunc="mean", sort=False).reset_index()  # fmt: skip
        wide.columns.name = None
        sec.tables.append(Table(f"{sid}-attention", "Change of attention from END (total)", wide,
                                "Mean change of each head's attention to the named positions."))  # fmt: skip
    if not sec.headlines:
        sec.headlines.append(Headline(f"{len(rows)} rows measured; no task-metric row."))
    return sec


ABOUT = {
    "compare": "For every node, the effect of ablating it (zero, mean, resample) beside the effect "
    "of adding its mean-difference direction (and a random control of the same norm) at each "
    "coefficient. If an addition reproduces an ablation, its point lies on the scatter's diagonal.",
    "downstream": "One intervention, and how it changes every node downstream of it: the node's "
    "output, attention and direct logit attribution (DLA), in total and split into the part that "
    "travels only along the circuit's edges and the rest.",
}
