"""Path patching (Wang et al. 2022, "Interpretability in the Wild", section 3.1).

The senders' outputs take their values from the corrupted run, and only the receivers' inputs see
the change: every other reader of a sender sees its clean output, and everything downstream of
the receivers runs normally. This is the engine's edge-restricted change,
``cs.Patch(cs.Site(sender, positions, to=receivers), source=corrupted_cache)``: a receiver's
input becomes ``clean input + (corrupted sender output - clean sender output)``.

Receivers: ``"a3.h1<q>"`` (one channel), ``"a3.h1"`` (q, k and v), ``"m2"``, ``"logits"``.

Example:
    >>> import circuitsteer as cs
    >>> from circuitsteer.zoo.tokenizer import toy_tokenizer
    >>> model = cs.random_gpt2(d_vocab=484, tokenizer=toy_tokenizer())
    >>> task = cs.tasks.ioi(model, n=4)
    >>> df = cs.analysis.path_patching(model, task, senders="a0.h1", receivers=["a1.h2<q>", "logits"])
    >>> df[["senders", "receivers"]].values.tolist()
    [['a0.h1', 'a1.h2<q>+logits']]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from circuitsteer import engine
from circuitsteer.analysis._common import Metric, check_positive, resolve_metric
from circuitsteer.errors import AnalysisError
from circuitsteer.interventions import Patch, PositionSpec, Site
from circuitsteer.nodes import all_heads, parse_node, parse_receiver, validate_node
from circuitsteer.nodes import depth as node_depth

NodeSets = str | Sequence[str] | Sequence[Sequence[str]]


def _sets(x: NodeSets, what: str) -> list[tuple[str, ...]]:
    """A name, one set (a list of names) or several sets (a list of lists) -> list of sets."""
    if isinstance(x, str):
        sets: list[Any] = [(x,)]
    else:
        items = list(x)
        if items and all(isinstance(i, str) for i in items):
            sets = [tuple(items)]
        else:
            sets = [(i,) if isinstance(i, str) else tuple(i) for i in items]
    sets = [tuple(dict.fromkeys(s)) for s in sets]  # drop repeats, keep order
    if not sets or any(not s for s in sets):
        raise AnalysisError(
            f"no {what} given", fix=f"pass {what} as a name, a list of names or a list of sets"
        )
    return sets


def _depth(model: Any, name: str, receiver: bool = False) -> float:
    """Forward-order depth of a sender or receiver (``a3.h1<q>``, ``m2``, ``logits``) under the
    model's residual rule (:func:`circuitsteer.nodes.depth`)."""
    node = parse_receiver(name)[0] if receiver else parse_node(name)
    return node_depth(validate_node(node, model.shape), model.shape)


def _check_sender(model: Any, name: str) -> None:
    node = validate_node(name, model.shape)
    if node.kind not in ("head", "mlp", "input"):
        raise AnalysisError(
            f"sender {name!r} is not a head, an MLP or 'input'", fix="send from a node's output"
        )


def path_patching(
    model: Any,
    task: Any,
    senders: NodeSets,
    receivers: NodeSets,
    metric: str | Metric = "logit_diff",
    source: str | torch.Tensor = "corrupted",
    positions: PositionSpec = "all",
    max_batch: int = 256,
) -> pd.DataFrame:
    """Patch the senders' outputs from ``source`` along the paths to the receivers only.

    Args:
        senders, receivers: a name, a set (list of names), or a list of sets; one row per
            (sender set, receiver set). Each sender sends to the receivers downstream of it.
        metric: ``"logit_diff"``, ``"prob_diff"``, ``"accuracy"`` or ``fn(logits, task) -> [batch]``;
            averaged over examples.
        source: ``"corrupted"`` (``task.corrupted``) or a token tensor shaped like ``task.clean``.
        positions: the senders' positions whose change is sent (``"all"``, ``"END"``, ...).
        max_batch: rows per stacked forward (``engine.run_variants``).

    Returns ``senders, receivers, positions, source, metric, clean, patched, corrupted, effect,
    effect_std, frac_of_gap, n``: ``effect = patched - clean``; ``frac_of_gap = (clean - patched)
    / (clean - corrupted)``, the share of the clean-corrupted difference this path carries
    (1.0: all of it). ``corrupted`` is the metric of the unpatched source run.
    """
    name, fn = resolve_metric(metric)
    sender_sets, receiver_sets = _sets(senders, "senders"), _sets(receivers, "receivers")
    if isinstance(source, str):
        if source != "corrupted":
            raise AnalysisError(f"source={source!r}", fix="pass 'corrupted' or a token tensor")
        src_tokens, src_name = task.corrupted, "corrupted"
    else:
        src_tokens, src_name = source, "tokens"
    if tuple(src_tokens.shape) != tuple(task.clean.shape):
        raise AnalysisError(
            f"source tokens {tuple(src_tokens.shape)} differ from the clean {tuple(task.clean.shape)}",
            fix="patching matches example by example: pass tokens of the same [batch, pos]",
        )
    wanted = list(dict.fromkeys(s for S in sender_sets for s in S))
    for s in wanted:
        _check_sender(model, s)
    check_positive("max_batch", max_batch)
    depth = {s: _depth(model, s) for s in wanted}
    depth |= {r: _depth(model, r, receiver=True) for R in receiver_sets for r in R}

    plan: list[list[Site]] = []  # checked before any forward runs
    for S in sender_sets:
        for R in receiver_sets:
            sites = []
            for s in S:
                to = tuple(r for r in R if depth[r] > depth[s])
                if not to:
                    raise AnalysisError(
                        f"sender {s} has no receiver downstream of it among {list(R)}",
                        fix="receivers must read the sender's output: use later heads, MLPs or 'logits'",
                    )
                sites.append(Site(s, positions=positions, to=to))
            plan.append(sites)

    clean_logits, _ = engine.run(model, task)
    clean = fn(clean_logits, task).float()
    src_logits, cache = engine.run(model, src_tokens, [], capture=wanted)
    corrupted = fn(src_logits, task).float()
    variants = [[Patch(site, source=cache) for site in sites] for sites in plan]
    res = engine.run_variants(
        model, task, variants, max_batch=max_batch, reduce=lambda lg: fn(lg, task)
    )
    patched = res.logits.float()  # [K, batch]

    c, k = float(clean.mean()), float(corrupted.mean())
    out, i = [], 0
    for S in sender_sets:
        for R in receiver_sets:
            p = patched[i]
            eff = p - clean
            out.append({
                "senders": "+".join(S), "receivers": "+".join(R), "positions": str(positions),
                "source": src_name, "metric": name, "clean": c, "patched": float(p.mean()),
                "corrupted": k, "effect": float(eff.mean()),
                "effect_std": float(eff.std()) if len(eff) > 1 else 0.0,
                "frac_of_gap": (c - float(p.mean())) / (c - k) if c != k else float("nan"),
                "n": len(eff),
            })  # fmt: skip
            i += 1
    return pd.DataFrame(out)


def path_patching_grid(
    model: Any,
    task: Any,
    receivers: str | Sequence[str],
    senders: Sequence[str] | None = None,
    metric: str | Metric = "logit_diff",
    source: str | torch.Tensor = "corrupted",
    positions: PositionSpec = "all",
    max_batch: int = 256,
) -> pd.DataFrame:
    """One row per single sender head: :func:`path_patching` from each head to ``receivers``
    (one receiver set), all variants stacked in batched forwards.

    ``senders``: heads (default: every head upstream of at least one receiver). Adds ``node``,
    ``layer`` and ``head`` columns for layer x head heatmaps.

    >>> import circuitsteer as cs
    >>> from circuitsteer.zoo.tokenizer import toy_tokenizer
    >>> model = cs.random_gpt2(d_vocab=484, tokenizer=toy_tokenizer())
    >>> task = cs.tasks.ioi(model, n=4)
    >>> len(path_patching_grid(model, task, receivers="a1.h0<v>"))   # the 4 heads of layer 0
    4
    """
    R = _sets(receivers, "receivers")
    if len(R) != 1:
        raise AnalysisError("path_patching_grid takes one receiver set", fix="pass a list of names")
    last = max(_depth(model, r, receiver=True) for r in R[0])
    heads = (
        [h for h in all_heads(model.shape) if _depth(model, h) < last]
        if senders is None
        else list(senders)
    )
    if not heads:
        raise AnalysisError(
            f"no head is upstream of {list(R[0])}",
            fix="choose receivers after layer 0, or 'logits'",
        )
    for h in heads:
        if validate_node(h, model.shape).kind != "head":
            raise AnalysisError(
                f"grid sender {h!r} is not a head", fix="use path_patching for other senders"
            )
    df = path_patching(model, task, [[h] for h in heads], R, metric, source, positions, max_batch)
    nodes = [parse_node(h) for h in heads]
    df.insert(0, "node", heads)
    df.insert(1, "layer", [n.layer for n in nodes])
    df.insert(2, "head", [n.head for n in nodes])
    return df
