"""One section builder per analysis kind; :func:`build_sections` turns a run into sections.

A builder is ``build(ctx, entry, rows, sid) -> Section``. A kind without a builder, or a builder
that fails on rows it cannot read (missing columns), gets the generic table section with a note
saying why, so a report is always produced.

Example:
    >>> sorted(BUILDERS)
    ['coefficient_sweep', 'compare_ablation_addition', 'discovery', 'downstream_effects', 'faithfulness', 'faithfulness_curve', 'grid', 'head_ablation', 'pca_study']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from circuitsteer.report.sections._base import (
    Context,
    Figure,
    Headline,
    Section,
    Table,
    slug,
)
from circuitsteer.report.sections.discovery import discovery
from circuitsteer.report.sections.effects import compare_ablation_addition, downstream_effects
from circuitsteer.report.sections.faithfulness import faithfulness
from circuitsteer.report.sections.heads import generic, grid, head_ablation
from circuitsteer.report.sections.pca import pca_study
from circuitsteer.report.sections.sweep import coefficient_sweep

Builder = Callable[[Context, dict[str, Any], pd.DataFrame, str], Section]

BUILDERS: dict[str, Builder] = {
    "grid": grid,
    "head_ablation": head_ablation,
    "compare_ablation_addition": compare_ablation_addition,
    "downstream_effects": downstream_effects,
    "coefficient_sweep": coefficient_sweep,
    "faithfulness": faithfulness,
    "faithfulness_curve": faithfulness,
    "pca_study": pca_study,
    "discovery": discovery,
}


# kinds whose entries may hold several independent studies, told apart by this column
GROUP_BY = {
    "downstream_effects": "intervention",
    "coefficient_sweep": "vector",
    "pca_study": "node",
}


def _grouped(builder: Builder, kind: str) -> Builder:
    """A builder that, when the rows hold several studies (``GROUP_BY``), builds one part per
    study and joins them into one section (headlines, tables and figures labelled by study)."""

    def build(ctx: Context, entry: dict[str, Any], rows: Any, sid: str) -> Section:
        col = GROUP_BY.get(kind)
        if col is None or col not in rows.columns or rows[col].nunique(dropna=True) < 2:
            return builder(ctx, entry, rows, sid)
        parts = [(str(k), g.reset_index(drop=True)) for k, g in rows.groupby(col, sort=False)]
        taken: set[str] = set()
        out: Section | None = None
        for label, g in parts:
            named = {**entry, "name": f"{entry['name']} [{label}]"}  # titles inside the figures
            part = builder(ctx, named, g, slug(f"{sid}-{label}", taken))
            for h in part.headlines:
                h.text = f"[{label}] {h.text}"
            for t in part.tables:
                t.title = f"{label}: {t.title}"
            for f in part.figures:
                f.title = f"{label}: {f.title}"
            if out is None:
                out = part
                out.id, out.title = sid, str(entry["name"])
            else:
                out.headlines += part.headlines
                out.tables += part.tables
                out.figures += part.figures
                out.notes += part.notes
        assert out is not None
        return out

    return build


def build_sections(ctx: Context) -> list[Section]:
    """A section per analysis entry of the run (spec order), each from its own rows."""
    out: list[Section] = []
    taken: set[str] = {"summary", "spec", "model", "provenance", "contents"}
    for entry in ctx.run.analyses:
        name = str(entry.get("name"))
        kind = str(entry.get("kind"))
        rows = ctx.run.rows(name)
        sid = slug(name, taken)
        if rows.empty:
            sec = Section(sid, name, kind, "This analysis has no result rows in the run.",
                          {k: v for k, v in entry.items() if k not in ("name", "kind")})  # fmt: skip
            sec.headlines.append(Headline("No rows: the analysis did not run or wrote nothing."))
            out.append(sec)
            continue
        builder = BUILDERS.get(kind)
        if builder is None:
            sec = generic(ctx, entry, rows, sid)
            sec.notes.append(
                f"No dedicated section for kind {kind!r}; the rows are shown as a table."
            )
        else:
            try:
                sec = _grouped(builder, kind)(ctx, entry, rows, sid)
            except (KeyError, ValueError, TypeError, IndexError) as e:
                sec = generic(ctx, entry, rows, sid)
                sec.notes.append(
                    f"The {kind} section could not be built from these rows "
                    f"({type(e).__name__}: {e}); they are shown as a table instead."
                )
        out.append(sec)
    return out


__all__ = ["BUILDERS", "Context", "Figure", "Headline", "Section", "Table", "build_sections"]
