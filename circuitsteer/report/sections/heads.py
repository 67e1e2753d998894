"""Sections for per-head ablations (a layer x head heatmap), explicit intervention grids, and
any kind without a section of its own (a generic table).

Example:
    >>> import pandas as pd
    >>> from circuitsteer.report.sections._base import Context
    >>> rows = pd.DataFrame({"node": ["a0.h0", "a0.h1", "a1.h0", "a1.h1"], "metric": "logit_diff",
    ...                      "mode": "zero", "value": [1.0, 0.5, 0.9, 1.1],
    ...                      "effect": [0.0, -0.5, -0.1, 0.1]})
    >>> s = head_ablation(Context(run=None), {"name": "heads", "kind": "head_ablation"}, rows, "heads")
    >>> s.headlines[0].text
    'Ablating a0.h1 (zero) changes logit_diff by -0.500 (the largest change of 4 heads).'
"""

from __future__ import annotations

import re
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
    has,
    params_of,
    summarise,
    value_column,
    variant_label,
)

HEAD = re.compile(r"^a(\d+)\.h(\d+)$")
MAX_HEATMAPS = 6


def head_ablation(ctx: Context, entry: dict[str, Any], rows: Any, sid: str) -> Section:
    """Effect of ablating each head: a layer x head heatmap per (mode, metric), the heads
    ranked by the size of their effect, and the circuit coloured by it."""
    sec = Section(
        sid, str(entry["name"]), "head_ablation", ABOUT["head_ablation"], params_of(entry)
    )
    col = value_column(rows)
    heads = rows[rows["node"].astype(str).str.match(HEAD)].copy()
    if heads.empty:
        raise KeyError("no rows with node names a{L}.h{H}")
    heads["layer"] = heads["node"].astype(str).str.extract(HEAD)[0].astype(int)
    heads["head"] = heads["node"].astype(str).str.extract(HEAD)[1].astype(int)
    keys = [k for k in ("mode", "metric") if k in heads.columns]
    agg: Any = summarise(heads, ["node", "layer", "head", *keys], col)
    if col == "effect" and "value" in heads.columns:
        vals = heads.groupby(["node", *keys], dropna=False, sort=False)["value"].mean()
        agg = agg.merge(vals.rename("value").reset_index(), on=["node", *keys], how="left")
    if "value" in agg.columns:  # the metric itself beside its change
        agg.insert(agg.columns.get_loc(col), "value", agg.pop("value"))
    order = agg[col].abs().sort_values(ascending=False, kind="stable").index
    agg = agg.iloc[order].reset_index(drop=True)
    groups = list(agg.groupby(keys, dropna=False, sort=False)) if keys else [((), agg)]
    for i, (key, g) in enumerate(groups[:MAX_HEATMAPS]):
        key = key if isinstance(key, tuple) else (key,)
        named = dict(zip(keys, key, strict=True))
        desc = ", ".join(
            [f"{named['mode']} ablation"] * isinstance(named.get("mode"), str)
            + [str(named["metric"])] * isinstance(named.get("metric"), str)
        )
        m = g.pivot_table(index="layer", columns="head", values=col, aggfunc="mean")
        label = f"{col} of {desc}" if desc else col
        sec.figures.append(Figure(f"{sid}-heatmap-{i}", f"Layer x head: {label}",
                                  F.heatmap(m, f"{sec.title}: {label}", col),
                                  "Each cell is one head's mean change over the task's examples "
                                  "when that head alone is ablated (red: up, blue: down)."))  # fmt: skip
        if i == 0:
            top = g.iloc[0]
            iv = summarise(heads[heads["node"] == top["node"]].pipe(_match, keys, key), [], col)
            from circuitsteer.report.stats import Interval

            interval = Interval(float(iv[col].iloc[0]), float(iv[f"{col}_lo"].iloc[0]),
                                float(iv[f"{col}_hi"].iloc[0]), str(iv["ci"].iloc[0]),
                                _n(heads, top["node"]))  # fmt: skip
            what = f" ({key[keys.index('mode')]})" if "mode" in keys else ""
            metric = key[keys.index("metric")] if "metric" in keys else col
            sec.headlines.append(Headline(
                f"Ablating {top['node']}{what} changes {metric} by {interval.text()} "
                f"(the largest change of {len(g)} heads).", interval))  # fmt: skip
            scores = circuit_scores(ctx, dict(zip(g["node"], g[col], strict=True)))
            if scores:
                sec.figures.append(Figure(f"{sid}-circuit", "The circuit coloured by the effect",
                                          F.circuit_graph(ctx.circuit, scores, f"{ctx.circuit.name}: {label}", col),
                                          "Circuit heads filled by the effect of ablating them; "
                                          "white: not measured."))  # fmt: skip
    sec.tables.append(Table(f"{sid}-heads", "Heads ranked by the size of the effect", agg,
                            f"`{col}` is the mean change over examples; `_lo/_hi` its 95% interval "
                            "(`ci` says how it was computed)."))  # fmt: skip
    return sec


def _match(df: Any, keys: list[str], key: tuple) -> pd.DataFrame:
    for k, v in zip(keys, key, strict=True):
        df = df[df[k].isna()] if pd.isna(v) else df[df[k] == v]
    return df


def _n(rows: Any, node: str) -> int | None:
    if "n" not in rows.columns:
        return None
    n = pd.to_numeric(rows.loc[rows["node"] == node, "n"], errors="coerce").dropna()
    return int(n.iloc[0]) if len(n) else None


def grid(ctx: Context, entry: dict[str, Any], rows: Any, sid: str) -> Section:
    """Explicit interventions: per variant and metric, the mean (and the change from the clean
    run with its interval when the rows have it), as a table and a bar chart."""
    sec = Section(sid, str(entry["name"]), "grid", ABOUT["grid"], params_of(entry))
    d = rows.copy()
    d["variant"] = [variant_label(r) for r in d.to_dict("records")]
    col = value_column(d)
    keys = ["variant", *[k for k in ("metric",) if k in d.columns]]
    agg: Any = summarise(d, keys, col)
    if col == "effect" and "value" in d.columns:
        agg.insert(len(keys), "value", d.groupby(keys, dropna=False, sort=False)["value"].mean().to_numpy())  # fmt: skip
    order = agg[col].abs().sort_values(ascending=False, kind="stable").index
    agg = agg.iloc[order].reset_index(drop=True)  # the largest changes first
    sec.tables.append(Table(f"{sid}-variants", "Variants, the largest changes first", agg,
                            f"`{col}`: mean over examples (the Parquet rows' mean where several); "
                            "`_lo/_hi`: 95% interval, method in `ci`."))  # fmt: skip
    metric = first_metric(d)
    sub = agg if metric is None else agg[agg["metric"] == metric]
    if len(sub):
        sec.figures.append(Figure(f"{sid}-bars", f"{col} per variant", F.interval_bars(
            sub, "variant", col, f"{sec.title}: {col} of {metric or 'the metric'}",
            lo=f"{col}_lo", hi=f"{col}_hi"), "Error bars: the 95% interval of the table."))  # fmt: skip
        top = sub.iloc[sub[col].abs().argmax()]
        from circuitsteer.report.stats import Interval

        iv = Interval(float(top[col]), float(top[f"{col}_lo"]), float(top[f"{col}_hi"]), str(top["ci"]))  # fmt: skip
        sec.headlines.append(Headline(
            f"Of {len(sub)} variants, {top['variant']} moves {metric or 'the metric'} most: "
            f"{col} {iv.text()}.", iv))  # fmt: skip
    return sec


def generic(ctx: Context, entry: dict[str, Any], rows: Any, sid: str) -> Section:
    """Any other kind: the rows as a table (first rows shown, all in the CSV)."""
    kind = str(entry.get("kind"))
    sec = Section(sid, str(entry["name"]), kind, ABOUT["generic"], params_of(entry))
    data = rows.drop(columns=[c for c in ("analysis", "kind") if c in rows.columns])
    sec.tables.append(Table(f"{sid}-rows", "Result rows", data.reset_index(drop=True),
                            f"{len(data)} rows as the run wrote them."))  # fmt: skip
    if has(rows, "metric", "value") and len(rows):
        m = first_metric(rows)
        v = pd.to_numeric(rows.loc[rows["metric"] == m, "value"], errors="coerce").dropna()
        if len(v):
            sec.headlines.append(Headline(
                f"{len(rows)} rows; {m} ranges from {v.min():.3f} to {v.max():.3f}."))  # fmt: skip
    else:
        sec.headlines.append(Headline(f"{len(rows)} rows (no metric/value columns to summarise)."))
    return sec


ABOUT = {
    "head_ablation": "Each attention head is ablated on its own and the task metric is measured "
    "over the task's examples. The heatmap shows every head's effect (change from the clean run) "
    "by layer and head; the table ranks heads by the size of that effect.",
    "grid": "Explicit interventions from the spec, each a variant run over the task. The table "
    "gives each variant's metric and its change from the clean run with a 95% interval.",
    "generic": "This kind of analysis has no dedicated section; its rows are shown as a table "
    "(the CSV holds all of them).",
}
