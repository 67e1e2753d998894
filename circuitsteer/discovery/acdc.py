"""ACDC (Conmy et al. 2023): greedy edge pruning, one masked forward per tested edge.

The graph is the model's edge graph (:func:`circuitsteer.edge_graph.full_edges`): input, every
head's output and every MLP's output send to every head's q, k and v input, every MLP's input and
the logits. Starting from the full model (every edge present), receivers are visited from the
output back to the input: ``logits``, then per layer from the last: the MLP, then the heads (last
index first), each head's q, k and v inputs. For each receiver the edges into it are tested one at
a time (senders latest first with ``order="reverse"``, the default, or ``"forward"``): the edge
is ablated (its receiver reads the sender's ablated value, :mod:`._common`) in a dense edge mask
and the loss is measured with one :func:`~circuitsteer.engine.masks.run_with_mask` forward; the
edge stays out if the loss grows by less than ``threshold`` (tau) over the current graph's,
else it is put back. A head or MLP none of whose outgoing edges remain cannot affect the output,
so its incoming edges are removed without a test (as ACDC drops nodes with no children).

The score of a tested edge is the loss change its removal caused when it was tested (``new -
current``); untested edges score NaN. Everything is deterministic: two runs with the same
model, task and arguments give bit-identical scores.

Example:
    >>> import circuitsteer as cs
    >>> m = cs.load_model("toy-ioi")                                  # doctest: +SKIP
    >>> found = acdc(m, cs.tasks.ioi(m, n=32), threshold=0.02)        # doctest: +SKIP
    >>> found.frame["kept"].sum() < len(found)                        # doctest: +SKIP
    True
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from tqdm.auto import tqdm

from circuitsteer.discovery._common import (
    DiscoveryError,
    EdgeScores,
    check_ablation,
    check_model,
    check_task,
    frame_from_tensors,
    progress_enabled,
    references,
    run_meta,
)
from circuitsteer.discovery._metric import make_metric
from circuitsteer.engine.masks import EdgeMask, mask_prefix, run_with_mask
from circuitsteer.nodes import CHANNELS, head, mlp

ORDERS = ("reverse", "forward")


def receiver_order(shape: Any) -> list[tuple[str, str, int]]:
    """``(node, group key, column)`` of every receiver, from the output back to the input.

    >>> from circuitsteer.nodes import ModelShape
    >>> s = ModelShape(n_layers=1, n_heads=2, d_model=8, d_head=4, d_mlp=8, d_vocab=5)
    >>> [(n, c) for n, _, c in receiver_order(s)]
    [('logits', 0), ('m0', 0), ('a0.h1', 1), ('a0.h1', 3), ('a0.h1', 5), ('a0.h0', 0), ('a0.h0', 2), ('a0.h0', 4)]
    """
    out: list[tuple[str, str, int]] = [("logits", "logits", 0)]
    for L in reversed(range(shape.n_layers)):
        if shape.d_mlp > 0:
            out.append((mlp(L), mlp(L), 0))
        for h in reversed(range(shape.n_heads)):
            out += [(head(L, h), f"a{L}", i * shape.n_heads + h) for i in range(len(CHANNELS))]
    return out


def _has_children(mask: EdgeMask, node: str) -> bool:
    """Whether any edge out of ``node`` is still present (mask value 0)."""
    row = mask.sender_index(node)
    return any(bool((t[row] == 0).any()) for t in mask.tensors.values() if t.shape[0] > row)


def acdc(
    model: Any,
    task: Any,
    threshold: float = 0.01,
    metric: Any = "kl",
    ablation: str = "resample",
    positions: Any = "all",
    order: str = "reverse",
    progress: bool | None = None,
    meta: dict | None = None,
) -> EdgeScores:
    """Run ACDC at ``threshold`` (tau >= 0); see the module doc.

    Args:
        metric: "kl" (KL to the clean model at END), "logit_diff" (negated) or a callable.
        ablation: "resample", "mean" or "zero". positions: "all" or named positions / indices.
        order: senders of a receiver tested latest first ("reverse") or earliest first.
        progress: a bar with edges tested and kept (None: unless ``CIRCUITSTEER_QUIET``).

    Returns :class:`~circuitsteer.discovery.EdgeScores` with columns ``score`` (the loss change
    when the edge was tested), ``tested`` and ``kept``; ``select.kept(scores)`` is the circuit.
    """
    shape = check_model(model)
    if not isinstance(threshold, int | float) or not math.isfinite(threshold) or threshold < 0:
        raise DiscoveryError(
            f"ACDC's threshold tau must be a finite number >= 0, got {threshold!r}",
            fix="pass e.g. threshold=0.01 (an edge stays out if the loss grows by less)",
        )
    if order not in ORDERS:
        raise DiscoveryError(f"unknown sender order {order!r}", fix=f"use one of {ORDERS}")
    check_task(task, check_ablation(ablation))
    t0 = time.perf_counter()
    met = make_metric(metric, model, task)
    refs = references(model, task, ablation, positions)
    # the unpatched forward's residual per layer and sender deltas: each test's forward starts
    # at the first layer the mask changes (the receiver's), computing what the whole one would
    prefix = mask_prefix(model, task.clean, refs.ablated)
    t_setup = time.perf_counter() - t0

    def loss(mask: EdgeMask) -> float:
        with torch.no_grad():
            return float(met(run_with_mask(model, task.clean, mask, prefix)).double().mean())

    mask = EdgeMask(model)
    score = {
        k: torch.full_like(t, float("nan"), dtype=torch.float64) for k, t in mask.tensors.items()
    }
    tested = {k: torch.zeros_like(t, dtype=torch.bool) for k, t in mask.tensors.items()}
    current = loss(mask)
    n_tested = n_kept = 0
    t_loop = time.perf_counter()
    bar = tqdm(total=mask.n_edges, desc="ACDC", unit="edge", disable=not progress_enabled(progress))
    try:
        for node, key, col in receiver_order(shape):
            n_senders = mask.groups[key].senders
            t = mask.tensors[key]
            if node != "logits" and not _has_children(mask, node):
                with torch.no_grad():
                    t[:, col] = 1.0
                bar.update(n_senders)
                continue
            rows = range(n_senders - 1, -1, -1) if order == "reverse" else range(n_senders)
            for row in rows:
                with torch.no_grad():
                    t[row, col] = 1.0
                new = loss(mask)
                change = new - current
                score[key][row, col] = change
                tested[key][row, col] = True
                n_tested += 1
                if change < threshold:
                    current = new
                else:
                    with torch.no_grad():
                        t[row, col] = 0.0
                    n_kept += 1
                bar.update(1)
                bar.set_postfix(tested=n_tested, kept=n_kept, refresh=False)
    finally:
        bar.close()
    t_end = time.perf_counter()
    frame = frame_from_tensors(shape, score)
    frame["tested"] = frame_from_tensors(shape, {k: v.double() for k, v in tested.items()})[
        "score"
    ].astype(bool)
    frame["kept"] = frame_from_tensors(
        shape, {k: 1.0 - v.double() for k, v in mask.tensors.items()}
    )["score"].astype(bool)
    info = {
        **run_meta(
            "acdc",
            model,
            met.name,
            ablation,
            positions,
            task,
            threshold=float(threshold),
            order=order,
            n_tested=n_tested,
            n_kept=n_kept,
            clean_loss=met.clean_value(),
            final_loss=current,
        ),  # fmt: skip
        "timings": {
            "total_s": round(t_end - t0, 3),
            "setup_s": round(t_setup, 3),
            "per_tested_edge_s": round((t_end - t_loop) / max(n_tested, 1), 5),
        },
        **(meta or {}),
    }
    return EdgeScores(shape, frame, info)
