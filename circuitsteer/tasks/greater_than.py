"""Greater-than (Hanna et al. 2023): "The war lasted from the year 1732 to the year 17" -> YY > 32.

* clean: "The {noun} lasted from the year {century}{YY} to the year {century}", YY in 02..98;
  corrupted: YY -> "01" (so every year is greater and the prompt says nothing about YY).
* Only years whose digits tokenize as "{century}" + "YY" (two tokens, as in the paper) are used;
  only nouns that are one token with a leading space.
* ``candidates``: ids of the two-digit tokens "00".."99"; ``correct_mask[i, y]`` = y > YY_i.
  The metric is :func:`circuitsteer.metrics.prob_diff`: sum p(y > YY) - sum p(y <= YY).
* ``correct`` = the token YY+1 (the smallest correct year), ``incorrect`` = YY itself, so
  :func:`~circuitsteer.metrics.logit_diff` also works.
* named positions: NOUN, YY (the year's two-digit token), END.

Example:
    >>> from circuitsteer.zoo.tokenizer import toy_tokenizer
    >>> t = greater_than(toy_tokenizer(), n=2, seed=0)
    >>> t.prompts[0].endswith("to the year 17")
    True
    >>> int(t.correct_mask[0].sum()) == 99 - int(t.meta["yy"][0])
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from circuitsteer.errors import TaskError
from circuitsteer.tasks.base import Task, Tok, build_task, check_n, resolve, rng_for, single_tokens

NOUNS: tuple[str, ...] = (
    "war", "abduction", "accord", "affair", "agreement", "assessment", "attack", "campaign",
    "case", "challenge", "chaos", "clash", "competition", "conflict", "consultation", "contract",
    "crisis", "deal", "decline", "development", "dispute", "dynasty", "effort", "empire",
    "epidemic", "exchange", "expansion", "expedition", "friendship", "growth", "illness",
    "investigation", "journey", "marriage", "negotiation", "occupation", "operation", "outbreak",
    "plague", "practice", "program", "project", "quest", "rebellion", "reign", "relationship",
    "revolution", "riot", "rivalry", "rule", "siege", "strike", "study", "tour", "tradition",
    "treaty", "trial", "trip", "voyage", "work",
)  # fmt: skip

YEARS = range(2, 99)  # Hanna et al.: YY in 02..98


def year_candidates(tok: Tok) -> torch.Tensor:
    """Ids of "00".."99" as the token that follows the century; :class:`TaskError` if not single."""
    ids = []
    for y in range(100):
        tid = tok.single(f"{y:02d}")
        if tid is None:
            raise TaskError(
                f"greater-than: the tokenizer does not encode '{y:02d}' as one token",
                fix="use a tokenizer with two-digit number tokens (GPT-2's, or the zoo's)",
            )
        ids.append(tid)
    return torch.tensor(ids, dtype=torch.long)


def greater_than(
    model_or_tokenizer: Any,
    n: int = 100,
    seed: int = 0,
    nouns: Sequence[str] | None = None,
    century: int = 17,
) -> Task:
    """Greater-than prompts; corrupted replaces YY by 01. See the module docstring.

    ``meta`` columns: noun, yy, year.

    >>> from circuitsteer.zoo.tokenizer import toy_tokenizer
    >>> bool(greater_than(toy_tokenizer(), n=5, seed=3).meta["yy"].between(2, 98).all())
    True
    """
    check_n(n, "greater_than")
    if not 10 <= century <= 99:
        raise TaskError(
            f"greater_than: century {century} is not two digits", fix="use 10..99, e.g. 17"
        )
    tok = resolve(model_or_tokenizer)
    rng = rng_for(seed)
    cands = year_candidates(tok)
    noun_ids = single_tokens(tok, list(nouns) if nouns is not None else NOUNS)
    if not noun_ids:
        raise TaskError(
            "greater_than: no noun is a single token with a leading space for this tokenizer",
            fix="pass nouns=[...] that this tokenizer encodes as one token each",
        )
    cent = tok.encode(f" {century}")
    years = [y for y in YEARS if tok.encode(f" {century}{y:02d}") == [*cent, int(cands[y])]]
    if not years or tok.encode(f" {century}01") != [*cent, int(cands[1])]:
        raise TaskError(
            f"greater_than: no year {century}YY tokenizes as '{century}' + 'YY'",
            fix="use a tokenizer that splits four-digit years into two two-digit tokens",
        )
    clean, corrupted, correct, incorrect, rows = [], [], [], [], []
    mask = torch.zeros(n, 100, dtype=torch.bool)
    for i in range(n):
        noun = rng.choice(list(noun_ids))
        yy = rng.choice(years)

        def segs(y: int, noun: str = noun) -> list[tuple[str, str | None]]:
            return [
                ("The", None), (f" {noun}", "NOUN"), (" lasted from the year", None),
                (f" {century}", None), (f"{y:02d}", "YY"), (" to the year", None), (f" {century}", None),
            ]  # fmt: skip

        clean.append(segs(yy))
        corrupted.append(segs(1))
        correct.append(int(cands[yy + 1]))
        incorrect.append(int(cands[yy]))
        mask[i, yy + 1 :] = True
        rows.append({"noun": noun, "yy": yy, "year": century * 100 + yy})
    return build_task(
        tok, "greater-than", clean, corrupted, correct, incorrect, pd.DataFrame(rows),
        slots=["NOUN", "YY"], candidates=cands, correct_mask=mask, extra={"century": century},
    )  # fmt: skip
