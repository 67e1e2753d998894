"""What every discovery method shares: the typed error, argument checks, the ablation references
(patched sender values per ablation mode and positions) and the scores container.

An edge's *ablated* value is the value its receiver reads when the edge is out of the circuit:
``resample`` the sender's output on the corrupted prompt (example by example), ``mean`` its mean
output over the corrupted prompts (per position index, over the rows that are real tokens there,
as the engine's mean ablation), ``zero`` nothing. Positions other than ``"all"`` (a named position
such as ``"END"``, an int, or a list of them) restrict the ablation to those positions: elsewhere
the ablated value is the sender's clean output.

Example:
    >>> import circuitsteer as cs
    >>> m = cs.random_gpt2(n_layers=1, n_heads=2, d_model=16)
    >>> check_ablation("mean")
    'mean'
    >>> check_model(object())
    Traceback (most recent call last):
    ...
    circuitsteer.errors.UnsupportedArchitectureError: discovery needs a circuitsteer Model ...
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from types import SimpleNamespace
from typing import Any

import pandas as pd
import torch

from circuitsteer import edge_graph as eg
from circuitsteer.engine.masks import EdgeMask, SenderOutputs, sender_outputs
from circuitsteer.errors import CircuitSteerError, UnsupportedArchitectureError
from circuitsteer.nodes import ModelShape, format_edge

ABLATIONS = ("resample", "mean", "zero")
FAMILIES = ("gpt2", "gpt_neox", "llama")  # the adapters' families (Qwen2, Mistral use llama's)


class DiscoveryError(CircuitSteerError, ValueError):
    """Circuit discovery got arguments it cannot use: a task without corrupted prompts for
    resample ablation, a metric that is not one number per example, a negative threshold, an
    unknown ablation, method or selection."""


def check_model(model: Any) -> ModelShape:
    """The model's shape, or :class:`UnsupportedArchitectureError` when the edge graph does not
    cover it (not a circuitsteer Model, or a family without an adapter)."""
    arch, shape = getattr(model, "arch", None), getattr(model, "shape", None)
    if not isinstance(shape, ModelShape) or getattr(arch, "family", None) not in FAMILIES:
        raise UnsupportedArchitectureError(
            f"discovery needs a circuitsteer Model whose edge graph is known, got "
            f"{type(model).__name__}" + (f" (family {arch.family!r})" if arch is not None else ""),
            fix="load it with cs.load_model (model_type gpt2, gpt_neox, llama, qwen2 or mistral)",
        )
    if shape.n_layers < 1 or shape.n_heads < 1:
        raise UnsupportedArchitectureError(
            f"the edge graph needs at least one layer with heads, got {shape.describe()}",
            fix="use a transformer with attention heads",
        )
    return shape


def check_ablation(ablation: str) -> str:
    if ablation not in ABLATIONS:
        raise DiscoveryError(f"unknown ablation {ablation!r}", fix=f"use one of {ABLATIONS}")
    return ablation


def check_task(task: Any, ablation: str) -> Any:
    """``task`` must carry clean tokens, and for ``resample``/``mean`` corrupted ones that differ."""
    clean = getattr(task, "clean", None)
    corrupted = getattr(task, "corrupted", None)
    if not isinstance(clean, torch.Tensor) or clean.dim() != 2:
        raise DiscoveryError(
            f"discovery needs a Task (clean and corrupted token batches), got {type(task).__name__}",
            fix="build one with cs.tasks (ioi, greater_than, ...)",
        )
    if ablation == "zero":
        return task
    if not isinstance(corrupted, torch.Tensor) or torch.equal(corrupted, clean):
        raise DiscoveryError(
            f"task {getattr(task, 'name', '?')!r} has no corrupted prompts (they equal the clean "
            f"ones), so {ablation} ablation would change nothing",
            fix="use a task with a corruption (cs.tasks.ioi, greater_than, sentiment) or "
            "ablation='zero'",
        )
    return task


def progress_enabled(progress: bool | None) -> bool:
    """None: show bars unless ``CIRCUITSTEER_QUIET`` is set."""
    if progress is None:
        return not os.environ.get("CIRCUITSTEER_QUIET")
    return progress


# -- references ----------------------------------------------------------------------------------


def _stack(so: SenderOutputs, B: int, P: int) -> torch.Tensor:
    return torch.cat(so.blocks).view(-1, B, P, so.blocks[0].shape[1] // (B * P))


def _unstack(x: torch.Tensor, like: SenderOutputs, tokens: torch.Tensor) -> SenderOutputs:
    flat = x.reshape(x.shape[0], -1)
    return SenderOutputs(tokens, list(flat.split([b.shape[0] for b in like.blocks])))


def position_mask(task: Any, positions: Any) -> torch.Tensor | None:
    """BoolTensor ``[batch, pos]`` of the positions an ablation acts at (None: all)."""
    if positions is None or positions == "all":
        return None
    items = [positions] if isinstance(positions, str | int) else list(positions)
    B, P = task.clean.shape
    out = torch.zeros(B, P, dtype=torch.bool)
    rows = torch.arange(B)
    for p in items:
        if isinstance(p, str):
            idx = task.position(p)
            out[rows, idx.cpu()] = True
        elif isinstance(p, int) and -P <= p < P:
            out[:, p] = True
        else:
            raise DiscoveryError(
                f"position {p!r} is neither a named position nor an index below {P}",
                fix=f"use 'all', one of {list(task.positions)} or ints",
            )
    return out


def mean_per_position(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``x`` ``[n, B, P, d]`` -> its mean over the rows that are real tokens at each position
    (a position no row reaches takes the plain mean), broadcast back to ``[n, B, P, d]``.

    >>> x = torch.tensor([1.0, 3.0]).view(1, 2, 1, 1).expand(1, 2, 2, 1)
    >>> mean_per_position(x, torch.tensor([2, 1]))[0, :, :, 0].tolist()
    [[2.0, 1.0], [2.0, 1.0]]
    """
    B, P = x.shape[1], x.shape[2]
    real = (torch.arange(P)[None, :] < lengths.cpu()[:, None]).to(x.dtype)  # [B, P]
    count = real.sum(0)
    w = torch.where(count > 0, real / count.clamp(min=1), torch.full_like(real, 1.0 / B))
    mean = torch.einsum("nbpd,bp->npd", x.double(), w.double()).to(x.dtype)
    return mean[:, None].expand(-1, B, -1, -1)


@dataclass
class References:
    """The clean sender outputs of a task and their ablated values (one ``SenderOutputs`` each,
    the layout of :func:`circuitsteer.engine.masks.sender_outputs`)."""

    clean: SenderOutputs
    ablated: SenderOutputs
    _deltas: torch.Tensor | None = None

    def deltas(self) -> torch.Tensor:
        """``[n_senders, batch*pos*d_model]``: ablated - clean, in the mask's sender order."""
        d = self._deltas
        if d is None:
            d = self._deltas = torch.cat(self.ablated.blocks) - torch.cat(self.clean.blocks)
        return d


def references(
    model: Any, task: Any, ablation: str, positions: Any = "all", clean: SenderOutputs | None = None
) -> References:
    """Record the clean sender outputs (unless given) and build their ablated values (see the
    module doc)."""
    clean = clean if clean is not None else sender_outputs(model, task.clean)
    B, P = task.clean.shape
    where = position_mask(task, positions)
    if ablation == "resample" and where is None:  # the corrupted run's blocks as they are
        return References(clean, sender_outputs(model, task.corrupted))
    if ablation == "zero":
        abl = torch.zeros_like(_stack(clean, B, P))
    else:
        abl = _stack(sender_outputs(model, task.corrupted), B, P)
        if ablation == "mean":
            abl = mean_per_position(abl, task.lengths)
    if where is not None:
        abl = torch.where(where.to(abl.device)[None, :, :, None], abl, _stack(clean, B, P))
    return References(clean, _unstack(abl, clean, task.clean))


# -- scores --------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def edge_table(shape: ModelShape) -> pd.DataFrame:
    """Every edge of the edge graph in :func:`~circuitsteer.edge_graph.full_edges` order: edge
    name, src, dst, channel, and where it sits in an :class:`EdgeMask` (group, row, col)."""
    rows = []
    mask = index_mask(shape)
    for src, dst, ch in eg.full_edges(shape):
        key, r, c = mask.locate((src, dst, ch))
        rows.append((format_edge(src, dst, ch), src, dst, ch, key, r, c))
    return pd.DataFrame(rows, columns=["edge", "src", "dst", "channel", "group", "row", "col"])


def index_mask(shape: ModelShape) -> EdgeMask:
    """An all-zero float64 EdgeMask of ``shape`` on the CPU (its layout and indexing)."""
    fake = SimpleNamespace(shape=shape, dtype=torch.float64, device=torch.device("cpu"))
    return EdgeMask(fake)


def _names(shape: ModelShape) -> pd.DataFrame:
    """A fresh frame of the edge columns (edge, src, dst, channel) in edge-table order."""
    t = edge_table(shape)
    return pd.DataFrame({k: t[k].to_numpy() for k in ("edge", "src", "dst", "channel")})


def frame_from_tensors(shape: ModelShape, tensors: dict[str, torch.Tensor]) -> pd.DataFrame:
    """Per-group ``[senders, receivers]`` tensors (an EdgeMask's layout) -> one row per edge."""
    out = _names(shape)
    vals = torch.empty(len(out), dtype=torch.float64)
    for key, (idx, rows, cols) in _group_index(shape).items():
        vals[idx] = tensors[key].detach().double().cpu()[rows, cols]
    out["score"] = vals.numpy()
    return out


@lru_cache(maxsize=16)
def _group_index(shape: ModelShape) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per mask group: (edge-table indices, rows, cols) as index tensors."""
    table = edge_table(shape)
    out = {}
    for key, idx in table.groupby("group", sort=False).indices.items():
        sub = table.iloc[idx]
        out[key] = (
            torch.tensor(idx, dtype=torch.long),
            torch.tensor(sub["row"].to_numpy(), dtype=torch.long),
            torch.tensor(sub["col"].to_numpy(), dtype=torch.long),
        )
    return out


def channel(x: Any) -> str | None:
    """A frame's channel cell as the nodes grammar wants it (pandas may hold None as NaN)."""
    return x if isinstance(x, str) else None


def tensors_from_frame(shape: ModelShape, values: Sequence[float]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`frame_from_tensors` for values in edge-table order."""
    out = index_mask(shape).tensors
    v = torch.as_tensor(list(values), dtype=torch.float64)
    for key, (idx, rows, cols) in _group_index(shape).items():
        out[key][rows, cols] = v[idx]
    return out


def run_meta(method: str, model: Any, metric: str, ablation: str, positions: Any, task: Any,
             **more: Any) -> dict[str, Any]:  # fmt: skip
    """The metadata every method records (timings are added by the method)."""
    return {
        "method": method,
        "model": getattr(model, "name", None),
        "metric": metric,
        "ablation": ablation,
        "positions": "all"
        if positions is None
        else (positions if isinstance(positions, str | int) else list(positions)),
        "data": data_meta(task),
        "seed": None,
        **more,
    }


def data_meta(task: Any) -> dict[str, Any]:
    """What identifies a task's data: name, size, width, extra settings, a hash of its tokens."""
    h = hashlib.sha1(task.clean.cpu().numpy().tobytes())
    h.update(task.corrupted.cpu().numpy().tobytes())
    extra = {
        k: v for k, v in getattr(task, "extra", {}).items() if isinstance(v, str | int | float)
    }
    return {
        "task": getattr(task, "name", None),
        "n": len(task),
        "pos": int(task.clean.shape[1]),
        **extra,
        "tokens_sha1": h.hexdigest()[:16],
    }


@dataclass
class EdgeScores:
    """One score per edge of a model's edge graph (``frame``: edge, src, dst, channel, score;
    ACDC adds ``tested`` and ``kept``) and the run's metadata (method, metric, ablation,
    positions, data, seed, timings).

    Scores are effects on the method's loss (KL to the clean model, or the negated logit
    difference): an edge whose ablation moves the model away from its clean behaviour scores
    positive. Turn them into a :class:`~circuitsteer.Circuit` with :mod:`.select`.

    >>> import circuitsteer as cs
    >>> from circuitsteer.nodes import ModelShape
    >>> s = ModelShape(n_layers=1, n_heads=1, d_model=4, d_head=4, d_mlp=0, d_vocab=5)
    >>> sc = EdgeScores.from_values(s, [0.5, 0.0, 0.1, 0.2, 0.3], {"method": "demo"})
    >>> sc.series().to_dict()
    {'input->a0.h0<q>': 0.5, 'input->a0.h0<k>': 0.0, 'input->a0.h0<v>': 0.1, 'input->logits': 0.2, 'a0.h0->logits': 0.3}
    """

    shape: ModelShape
    frame: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_tensors(
        cls, shape: ModelShape, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
    ) -> EdgeScores:
        return cls(shape, frame_from_tensors(shape, tensors), dict(meta))

    @classmethod
    def from_values(
        cls, shape: ModelShape, values: Sequence[float], meta: dict[str, Any]
    ) -> EdgeScores:
        frame = _names(shape)
        frame["score"] = list(values)
        return cls(shape, frame, dict(meta))

    def series(self) -> pd.Series:
        """Scores indexed by edge name."""
        return pd.Series(self.frame["score"].to_numpy(), index=self.frame["edge"], name="score")

    def tensors(self) -> dict[str, torch.Tensor]:
        """The scores in an EdgeMask's per-group layout (float64)."""
        return tensors_from_frame(self.shape, self.frame["score"].fillna(0.0).tolist())

    def __len__(self) -> int:
        return len(self.frame)

    def __repr__(self) -> str:
        m = self.meta
        return (
            f"EdgeScores({m.get('method')!r}, {len(self)} edges, metric={m.get('metric')!r}, "
            f"ablation={m.get('ablation')!r})"
        )
