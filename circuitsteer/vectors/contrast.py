"""ActAdd contrast pairs (Turner et al. 2023): the site's activations for prompt A minus those
for prompt B, per position.

Both prompts get BOS and are tokenized; the shorter one is padded on the right with ``pad``
(the paper pads with spaces, GPT-2's ``" "``) to the longer one's length, and both run in one
batch. Row ``i`` of the result is the difference at position ``i``; ``vector.interventions(c)``
adds row ``i`` times ``c`` at position ``i`` of the user's prompt (front-aligned, BOS at 0, where
the difference is exactly zero). ``average=True`` gives one vector instead: the mean of the rows
after the first.

Example:
    >>> import circuitsteer as cs
    >>> m = cs.random_gpt2(n_layers=2, n_heads=4, d_model=32)
    >>> v = contrast_pair(m, "resid_pre.1", "Love", "Hate!")      # byte tokens: 4 vs 5
    >>> tuple(v.vector.shape), v.data["tokens_b"][-1] == v.data["tokens_a"][-1]
    ((6, 32), False)
    >>> float(v.vector[0].abs().max())                             # BOS: no difference
    0.0
    >>> len(v.interventions(coef=5.0))
    6
"""

from __future__ import annotations

from typing import Any

import torch

from circuitsteer import engine
from circuitsteer.vectors._site import canonical, model_ref
from circuitsteer.vectors.errors import VectorError
from circuitsteer.vectors.mean_diff import vector_dtype
from circuitsteer.vectors.steering_vector import SteeringVector


def _tokens(model: Any, p: Any, bos: bool) -> list[int]:
    if isinstance(p, str):
        ids = list(model.tokenizer.encode(p, add_special_tokens=False))
        return [model.bos_token_id, *ids] if bos else ids
    if isinstance(p, torch.Tensor) and p.dim() == 1 and not p.is_floating_point():
        return [int(i) for i in p.tolist()]
    if isinstance(p, (list, tuple)) and all(
        isinstance(i, int) and not isinstance(i, bool) for i in p
    ):
        return list(p)
    raise VectorError(
        f"a contrast prompt must be a string or a 1-D list/tensor of token ids, got {type(p).__name__}",
        fix="pass two strings, e.g. contrast_pair(model, site, 'Love', 'Hate')",
    )


def pad_id(model: Any, pad: str | int) -> int:
    """The token id of ``pad``: an int is taken as an id; a string must be one token."""
    if isinstance(pad, int) and not isinstance(pad, bool):
        if not 0 <= pad < model.shape.d_vocab:
            raise VectorError(
                f"pad id {pad} is outside the vocabulary of {model.shape.d_vocab}",
                fix="pass a token id of the model's vocabulary",
            )
        return pad
    ids = model.tokenizer.encode(pad, add_special_tokens=False) if isinstance(pad, str) else []
    unk = getattr(model.tokenizer, "unk_token_id", None)
    if len(ids) != 1 or (unk is not None and ids[0] == unk and unk != model.bos_token_id):
        raise VectorError(
            f"pad {pad!r} is not exactly one token for {getattr(model, 'name', 'this model')} "
            f"(it encodes to {ids})",
            fix="pass pad as a one-token string of this vocabulary or a token id "
            "(e.g. pad=model.tokenizer.pad_token_id; GPT-2's ' ' is one token)",
        )
    return int(ids[0])


def contrast_pair(
    model: Any,
    site: str,
    a: str | list[int] | torch.Tensor,
    b: str | list[int] | torch.Tensor,
    pad: str | int = " ",
    average: bool = False,
    bos: bool = True,
) -> SteeringVector:
    """The ActAdd vector ``act(a) - act(b)`` at ``site``: ``[n_pos, width]`` per position
    (front-aligned), or ``[width]`` with ``average=True`` (mean over positions after the first).

    ``a``/``b``: strings (BOS prepended unless ``bos=False``) or token id lists/tensors (used as
    given). ``pad``: the padding token for the shorter prompt, a one-token string or an id.
    ``data`` records both prompts, their padded token ids and the pad id.
    """
    site = canonical(site)
    ta, tb = _tokens(model, a, bos), _tokens(model, b, bos)
    if not ta or not tb:
        raise VectorError("a contrast prompt is empty", fix="pass non-empty prompts")
    n = max(len(ta), len(tb))
    pid = pad_id(model, pad) if len(ta) != len(tb) else None
    ta_p = ta + [pid] * (n - len(ta)) if pid is not None else ta  # type: ignore[list-item]
    tb_p = tb + [pid] * (n - len(tb)) if pid is not None else tb  # type: ignore[list-item]
    toks = torch.tensor([ta_p, tb_p], dtype=torch.long)
    _, cache = engine.run(model, toks, capture=[site], progress=False)
    acts = cache[site].detach().to(torch.float64).cpu()
    diff = acts[0] - acts[1]
    if average:
        if n < 2:
            raise VectorError(
                "average=True needs prompts of at least two tokens (the first is left out)",
                fix="use longer prompts, or average=False",
            )
        diff = diff[1:].mean(0)
    return SteeringVector(
        diff.to(vector_dtype(model)),
        site=site,
        model=model_ref(model),
        method="contrast_pair",
        data={
            "a": a if isinstance(a, str) else ta,
            "b": b if isinstance(b, str) else tb,
            "tokens_a": ta_p,
            "tokens_b": tb_p,
            "pad": pad if pid is not None else None,
            "pad_id": pid,
        },
        positions="mean_after_first" if average else "front",
        meta={"n_pos": n, "len_a": len(ta), "len_b": len(tb)},
    )
