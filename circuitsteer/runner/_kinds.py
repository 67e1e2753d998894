"""Each analysis kind as (plan, run): ``plan`` splits an entry into shards (small JSON-able
payloads, deterministic from the spec and the model's shape); ``run`` computes one shard by
calling the analysis function of :mod:`circuitsteer.analysis` / :mod:`circuitsteer.discovery`
on that part (the ``grid`` kind calls :func:`circuitsteer.runner.grid.intervention_grid`).

How each kind is split (docs/specs.md):

* ``grid``: chunks of ``shard_size`` variants; ``head_ablation``: chunks of ``heads_per_shard``
  heads; ``compare_ablation_addition``: chunks of ``nodes_per_shard`` nodes (the random control
  of node ``i`` seeded ``seed + i`` as in one call), given vectors in a shard of their own;
* ``downstream_effects``: one shard per intervention; ``coefficient_sweep``: one per vector;
  ``faithfulness``: one per (ablation, level), and one for the curve; ``pca_study``: one per
  site; ``discovery``: one.

Example:
    >>> from circuitsteer.models import known_shape
    >>> from circuitsteer.spec import AnalysisSpec
    >>> a = AnalysisSpec("h", "head_ablation", {"modes": ["zero"], "positions": "all",
    ...     "layers": [0, 1], "n_boot": 0, "heads_per_shard": 8, "metric": ["logit_diff"]})
    >>> [len(p["nodes"]) for p in plan(a, None, known_shape("ioi-circuit"))]
    [8, 8]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from circuitsteer.nodes import ModelShape, all_heads, all_mlps, parse_node
from circuitsteer.runner import grid as _grid
from circuitsteer.spec import AnalysisSpec


def _chunks(items: list[Any], size: int) -> list[tuple[int, list[Any]]]:
    return [(i, items[i : i + size]) for i in range(0, len(items), size)]


def _circuit_nodes(circuit: Any) -> list[str]:
    return [n for n in circuit.nodes if parse_node(n).kind in ("head", "mlp")]


def plan(a: AnalysisSpec, circuit: Any, shape: ModelShape) -> list[dict[str, Any]]:
    """The shard payloads of analysis entry ``a`` (``circuit``: the spec's loaded circuit)."""
    p = a.params
    if a.kind == "grid":
        n = len(_grid.expand(p, shape, circuit))
        return [{"start": i, "stop": min(i + p["shard_size"], n)} for i in range(0, n, p["shard_size"])]  # fmt: skip
    if a.kind == "head_ablation":
        layers = p["layers"] if p["layers"] is not None else range(shape.n_layers)
        heads = [h for h in all_heads(shape) if parse_node(h).layer in set(layers)]
        return [{"nodes": c} for _, c in _chunks(heads, p["heads_per_shard"])]
    if a.kind == "compare_ablation_addition":
        if p["nodes"] is not None:
            nodes = list(dict.fromkeys(p["nodes"]))
        elif circuit is not None:
            nodes = list(dict.fromkeys(_circuit_nodes(circuit)))
        else:
            nodes = all_heads(shape) + all_mlps(shape)
        out: list[dict[str, Any]] = [{"nodes": c, "offset": i, "vectors": []}
                                     for i, c in _chunks(nodes, p["nodes_per_shard"])]  # fmt: skip
        if p["vectors"]:
            # their nodes come after the others in one call: the random control's seed follows
            out.append({"nodes": [], "offset": len(nodes), "vectors": list(p["vectors"])})
        return out
    if a.kind == "downstream_effects":
        return [{"index": i} for i in range(len(p["interventions"]))]
    if a.kind == "coefficient_sweep":
        return [{"vector": v} for v in p["vectors"]]
    if a.kind == "faithfulness":
        out = [{"ablation": ab, "level": lv} for ab in p["ablations"] for lv in p["levels"]]
        if p["curve"] is not None:
            out.append({"curve": True})
        return out
    if a.kind == "pca_study":
        return [{"site": s} for s in p["sites"]]
    if a.kind == "discovery":
        return [{}]
    raise ValueError(f"unknown kind {a.kind}")  # the spec's schema makes this unreachable


# ---- running one shard -------------------------------------------------------------------


def _positions(p: Any) -> Any:
    return tuple(p) if isinstance(p, list) else p


def _head_ablation(ctx: Any, p: dict, pay: dict) -> pd.DataFrame:
    from circuitsteer.analysis import compare_ablation_addition

    df = compare_ablation_addition(
        ctx.model, ctx.task, None, coefs=(), modes=p["modes"], nodes=pay["nodes"],
        positions=_positions(p["positions"]), metric=p["metric"], random=False,
        seed=ctx.spec.seed, n_boot=p["n_boot"], progress=False,
    )  # fmt: skip
    nodes = [parse_node(n) for n in df["node"]]
    df.insert(len(df.columns), "layer", [n.layer for n in nodes])
    df.insert(len(df.columns), "head", [n.head for n in nodes])
    return df


def _compare(ctx: Any, p: dict, pay: dict) -> pd.DataFrame:
    from circuitsteer.analysis import compare_ablation_addition

    vectors = {v: ctx.vectors[v] for v in pay["vectors"]} or None
    seed = ctx.spec.seed + pay["offset"]  # node i's random control: seed + i, as in one call
    df = compare_ablation_addition(
        ctx.model, ctx.task, ctx.circuit, vectors=vectors, coefs=p["coefs"], modes=p["modes"],
        nodes=pay["nodes"], positions=_positions(p["positions"]), metric=p["metric"],
        random=p["random"], seed=seed, n_boot=p["n_boot"], progress=False,
    )  # fmt: skip
    df["seed"] = ctx.spec.seed
    return df


def _intervention(ctx: Any, iv: dict) -> tuple[Any, str]:
    import circuitsteer as cs

    pos = _positions(iv["positions"])
    if iv["op"] == "ablate":
        ref = None if iv["mode"] == "zero" else ctx.task.corrupted
        out = cs.Ablate(cs.Site(iv["node"], positions=pos), mode=iv["mode"], reference=ref)
        return out, f"ablate {iv['mode']} {iv['node']}@{iv['positions']}"
    if iv["op"] == "scale":
        out = cs.Scale(cs.Site(iv["node"], positions=pos), iv["factor"])
        return out, f"scale {iv['factor']:g} {iv['node']}@{iv['positions']}"
    v = ctx.vectors[iv["vector"]]
    site = iv["node"] or v.site
    if iv["op"] == "add":
        out = v.intervention(coef=iv["coef"], positions=pos, model=ctx.model, site=site)
        return out, f"add {iv['coef']:g} {iv['vector']} {site}@{iv['positions']}"
    out = cs.ProjectOut(cs.Site(site, positions=pos), v.vector)
    return out, f"project_out {iv['vector']} {site}@{iv['positions']}"


def _downstream(ctx: Any, p: dict, pay: dict) -> pd.DataFrame:
    from circuitsteer.analysis import downstream_effects

    iv, label = _intervention(ctx, p["interventions"][pay["index"]])
    metric = _metrics(p)[0]  # downstream_effects measures one task metric (the first)
    df = downstream_effects(ctx.model, ctx.task, ctx.circuit if p["circuit"] else None, iv,
                            nodes=p["nodes"], at=p["at"], metric=metric)  # fmt: skip
    df.insert(len(df.columns), "intervention", label)
    return df


def _sweep(ctx: Any, p: dict, pay: dict) -> pd.DataFrame:
    import circuitsteer as cs
    from circuitsteer.analysis import coefficient_sweep

    key = ("neutral", p["neutral_n"])
    if key not in ctx.cache:
        ctx.cache[key] = cs.tasks.neutral(ctx.model, n=p["neutral_n"], seed=ctx.spec.seed)
    df = coefficient_sweep(
        ctx.model, ctx.vectors[pay["vector"]], coefs=p["coefs"], task=ctx.task,
        neutral=ctx.cache[key], positions=_positions(p["positions"]), metric=p["metric"],
        kl_threshold=p["kl_threshold"], n_diag=p["n_diag"], seed=ctx.spec.seed,
        n_boot=p["n_boot"], progress=False,
    )  # fmt: skip
    df.insert(len(df.columns), "vector", pay["vector"])
    return df


def _metrics(p: dict) -> list[str]:
    return list(p["metric"]) if isinstance(p["metric"], list) else [p["metric"]]


def _faithfulness(ctx: Any, p: dict, pay: dict) -> pd.DataFrame:
    """One call per metric (the faithfulness functions take one)."""
    from circuitsteer.analysis import faithfulness, faithfulness_curve

    out = []
    for metric in _metrics(p):
        if pay.get("curve"):
            c = p["curve"]
            kw = {"fractions": c["fractions"]} if c["fractions"] is not None else {}
            df = faithfulness_curve(ctx.model, ctx.task, ctx.circuit_named(c["scores"]),
                                    level=c["level"], ablation=c["ablation"], metric=metric,
                                    seed=ctx.spec.seed, progress=False, **kw)  # fmt: skip
            df.insert(len(df.columns), "scores", c["scores"])
        else:
            df = faithfulness(ctx.model, ctx.task, ctx.circuit, ablation=pay["ablation"],
                              level=pay["level"], positions=_positions(p["positions"]),
                              metric=metric, n_boot=p["n_boot"], seed=ctx.spec.seed,
                              progress=False)  # fmt: skip
        out.append(df)
    return pd.concat(out, ignore_index=True)


def _pca(ctx: Any, p: dict, pay: dict) -> pd.DataFrame:
    from circuitsteer.analysis import pca_study

    return pca_study(ctx.model, ctx.task, pay["site"], k=p["k"], coefs=p["coefs"],
                     positions=_positions(p["positions"]), scale=p["scale"],
                     metric=p["metric"], seed=ctx.spec.seed, n_boot=p["n_boot"],
                     progress=False)  # fmt: skip


def _discovery(ctx: Any, p: dict, pay: dict) -> pd.DataFrame:
    from circuitsteer import discovery
    from circuitsteer.analysis._rows import frame, model_name, positions_label, task_name

    kw: dict[str, Any] = {"metric": p["metric"], "ablation": p["ablation"],
                          "positions": _positions(p["positions"])}  # fmt: skip
    if p["method"] == "acdc":
        scores = discovery.acdc(ctx.model, ctx.task, threshold=p["threshold"], progress=False, **kw)  # fmt: skip
    elif p["method"] == "eap":
        scores = discovery.eap(ctx.model, ctx.task, **kw)
    else:
        scores = discovery.eap_ig(ctx.model, ctx.task, steps=p["steps"], method=p["ig_method"], **kw)  # fmt: skip
    f = scores.frame
    extra = [c for c in f.columns if c not in ("edge", "score")]
    rows = [{"node": r["edge"], "value": float(r["score"]), **{c: r[c] for c in extra}}
            for r in f.to_dict("records")]  # fmt: skip
    return frame(rows, model=model_name(ctx.model), task=task_name(ctx.task), seed=ctx.spec.seed,
                 operation=p["method"], mode=p["ablation"], positions=positions_label(p["positions"]),
                 metric=p["metric"])  # fmt: skip


def _grid_run(ctx: Any, p: dict, pay: dict) -> pd.DataFrame:
    return _grid.run_cases(ctx, p, pay["start"], pay["stop"])


RUNNERS: dict[str, Callable[[Any, dict, dict], pd.DataFrame]] = {
    "grid": _grid_run,
    "head_ablation": _head_ablation,
    "compare_ablation_addition": _compare,
    "downstream_effects": _downstream,
    "coefficient_sweep": _sweep,
    "faithfulness": _faithfulness,
    "pca_study": _pca,
    "discovery": _discovery,
}


def run(ctx: Any, a: AnalysisSpec, payload: dict[str, Any]) -> pd.DataFrame:
    """One shard's tidy rows, with ``analysis`` and ``kind`` as the first columns."""
    df = RUNNERS[a.kind](ctx, a.params, payload).reset_index(drop=True)
    df.attrs = {}
    # the function's own "kind" (downstream_effects: head / mlp) would clash with the entry's
    df = df.rename(columns={"kind": "node_kind", "analysis": "analysis_detail"})
    df.insert(0, "kind", a.kind)
    df.insert(0, "analysis", a.name)
    return df
