"""The ``grid`` analysis: an explicit grid of interventions (sites x positions x operations x
modes / factors / coefficients), each variant one stacked run of ``cs.engine.run_variants``,
one tidy row per (variant, metric).

:func:`expand` lists a grid entry's cases in a fixed order; :func:`intervention_grid` measures
a list of cases (the runner calls it on slices of the list, one shard each; calling it on the
whole list is the direct computation that ``benchmarks/runner.py`` compares the runner with).

Rows: the common columns (``operation`` ``ablate`` / ``scale`` / ``add`` / ``project_out``;
``coef`` the scale factor or the addition's coefficient) and ``vector, variant, clean, effect,
effect_lo, effect_hi, effect_std, n`` (``effect = value - clean``, bootstrap 95% interval).

Example:
    >>> from circuitsteer.models import known_shape
    >>> p = {"sites": ["a0.h1", "m2"], "positions": ["all", "END"],
    ...      "operations": [{"op": "ablate", "modes": ["zero", "mean"]},
    ...                     {"op": "scale", "factors": [0.5]}]}
    >>> cases = expand(p, known_shape("ioi-circuit"))
    >>> len(cases), cases[0]
    (12, Case(node='a0.h1', positions='all', operation='ablate', mode='zero', coef=None, vector=None))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from circuitsteer import engine
from circuitsteer.analysis._rows import (
    TaskMetrics,
    frame,
    metric_names,
    model_name,
    positions_label,
    summary,
    task_name,
)
from circuitsteer.interventions import Ablate, Intervention, ProjectOut, Scale, Site
from circuitsteer.nodes import ModelShape, all_heads, all_mlps, parse_node


@dataclass(frozen=True)
class Case:
    """One variant of a grid: where, what, how much."""

    node: str
    positions: Any
    operation: str
    mode: str | None = None
    coef: float | None = None
    vector: str | None = None


def _sites(sites: Any, shape: ModelShape, circuit: Any) -> list[str]:
    out: list[str] = []
    for s in [sites] if isinstance(sites, str) else list(sites):
        if s in ("all_heads", "all_nodes"):
            out += all_heads(shape)
        if s in ("all_mlps", "all_nodes"):
            out += all_mlps(shape)
        if s == "circuit":
            out += [n for n in circuit.nodes if parse_node(n).kind in ("head", "mlp")]
        if s not in ("all_heads", "all_mlps", "all_nodes", "circuit"):
            out.append(s)
    return list(dict.fromkeys(out))


def _pos(p: Any) -> Any:
    return tuple(p) if isinstance(p, list) else p


def expand(params: dict[str, Any], shape: ModelShape, circuit: Any = None,
           vector_sites: dict[str, str] | None = None) -> list[Case]:  # fmt: skip
    """The grid's cases in order: per positions, per operation, per site (per vector for
    ``add`` / ``project_out``, at the vector's own site), per mode / factor / coefficient."""
    sites = _sites(params.get("sites", "all_heads"), shape, circuit)
    vs = vector_sites or {}
    cases: list[Case] = []
    for pos in params.get("positions", ["all"]):
        pos = _pos(pos)
        for op in params["operations"]:
            kind = op["op"]
            if kind == "ablate":
                cases += [Case(s, pos, "ablate", mode=m) for s in sites for m in op["modes"]]
            elif kind == "scale":
                cases += [Case(s, pos, "scale", coef=float(f)) for s in sites for f in op["factors"]]  # fmt: skip
            elif kind == "add":
                cases += [Case(str(vs.get(v) or v), pos, "add", coef=float(c), vector=v)
                          for v in op["vectors"] for c in op["coefs"]]  # fmt: skip
            else:
                cases += [
                    Case(str(vs.get(v) or v), pos, "project_out", vector=v) for v in op["vectors"]
                ]
    return cases


def interventions(case: Case, task: Any, vectors: dict[str, Any], model: Any) -> list[Intervention]:
    """The interventions of one case (mean and resample ablations read the task's corrupted
    prompts)."""
    site = Site(case.node, positions=case.positions)
    if case.operation == "ablate":
        ref = None if case.mode == "zero" else task.corrupted
        return [Ablate(site, mode=str(case.mode), reference=ref)]
    if case.operation == "scale":
        return [Scale(site, float(case.coef or 0.0))]
    v = vectors[str(case.vector)]
    if case.operation == "add":
        return [v.intervention(coef=float(case.coef or 0.0), positions=case.positions, model=model)]
    return [ProjectOut(Site(v.site, positions=case.positions), v.vector)]


def clean_values(model: Any, task: Any, metric: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(per-example clean metrics [n, n_metrics], clean END logits)``."""
    logits, _ = engine.run(model, task)
    end = logits[torch.arange(len(task)), task.positions["END"]]
    return TaskMetrics(task, metric_names(metric), end).full(logits), end


def intervention_grid(
    model: Any,
    task: Any,
    cases: list[Case],
    vectors: dict[str, Any] | None = None,
    metric: Any = "logit_diff",
    n_boot: int = 1000,
    seed: int = 0,
    max_batch: int = 256,
    start: int = 0,
    clean: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Measure every case (one ``run_variants`` call); ``start`` is the first case's index in
    the whole grid (column ``variant``); ``clean`` the cached :func:`clean_values`."""
    names = metric_names(metric)
    clean_m, end = clean if clean is not None else clean_values(model, task, metric)
    measure = TaskMetrics(task, names, end)
    variants = [interventions(c, task, vectors or {}, model) for c in cases]
    res = engine.run_variants(model, task, variants, max_batch=max_batch, reduce=measure,
                              progress=progress)  # fmt: skip
    values = res.logits.float()  # [K, n, m]
    rows: list[dict[str, Any]] = []
    for j, (name, _) in enumerate(names):
        stats = summary(values[:, :, j], clean_m[:, j], n_boot, seed) if n_boot else None
        for k, c in enumerate(cases):
            v = values[k, :, j].double()
            d = v - clean_m[:, j].double()
            s = stats[k] if stats else {
                "value": float(v.mean()), "effect": float(d.mean()), "effect_lo": float("nan"),
                "effect_hi": float("nan"), "effect_std": float(d.std()) if len(d) > 1 else 0.0,
                "n": len(d)}  # fmt: skip
            rows.append({"node": c.node, "operation": c.operation, "mode": c.mode, "coef": c.coef,
                         "positions": positions_label(c.positions), "metric": name,
                         "vector": c.vector, "variant": start + k,
                         "clean": float(clean_m[:, j].double().mean()), **s})  # fmt: skip
    rows.sort(key=lambda r: (r["variant"], [n for n, _ in names].index(r["metric"])))
    return frame(rows, model=model_name(model), task=task_name(task), seed=seed)


def run_cases(ctx: Any, params: dict[str, Any], start: int, stop: int) -> pd.DataFrame:
    """The runner's shard: cases ``start:stop`` of the grid entry ``params``."""
    vsites = {k: v.site for k, v in ctx.vectors.items()}
    cases = expand(params, ctx.model.shape, ctx.circuit, vsites)[start:stop]
    key = ("clean", tuple(params["metric"]) if isinstance(params["metric"], list) else params["metric"])  # fmt: skip
    if key not in ctx.cache:
        ctx.cache[key] = clean_values(ctx.model, ctx.task, params["metric"])
    return intervention_grid(ctx.model, ctx.task, cases, ctx.vectors, params["metric"],
                             n_boot=params["n_boot"], seed=ctx.spec.seed,
                             max_batch=params["max_batch"], start=start, clean=ctx.cache[key],
                             progress=False)  # fmt: skip
