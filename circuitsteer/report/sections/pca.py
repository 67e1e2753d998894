"""The PCA-study section: explained variance per component, the effect of adding each
component (both signs) against its matched controls, and the tokens it promotes.

Example:
    >>> parse_tokens(" give|+3.13 had|+2.98 'x|y'|+1")
    [('give', 3.13), ('had', 2.98), ("'x|y'", 1.0)]
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
    first_metric,
    mean_of,
    params_of,
    summarise,
)
from circuitsteer.report.stats import Interval, fmt

_TOKEN = re.compile(r"\s*(.+?)\|([+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)(?=\s|$)")


def parse_tokens(text: Any) -> list[tuple[str, float]]:
    """``"tok|+1.23 tok|+0.98"`` (the ``top_tokens`` column) as ``[(token, gain)]``."""
    if not isinstance(text, str):
        return []
    return [(m[1], float(m[2])) for m in _TOKEN.finditer(text)]


def _direction(r: dict[str, Any]) -> str:
    v = str(r.get("vector"))
    comp = r.get("component")
    if v.startswith("pc") or comp is None or pd.isna(comp):
        return v
    return f"{v} (pc{int(comp)})"


def pca_study(ctx: Context, entry: dict[str, Any], rows: Any, sid: str) -> Section:
    """Explained variance, effect curves against controls, promoted tokens."""
    sec = Section(sid, str(entry["name"]), "pca_study", ABOUT, params_of(entry))
    d = rows.copy()
    d["direction"] = [_direction(r) for r in d.to_dict("records")]
    pcs = d[d["vector"].astype(str).str.match(r"^pc\d+$")]
    site = str(d["node"].dropna().iloc[0]) if "node" in d.columns and d["node"].notna().any() else "the site"  # fmt: skip
    if "explained_variance_ratio" in pcs.columns and len(pcs):
        ev = mean_of(pcs, ["component"], ["explained_variance_ratio"]).sort_values("component")
        sec.tables.append(Table(f"{sid}-variance", "Explained variance", ev,
                                f"Share of the variance of the activations at {site} per "
                                "principal component."))  # fmt: skip
        sec.figures.append(Figure(f"{sid}-variance", "Explained variance",
                                  F.explained_variance(ev, f"{sec.title}: PCA at {site}"),
                                  "Bars: each component; line: cumulative."))  # fmt: skip
        sec.headlines.append(Headline(
            f"The top {len(ev)} principal components at {site} explain "
            f"{fmt(ev['explained_variance_ratio'].sum())} of the variance "
            f"(pc{int(ev['component'].iloc[0])}: {fmt(ev['explained_variance_ratio'].iloc[0])})."))  # fmt: skip
    metric = first_metric(d)
    m = d[d["metric"] == metric] if metric else d
    col = "effect" if "effect" in m.columns else "value"
    eff = summarise(m, ["direction", "coef"], col)
    wide = eff.pivot_table(
        index="direction", columns="coef", values=col, aggfunc="mean", sort=False
    )
    wide.columns = [f"c={c:g}" for c in wide.columns]
    wide = wide.reset_index()
    sec.tables.append(Table(f"{sid}-effects", f"Change of {metric} per direction and coefficient",
                            wide, "Coefficients in the scale of the study (std: standard "
                            "deviations along the component). Controls: `random` (isotropic) and "
                            "`covariance` (drawn from the activations' covariance), matched in "
                            "norm."))  # fmt: skip
    sec.tables.append(Table(f"{sid}-effects-ci", "Every case with its interval", eff,
                            "95% interval of the change (`ci`: method)."))  # fmt: skip
    if "component" in m.columns:
        for comp, g in list(eff.assign(component=eff["direction"].str.extract(r"pc(\d+)")[0]).groupby("component"))[:4]:  # fmt: skip
            sec.figures.append(Figure(f"{sid}-pc{comp}", f"Adding pc{comp} and its controls", F.lines(
                g, "coef", col, f"{sec.title}: pc{comp} vs controls", hue="direction",
                lo=f"{col}_lo", hi=f"{col}_hi", xlabel="signed coefficient", ylabel=f"change of {metric}"),
                "Bands: 95% intervals over examples."))  # fmt: skip
    pc_eff = eff[eff["direction"].str.match(r"^pc\d+$")]
    if len(pc_eff):
        b = pc_eff.loc[pc_eff[col].abs().idxmax()]
        iv = Interval(float(b[col]), float(b[f"{col}_lo"]), float(b[f"{col}_hi"]), str(b["ci"]))
        ctrl = eff[(eff["coef"] == b["coef"]) & ~eff["direction"].str.match(r"^pc\d+$")
                   & eff["direction"].str.endswith(f"({b['direction']})")]  # fmt: skip
        ctl = ", ".join(
            f"{r.direction.split(' ')[0]} {fmt(getattr(r, col))}" for r in ctrl.itertuples()
        )
        sec.headlines.append(Headline(
            f"The largest change of {metric} by a component is {b['direction']} at c = "
            f"{b['coef']:g}: {iv.text()}" + (f" (controls at the same norm: {ctl})." if ctl else "."), iv))  # fmt: skip
    if "top_tokens" in d.columns:
        tt = d[d["top_tokens"].notna() & (d["metric"] == metric if metric else True)]
        tt = tt.drop_duplicates(["direction", "coef"])[["direction", "coef", "top_tokens"]]
        tt = tt.reset_index(drop=True)
        sec.tables.append(Table(f"{sid}-tokens", "Promoted tokens at END", tt,
                                "The tokens whose logit rises most, `token|mean gain`.", max_rows=24))  # fmt: skip
        for direction in ("pc0",):
            sub = tt[tt["direction"] == direction]
            if len(sub):
                for pick in (sub["coef"].max(), sub["coef"].min()):
                    toks = parse_tokens(sub.loc[sub["coef"] == pick, "top_tokens"].iloc[0])
                    if toks:
                        sign = "plus" if pick > 0 else "minus"
                        sec.figures.append(Figure(f"{sid}-tokens-{direction}-{sign}",
                                                  f"Tokens promoted by {direction} at c = {pick:g}",
                                                  F.token_gains(toks, f"{direction}, c = {pick:g}"),
                                                  "Mean logit gain at END over the task's prompts."))  # fmt: skip
    return sec


ABOUT = (
    "The top principal directions of the activations at a site, each added with both signs at "
    "several coefficients, against a random direction and one drawn from the activations' "
    "covariance of the same norm. The tokens each direction promotes show what it means."
)
