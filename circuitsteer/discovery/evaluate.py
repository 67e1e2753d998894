"""Scoring discovered circuits and edge scores in the MIB benchmark's terms (Mueller et al. 2025).

Faithfulness and MIB's faithfulness curves are the analysis layer's (edge level, dense mask,
every position): :func:`circuitsteer.analysis.faithfulness` gives ``F(C) / F(M)`` and
``normalized = (F(C) - F(0)) / (F(M) - F(0))``, :func:`circuitsteer.analysis.faithfulness_curve`
the curve over circuit sizes with its areas CPR (higher is better) and CMD (lower is better).
This module adds what discovery needs around them:

* :func:`curve`: the curve of :class:`~circuitsteer.discovery.EdgeScores` (untested and
  zero-scored edges unranked);
* :func:`roc_auc`: how well a method's scores separate a reference circuit's edges from the rest
  (Mann-Whitney, ties averaged); :func:`spearman`: rank correlation of two score sets;
* :func:`compare`: one row per method on one model and task.

Example:
    >>> from circuitsteer.nodes import ModelShape
    >>> from circuitsteer.discovery._common import EdgeScores
    >>> s = ModelShape(n_layers=1, n_heads=1, d_model=4, d_head=4, d_mlp=0, d_vocab=5)
    >>> sc = EdgeScores.from_values(s, [0.9, 0.1, 0.2, 0.8, 0.3], {})
    >>> roc_auc(sc, [("input", "a0.h0", "q"), ("input", "logits", None)])
    1.0
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, cast

import numpy as np
import pandas as pd

from circuitsteer import analysis
from circuitsteer.discovery import select
from circuitsteer.discovery._common import DiscoveryError, EdgeScores, channel


def score_map(scores: EdgeScores) -> dict[tuple[str, str, str | None], float]:
    """Edge key -> score for the edges with a finite, nonzero score."""
    f = scores.frame
    v = f["score"].to_numpy(dtype=float)
    ok = np.isfinite(v) & (v != 0)
    keys = zip(f["src"][ok], f["dst"][ok], f["channel"][ok], strict=True)
    return {(s, d, channel(c)): float(x) for (s, d, c), x in zip(keys, v[ok], strict=True)}


def curve(
    model: Any,
    task: Any,
    scores: EdgeScores,
    fractions: Sequence[float] = analysis.MIB_FRACTIONS,
    ablation: str = "resample",
    metric: Any = "logit_diff",
    absolute: bool = True,
    progress: bool | None = False,
) -> pd.DataFrame:
    """MIB's faithfulness curve of ``scores`` (top ``int(k * n_edges)`` edges by ``|score|``,
    pruned to input -> logits paths) with ``attrs["cpr"]`` and ``attrs["cmd"]``; see
    :func:`circuitsteer.analysis.faithfulness_curve`."""
    df = analysis.faithfulness_curve(
        model, task, score_map(scores), fractions=fractions, level="edge", ablation=ablation,
        absolute=absolute, metric=metric, progress=progress,
    )  # fmt: skip
    df["method"] = scores.meta.get("method")
    return df


def circuit_faithfulness(
    model: Any, task: Any, circuit: Any, ablation: str = "resample", metric: Any = "logit_diff"
) -> dict[str, Any]:
    """The edge-level faithfulness of ``circuit`` as a plain dict (``value`` = F(C)/F(M),
    ``normalized``, ``circuit_value``, ``model_value``, ``ablated_value``, ``n_kept``,
    ``n_units``, ``mode``), from :func:`circuitsteer.analysis.faithfulness`."""
    row = analysis.faithfulness(
        model,
        task,
        circuit,
        ablation=ablation,
        level="edge",
        metric=metric,
        n_boot=200,
        progress=False,
    ).iloc[0]
    keys = ("value", "normalized", "circuit_value", "model_value", "ablated_value", "n_kept",
            "n_units", "mode", "level", "metric")  # fmt: skip
    return {k: (row[k].item() if hasattr(row[k], "item") else row[k]) for k in keys}


def _keys(reference: Any) -> set[tuple[str, str, str | None]]:
    if isinstance(reference, EdgeScores):
        if "kept" not in reference.frame:
            raise DiscoveryError(
                "a reference EdgeScores needs a 'kept' column (an ACDC result)",
                fix="pass a Circuit, an ACDC result or edge keys",
            )
        f = reference.frame[reference.frame["kept"]]
        return {
            (s, d, channel(c)) for s, d, c in zip(f["src"], f["dst"], f["channel"], strict=True)
        }
    if hasattr(reference, "edge_keys"):
        return set(reference.edge_keys())
    return set(cast(Iterable, reference))


def roc_auc(scores: EdgeScores, reference: Any, absolute: bool = True) -> float:
    """ROC AUC of ``scores`` (``|score|`` when ``absolute``) against the edges of ``reference``
    (a Circuit, an ACDC result's kept edges, or edge keys): the probability that a random
    reference edge outranks a random other edge, ties counting half; NaN scores rank lowest."""
    ref = _keys(reference)
    f = scores.frame
    pos = np.array(
        [
            (s, d, channel(c)) in ref
            for s, d, c in zip(f["src"], f["dst"], f["channel"], strict=True)
        ]
    )
    if pos.all() or not pos.any():
        raise DiscoveryError(
            "ROC AUC needs reference edges and other edges among the scored ones",
            fix="pass a reference circuit of the same model that is neither empty nor full",
        )
    v = f["score"].to_numpy(dtype=float)
    r = np.abs(v) if absolute else v
    ranks = pd.Series(np.where(np.isfinite(r), r, -np.inf)).rank(method="average").to_numpy()
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def spearman(a: EdgeScores | pd.Series, b: EdgeScores | pd.Series) -> float:
    """Spearman rank correlation of two score sets over the edges both score finitely.

    >>> spearman(pd.Series([1.0, 2, 3]), pd.Series([10.0, 30, 20]))
    0.5
    """
    sa = a.series() if isinstance(a, EdgeScores) else a
    sb = b.series() if isinstance(b, EdgeScores) else b
    both = pd.concat([sa, sb], axis=1, join="inner").replace([np.inf, -np.inf], np.nan).dropna()
    return float(np.corrcoef(both.iloc[:, 0].rank(), both.iloc[:, 1].rank())[0, 1])


def compare(
    model: Any,
    task: Any,
    methods: dict[str, EdgeScores],
    references: dict[str, Any] | None = None,
    exact: EdgeScores | None = None,
    fractions: Sequence[float] = analysis.MIB_FRACTIONS,
    ablation: str = "resample",
    metric: Any = "logit_diff",
) -> pd.DataFrame:
    """One row per method on ``model`` and ``task``: run time, CPR and CMD of its faithfulness
    curve, ROC AUC against each reference circuit (name -> Circuit or ACDC result), Spearman
    against ``exact`` scores, and for ACDC results the size and faithfulness of its circuit."""
    rows = []
    for name, sc in methods.items():
        cv = curve(model, task, sc, fractions, ablation, metric)
        row: dict[str, Any] = {
            "method": name,
            "time_s": sc.meta.get("timings", {}).get("total_s"),
            "cpr": cv.attrs["cpr"],
            "cmd": cv.attrs["cmd"],
        }
        for ref_name, ref in (references or {}).items():
            row[f"roc_auc_vs_{ref_name}"] = roc_auc(sc, ref)
        if exact is not None:
            row["spearman_vs_exact"] = spearman(sc, exact)
        if "kept" in sc.frame:
            fa = circuit_faithfulness(model, task, select.kept(sc), ablation, metric)
            row.update(circuit_edges=fa["n_kept"], circuit_faithfulness=fa["normalized"])
        rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs.update(ablation=ablation, metric=str(metric), n=len(task))
    return df
