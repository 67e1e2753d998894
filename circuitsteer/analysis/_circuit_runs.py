"""Running a model as one of its circuits: everything outside the circuit ablated, at the level of
nodes (``Ablate`` on every head/MLP outside it, stacked in ``engine.run_variants``) or of edges
(the dense edge mask: every edge outside it reads the ablated sender value).

Edge-level ablation values (``reference_outputs``): ``resample`` = the senders' outputs on the
corrupted prompts (example by example; MIB's "patching"), ``zero`` = zeros, ``mean`` = the
senders' mean output on the corrupted prompts, per position index over the prompts that are
real tokens there (as the engine's node-level mean ablation). Edge masks act at every position.

Example:
    >>> import circuitsteer as cs
    >>> from circuitsteer.zoo.tokenizer import toy_tokenizer
    >>> m = cs.random_gpt2(n_layers=1, n_heads=2, d_model=8, d_vocab=484, tokenizer=toy_tokenizer())
    >>> task = cs.tasks.ioi(m, n=3)
    >>> runs = CircuitRuns(m, task, "zero", "node")
    >>> v = runs.values([set(runs.units), set()])        # the full model, then no node at all
    >>> tuple(v.shape)
    (2, 3)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from circuitsteer import edge_graph as eg
from circuitsteer import engine
from circuitsteer.analysis._common import chunks, resolve_metric
from circuitsteer.analysis._rows import positions_label
from circuitsteer.engine.chunking import progress
from circuitsteer.engine.masks import EdgeMask, SenderOutputs, run_with_mask, sender_outputs
from circuitsteer.errors import AnalysisError
from circuitsteer.interventions import Ablate, PositionSpec, Site
from circuitsteer.nodes import all_heads, all_mlps, parse_node

MODES = ("zero", "mean", "resample")
LEVELS = ("node", "edge")
EdgeKey = tuple[str, str, "str | None"]


class CircuitRuns:
    """Per-example metric values of a model run as circuits of one kind (node or edge sets).

    ``units``: what a circuit is made of: node names (heads and MLPs; ``kinds`` picks which may
    be ablated) or edge keys ``(sender, receiver, channel)`` of the full edge graph."""

    def __init__(
        self,
        model: Any,
        task: Any,
        ablation: str = "mean",
        level: str = "node",
        positions: PositionSpec = "all",
        metric: Any = "logit_diff",
        reference: Any = None,
        kinds: Sequence[str] = ("head", "mlp"),
        max_batch: int = 256,
        progress: bool | None = None,
    ) -> None:
        if ablation not in MODES:
            raise AnalysisError(f"unknown ablation {ablation!r}", fix=f"use one of {', '.join(MODES)}")  # fmt: skip
        if level not in LEVELS:
            raise AnalysisError(f"unknown level {level!r}", fix="use 'node' or 'edge'")
        if level == "edge" and positions != "all":
            raise AnalysisError(
                f"edge-level ablation acts at every position, got positions={positions!r}",
                fix="use level='node' for position-specific ablation, or positions='all'",
            )
        self.model, self.task, self.ablation, self.level = model, task, ablation, level
        self.positions, self.max_batch, self.progress = positions, max_batch, progress
        self.metric_name, self.metric = resolve_metric(metric)
        self.reference = task.corrupted if reference is None else reference
        s = model.shape
        if level == "node":
            nodes = all_heads(s) * ("head" in kinds) + all_mlps(s) * ("mlp" in kinds)
            self.units: list[Any] = nodes
        else:
            self.units = list(eg.full_edges(s))
        self._refs: dict[tuple[int, int], SenderOutputs] = {}
        self._mean: list[torch.Tensor] | None = None
        self._loc: dict[Any, tuple[str, int, int]] | None = None

    def describe(self) -> dict[str, Any]:
        """The columns every row of these runs records."""
        return {"mode": self.ablation, "level": self.level,
                "positions": positions_label(self.positions), "metric": self.metric_name}  # fmt: skip

    def keep_of(self, circuit: Any) -> set[Any]:
        """The units a circuit keeps: its heads/MLPs (node level) or its edges (edge level)."""
        if self.level == "node":
            return {n for n in circuit.nodes if n in set(self.units)}
        keys = set(circuit.edge_keys())
        unknown = keys - set(self.units)
        if unknown:
            raise AnalysisError(
                f"{len(unknown)} circuit edges are not in the model's edge graph, e.g. {sorted(map(str, unknown))[0]}",
                fix="check the circuit against the model (circuit.check_model(model))",
            )
        return keys

    def values(self, keeps: Sequence[set[Any]]) -> torch.Tensor:
        """``[K, n]``: the metric per example with only ``keeps[k]`` left intact."""
        if self.level == "node":
            return self._node_values(keeps)
        steps = progress(keeps, len(keeps), "masked circuits", self.progress)
        return torch.stack([self._edge_values(k) for k in steps])

    # -- node level ---------------------------------------------------------------------------
    def _node_values(self, keeps: Sequence[set[Any]]) -> torch.Tensor:
        ref = None if self.ablation == "zero" else self.reference
        variants = [
            [Ablate(Site(n, positions=self.positions), mode=self.ablation, reference=ref)
             for n in self.units if n not in keep]
            for keep in keeps
        ]  # fmt: skip
        task, fn = self.task, self.metric
        res = engine.run_variants(
            self.model, task, variants, max_batch=self.max_batch, progress=self.progress,
            reduce=lambda lg, rows: fn(lg, _rows(task, rows)).float(),
        )  # fmt: skip
        return res.logits.double().cpu()

    # -- edge level ---------------------------------------------------------------------------
    def _mask(self, keep: set[Any]) -> EdgeMask:
        """1 (the ablated value) on every edge, 0 (the forward's own) on the kept ones."""
        mask = EdgeMask(self.model, value=1.0)
        if self._loc is None:  # where each edge lives in the mask, asked of the mask once
            self._loc = {u: mask.locate(u) for u in self.units}
        at: dict[str, tuple[list[int], list[int]]] = {}
        for key in keep:
            group, row, col = self._loc[key]
            rows, cols = at.setdefault(group, ([], []))
            rows.append(row)
            cols.append(col)
        with torch.no_grad():
            for group, (rows, cols) in at.items():
                mask.tensors[group][torch.tensor(rows), torch.tensor(cols)] = 0.0
        return mask

    def _edge_values(self, keep: set[Any]) -> torch.Tensor:
        mask = self._mask(keep)
        out = []
        for sl in chunks(len(self.task), self.max_batch):
            with torch.no_grad():
                lg = run_with_mask(self.model, self.task.clean[sl], mask, self._reference(sl))
            out.append(self.metric(lg, _rows(self.task, sl)).double().cpu())
        return torch.cat(out)

    def _reference(self, sl: slice) -> SenderOutputs:
        key = (sl.start, sl.stop)
        if key not in self._refs:
            toks = self.task.clean[sl]
            if self.ablation == "resample":
                self._refs[key] = sender_outputs(self.model, _tokens(self.reference)[sl])
            else:
                means = self._means() if self.ablation == "mean" else None
                self._refs[key] = _constant_outputs(self.model, toks, means)
        return self._refs[key]

    def _means(self) -> list[torch.Tensor]:
        """Per sender block, the mean output per position over the reference's real rows:
        ``[n, P, d]``."""
        if self._mean is None:
            toks = _tokens(self.reference)
            lengths = getattr(self.reference, "lengths", None)
            if lengths is None:
                lengths = self.task.lengths if toks.shape == self.task.clean.shape else None
            P, d = toks.shape[1], self.model.shape.d_model
            sums: list[torch.Tensor] | None = None
            count = torch.zeros(P, dtype=torch.float64)
            for sl in chunks(toks.shape[0], self.max_batch):
                b = sl.stop - sl.start
                real = torch.ones(b, P, dtype=torch.bool) if lengths is None else (
                    torch.arange(P)[None, :] < lengths[sl, None])  # fmt: skip
                blocks = sender_outputs(self.model, toks[sl]).blocks
                part = [(x.double().cpu().view(x.shape[0], b, P, d) * real[None, :, :, None]).sum(1)
                        for x in blocks]  # fmt: skip
                sums = part if sums is None else [s + p for s, p in zip(sums, part, strict=True)]
                count += real.sum(0)
            assert sums is not None
            self._mean = [s / count.clamp_min(1)[None, :, None] for s in sums]
        return self._mean


def _tokens(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else x.clean


def _constant_outputs(model: Any, toks: torch.Tensor, means: list[torch.Tensor] | None):
    """Sender outputs that do not depend on the example: zeros, or per-position means."""
    s = model.shape
    b, P, d = toks.shape[0], toks.shape[1], s.d_model
    shapes = [1] + [s.n_heads, *([1] if eg.has_mlps(s) else [])] * s.n_layers  # forward order
    if means is None:
        blocks = [torch.zeros(n, b * P * d, dtype=model.dtype) for n in shapes]
    else:
        if means[0].shape[1] != P:
            raise AnalysisError(
                f"mean reference has {means[0].shape[1]} positions, the task {P}",
                fix="pass reference tokens of the task's width (task.corrupted)",
            )
        blocks = [m.to(model.dtype)[:, None].expand(m.shape[0], b, P, d).reshape(m.shape[0], -1)
                  for m in means]  # fmt: skip
    return SenderOutputs(toks, blocks)


def _rows(task: Any, rows: slice) -> Any:
    from circuitsteer.analysis._rows import task_rows

    return task_rows(task, rows)


def node_kind(name: str) -> str:
    return parse_node(name).kind
