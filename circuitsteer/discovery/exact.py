"""Exact single-edge patching: the reference every approximation is judged against.

Each edge ``s -> r`` gets its own forward in which only receiver ``r`` reads the ablated value of
``s``; everything else runs clean. The score is the mean change of the loss: ``mean L(edge
ablated) - mean L(clean)``. ``via="mask"`` (the default): one no-grad
:func:`~circuitsteer.engine.masks.run_with_mask` forward per edge with that edge alone at 1,
started at the receiver's layer from the clean forward's residual
(:func:`~circuitsteer.engine.masks.mask_prefix`): below it nothing changes, and above it only
that receiver's group computes anything. ``via="patch"``: an edge-restricted
:class:`~circuitsteer.Patch` per edge as variants of :func:`circuitsteer.engine.run_variants`,
stacked along the batch (branching runs the layers below each receiver once per chunk), an
independent path through the engine's interventions; the two agree to float precision (tested).

Example:
    >>> import circuitsteer as cs
    >>> m = cs.random_gpt2(n_layers=1, n_heads=2, d_model=16)
    >>> task = cs.tasks.ioi(cs.models.byte_tokenizer(), n=2)  # doctest: +SKIP
    >>> sc = exact_patching(m, task, metric="kl")             # doctest: +SKIP
    >>> len(sc) == cs.edge_graph.count_full_edges(m.shape)     # doctest: +SKIP
    True
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from circuitsteer import engine
from circuitsteer.discovery._common import (
    DiscoveryError,
    EdgeScores,
    check_ablation,
    check_model,
    check_task,
    edge_table,
    mean_per_position,
    progress_enabled,
    references,
    run_meta,
)
from circuitsteer.discovery._common import (
    channel as channel_of,
)
from circuitsteer.discovery._metric import make_metric
from circuitsteer.engine.masks import EdgeMask, mask_prefix, run_with_mask
from circuitsteer.interventions import Patch, Site

VIAS = ("mask", "patch")


def receiver_name(dst: str, channel: Any) -> str:
    """The engine's receiver name: ``a1.h0<q>``, ``m2``, ``logits``."""
    ch = channel_of(channel)
    return dst if ch is None else f"{dst}<{ch}>"


def ablated_sources(model: Any, task: Any, senders: Sequence[str], ablation: str) -> dict:
    """Each sender's ablated activation in its site's space (a head's z, an MLP's output, the
    input embedding), ``[batch, pos, width]``: the corrupted run's (resample), their mean per
    position over real rows (mean), or zeros."""
    if ablation == "zero":
        _, cache = engine.run(model, task.clean, capture=list(senders), progress=False)
        return {s: torch.zeros_like(cache[s]) for s in senders}
    _, cache = engine.run(model, task.corrupted, capture=list(senders), progress=False)
    if ablation == "resample":
        return {s: cache[s] for s in senders}
    return {s: mean_per_position(cache[s][None], task.lengths)[0] for s in senders}


def exact_patching(
    model: Any,
    task: Any,
    metric: Any = "logit_diff",
    ablation: str = "resample",
    positions: Any = "all",
    edges: Sequence[str] | None = None,
    max_batch: int = 1024,
    progress: bool | None = None,
    meta: dict | None = None,
    via: str = "mask",
) -> EdgeScores:
    """Score every edge (or the named ``edges``) by patching it alone.

    Args:
        metric: "logit_diff" (negated), "kl" or a callable, see :mod:`._metric`.
        ablation: "resample", "mean" or "zero" (see :mod:`._common`).
        positions: "all" or named positions / indices where the edge is ablated.
        edges: edge names (``"a0.h1->a2.h3<q>"``) to score; the others get NaN.
        max_batch: rows per stacked forward (variants x prompts; ``via="patch"``).
        via: "mask" (one masked forward per edge, from the receiver's layer) or "patch"
            (edge-restricted Patch variants in ``engine.run_variants``).

    Returns :class:`~circuitsteer.discovery.EdgeScores` with ``score = mean L(patched) - mean
    L(clean)`` per edge.
    """
    shape = check_model(model)
    check_task(task, check_ablation(ablation))
    if via not in VIAS:
        raise DiscoveryError(f"unknown exact patching path {via!r}", fix=f"use one of {VIAS}")
    t0 = time.perf_counter()
    met = make_metric(metric, model, task)
    table = edge_table(shape)
    chosen = table if edges is None else table[table["edge"].isin(list(edges))]
    base = met.clean_value()
    values = torch.full((len(table),), float("nan"), dtype=torch.float64)
    if via == "mask":
        values[torch.tensor(chosen.index.to_numpy(), dtype=torch.long)] = (
            _by_mask(model, task, met, chosen, ablation, positions, progress) - base
        )
    else:
        _by_patch(model, task, met, table, chosen, ablation, positions, max_batch, progress,
                  values, base)  # fmt: skip
    sc = EdgeScores.from_values(shape, values.tolist(), {})
    sc.meta = {
        **run_meta("exact", model, met.name, ablation, positions, task, clean_loss=base, via=via),
        "timings": {"total_s": round(time.perf_counter() - t0, 3)},
        **(meta or {}),
    }
    return sc


def _by_mask(model, task, met, chosen, ablation, positions, progress) -> torch.Tensor:
    """Mean loss with each chosen edge alone patched: one resumed masked forward per edge."""
    refs = references(model, task, ablation, positions)
    prefix = mask_prefix(model, task.clean, refs.ablated)
    mask = EdgeMask(model)
    out = torch.empty(len(chosen), dtype=torch.float64)
    cells = list(zip(chosen["group"], chosen["row"], chosen["col"], strict=True))
    # receivers from the output back, so each start layer's delta rows are restored once
    rank = {k: i for i, k in enumerate(mask.tensors)}
    order = sorted(range(len(cells)), key=lambda i: -rank[cells[i][0]])
    bar = tqdm(total=len(cells), desc="exact patching", unit="edge",
               disable=not progress_enabled(progress))  # fmt: skip
    try:
        with torch.no_grad():
            for i in order:
                key, row, col = cells[i]
                t = mask.tensors[key]
                t[row, col] = 1.0
                out[i] = met(run_with_mask(model, task.clean, mask, prefix)).double().mean()
                t[row, col] = 0.0
                bar.update(1)
    finally:
        bar.close()
    return out


def _by_patch(model, task, met, table, chosen, ablation, positions, max_batch, progress,
              values, base) -> None:  # fmt: skip
    senders = sorted(set(chosen["src"]), key=list(table["src"].unique()).index)
    src = ablated_sources(model, task, senders, ablation)
    pos = positions if positions is not None else "all"
    variants = [
        [Patch(Site(s, positions=pos, to=(receiver_name(d, ch),)), src[s])]
        for s, d, ch in zip(chosen["src"], chosen["dst"], chosen["channel"], strict=True)
    ]
    if variants:
        res = engine.run_variants(
            model,
            task,
            variants,
            reduce=lambda lg, rows: met(lg, rows),
            max_batch=max(max_batch, len(task)),
            progress=progress_enabled(progress),
        )
        values[torch.tensor(chosen.index.to_numpy())] = res.logits.double().mean(1).cpu() - base
