"""Ablation versus addition, node by node: does adding a direction at a node do what ablating
the node does?

For every node (attention head or MLP) of a circuit, or a chosen subset, one stacked
``engine.run_variants`` grid measures the task metric under

* ablation: ``zero``, ``mean`` (over the corrupted prompts) and ``resample`` (the corrupted
  prompt's value, example by example) at the node's positions;
* addition of the node's own **mean-difference direction** ``d = mean(corrupted) - mean(clean)``
  of its output (a head's ``z``, an MLP's output) at each position: the average of the
  displacement ``corrupted_i - clean_i`` that resample ablation applies example by example, so
  ``coef = 1`` moves every example by the mean displacement instead of its own. One vector per
  named position (``"END"``: the mean over examples there), and one pooled over every real
  token that ``"all"`` (or int or slice positions) select, added at all of them;
* addition of a seeded random direction of the same norm (per position:
  :func:`circuitsteer.vectors.random_like`), the control;
* addition of given steering vectors (:class:`circuitsteer.vectors.SteeringVector`).

The ablation modes are the references: each addition row carries ``frac_of_zero``,
``frac_of_mean``, ``frac_of_resample`` (its effect over that ablation's effect on the same node
and metric: 1.0 = the addition reproduces the ablation's mean effect) and
``corr_with_resample`` (the correlation over examples of its per-example effect with resample
ablation's).

Example:
    >>> import circuitsteer as cs
    >>> from circuitsteer.zoo.tokenizer import toy_tokenizer
    >>> model = cs.random_gpt2(n_layers=2, n_heads=2, d_model=16, d_vocab=484, tokenizer=toy_tokenizer())
    >>> task = cs.tasks.ioi(model, n=6)
    >>> df = compare_ablation_addition(model, task, nodes=["a1.h0"], coefs=[1.0], progress=False)
    >>> df[["operation", "mode", "vector"]].values.tolist()
    [['ablate', 'zero', nan], ['ablate', 'mean', nan], ['ablate', 'resample', nan], ['add', nan, 'mean_diff'], ['add', nan, 'random']]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
from circuitsteer.errors import AnalysisError, CircuitSteerError
from circuitsteer.interventions import Ablate, Add, Intervention, PositionSpec, Site
from circuitsteer.nodes import all_heads, all_mlps, parse_capture, parse_node, validate_node

MODES = ("zero", "mean", "resample")


def compare_ablation_addition(
    model: Any,
    task: Any,
    circuit: Any = None,
    vectors: Mapping[str, Any] | Sequence[Any] | None = None,
    coefs: Sequence[float] = (0.5, 1.0, 2.0),
    modes: Sequence[str] = MODES,
    nodes: Sequence[str] | None = None,
    positions: PositionSpec | None = None,
    metric: Any = "logit_diff",
    random: bool = True,
    seed: int = 0,
    n_boot: int = 1000,
    max_batch: int = 256,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Metric changes under ablation (each of ``modes``) and addition (mean difference, random
    control, ``vectors``; each at every coefficient of ``coefs``), node by node.

    Args:
        circuit: a :class:`circuitsteer.Circuit`; its heads and MLPs are the nodes (default), and
            each node's ``positions`` attribute is where it is intervened on (None: all).
            ``None``: every head and MLP of the model.
        vectors: ``{label: SteeringVector}`` (or a list, labelled by method): added at their own
            site at each coefficient; the site's node is measured too.
        nodes: the nodes to compare (default: the circuit's heads and MLPs).
        positions: one position spec for every node, instead of the circuit's.
        metric: a name (``logit_diff``, ``prob_diff``, ``accuracy``, ``answer_loss``, ``kl``: KL
            from the unmodified model at END), a function ``(logits, task) -> [batch]``, or a list.
        random: include the matched-norm random control (seeded with ``seed`` + node index).

    Returns one row per (node, operation, mode or vector, coef, metric) with :data:`COLUMNS
    <circuitsteer.analysis._rows.COLUMNS>` and ``vector, vector_norm, clean, corrupted, effect``
    (``value - clean``, mean over examples), ``effect_lo, effect_hi`` (bootstrap 95% interval),
    ``effect_std, n, frac_of_gap`` (``(clean - value) / (clean - corrupted)``) and, on addition
    rows, ``frac_of_<mode>`` and ``corr_with_resample``.
    """
    modes = _check_modes(modes)
    coefs = [float(c) for c in coefs]
    names = metric_names(metric)
    given = _given_vectors(vectors)
    todo = _nodes(model, circuit, nodes)
    todo += [n for _, v in given if (n := _vector_node(v)) not in todo and _is_node(model, n)]
    if not todo and not given:
        raise AnalysisError("nothing to compare", fix="pass a circuit with heads/MLPs, nodes or vectors")  # fmt: skip
    pos = {n: _node_positions(circuit, n, positions) for n in todo}

    clean_logits, clean_cache = engine.run(model, task, capture=todo)
    corr_logits, corr_cache = engine.run(
        model, task.corrupted, positions=task.positions, capture=todo
    )
    measure = TaskMetrics(task, names, clean_logits[torch.arange(len(task)), task.positions["END"]])
    clean, corrupted = measure.full(clean_logits), measure.full(corr_logits)  # [n, m]

    cases: list[dict[str, Any]] = []
    variants: list[list[Intervention]] = []

    def add_case(ivs: list[Intervention], **meta: Any) -> None:
        cases.append(meta)
        variants.append(ivs)

    for i, node in enumerate(todo):
        spec = pos[node]
        for mode in modes:
            ref = None if mode == "zero" else task.corrupted
            add_case([Ablate(Site(node, positions=spec), mode=mode, reference=ref)],
                     node=node, operation="ablate", mode=mode, positions=spec)  # fmt: skip
        keys, disp = _mean_displacement(clean_cache[node], corr_cache[node], spec, task)
        dirs = {"mean_diff": disp}
        if random:
            dirs["random"] = _random_like(disp, node, seed + i)
        space = "z" if validate_node(node, model.shape).kind == "head" else "out"
        for label, d in dirs.items():
            for c in coefs:
                ivs: list[Intervention] = [
                    Add(Site(node, positions=k), d[j], coef=c, space=space) for j, k in enumerate(keys)
                ]  # fmt: skip
                add_case(ivs, node=node, operation="add", vector=label, coef=c, positions=spec,
                         vector_norm=abs(c) * float(d.double().norm()))  # fmt: skip
    for label, v in given:
        node = _vector_node(v)
        spec = pos.get(node, "all") if positions is None else positions
        for c in coefs:
            ivs = v.interventions(coef=c, positions=None if v.per_position else spec, model=model)
            add_case(list(ivs), node=node, operation="add", vector=label, coef=c,
                     positions=spec, vector_norm=abs(c) * v.norm)  # fmt: skip

    res = engine.run_variants(model, task, variants, max_batch=max_batch, reduce=measure,
                              progress=progress)  # fmt: skip
    values = res.logits.float()  # [K, n, m]
    return _rows(model, task, seed, cases, values, clean, corrupted, names, n_boot)


def _rows(model, task, seed, cases, values, clean, corrupted, names, n_boot) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    per_example: list[torch.Tensor] = []  # each row's per-example effect
    ablated: dict[tuple[str, str, str], int] = {}  # (node, mode, metric) -> row
    for j, (name, _) in enumerate(names):
        stats = summary(values[:, :, j], clean[:, j], n_boot, seed)
        c, k = float(clean[:, j].double().mean()), float(corrupted[:, j].double().mean())
        for case, st, per_ex in zip(cases, stats, values[:, :, j], strict=True):
            if case["operation"] == "ablate":
                ablated[(case["node"], case["mode"], name)] = len(rows)
            rows.append({**case, "positions": positions_label(case["positions"]), "metric": name,
                         **st, "clean": c, "corrupted": k,
                         "frac_of_gap": (c - st["value"]) / (c - k) if c != k else float("nan")})  # fmt: skip
            per_example.append(per_ex.double() - clean[:, j].double())
    for i, row in enumerate(rows):
        if row["operation"] != "add":
            continue
        for mode in MODES:
            a = ablated.get((row["node"], mode, row["metric"]))
            effect = rows[a]["effect"] if a is not None else 0.0
            row[f"frac_of_{mode}"] = row["effect"] / effect if effect != 0 else float("nan")
        a = ablated.get((row["node"], "resample", row["metric"]))
        row["corr_with_resample"] = (
            _corr(per_example[i], per_example[a]) if a is not None else float("nan")
        )
    return frame(rows, model=model_name(model), task=task_name(task), seed=seed)


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else float("nan")


def _check_modes(modes: Sequence[str]) -> list[str]:
    modes = [modes] if isinstance(modes, str) else list(modes)
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise AnalysisError(f"unknown ablation modes {bad}", fix=f"use some of {', '.join(MODES)}")
    return modes


def _is_node(model: Any, name: str) -> bool:
    try:
        return validate_node(name, model.shape).kind in ("head", "mlp")
    except CircuitSteerError:  # a residual site, or no node of this model
        return False


def _nodes(model: Any, circuit: Any, nodes: Sequence[str] | None) -> list[str]:
    if nodes is not None:
        names = [nodes] if isinstance(nodes, str) else list(nodes)
    elif circuit is not None:
        names = [n for n in circuit.nodes if _kind(n) in ("head", "mlp")]
    else:
        names = all_heads(model.shape) + all_mlps(model.shape)
    for n in names:
        if validate_node(n, model.shape).kind not in ("head", "mlp"):
            raise AnalysisError(
                f"{n!r} is not a head or an MLP",
                fix="compare attention heads 'a{L}.h{H}' and MLPs 'm{L}'; add vectors at other sites with vectors=",
            )
    return list(dict.fromkeys(names))


def _kind(name: str) -> str:
    return parse_node(name).kind


def _node_positions(circuit: Any, node: str, positions: PositionSpec | None) -> PositionSpec:
    if positions is not None:
        return positions
    if circuit is not None and node in circuit:
        p = circuit.node(node).get("positions")
        if p:
            return tuple(p) if len(p) > 1 else p[0]
    return "all"


def _given_vectors(vectors: Any) -> list[tuple[str, Any]]:
    if vectors is None:
        return []
    items = list(vectors.items()) if isinstance(vectors, Mapping) else [(None, v) for v in vectors]
    out = []
    for label, v in items:
        if not hasattr(v, "interventions") or not hasattr(v, "site"):
            raise AnalysisError(
                f"vector {label!r} is a {type(v).__name__}, not a SteeringVector",
                fix="wrap it: cs.vectors.SteeringVector(tensor, site='a1.h2')",
            )
        out.append((str(label) if label is not None else v.method, v))
    return out


def _vector_node(v: Any) -> str:
    return parse_capture(v.site).node.name


def _mean_displacement(
    clean: torch.Tensor, corrupted: torch.Tensor, spec: PositionSpec, task: Any
) -> tuple[list[Any], torch.Tensor]:
    """``(position specs, [k, width])``: one mean of ``corrupted - clean`` per named position
    (over the examples), and one pooled over every real token the other positions select
    (``"all"``, ints, slices)."""
    clean, corrupted = clean.cpu(), corrupted.cpu()
    n, width = clean.shape[0], clean.shape[1]
    items = list(spec) if isinstance(spec, tuple) else [spec]
    named = [p for p in items if isinstance(p, str) and p != "all"]
    other = [p for p in items if not (isinstance(p, str) and p != "all")]
    keys: list[Any] = []
    out = []
    r = torch.arange(n)
    for name in dict.fromkeys(named):
        if name not in task.positions:
            raise AnalysisError(
                f"the task has no position {name!r}", fix=f"use one of {', '.join(task.positions)}"
            )
        idx = task.positions[name].long()
        keys.append(name)
        out.append((corrupted[r, idx] - clean[r, idx]).double().mean(0))
    if other:
        sel = torch.zeros(width, dtype=torch.bool)
        for p in other:
            if p == "all":
                sel[:] = True
            elif isinstance(p, (int, slice)):
                sel[p] = True
        cells = sel[None, :] & (torch.arange(width)[None, :] < task.lengths[:, None])
        if not bool(cells.any()):
            raise AnalysisError(f"positions {spec!r} select no real token", fix="choose positions inside the prompts")  # fmt: skip
        keys.append(other[0] if len(other) == 1 else tuple(other))
        out.append((corrupted - clean)[cells].double().mean(0))
    return keys, torch.stack(out).to(clean.dtype)


def _random_like(d: torch.Tensor, node: str, seed: int) -> torch.Tensor:
    from circuitsteer.vectors import SteeringVector, random_like

    return random_like(SteeringVector(d, site=node), seed=seed).vector.to(d.dtype)
