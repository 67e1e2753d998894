"""IOI probe variants: prefixes and S2 fillers put names exactly where the probe says."""

from __future__ import annotations

import pytest
import torch

from circuitsteer.errors import TaskError
from circuitsteer.tasks.ioi_probes import (
    ALL_TEMPLATES,
    HELDOUT_TEMPLATES,
    PROBES,
    TRAIN_TEMPLATES,
    ioi_probes,
    ioi_variant,
)
from circuitsteer.zoo.tokenizer import toy_tokenizer


@pytest.fixture(scope="module")
def tok():
    return toy_tokenizer()


def _count(t, i, tid):
    return int((t.clean[i, : int(t.lengths[i])] == tid).sum())


@pytest.mark.parametrize("name", list(PROBES))
def test_probe_names_sit_where_the_probe_says(tok, name):
    t = ioi_probes(tok, n=40, seed=3, probes=[name])[name]
    prefix, s2, templates = PROBES[name]
    ar = torch.arange(len(t))
    pos = t.positions
    assert (t.clean[ar, pos["IO"]] == t.correct).all()
    assert (t.clean[ar, pos["S1"]] == t.incorrect).all()
    assert set(t.meta["template"]) <= set(templates)
    assert set(t.meta["split"]) == {"heldout"}
    assert (t.clean[ar, pos["END"]] == tok.convert_tokens_to_ids("to")).all()
    assert t.corrupted.shape == t.clean.shape
    s2_tok = t.clean[ar, pos["S2"]]
    if s2 == "S":
        assert (s2_tok == t.incorrect).all()
    else:  # a fresh name: neither IO nor S
        assert ((s2_tok != t.incorrect) & (s2_tok != t.correct)).all()
    if prefix is None:
        assert "P" not in pos
    else:
        p_tok = t.clean[ar, pos["P"]]
        expect = {"S": t.incorrect, "IO": t.correct}.get(prefix)
        if expect is None:
            assert ((p_tok != t.incorrect) & (p_tok != t.correct)).all()
        else:
            assert (p_tok == expect).all()
        assert (pos["P"] < torch.minimum(pos["IO"], pos["S1"])).all()
    for i in range(len(t)):  # mention counts follow from the probe's definition
        n_s = _count(t, i, int(t.incorrect[i]))
        n_io = _count(t, i, int(t.correct[i]))
        assert n_s == 1 + (s2 == "S") + (prefix == "S")
        assert n_io == 1 + (prefix == "IO")
    # ABC twin: the corrupted prompt shares no name with IO or S
    assert (
        not (t.corrupted == t.correct[:, None]).any()
        and not (t.corrupted == t.incorrect[:, None]).any()
    )


def test_template_sets_are_disjoint_and_parse(tok):
    assert set(TRAIN_TEMPLATES).isdisjoint(HELDOUT_TEMPLATES)
    assert len(TRAIN_TEMPLATES) + len(HELDOUT_TEMPLATES) == len(ALL_TEMPLATES)
    for ti in range(len(ALL_TEMPLATES)):
        t = ioi_variant(tok, n=4, seed=ti, templates=[ti], prefix="fresh")
        assert (t.clean != tok.unk_token_id).all(), ALL_TEMPLATES[ti]


def test_deterministic(tok):
    a = ioi_variant(tok, n=8, seed=5, prefix="S", s2="fresh")
    b = ioi_variant(tok, n=8, seed=5, prefix="S", s2="fresh")
    assert torch.equal(a.clean, b.clean) and a.prompts == b.prompts


def test_gpt2_tokenizer_whole_prompt_equals_segments(gpt2_tokenizer):
    # GPT-2's pre-tokens carry their leading space: the prefix must join the template so that
    # tokenizing the whole text gives the same ids as the segments did
    for name in PROBES:
        t = ioi_probes(gpt2_tokenizer, n=20, seed=2, probes=[name])[name]
        for i in range(len(t)):
            ids = [gpt2_tokenizer.eos_token_id, *gpt2_tokenizer.encode(t.prompts[i])]
            assert t.clean[i, : int(t.lengths[i])].tolist() == ids, t.prompts[i]


def test_errors(tok):
    with pytest.raises(TaskError, match="prefix"):
        ioi_variant(tok, n=2, prefix="X")
    with pytest.raises(TaskError, match="s2"):
        ioi_variant(tok, n=2, s2="IO")
    with pytest.raises(TaskError, match="template"):
        ioi_variant(tok, n=2, templates=[99])
    with pytest.raises(TaskError, match="unknown probes"):
        ioi_probes(tok, n=2, probes=["nope"])
