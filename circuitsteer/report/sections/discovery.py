"""The discovery section: the edges that circuit discovery scored highest, drawn as a circuit
coloured by score, and the ranked edge table.

Example:
    >>> import pandas as pd
    >>> from circuitsteer.report.sections._base import Context
    >>> rows = pd.DataFrame({"edge": ["input->a0.h0<q>", "a0.h0->logits"], "src": ["input", "a0.h0"],
    ...                      "dst": ["a0.h0", "logits"], "channel": ["q", None], "score": [0.5, -0.2]})
    >>> discovery(Context(run=None), {"name": "eap"}, rows, "eap").headlines[0].text
    '2 edges scored; the top one is input->a0.h0<q> (0.500); the 2 drawn carry 1.000 of the total |score|.'
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from circuitsteer.report import figures as F
from circuitsteer.report.sections._base import Context, Figure, Headline, Section, Table, params_of
from circuitsteer.report.stats import fmt

TOP_EDGES = 40


def _circuit(edges: Any, ctx: Context, name: str) -> Any:
    import circuitsteer as cs

    model = ctx.run.spec.get("model") if ctx.run is not None else None
    c = cs.Circuit(name, model=model if isinstance(model, str) else None, shape=ctx.shape)
    for r in edges.itertuples(index=False):
        ch = r.channel if isinstance(r.channel, str) and r.channel else None
        c.add_edge(str(r.src), str(r.dst), ch, score=float(r.score))
    return c


def discovery(ctx: Context, entry: dict[str, Any], rows: Any, sid: str) -> Section:
    """Top edges by |score| (ACDC: the kept edges) as a graph and a table."""
    sec = Section(sid, str(entry["name"]), "discovery", ABOUT, params_of(entry))
    d = rows.copy()
    # the runner's rows: node = the edge's name, value = its score (tidy columns)
    if "score" not in d.columns:
        d["score"] = d["value"]
    if "edge" not in d.columns:
        d["edge"] = d["node"]
    d["score"] = pd.to_numeric(d["score"], errors="coerce")
    if "channel" not in d.columns:
        d["channel"] = None
    n_all = len(d)
    d = d.dropna(subset=["score"])
    d = d.reindex(d["score"].abs().sort_values(ascending=False, kind="stable").index)
    kept = d[d["kept"].astype(bool)] if "kept" in d.columns and d["kept"].notna().any() else None
    shown = kept if kept is not None and 0 < len(kept) <= 4 * TOP_EDGES else d.head(TOP_EDGES)
    total = d["score"].abs().sum()
    cols = [
        c for c in ("edge", "src", "dst", "channel", "score", "tested", "kept") if c in d.columns
    ]
    table = d[cols].reset_index(drop=True)
    sec.tables.append(Table(f"{sid}-edges", "Edges ranked by |score|", table,
                            "Score: the edge's effect on the method's loss when ablated (positive: "
                            "ablating it moves the model away from its clean behaviour).", max_rows=20))  # fmt: skip
    if len(d):
        top = d.iloc[0]
        name = top["edge"] if "edge" in d.columns else f"{top['src']}->{top['dst']}"
        share = shown["score"].abs().sum() / total if total else float("nan")
        sec.headlines.append(Headline(
            f"{len(d)} edges scored{f' of {n_all} (the rest untested)' if n_all > len(d) else ''}; "
            f"the top one is {name} ({fmt(top['score'])}); the "
            f"{len(shown)} drawn carry {fmt(share)} of the total |score|."))  # fmt: skip
        if kept is not None:
            sec.headlines.append(Headline(f"The method kept {len(kept)} of {len(d)} edges."))
    try:
        c = _circuit(shown, ctx, sec.title)
    except Exception as e:  # noqa: BLE001 - a figure is optional; the table has the data
        sec.notes.append(f"The edges could not be drawn as a circuit: {e}")
        return sec
    node_score: dict[str, float] = {}
    for r in shown.itertuples(index=False):
        node_score[str(r.src)] = node_score.get(str(r.src), 0.0) + float(r.score)
    sec.figures.append(Figure(f"{sid}-circuit", "The top edges as a circuit",
                              F.circuit_graph(c, node_score, f"{sec.title}: top {len(shown)} edges", "sum of outgoing scores"),
                              "Each node is filled by the sum of the scores of its drawn "
                              "outgoing edges; edge colour: the receiving channel."))  # fmt: skip
    return sec


ABOUT = (
    "Circuit discovery scores every edge of the model's edge graph. The graph shows the "
    "highest-scoring edges (the kept edges for ACDC) as a circuit; the table ranks all of them."
)
