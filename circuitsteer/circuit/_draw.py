"""Drawing a circuit: columns by depth (input, heads of layer 0, MLP 0, heads of layer 1, ...,
logits), nodes coloured by class or by a score, edges coloured by channel.

Uses matplotlib's object API with the Agg canvas, so it never opens a window and does not
depend on (or change) the pyplot backend.

Example:
    >>> from circuitsteer.circuit import load_circuit
    >>> fig = draw_circuit(load_circuit("gpt2-small/ioi"))             # doctest: +SKIP
    >>> fig = draw_circuit(c, "ioi.svg", score="effect", table=df)      # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from circuitsteer.circuit._parts import channel_of
from circuitsteer.errors import CircuitFormatError

if TYPE_CHECKING:
    from circuitsteer.circuit._graph import Circuit

CHANNEL_COLORS = {"q": "#4C72B0", "k": "#55A868", "v": "#C44E52", None: "#8C8C8C"}
KIND_COLORS = {"input": "#B0B0B0", "logits": "#B0B0B0", "mlp": "#D9D9D9", "head": "#EEEEEE"}
IMAGE_SUFFIXES = (".png", ".svg", ".pdf")


def _layout(c: Circuit) -> dict[str, tuple[float, float]]:
    """x = depth (logits one column after the last MLP); y spreads each column, grouped by class."""
    columns: dict[float, list[str]] = {}
    finite = [c.graph.nodes[n]["layer"] for n in c.graph if c.graph.nodes[n]["layer"] is not None]
    last = 2.0 * (max(finite) + 1) + 1 if finite else 1.0
    for n, a in c.graph.nodes(data=True):
        x = (
            last
            if a["kind"] == "logits"
            else 0.0
            if a["kind"] == "input"
            else (2.0 * a["layer"] + (1 if a["kind"] == "head" else 2))
        )
        columns.setdefault(x, []).append(n)
    pos = {}
    for x, names in columns.items():
        names.sort(
            key=lambda n: (str(c.graph.nodes[n].get("class") or ""), c.graph.nodes[n]["head"] or 0)
        )
        for i, n in enumerate(names):
            pos[n] = (x, (len(names) - 1) / 2.0 - i)
    return pos


def _scores(c: Circuit, score: Any, table: Any) -> dict[str, float]:
    if score is None:
        return {}
    if isinstance(score, str):
        if table is not None:
            if score not in table.columns:
                raise CircuitFormatError(
                    f"draw: the table has no column {score!r}",
                    fix=f"use one of {list(table.columns)}",
                )
            keys = table["node"] if "node" in table.columns else table.index
            values = dict(zip(keys, table[score], strict=True))
        else:
            values = {n: a.get(score) for n, a in c.graph.nodes(data=True)}
    elif isinstance(score, Mapping) or hasattr(score, "items"):
        values = dict(score.items())
    else:
        raise CircuitFormatError(
            f"draw: score must be a column/attribute name or a mapping, got {type(score).__name__}",
            fix="pass score='score', score={'a9.h9': 0.3}, or score='col' with table=df",
        )
    out = {}
    for n, v in values.items():
        if n in c.graph and v is not None:
            try:
                f = float(v)
            except (TypeError, ValueError):
                continue
            if math.isfinite(f):
                out[n] = f
    return out


def draw_circuit(
    c: Circuit,
    path: str | os.PathLike[str] | None = None,
    *,
    score: Any = None,
    table: Any = None,
    ax: Any = None,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
    palette: str = "tab10",
    cmap: str = "coolwarm",
    edges: bool = True,
    labels: bool = True,
) -> Any:
    """Draw ``c`` and return the matplotlib ``Figure``; write it to ``path`` (PNG/SVG/PDF).

    ``score``: a node attribute name (``"score"``), a column of ``table`` (a DataFrame with a
    ``node`` column or node names as index), or a mapping node -> value. Scored nodes are
    filled from a diverging colormap centred on 0, outlined in their class colour.
    """
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if path is not None and Path(path).suffix.lower() not in IMAGE_SUFFIXES:
        raise CircuitFormatError(
            f"draw: cannot write {Path(path).name!r}", fix="use a .png, .svg or .pdf path"
        )
    pos = _layout(c)
    xs = [p[0] for p in pos.values()] or [0.0]
    height = max([abs(p[1]) for p in pos.values()] or [1.0])
    if ax is None:
        fig = Figure(
            figsize=figsize or (max(6.0, 0.5 * (max(xs) + 2)), max(3.5, 0.45 * (2 * height + 2)))
        )
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
    fig = ax.figure
    classes = list(c.classes)
    colors: dict[Any, Any] = dict(
        zip(classes, sns.color_palette(palette, max(len(classes), 1)), strict=False)
    )
    scores = _scores(c, score, table)

    if edges:
        segs: dict[str | None, list] = {ch: [] for ch in CHANNEL_COLORS}
        for u, v, k in c.graph.edges(keys=True):
            segs[channel_of(k)].append([pos[u], pos[v]])
        for ch, lines in segs.items():
            if lines:
                ax.add_collection(
                    LineCollection(
                        lines,
                        colors=CHANNEL_COLORS[ch],
                        linewidths=0.7,
                        alpha=0.35 if c.graph.number_of_edges() > 100 else 0.7,
                        zorder=1,
                    )
                )
    norm, cm = None, None
    if scores:
        lim = max(abs(v) for v in scores.values()) or 1.0
        norm = Normalize(-lim, lim)
        cm = sns.color_palette(cmap, as_cmap=True)
    for n, a in c.graph.nodes(data=True):
        cls = a.get("class")
        edge_color = colors.get(cls, "#555555")
        if scores:
            face = cm(norm(scores[n])) if n in scores else "white"  # type: ignore[misc]
        else:
            face = colors.get(cls, KIND_COLORS.get(a["kind"], "#EEEEEE"))
        ax.scatter(
            *pos[n],
            s=420,
            c=[face],
            edgecolors=[edge_color],
            linewidths=2 if scores else 0.8,
            zorder=2,
        )
        if labels:
            label = n if a["kind"] != "head" else f"{a['layer']}.{a['head']}"
            ax.annotate(label, pos[n], ha="center", va="center", fontsize=6, zorder=3)

    handles: list[Any] = [Patch(facecolor=colors[k], label=k) for k in classes]
    if edges:
        used = {channel_of(k) for _, _, k in c.graph.edges(keys=True)}
        handles += [
            Line2D([], [], color=CHANNEL_COLORS[ch], label=f"<{ch}>" if ch else "MLP/logits in")
            for ch in CHANNEL_COLORS
            if ch in used
        ]
    if handles:
        ax.legend(
            handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False
        )
    if scores and norm is not None and cm is not None:
        from matplotlib.cm import ScalarMappable

        fig.colorbar(
            ScalarMappable(norm=norm, cmap=cm),
            ax=ax,
            shrink=0.6,
            label=score if isinstance(score, str) else "score",
        )
    ax.set_xlim(min(xs) - 1, max(xs) + 1)
    ax.set_ylim(-height - 1, height + 1)
    ax.set_axis_off()
    ax.set_title(
        title
        or f"{c.name} ({c.model or 'model?'}): {len(c)} nodes, {c.graph.number_of_edges()} edges",
        fontsize=9,
    )
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, bbox_inches="tight", dpi=150)
    return fig
