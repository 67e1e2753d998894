"""How well a circuit explains the model: Wang et al.'s faithfulness, completeness and minimality,
and MIB's faithfulness curve over circuit sizes (CPR and CMD).

A circuit ``C`` is run by ablating everything outside it (:class:`CircuitRuns`): node level,
every head/MLP outside ``C`` ablated at ``positions``; edge level, every edge outside ``C``
reads the ablated sender value (dense edge mask, all positions). ``F(S)`` is the task metric's
mean with only ``S`` intact. Every row records the ablation (``mode``: zero / mean / resample),
``level`` and ``positions``: the numbers depend on them (Miller et al. 2024).

* :func:`faithfulness`: ``F(C) / F(M)`` (Wang et al. 2022), with ``F(M)`` the full model and
  ``F(∅)`` everything ablated; also ``normalized = (F(C) - F(∅)) / (F(M) - F(∅))``.
* :func:`completeness`: for subsets ``K`` of the circuit, ``|F(C \\ K) - F(M \\ K)|``: a complete
  circuit loses under a knockout what the model loses.
* :func:`minimality`: for each node ``v`` of ``C`` (and a set ``K``, default empty),
  ``|F(C \\ (K ∪ {v})) - F(C \\ K)|``: a minimal circuit has no node without effect.
* :func:`faithfulness_curve`: MIB's circuit-localization metric. For each fraction ``k`` of
  the scored units (edges, or nodes), the top ``k`` by score (``|score|`` when ``absolute``) form
  a circuit; ``f(k) = (F(C_k) - F(∅)) / (F(M) - F(∅))``. :func:`area_under_curve` integrates
  it with the trapezoid rule over ``k``: ``CPR`` = area under ``f`` (higher is better),
  ``CMD`` = area under ``|1 - f|`` (lower is better), as MIB's evaluation code computes them.

Example:
    >>> import circuitsteer as cs
    >>> from circuitsteer.zoo.tokenizer import toy_tokenizer
    >>> model = cs.random_gpt2(n_layers=2, n_heads=2, d_model=16, d_vocab=484, tokenizer=toy_tokenizer())
    >>> task = cs.tasks.ioi(model, n=4)
    >>> full = cs.full_edge_graph(model.shape)
    >>> float(faithfulness(model, task, full, ablation="resample").value.iloc[0])
    1.0
    >>> area_under_curve([0.0, 0.5, 1.0], [0.0, 1.0, 1.0])
    (0.75, 0.25)
"""

from __future__ import annotations

import random as _random
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from circuitsteer import metrics
from circuitsteer.analysis._circuit_runs import CircuitRuns
from circuitsteer.analysis._rows import frame, model_name, task_name
from circuitsteer.errors import AnalysisError
from circuitsteer.interventions import PositionSpec

MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def _runs(model, task, ablation, level, positions, metric, reference, max_batch, progress):
    return CircuitRuns(model, task, ablation, level, positions, metric, reference,
                       max_batch=max_batch, progress=progress)  # fmt: skip


def _common(model: Any, task: Any, runs: CircuitRuns, circuit: Any, seed: int) -> dict[str, Any]:
    return {"model": model_name(model), "task": task_name(task), "seed": seed,
            "node": getattr(circuit, "name", None), **runs.describe()}  # fmt: skip


def faithfulness(
    model: Any,
    task: Any,
    circuit: Any,
    ablation: str = "mean",
    level: str = "node",
    positions: PositionSpec = "all",
    metric: Any = "logit_diff",
    reference: Any = None,
    n_boot: int = 1000,
    seed: int = 0,
    max_batch: int = 256,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Wang et al.'s faithfulness ``F(C) / F(M)`` of ``circuit`` (one row).

    ``ablation``: ``zero``, ``mean`` or ``resample`` (over / from ``reference``, default the
    task's corrupted prompts); ``level``: ``node`` (heads and MLPs outside the circuit ablated at
    ``positions``) or ``edge`` (edges outside it, all positions). Columns: the common ones
    (``node`` = the circuit's name, ``operation="faithfulness"``, ``value`` = the ratio) and
    ``level, value_lo, value_hi`` (bootstrap interval of the ratio, examples resampled in pairs),
    ``model_value, circuit_value, ablated_value`` (``F(∅)``), ``normalized``, ``n_kept``,
    ``n_units``, ``n``.
    """
    runs = _runs(model, task, ablation, level, positions, metric, reference, max_batch, progress)
    keep = runs.keep_of(circuit)
    v = runs.values([set(runs.units), keep, set()])  # model, circuit, nothing
    full, circ, empty = v[0], v[1], v[2]
    ci = metrics.bootstrap_ci(circ, n_boot=n_boot, seed=seed, denominator=full)
    m, c, e = float(full.mean()), float(circ.mean()), float(empty.mean())
    row = {"operation": "faithfulness", "value": c / m if m != 0 else float("nan"),
           "value_lo": ci.lo, "value_hi": ci.hi, "model_value": m, "circuit_value": c,
           "ablated_value": e, "normalized": (c - e) / (m - e) if m != e else float("nan"),
           "n_kept": len(keep), "n_units": len(runs.units), "n": len(full)}  # fmt: skip
    return frame([row], **_common(model, task, runs, circuit, seed))


def completeness(
    model: Any,
    task: Any,
    circuit: Any,
    subsets: str | Sequence[Sequence[str]] = "classes",
    n_random: int = 10,
    ablation: str = "mean",
    positions: PositionSpec = "all",
    metric: Any = "logit_diff",
    reference: Any = None,
    seed: int = 0,
    max_batch: int = 256,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Wang et al.'s completeness: for each subset ``K`` of the circuit's heads/MLPs,
    ``F(C \\ K)``, ``F(M \\ K)`` and ``value = |F(C \\ K) - F(M \\ K)|`` (node level).

    ``subsets``: ``"classes"`` (each node class of the circuit, or each node when it has no
    classes), ``"nodes"`` (each node alone), ``"random"`` (``n_random`` subsets, each node in
    with probability 1/2, seeded), or explicit lists of node names. ``K = ∅`` and ``K = C`` are
    always included (the first is faithfulness's difference, the second ``F(∅) - F(M \\ C)``).
    """
    runs = _runs(model, task, ablation, "node", positions, metric, reference, max_batch, progress)
    circ = runs.keep_of(circuit)
    ks = [("empty", set()), ("circuit", set(circ)), *_subsets(circuit, circ, subsets, n_random, seed)]  # fmt: skip
    everything = set(runs.units)
    keeps = [circ - k for _, k in ks] + [everything - k for _, k in ks]
    v = runs.values(keeps).mean(1)
    rows = []
    for i, (label, k) in enumerate(ks):
        c_k, m_k = float(v[i]), float(v[len(ks) + i])
        rows.append({"operation": "completeness", "subset": label, "removed": ",".join(sorted(k)),
                     "value": abs(c_k - m_k), "circuit_minus_k": c_k, "model_minus_k": m_k})  # fmt: skip
    return frame(rows, **_common(model, task, runs, circuit, seed))


def minimality(
    model: Any,
    task: Any,
    circuit: Any,
    k_sets: Mapping[str, Sequence[str]] | None = None,
    ablation: str = "mean",
    positions: PositionSpec = "all",
    metric: Any = "logit_diff",
    reference: Any = None,
    seed: int = 0,
    max_batch: int = 256,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Wang et al.'s minimality: per node ``v`` of the circuit (heads/MLPs),
    ``value = |F(C \\ (K ∪ {v})) - F(C \\ K)|`` with ``K = k_sets[v]`` (default empty), and
    ``relative`` = value / ``|F(C)|``. Node level."""
    runs = _runs(model, task, ablation, "node", positions, metric, reference, max_batch, progress)
    circ = runs.keep_of(circuit)
    order = [n for n in runs.units if n in circ]
    ks = {v: set((k_sets or {}).get(v, ())) for v in order}
    for v, k in ks.items():
        if not k <= circ:
            raise AnalysisError(f"K for {v} has nodes outside the circuit: {sorted(k - circ)}",
                                fix="choose K among the circuit's nodes")  # fmt: skip
    keeps = [circ] + [circ - ks[v] - {v} for v in order] + [circ - ks[v] for v in order]
    means = runs.values(keeps).mean(1)
    f_c, n = float(means[0]), len(order)
    rows = []
    for i, v in enumerate(order):
        without, base = float(means[1 + i]), float(means[1 + n + i])
        rows.append({"node": v, "operation": "minimality", "removed": ",".join(sorted(ks[v])),
                     "value": abs(without - base), "relative": abs(without - base) / abs(f_c) if f_c else float("nan"),
                     "without_v": without, "without_k": base, "circuit_value": f_c})  # fmt: skip
    return frame(rows, **{**_common(model, task, runs, circuit, seed), "node": None})


def _subsets(circuit, circ, subsets, n_random, seed) -> list[tuple[str, set[str]]]:
    if isinstance(subsets, str):
        if subsets == "classes":
            classes = {c: set(ns) & circ for c, ns in getattr(circuit, "classes", {}).items()}
            classes = {c: ns for c, ns in classes.items() if ns}
            return [(c, ns) for c, ns in classes.items()] if classes else _subsets(circuit, circ, "nodes", n_random, seed)  # fmt: skip
        if subsets == "nodes":
            return [(n, {n}) for n in sorted(circ)]
        if subsets == "random":
            rng = _random.Random(seed)
            return [(f"random{i}", {n for n in sorted(circ) if rng.random() < 0.5}) for i in range(n_random)]  # fmt: skip
        raise AnalysisError(f"unknown subsets {subsets!r}", fix="use 'classes', 'nodes', 'random' or lists of nodes")  # fmt: skip
    out = []
    for ks in subsets:
        k = set(ks)
        if not k <= circ:
            raise AnalysisError(f"subset has nodes outside the circuit: {sorted(k - circ)}",
                                fix="choose subsets of the circuit's heads and MLPs")  # fmt: skip
        out.append(("+".join(sorted(k)), k))
    return out


def area_under_curve(fractions: Sequence[float], f: Sequence[float]) -> tuple[float, float]:
    """``(CPR, CMD)``: trapezoid areas over ``fractions`` under ``f`` and under ``|1 - f|`` (MIB's
    circuit performance ratio and circuit-model distance, on a linear axis)."""
    if len(fractions) != len(f) or len(f) < 2:
        raise AnalysisError("need at least two (fraction, f) points of equal count", fix="pass matching lists")  # fmt: skip
    cpr = cmd = 0.0
    for i in range(len(f) - 1):
        dx = float(fractions[i + 1]) - float(fractions[i])
        cpr += dx * (f[i] + f[i + 1]) / 2
        cmd += dx * (abs(1.0 - f[i]) + abs(1.0 - f[i + 1])) / 2
    return cpr, cmd


def faithfulness_curve(
    model: Any,
    task: Any,
    scores: Any,
    fractions: Sequence[float] = MIB_FRACTIONS,
    level: str = "edge",
    ablation: str = "resample",
    absolute: bool = True,
    prune: bool = True,
    metric: Any = "logit_diff",
    reference: Any = None,
    seed: int = 0,
    max_batch: int = 256,
    progress: bool | None = None,
) -> pd.DataFrame:
    """MIB's faithfulness curve of a scored circuit and its areas (CPR, CMD).

    ``scores``: a :class:`circuitsteer.Circuit` whose edges (``level="edge"``) or nodes
    (``"node"``) carry scores, a mapping from edge names / ``(src, dst, channel)`` keys / node
    names to scores, or an :class:`~circuitsteer.engine.EdgeMask` of edge scores. Units without a
    score rank last. For each fraction ``k`` the top ``int(k * n_units)`` units are kept
    (``n_units``: every edge of the full graph, or every head and MLP); ``prune`` then drops
    edges that no longer lie on a path from ``input`` to ``logits`` (as MIB does). One row per
    fraction (``metric="faithfulness"``, ``value = f(k)``, ``circuit_value``, ``n_kept``) and
    two summary rows ``metric="cpr"`` / ``"cmd"`` (``task_metric`` names the task metric);
    ``df.attrs`` holds ``cpr``, ``cmd`` and the model / ablated metric values.
    """
    runs = _runs(model, task, ablation, level, "all", metric, reference, max_batch, progress)
    ranked = _ranked(runs, scores, absolute)
    keeps = []
    for k in fractions:
        kept = set(ranked[: int(float(k) * len(ranked))])
        keeps.append(_pruned(kept) if prune and level == "edge" else kept)
    v = runs.values([set(runs.units), set(), *keeps]).mean(1)
    m, e = float(v[0]), float(v[1])
    f = [(float(x) - e) / (m - e) if m != e else float("nan") for x in v[2:]]
    cpr, cmd = area_under_curve(fractions, f)
    common = {**_common(model, task, runs, scores, seed), "operation": "faithfulness_curve",
              "task_metric": runs.metric_name, "absolute": absolute,
              "prune": prune and level == "edge"}  # fmt: skip
    rows = [{"metric": "faithfulness", "value": fk, "fraction": float(k), "circuit_value": float(x),
             "n_kept": len(kept)} for k, fk, x, kept in zip(fractions, f, v[2:], keeps, strict=True)]  # fmt: skip
    rows += [{"metric": "cpr", "value": cpr}, {"metric": "cmd", "value": cmd}]
    df = frame(rows, **common)
    df.attrs.update({"cpr": cpr, "cmd": cmd, "model_value": m, "ablated_value": e})
    return df


def _ranked(runs: CircuitRuns, scores: Any, absolute: bool) -> list[Any]:
    """The units, best first; units without a score last, in graph order."""
    from circuitsteer.engine.masks import EdgeMask
    from circuitsteer.nodes import parse_edge

    got: dict[Any, float] = {}
    if isinstance(scores, EdgeMask):
        got = {k: float(s) for k, s in scores.edges()}
    elif isinstance(scores, Mapping):
        for k, s in scores.items():
            if runs.level == "edge" and isinstance(k, str):
                e = parse_edge(k)
                k = (e.src.name, e.dst.name, e.channel)
            got[k] = float(s)
    elif runs.level == "edge":
        got = {
            (e.src, e.dst, e.channel): float(e.score) for e in scores.edges if e.score is not None
        }
    else:
        got = {n: float(s) for n in scores.nodes if (s := scores.node(n).get("score")) is not None}
    units = set(runs.units)
    bad = [k for k in got if k not in units]
    if bad:
        raise AnalysisError(f"{len(bad)} scored {runs.level}s are not in the model, e.g. {bad[0]}",
                            fix="score edges of cs.full_edge_graph(model.shape) or the model's heads/MLPs")  # fmt: skip
    if not got:
        raise AnalysisError(f"no {runs.level} scores found", fix="pass a circuit with scores, a mapping or an EdgeMask")  # fmt: skip
    key = (lambda s: abs(s)) if absolute else (lambda s: s)
    order = {u: i for i, u in enumerate(runs.units)}
    return sorted(runs.units, key=lambda u: (u not in got, -key(got.get(u, 0.0)), order[u]))


def _pruned(edges: set[Any]) -> set[Any]:
    """The edges on some path from ``input`` to ``logits`` within ``edges``."""
    alive = set(edges)
    while True:
        has_in = {"input"} | {dst for _, dst, _ in alive}
        has_out = {"logits"} | {src for src, _, _ in alive}
        keep = {e for e in alive if e[0] in has_in and e[1] in has_out}
        if keep == alive:
            return keep
        alive = keep
