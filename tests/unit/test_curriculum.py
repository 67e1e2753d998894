"""The ioi-circuit training curriculum: what each component teaches is in the data."""

from __future__ import annotations

import random

import torch

from circuitsteer.zoo.curriculum import (
    PHASE1,
    PHASE2,
    curriculum_chunk,
    dup_list_seq,
    induction_seq,
    ioi_seqs,
)
from circuitsteer.zoo.tokenizer import toy_tokenizer


def test_induction_sequences_repeat_spans():
    rng = random.Random(0)
    words = list(range(2, 400))
    for _ in range(20):
        s = induction_seq(rng, words, bos=0)
        assert len(s) == 64 and s[0] == 0
        # a repeated 4-gram exists: an induction head can predict the token after it
        grams = [tuple(s[i : i + 4]) for i in range(1, len(s) - 3)]
        assert len(set(grams)) < len(grams)


def test_dup_list_answer_is_the_name_mentioned_once():
    tok = toy_tokenizer()
    rng = random.Random(1)
    for _ in range(20):
        s = dup_list_seq(rng, tok, ["Mary", "John", "Anna", "Peter", "Kyle", "Laura"])
        words = tok.convert_ids_to_tokens(s)
        answer = words[-2]
        listed = words[1 : words.index(".")]
        names = [w for w in listed if w != ","]
        assert names.count(answer) == 1 and all(names.count(n) == 2 for n in names if n != answer)


def test_ioi_targets_follow_repetition_only():
    tok = toy_tokenizer()
    seqs = ioi_seqs(tok, 400, seed=3, rng=random.Random(3))
    assert len(seqs) == 400
    # every IOI answer is a name mentioned before; no-repeat prompts split their targets
    names = {tok.convert_tokens_to_ids(n) for n in ("Mary", "John")}
    assert names  # the vocabulary has names
    for s in seqs:
        to = max(i for i, t in enumerate(s) if t == tok.convert_tokens_to_ids("to"))
        assert s[to + 1] in s[:to]


def test_chunk_mixture_and_determinism():
    tok = toy_tokenizer()
    # the training chunk size (batch 64 x 50 steps): the mixture's counts add up exactly
    a = curriculum_chunk(tok, PHASE2, size=3200, seed=0, chunk=4)
    b = curriculum_chunk(tok, PHASE2, size=3200, seed=0, chunk=4)
    assert a == b and len(a) == 3200
    assert len(curriculum_chunk(tok, PHASE1, size=3200, seed=0, chunk=0)) == 3200
    assert max(len(s) for s in a) <= 64
    c = curriculum_chunk(tok, PHASE1, size=3200, seed=0, chunk=4)
    long = lambda ss: sum(len(s) == 64 for s in ss)  # noqa: E731 (induction sequences)
    assert long(c) > long(a)
    assert all(torch.tensor(s).min() >= 0 for s in a)
