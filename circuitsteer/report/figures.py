"""The report's figures (seaborn on matplotlib's object API with the Agg canvas: no window, no
pyplot state). Every function takes tidy data and returns a ``matplotlib.figure.Figure``;
:func:`save` writes it as PNG and SVG and returns the PNG bytes for embedding.

Example:
    >>> import pandas as pd
    >>> m = pd.DataFrame([[0.1, -0.5], [0.0, 2.0]], index=[0, 1], columns=[0, 1])
    >>> fig = heatmap(m, title="effect of ablating each head", label="effect")
    >>> fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()
    ('head', 'layer')
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

DPI = 110
PALETTE = "colorblind"


def new_figure(w: float = 6.4, h: float = 3.6, ncols: int = 1, nrows: int = 1) -> tuple[Any, Any]:
    """A Figure on an Agg canvas and its axes (one, or an array for a grid).

    >>> fig, ax = new_figure()
    >>> type(fig).__name__
    'Figure'
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=True)
    return fig, axes


def save(fig: Any, folder: Path, stem: str, dpi: int = DPI) -> bytes:
    """Write ``stem.png`` and ``stem.svg`` into ``folder``; return the PNG's bytes.

    >>> import tempfile
    >>> fig, ax = new_figure(); _ = ax.plot([0, 1], [1, 0])
    >>> with tempfile.TemporaryDirectory() as d:
    ...     png = save(fig, Path(d), "line")
    ...     sorted(p.name for p in Path(d).iterdir()), png[:4]
    (['line.png', 'line.svg'], b'\\x89PNG')
    """
    import io

    folder.mkdir(parents=True, exist_ok=True)
    fig.savefig(folder / f"{stem}.svg", format="svg")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    data = buf.getvalue()
    (folder / f"{stem}.png").write_bytes(data)
    return data


def _floats(values: Any) -> Any:
    """Values as a float64 array (NaN where not a number)."""
    import numpy as np

    return np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=float)


def _limit(values: Any) -> float:
    v = pd.to_numeric(pd.Series(values), errors="coerce").abs().max()
    return float(v) if v is not None and math.isfinite(v) and v > 0 else 1.0


def heatmap(matrix: Any, title: str, label: str, annotate: bool | None = None) -> Any:
    """Layer x head heatmap (rows: layers, columns: heads), diverging around 0."""
    import seaborn as sns

    h, w = matrix.shape
    fig, ax = new_figure(max(4.0, 0.55 * w + 2.0), max(2.6, 0.45 * h + 1.2))
    lim = _limit(matrix.to_numpy().ravel())
    annotate = (h * w <= 160) if annotate is None else annotate
    with warnings.catch_warnings():  # seaborn 0.13 calls a colormap method matplotlib deprecates
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        sns.heatmap(matrix.astype(float), ax=ax, cmap="RdBu_r", vmin=-lim, vmax=lim, center=0,
                    annot=annotate, fmt=".2f", annot_kws={"fontsize": 7}, linewidths=0.5,
                    linecolor="white", cbar_kws={"label": label})  # fmt: skip
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=10)
    return fig


def interval_bars(
    df: Any,
    x: str,
    y: str,
    title: str,
    hue: str | None = None,
    lo: str | None = None,
    hi: str | None = None,
    xlabel: str | None = None,
    horizontal: bool = True,
    max_categories: int = 30,
) -> Any:
    """Bars of ``y`` per ``x`` (grouped by ``hue``), with error bars from ``lo``/``hi`` columns;
    beyond ``max_categories`` values of ``x`` only those with the largest ``|y|`` are drawn (the
    title says so; the tables hold all).

    >>> d = pd.DataFrame({"node": ["a0.h1", "m0"], "effect": [-1.0, 0.5], "lo": [-1.5, 0.1], "hi": [-0.5, 0.9]})
    >>> fig = interval_bars(d, "node", "effect", "effects", lo="lo", hi="hi")
    >>> [t.get_text() for t in fig.axes[0].get_yticklabels()]
    ['a0.h1', 'm0']
    """
    import numpy as np
    import seaborn as sns

    d = df.reset_index(drop=True)
    cats = list(dict.fromkeys(d[x].astype(str)))
    if len(cats) > max_categories:
        size = d.assign(_a=np.abs(_floats(d[y]))).groupby(d[x].astype(str))["_a"].max()
        keep = set(size.sort_values(ascending=False).index[:max_categories])
        cats = [c for c in cats if c in keep]
        d = d[d[x].astype(str).isin(keep)]
        title = f"{title} (the {max_categories} largest of {len(size)})"
    hues = list(dict.fromkeys(d[hue].astype(str))) if hue else [None]
    n = len(cats)
    size = min(14.0, max(2.6, 0.28 * n * max(1, len(hues) ** 0.5) + 1.2))
    fig, ax = new_figure(6.4, size) if horizontal else new_figure(max(5.0, 0.5 * n + 2), 3.6)
    colors = sns.color_palette(PALETTE, max(1, len(hues)))
    width = 0.8 / max(1, len(hues))
    for j, hv in enumerate(hues):
        sub = d if hv is None else d[d[hue].astype(str) == hv]  # type: ignore[index]
        pos = {c: i for i, c in enumerate(cats)}
        idx = np.array([pos[c] for c in sub[x].astype(str)], dtype=float) - 0.4 + width * (j + 0.5)
        vals = _floats(sub[y])
        err = None
        if lo and hi and lo in sub and hi in sub:
            lo_v = _floats(sub[lo])
            hi_v = _floats(sub[hi])
            err = np.nan_to_num(np.vstack([vals - lo_v, hi_v - vals]).clip(min=0))
        kw = {"color": colors[j], "label": hv, "capsize": 2, "error_kw": {"linewidth": 0.8}}
        if horizontal:
            ax.barh(idx, vals, height=width, xerr=err, **kw)
        else:
            ax.bar(idx, vals, width=width, yerr=err, **kw)
    ticks = list(range(n))
    if horizontal:
        ax.set_yticks(ticks, cats, fontsize=7)
        ax.invert_yaxis()
        ax.axvline(0, color="black", linewidth=0.6)
        ax.set_xlabel(xlabel or y)
    else:
        ax.set_xticks(ticks, cats, fontsize=7, rotation=45, ha="right")
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_ylabel(xlabel or y)
    if hue:
        ax.legend(fontsize=7, title=hue, title_fontsize=7, frameon=False)
    ax.set_title(title, fontsize=10)
    sns.despine(ax=ax)
    return fig


def lines(
    df: Any,
    x: str,
    y: str,
    title: str,
    hue: str | None = None,
    lo: str | None = None,
    hi: str | None = None,
    vline: float | None = None,
    vline_label: str | None = None,
    hline: float | None = None,
    hline_label: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    symlog: bool = False,
    ax: Any = None,
) -> Any:
    """Curves of ``y`` against ``x`` per ``hue``, with a band from ``lo``/``hi`` and an optional
    vertical marker (the break point) and horizontal reference line.

    >>> d = pd.DataFrame({"coef": [0, 4, 16], "kl": [0.0, 0.2, 2.5]})
    >>> fig = lines(d, "coef", "kl", "sweep", vline=16, vline_label="break point", symlog=True)
    >>> [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    ['break point']
    """
    import seaborn as sns

    fig, ax = new_figure() if ax is None else (ax.figure, ax)
    d = df.sort_values(x)
    groups = [(None, d)] if hue is None else list(d.groupby(hue, sort=False))
    colors = sns.color_palette(PALETTE, max(1, len(groups)))
    for (key, sub), color in zip(groups, colors, strict=False):
        xs = _floats(sub[x])
        ys = _floats(sub[y])
        ax.plot(xs, ys, marker="o", markersize=3, color=color, linewidth=1.4,
                label=None if key is None else str(key))  # fmt: skip
        if lo and hi and lo in sub and hi in sub:
            ax.fill_between(xs, _floats(sub[lo]),
                            _floats(sub[hi]),
                            color=color, alpha=0.2, linewidth=0)  # fmt: skip
    if vline is not None and math.isfinite(vline):
        ax.axvline(vline, color="#C44E52", linestyle="--", linewidth=1.2, label=vline_label)
    if hline is not None and math.isfinite(hline):
        ax.axhline(hline, color="#555555", linestyle=":", linewidth=1.0, label=hline_label)
    if symlog:
        from matplotlib.ticker import FuncFormatter

        xs_all = sorted(set(_floats(df[x]).tolist()) - {float("nan")})
        nonzero = [abs(v) for v in xs_all if v != 0 and math.isfinite(v)]
        ax.set_xscale("symlog", linthresh=min(nonzero) if nonzero else 1.0)
        if 0 < len(xs_all) <= 12:  # tick the measured coefficients themselves
            ax.set_xticks(xs_all)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    ax.set_title(title, fontsize=10)
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=7, frameon=False)
    sns.despine(ax=ax)
    return fig


def scatter(
    df: Any, x: str, y: str, title: str, label: str | None = None, hue: str | None = None,
    xlabel: str | None = None, ylabel: str | None = None, diagonal: bool = True,
    max_labels: int = 10,
) -> Any:  # fmt: skip
    """Scatter of ``y`` against ``x`` (one point per row), with the line y = x; the
    ``max_labels`` points farthest from the origin are labelled by their ``label``.

    >>> d = pd.DataFrame({"node": ["a", "b"], "ablation": [-2.0, -0.1], "addition": [-1.0, 0.0]})
    >>> fig = scatter(d, "ablation", "addition", "add vs ablate", label="node", max_labels=1)
    >>> [t.get_text() for t in fig.axes[0].texts]
    ['a']
    """
    import seaborn as sns

    fig, ax = new_figure(5.6, 4.4)
    d = df.copy()
    d[x] = pd.to_numeric(d[x], errors="coerce")
    d[y] = pd.to_numeric(d[y], errors="coerce")
    d = d.dropna(subset=[x, y])
    sns.scatterplot(data=d, x=x, y=y, hue=hue, ax=ax, palette=PALETTE if hue else None, s=36)
    if label and len(d):
        # label the points farthest from the origin, one label per name
        far = d.assign(_r=d[x] ** 2 + d[y] ** 2).sort_values("_r", ascending=False)
        far = far.drop_duplicates(label).head(max_labels)
        for r in far.itertuples(index=False):
            ax.annotate(str(getattr(r, label)), (getattr(r, x), getattr(r, y)), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")  # fmt: skip
    if diagonal and len(d):
        lim = max(_limit(d[x]), _limit(d[y])) * 1.05
        ax.plot([-lim, lim], [-lim, lim], color="#888888", linestyle=":", linewidth=1)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    ax.set_title(title, fontsize=10)
    if hue:
        ax.legend(fontsize=7, title=hue, title_fontsize=7, frameon=False)
    sns.despine(ax=ax)
    return fig


def circuit_graph(circuit: Any, scores: dict[str, float], title: str, label: str) -> Any:
    """The circuit drawn by :func:`circuitsteer.circuit.draw_circuit`, nodes coloured by
    ``scores`` (node -> number; diverging colormap around 0), the legend below the graph.

    >>> from circuitsteer.circuit import load_circuit
    >>> fig = circuit_graph(load_circuit("ioi-circuit/ioi"), {"a3.h6": -2.2}, "effect", "effect")
    >>> len(fig.axes)  # the graph and the colour bar
    2
    """
    from circuitsteer.circuit import draw_circuit

    fig = draw_circuit(circuit, score=scores or None, title=title or None)
    if scores and len(fig.axes) > 1:
        fig.axes[-1].set_ylabel(label)
    ax = fig.axes[0]
    old = ax.get_legend()
    if old is not None:  # below the graph, so it does not overlap the colour bar
        handles = list(old.legend_handles)
        texts = [t.get_text() for t in old.get_texts()]
        old.remove()
        ax.legend(handles, texts, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=4,
                  fontsize=7, frameon=False)  # fmt: skip
    return fig


def explained_variance(df: Any, title: str) -> Any:
    """Bars of each component's explained-variance ratio and the cumulative line.

    >>> fig = explained_variance(pd.DataFrame({"component": [0, 1], "explained_variance_ratio": [0.14, 0.11]}), "PCA")
    >>> [t.get_text() for t in fig.axes[0].get_xticklabels()]
    ['pc0', 'pc1']
    """
    import seaborn as sns

    fig, ax = new_figure(5.0, 3.2)
    d = df.sort_values("component")
    xs = [f"pc{int(c)}" for c in d["component"]]
    ratio = pd.to_numeric(d["explained_variance_ratio"], errors="coerce")
    ax.bar(xs, ratio, color=sns.color_palette(PALETTE, 1)[0], label="component")
    ax.plot(xs, ratio.cumsum(), color="#C44E52", marker="o", markersize=3, label="cumulative")
    ax.set_ylabel("explained variance ratio")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    sns.despine(ax=ax)
    return fig


def token_gains(tokens: Sequence[tuple[str, float]], title: str) -> Any:
    """Horizontal bars of promoted tokens and their mean logit gain (labels shown verbatim).

    >>> fig = token_gains([("Mary", 2.5), (" the", 1.0)], "pc0, c = 8")
    >>> [t.get_text() for t in fig.axes[0].get_yticklabels()]
    ['Mary', ' the']
    """
    import seaborn as sns

    fig, ax = new_figure(5.0, max(2.4, 0.28 * len(tokens) + 1.0))
    names = [repr(t)[1:-1] if t.strip() != t or not t else t for t, _ in tokens]
    ax.barh(range(len(tokens)), [g for _, g in tokens], color=sns.color_palette(PALETTE, 2)[1])
    ax.set_yticks(range(len(tokens)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("mean logit gain at END")
    ax.set_title(title, fontsize=10)
    sns.despine(ax=ax)
    return fig
