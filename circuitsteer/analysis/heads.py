"""Head scores on repeated random tokens, and attention between a task's named positions.

``head_scores`` follows Olsson et al. (2022) and TransformerLens's tutorials: each example is BOS
followed by ``seq_len`` random tokens and the same tokens again, and a score is a mean of
attention probabilities at fixed (query, key) offsets. ``attention`` reads the same captured
patterns on a task.

Example:
    >>> import circuitsteer as cs
    >>> model = cs.random_gpt2(n_layers=2, n_heads=4, d_model=32)
    >>> df = cs.analysis.head_scores(model, n=4, seq_len=8)
    >>> sorted(df["kind"].unique())
    ['duplicate_token', 'induction', 'previous_token']
    >>> len(df) == 2 * 4 * 3
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from circuitsteer import engine
from circuitsteer.analysis._common import check_positive, chunks, head_nodes, named_position
from circuitsteer.errors import AnalysisError

KINDS = ("previous_token", "duplicate_token", "induction")


def ordinary_token_ids(model: Any) -> torch.Tensor:
    """Token ids of the model's vocabulary without special tokens (BOS/EOS/pad/unk)."""
    tk = model.tokenizer
    size = model.shape.d_vocab if tk is None else min(model.shape.d_vocab, len(tk))
    special = set(getattr(tk, "all_special_ids", []) or []) | {model.bos_token_id}
    ids = [i for i in range(size) if i not in special]
    if len(ids) < 2:
        raise AnalysisError(
            f"{model.name}: fewer than 2 ordinary tokens", fix="use a model with a real vocabulary"
        )
    return torch.tensor(ids, dtype=torch.long)


def repeated_tokens(model: Any, n: int = 100, seq_len: int = 20, seed: int = 0) -> torch.Tensor:
    """``[n, 1 + 2 * seq_len]``: BOS, ``seq_len`` random ordinary tokens, the same tokens again.

    Tokens are drawn without replacement within a half when the vocabulary allows, so a token's
    only earlier occurrence is its copy (duplicate and induction scores then have one target).

    >>> import circuitsteer as cs
    >>> t = repeated_tokens(cs.random_gpt2(), n=2, seq_len=5)
    >>> t.shape, bool((t[:, 1:6] == t[:, 6:]).all())
    (torch.Size([2, 11]), True)
    """
    check_positive("n", n)
    check_positive("seq_len", seq_len)
    if 1 + 2 * seq_len > model.shape.n_ctx:
        raise AnalysisError(
            f"1 + 2 * seq_len = {1 + 2 * seq_len} tokens exceed {model.name}'s context of {model.shape.n_ctx}",
            fix=f"pass seq_len <= {(model.shape.n_ctx - 1) // 2}",
        )
    ids = ordinary_token_ids(model)
    g = torch.Generator().manual_seed(seed)
    if seq_len <= len(ids):
        pick = torch.stack([torch.randperm(len(ids), generator=g)[:seq_len] for _ in range(n)])
    else:  # the vocabulary is smaller than a half: repeats inside a half cannot be avoided
        pick = torch.randint(len(ids), (n, seq_len), generator=g)
    half = ids[pick]
    bos = torch.full((n, 1), model.bos_token_id, dtype=torch.long)
    return torch.cat([bos, half, half], dim=1)


def _scores(pattern: torch.Tensor, seq_len: int) -> dict[str, torch.Tensor]:
    """Per-example scores from one head's pattern ``[batch, query, key]``."""
    S = seq_len
    every = torch.arange(1, 2 * S + 1, device=pattern.device)  # every token after BOS
    second = torch.arange(S + 1, 2 * S + 1, device=pattern.device)  # tokens with an earlier copy
    return {
        "previous_token": pattern[:, every, every - 1].mean(-1),
        "duplicate_token": pattern[:, second, second - S].mean(-1),
        "induction": pattern[:, second, second - S + 1].mean(-1),
    }


def head_scores(
    model: Any,
    n: int = 100,
    seq_len: int = 20,
    seed: int = 0,
    kinds: Sequence[str] = KINDS,
    batch: int = 100,
) -> pd.DataFrame:
    """Previous-token, duplicate-token and induction scores of every head.

    On :func:`repeated_tokens` (BOS + ``seq_len`` tokens + the same again), per head:

    * ``previous_token``: mean attention from each token to the one before it;
    * ``duplicate_token``: mean attention from a second-half token to its earlier copy;
    * ``induction``: mean attention from a second-half token to the token after its earlier copy.

    Returns one row per (head, kind): ``layer, head, node, kind, score, n, seq_len, seed``.

    >>> import circuitsteer as cs
    >>> df = head_scores(cs.random_gpt2(), n=2, seq_len=4, kinds=["induction"])
    >>> list(df.columns)
    ['layer', 'head', 'node', 'kind', 'score', 'n', 'seq_len', 'seed']
    """
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise AnalysisError(
            f"unknown or no head-score kinds {bad or kinds}", fix=f"use some of {KINDS}"
        )
    tokens = repeated_tokens(model, n, seq_len, seed)
    heads = head_nodes(model, None)
    names = [f"{h.name}:pattern" for h in heads]
    sums = {(h.name, k): 0.0 for h in heads for k in kinds}
    for sl in chunks(n, batch):
        _, cache = engine.run(model, tokens[sl], [], capture=names)
        for h, name in zip(heads, names, strict=True):
            per_example = _scores(cache[name].float(), seq_len)
            for k in kinds:
                sums[(h.name, k)] += float(per_example[k].sum())
    return pd.DataFrame(
        [
            {"layer": h.layer, "head": h.head, "node": h.name, "kind": k,
             "score": sums[(h.name, k)] / n, "n": n, "seq_len": seq_len, "seed": seed}
            for h in heads for k in kinds
        ]
    )  # fmt: skip


def attention(
    model: Any,
    task: Any,
    from_pos: str = "END",
    to: str | Sequence[str] = ("IO", "S1", "S2"),
    heads: str | Sequence[str] | None = None,
    tokens: str = "clean",
    batch: int = 100,
) -> pd.DataFrame:
    """Mean attention probability from one named position to others, per head.

    Rows are right-padded; named positions lie on real tokens, and causal attention keeps padding
    out of them, so padded rows need no special care (a ``to`` position after ``from_pos`` reads 0).
    When ``task.meta`` has an ``order`` column (IOI: ABBA/BABA) the means are also given per order.

    Returns ``node, layer, head, from, to, order, attention, n`` (``order`` is ``"all"`` for the
    whole task). ``tokens``: ``"clean"`` or ``"corrupted"``.

    >>> import circuitsteer as cs
    >>> from circuitsteer.zoo.tokenizer import toy_tokenizer
    >>> model = cs.random_gpt2(d_vocab=484, tokenizer=toy_tokenizer())
    >>> task = cs.tasks.ioi(model, n=4)
    >>> df = attention(model, task, heads=["a1.h0"])
    >>> sorted(df["order"].unique()), sorted(df["to"].unique())
    (['ABBA', 'BABA', 'all'], ['IO', 'S1', 'S2'])
    """
    nodes = head_nodes(model, heads)
    targets = [to] if isinstance(to, str) else list(to)
    if not targets:
        raise AnalysisError(
            "no target positions given", fix="pass to=('IO', 'S1', 'S2') or similar"
        )
    if tokens not in ("clean", "corrupted"):
        raise AnalysisError(f"tokens={tokens!r}", fix="use 'clean' or 'corrupted'")
    src = named_position(task, from_pos)
    dst = {t: named_position(task, t) for t in targets}
    toks: torch.Tensor = getattr(task, tokens)
    names = [f"{h.name}:pattern" for h in nodes]
    values: dict[tuple[str, str], list[torch.Tensor]] = {
        (h.name, t): [] for h in nodes for t in targets
    }
    for sl in chunks(len(task), batch):
        _, cache = engine.run(model, toks[sl], [], capture=names)
        for h, name in zip(nodes, names, strict=True):
            p = cache[name].float()
            r = torch.arange(p.shape[0], device=p.device)
            q = src[sl].to(p.device)
            for t in targets:
                values[(h.name, t)].append(p[r, q, dst[t][sl].to(p.device)].cpu())
    groups: list[tuple[str, torch.Tensor]] = [("all", torch.ones(len(task), dtype=torch.bool))]
    meta = getattr(task, "meta", None)
    if isinstance(meta, pd.DataFrame) and "order" in meta.columns:
        for o in sorted(meta["order"].astype(str).unique()):
            groups.append((o, torch.tensor((meta["order"].astype(str) == o).tolist())))
    out = []
    for h in nodes:
        for t in targets:
            v = torch.cat(values[(h.name, t)])
            for order, mask in groups:
                out.append({"node": h.name, "layer": h.layer, "head": h.head, "from": from_pos,
                            "to": t, "order": order, "attention": float(v[mask].mean()),
                            "n": int(mask.sum())})  # fmt: skip
    return pd.DataFrame(out)
