"""Edge attribution patching: EAP (Syed et al. 2023) and EAP-IG (Hanna et al. 2024).

EAP scores every edge ``s -> r`` with one forward and one backward pass:
``score = sum over examples, positions of (ablated_s - clean_s) . dL/d(input of r)``, averaged
over examples: the first-order estimate of what exact patching measures, and exactly the
gradient of the loss with respect to that edge's entry of a dense edge mask at zero
(:func:`circuitsteer.engine.masks.run_with_mask`). The receiver gradients come from one
``engine.run(grad=True)``: each head's q/k/v input is a capture (its own copy of the residual,
so its gradient is that head's), ``logits`` reads the final norm's input, and each MLP's input
is an edge-restricted :class:`~circuitsteer.Patch` from ``input`` whose source is a leaf tensor
(the MLP then reads exactly its clean input, and the leaf's gradient is the MLP's own).

EAP-IG averages the gradient over ``steps`` points between the clean and the ablated run:

* ``method="inputs"`` (Hanna et al.): the input embeddings interpolated, ``ablated + a *
  (clean - ablated)`` for ``a = 1/m, 2/m, ..., 1`` (a right Riemann sum that ends on the clean
  run, so ``steps=1`` is EAP), the deltas fixed at ``ablated - clean``. Cost: ``steps``
  gradient passes plus two recording forwards.
* ``method="activations"``: every edge of the dense mask at ``b = 0, 1/m, ..., (m-1)/m`` (every
  receiver's input interpolated between its clean and its ablated value), the mask's gradient
  averaged: integrated gradients along the straight path from the clean to the fully ablated
  model, so the scores sum to about ``L(ablated) - L(clean)`` (auto-circuit's integrated
  gradients over the mask). Cost: ``steps`` masked forward + backward passes.

Example:
    >>> import torch, circuitsteer as cs
    >>> m = cs.random_gpt2(n_layers=1, n_heads=2, d_model=16)
    >>> task = cs.tasks.ioi(m, n=2)                                 # doctest: +SKIP
    >>> sc = eap(m, task)                                           # doctest: +SKIP
    >>> sc.frame.columns.tolist()                                   # doctest: +SKIP
    ['edge', 'src', 'dst', 'channel', 'score']
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from circuitsteer import engine
from circuitsteer.discovery._common import (
    DiscoveryError,
    EdgeScores,
    check_ablation,
    check_model,
    check_task,
    index_mask,
    references,
    run_meta,
)
from circuitsteer.discovery._contract import contract
from circuitsteer.discovery._grads import fast_receiver_grads, supported
from circuitsteer.discovery._groups import group_overhead, row_groups
from circuitsteer.discovery._metric import Metric, make_metric
from circuitsteer.discovery._senders import ablated_blocks, batch_means, record_senders
from circuitsteer.engine.masks import EdgeMask, run_with_mask
from circuitsteer.interventions import Patch, Site
from circuitsteer.nodes import CHANNELS, head, mlp

IG_METHODS = ("inputs", "activations")


def _head_receivers(shape: Any, layer: int) -> list[str]:
    """Layer ``layer``'s head inputs in the mask's column order (channel-major)."""
    return [f"{head(layer, h)}<{c}>" for c in CHANNELS for h in range(shape.n_heads)]


def receiver_grads(
    model: Any,
    task: Any,
    met: Metric,
    input_value: torch.Tensor | None = None,
    senders: list[torch.Tensor] | None = None,
    factored: bool = False,
    consts: dict | None = None,
) -> dict[str, Any]:
    """``dL/d(receiver input)`` for every receiver, per mask group (``a{L}`` ``[3H, B*P*d]``,
    ``m{L}`` and ``logits`` ``[1, B*P*d]``), ``L`` the summed per-example loss. With
    ``input_value`` (``[B, P, d]``) the input embedding is replaced by it (EAP-IG's
    interpolation). One plain forward + backward (:mod:`._grads`) unless the model groups its
    k/v heads; then :func:`captured_receiver_grads`. ``senders`` (a list) receives the sender
    outputs of this forward (clean input only on the engine path). ``factored``: the fast
    path's head groups stay :class:`~circuitsteer.discovery._grads.HeadGrads` (see
    :func:`_contract`). ``consts``: the fast path's per-layer constants, kept between calls."""
    if supported(model):
        loss = lambda lg: met(lg).sum()  # noqa: E731
        return fast_receiver_grads(model, task.clean, loss, input_value, senders,
                                   factored=factored, end=_end(task, met, 1), consts=consts)  # fmt: skip
    if senders is not None:
        senders += record_senders(model, task.clean)
    return captured_receiver_grads(model, task, met, input_value)


def _end(task: Any, met: Metric, copies: int) -> torch.Tensor | None:
    """Each row's END position over ``copies`` stacked copies of the task, when the metric
    reads only the END logits (else None: every position's logits)."""
    return task.positions["END"].repeat(copies) if met.end_only else None


# EAP-IG stacks interpolation steps along the batch while a pass's residual stream has at most
# this many elements (tokens x d_model): stacking reads the weights once for several steps, but
# the activations a pass saves grow with it, and glibc hands large freed heaps back to the OS,
# so the next pass page-faults them in again (4 stacked steps of the zoo model, 8,064 tokens:
# ~100k faults a call, slower than 2). GPT-2 small's shape, 8 prompts: 4 steps a pass.
STACK_ELEMENTS = 1 << 19


def _step_grads(
    model: Any, task: Any, met: Metric, xs: list[torch.Tensor], total: dict, consts: dict
) -> None:
    """Add the receiver gradients at each interpolation step (``xs``: each step's input
    embedding) into ``total``. Fast path: one forward + backward over the steps stacked along
    the batch (the weights are read once for all rows), each step's loss its own task's, the
    gradients summed over steps inside the norm VJP and added in place. Else one
    :func:`receiver_grads` per step."""
    if not supported(model):
        for x in xs:
            for key, v in receiver_grads(model, task, met, x).items():
                total[key] = total[key] + v
        return
    B, c = task.clean.shape[0], len(xs)

    def loss(lg: torch.Tensor) -> torch.Tensor:
        # unbind, not slices: a slice's backward writes a zero tensor of the whole stacked
        # logits, per copy; unbind's stacks the copies' gradients once
        parts = lg.view(c, B, *lg.shape[1:]).unbind(0)
        return sum(met(p).sum() for p in parts)  # type: ignore[return-value]

    tokens = task.clean.repeat(c, 1) if c > 1 else task.clean
    x = torch.cat(xs) if c > 1 else xs[0]
    fast_receiver_grads(model, tokens, loss, x, copies=c, into=total, factored=True,
                        end=_end(task, met, c), consts=consts)  # fmt: skip


@dataclass
class _Refs:
    """Clean and ablated sender blocks (heads factored, :mod:`._senders`)."""

    clean: list[Any]
    ablated: list[Any]


def _clean_pass(
    model: Any,
    task: Any,
    met: Metric,
    ablation: str,
    positions: Any,
    consts: dict | None = None,
    means: list | None = None,
):
    """The receiver gradients at the clean run, and the sender blocks from its forward with
    their ablated values (``means``: mean ablation's, when ``task`` is a group of rows)."""
    blocks: list[Any] = []
    grads = receiver_grads(model, task, met, senders=blocks, factored=True, consts=consts)
    return grads, _Refs(blocks, ablated_blocks(model, task, ablation, positions, blocks, means))


def _by_groups(
    model: Any, task: Any, met: Metric, ablation: str, positions: Any, run, passes: int
) -> dict:
    """``run(task, metric, means)``'s summed scores over groups of the task's rows of similar
    length, each trimmed of its padding (:mod:`._groups`; one group, the task itself, unless
    the metric reads only END and the positions are all or named ones). ``passes``: the
    passes ``run`` makes over each row (what a group's fixed cost is weighed against)."""
    items = [positions] if isinstance(positions, str | int) or positions is None else positions
    named = all(isinstance(p, str) or p is None for p in items)  # an int: a padded column
    cost = group_overhead(model.shape.d_model, passes)
    groups = row_groups(task.lengths, overhead=cost) if met.end_only and named else []
    if len(groups) <= 1:
        return run(task, met, None)
    means = batch_means(model, task) if ablation == "mean" else None
    total: dict = {}
    for idx in groups:
        sub = task.subset(idx)
        for k, v in run(sub, met.subset(idx, sub), means).items():
            total[k] = total[k] + v if k in total else v
    return total


def captured_receiver_grads(
    model: Any, task: Any, met: Metric, input_value: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """:func:`receiver_grads` through the engine: ``engine.run(grad=True)`` with captures.

    Heads: their q/k/v input captures (each its own copy of the residual). Logits: the final
    norm's input. MLPs: their ``m{L}:in`` captures (under autograd the MLP's own copy of its
    input, so the gradient is the MLP's path only)."""
    s = model.shape
    heads = [r for L in range(s.n_layers) for r in _head_receivers(s, L)]
    n_mlp = s.n_layers if s.d_mlp > 0 else 0
    mlp_caps = [f"{mlp(L)}:in" for L in range(n_mlp)]
    names = [*heads, "logits:in", *mlp_caps]
    ivs = [] if input_value is None else [Patch(Site("input"), input_value.detach())]
    B = task.clean.shape[0]
    logits, cache = engine.run(
        model, task.clean, ivs, capture=names, grad=True, max_batch=B, max_bytes=1 << 62,
        progress=False,
    )  # fmt: skip
    loss = met(logits).sum()
    grads = dict(zip(names, torch.autograd.grad(loss, [cache[n] for n in names]), strict=True))
    out: dict[str, torch.Tensor] = {}
    for L in range(s.n_layers):
        out[f"a{L}"] = torch.stack([grads[r].reshape(-1) for r in _head_receivers(s, L)])
    out["logits"] = grads["logits:in"].reshape(1, -1)
    for L in range(n_mlp):
        out[mlp(L)] = grads[f"{mlp(L)}:in"].reshape(1, -1)
    return {k: v.detach() for k, v in out.items()}


def _contract(refs: _Refs, grads: dict[str, Any], shape: Any) -> dict:
    """Per mask group: ``deltas[:n_senders] @ grads.T`` (float64), streamed by
    :func:`~circuitsteer.discovery._grads.contract`."""
    groups = index_mask(shape).groups
    senders = {k: groups[k].senders for k in grads}
    return contract(refs.ablated, refs.clean, grads, senders, shape.d_model)


def _input(refs: _Refs, task: Any, ablated: bool = False) -> torch.Tensor:
    """The clean (or ablated) input embedding ``[B, P, d]``: the first sender's block."""
    B, P = task.clean.shape
    return (refs.ablated if ablated else refs.clean)[0].view(B, P, -1)


def _setup(model: Any, task: Any, metric: Any, ablation: str):
    shape = check_model(model)
    check_task(task, check_ablation(ablation))
    return shape, make_metric(metric, model, task, check=False)  # the gradient pass checks it


def _meta(method: str, model: Any, met: Metric, ablation: str, positions: Any, task: Any,
          t0: float, extra: dict | None, **more: Any) -> dict:  # fmt: skip
    return {
        **run_meta(method, model, met.name, ablation, positions, task, **more),
        "timings": {"total_s": round(time.perf_counter() - t0, 3)},
        **(extra or {}),
    }


def eap(
    model: Any,
    task: Any,
    metric: Any = "logit_diff",
    ablation: str = "resample",
    positions: Any = "all",
    meta: dict | None = None,
) -> EdgeScores:
    """EAP scores of every edge (see the module doc): mean over examples of
    ``(ablated_s - clean_s) . dL/d(input of r)``."""
    t0 = time.perf_counter()
    shape, met = _setup(model, task, metric, ablation)

    consts: dict = {}  # the head factors' constants, shared by the groups

    def run(sub: Any, m: Metric, means: list | None) -> dict:
        grads, refs = _clean_pass(model, sub, m, ablation, positions, consts, means)
        return _contract(refs, grads, shape)

    scores = _by_groups(model, task, met, ablation, positions, run, passes=2)
    n = len(task)
    out = {k: v / n for k, v in scores.items()}
    return EdgeScores.from_tensors(
        shape, out, _meta("eap", model, met, ablation, positions, task, t0, meta)
    )


def eap_ig(
    model: Any,
    task: Any,
    steps: int = 5,
    method: str = "inputs",
    metric: Any = "logit_diff",
    ablation: str = "resample",
    positions: Any = "all",
    meta: dict | None = None,
) -> EdgeScores:
    """EAP-IG scores of every edge with ``steps`` interpolation points, on the ``"inputs"``
    (Hanna et al.) or on the ``"activations"`` (the dense mask); see the module doc."""
    if method not in IG_METHODS:
        raise DiscoveryError(f"unknown EAP-IG method {method!r}", fix=f"use one of {IG_METHODS}")
    if not isinstance(steps, int) or steps < 1:
        raise DiscoveryError(f"steps must be a positive int, got {steps!r}", fix="pass steps=5")
    t0 = time.perf_counter()
    shape, met = _setup(model, task, metric, ablation)
    n = len(task)
    if method == "inputs":
        consts: dict = {}  # the head factors' constants, shared by the passes

        def run(sub: Any, m: Metric, means: list | None) -> dict:
            total, refs = _clean_pass(model, sub, m, ablation, positions, consts, means)  # a = 1
            clean_in, abl_in = _input(refs, sub), _input(refs, sub, ablated=True)
            rest = list(range(1, steps))
            per = STACK_ELEMENTS // (sub.clean.numel() * shape.d_model) if supported(model) else 1
            per = max(1, per)
            for i in range(0, len(rest), per):
                ks = rest[i : i + per]
                xs = [abl_in + (k / steps) * (clean_in - abl_in) for k in ks]
                _step_grads(model, sub, m, xs, total, consts)
            return _contract(refs, total, shape)

        scores = _by_groups(model, task, met, ablation, positions, run, passes=steps + 1)
        out = {k: v / (n * steps) for k, v in scores.items()}
    else:
        refs = references(model, task, ablation, positions)
        mask = EdgeMask(model, requires_grad=True)
        acc = {k: torch.zeros_like(t, dtype=torch.float64) for k, t in mask.tensors.items()}
        for k in range(steps):
            mask.fill_(k / steps)
            logits = run_with_mask(model, task.clean, mask, refs.ablated, grad=True)
            grads = torch.autograd.grad(met(logits).sum(), mask.parameters())
            for key, g in zip(mask.tensors, grads, strict=True):
                acc[key] += g.double()
        out = {k: v / (n * steps) for k, v in acc.items()}
    return EdgeScores.from_tensors(
        shape,
        out,
        _meta(f"eap-ig-{method}", model, met, ablation, positions, task, t0, meta, steps=steps),
    )
