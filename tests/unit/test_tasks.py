"""Task generators: shapes, named positions, clean/corrupted alignment, determinism, errors."""

from __future__ import annotations

import pytest
import torch

from circuitsteer.errors import PositionError, TaskError
from circuitsteer.models import byte_tokenizer
from circuitsteer.tasks import Task, contrast_words, greater_than, ioi, neutral, sentiment
from circuitsteer.tasks.ioi import NAMES, TEMPLATES, pair_split
from circuitsteer.zoo.tokenizer import toy_tokenizer


@pytest.fixture(scope="module")
def tok():
    return toy_tokenizer()


def _check_common(t: Task) -> None:
    b, p = t.clean.shape
    assert t.corrupted.shape == (b, p)
    assert t.lengths.max() == p
    assert t.correct.shape == t.incorrect.shape == t.lengths.shape == (b,)
    assert len(t.prompts) == len(t.corrupted_prompts) == len(t.meta) == b
    for name, v in t.positions.items():
        assert v.shape == (b,), name
        assert (v >= 1).all() and (v < t.lengths).all(), name  # never BOS, never padding
    assert (t.positions["END"] == t.lengths - 1).all() or t.name == "neutral"
    pad = ~t.real_mask()
    assert (t.clean[pad] == t.pad_id).all() and (t.corrupted[pad] == t.pad_id).all()


@pytest.mark.parametrize("template", range(len(TEMPLATES)))
@pytest.mark.parametrize("order", ["ABBA", "BABA"])
def test_ioi_every_template_positions(tok, template, order):
    t = ioi(tok, n=6, seed=template, templates=[template], order=order)
    _check_common(t)
    ar = torch.arange(len(t))
    pos = t.positions
    assert (t.clean[ar, pos["IO"]] == t.correct).all()
    assert (t.clean[ar, pos["S1"]] == t.incorrect).all()
    assert (t.clean[ar, pos["S2"]] == t.incorrect).all()
    assert (pos["S1+1"] == pos["S1"] + 1).all()
    if order == "ABBA":
        assert (pos["IO"] < pos["S1"]).all()
    else:
        assert (pos["S1"] < pos["IO"]).all()
    assert (pos["S2"] > torch.maximum(pos["IO"], pos["S1"])).all()
    assert (pos["END"] > pos["S2"]).all()
    # the prompt stops before the answer: the last token is "to"
    assert (t.clean[ar, pos["END"]] == tok.convert_tokens_to_ids("to")).all()
    assert set(t.meta["template"]) == {template} and set(t.meta["order"]) == {order}
    for i, prompt in enumerate(t.prompts):
        io, s = str(t.meta["io"][i]), str(t.meta["s"][i])
        assert prompt.count(f" {s} ") + prompt.startswith(f"{s} ") == 2 and f" {io} " in prompt
        assert not prompt.endswith(io)


def test_ioi_abc_corruption(tok):
    t = ioi(tok, n=40, seed=1)
    ar = torch.arange(len(t))
    c = t.corrupted
    first, second, s2 = c[ar, t.positions["IO"]], c[ar, t.positions["S1"]], c[ar, t.positions["S2"]]
    assert ((first != second) & (first != s2) & (second != s2)).all()  # three distinct names
    for col in (first, second, s2):  # none is IO or S
        assert ((col != t.correct) & (col != t.incorrect)).all()
    # everything but the three names is unchanged
    same = t.clean == t.corrupted
    for k in ("IO", "S1", "S2"):
        same[ar, t.positions[k]] = True
    assert same.all()


def test_ioi_s2_corruption_keeps_first_clause(tok):
    t = ioi(tok, n=30, seed=2, corruption="S2")
    ar = torch.arange(len(t))
    assert (t.corrupted[ar, t.positions["IO"]] == t.correct).all()
    assert (t.corrupted[ar, t.positions["S1"]] == t.incorrect).all()
    s2 = t.corrupted[ar, t.positions["S2"]]
    assert ((s2 != t.correct) & (s2 != t.incorrect)).all()


def test_ioi_mixed_order_and_splits(tok):
    t = ioi(tok, n=101, seed=0)
    orders = t.meta["order"].tolist()
    assert abs(orders.count("ABBA") - orders.count("BABA")) <= 1
    held = ioi(tok, n=50, seed=0, split="heldout")
    assert set(held.meta["split"]) == {"heldout"}
    train = ioi(tok, n=50, seed=0, split="train")
    assert set(train.meta["split"]) == {"train"}
    assert pair_split("Mary", "John") == pair_split("John", "Mary")
    pairs = [(a, b) for i, a in enumerate(NAMES) for b in NAMES[i + 1 :]]
    frac = sum(pair_split(a, b) == "heldout" for a, b in pairs) / len(pairs)
    assert 0.05 < frac < 0.15


def test_all_templates_used(tok):
    t = ioi(tok, n=300, seed=0)
    assert set(t.meta["template"]) == set(range(15))


@pytest.mark.parametrize("gen", [ioi, greater_than, sentiment, neutral])
def test_deterministic(tok, gen):
    a, b, c = gen(tok, n=20, seed=5), gen(tok, n=20, seed=5), gen(tok, n=20, seed=6)
    assert torch.equal(a.clean, b.clean) and torch.equal(a.corrupted, b.corrupted)
    assert a.prompts == b.prompts and a.meta.equals(b.meta)
    assert a.prompts != c.prompts


@pytest.mark.parametrize("gen", [ioi, greater_than, sentiment, neutral])
@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_bad_n(tok, gen, n):
    with pytest.raises(TaskError, match="n must be a positive int"):
        gen(tok, n=n)


def test_typed_errors(tok):
    with pytest.raises(TaskError, match="unknown order"):
        ioi(tok, n=3, order="AABB")
    with pytest.raises(TaskError, match="unknown corruption"):
        ioi(tok, n=3, corruption="XYZ")
    with pytest.raises(TaskError, match="out of range"):
        ioi(tok, n=3, templates=[15])
    with pytest.raises(TaskError, match="must end with"):
        ioi(tok, n=3, templates=["[B] and [A] went home."])
    with pytest.raises(TaskError, match="single token"):
        ioi(byte_tokenizer(), n=3)  # bytes split every name
    with pytest.raises(TaskError, match="single token"):
        ioi(tok, n=3, names=["Zorblax", "Quuxine", "Mary"])  # unknown words are <unk>
    with pytest.raises(TaskError, match="unknown polarity"):
        sentiment(tok, n=3, polarity="neutral")
    with pytest.raises(TaskError, match="two-digit"):
        greater_than(byte_tokenizer(), n=3)
    with pytest.raises(TaskError, match="Model or a tokenizer"):
        ioi(object(), n=3)
    with pytest.raises(TaskError):
        ioi(tok, n=3, seed="zero")  # type: ignore[arg-type]
    with pytest.raises(ValueError):  # TaskError refines ValueError
        ioi(tok, n=3, order="nope")


def test_greater_than(tok):
    t = greater_than(tok, n=50, seed=0)
    _check_common(t)
    assert t.candidates is not None and t.correct_mask is not None
    assert t.candidates.shape == (100,) and t.correct_mask.shape == (50, 100)
    ar = torch.arange(len(t))
    yy = torch.tensor(t.meta["yy"].to_numpy())
    assert (t.clean[ar, t.positions["YY"]] == t.candidates[yy]).all()
    assert (t.corrupted[ar, t.positions["YY"]] == t.candidates[1]).all()
    assert (t.correct == t.candidates[yy + 1]).all() and (t.incorrect == t.candidates[yy]).all()
    assert (t.correct_mask.sum(1) == 99 - yy).all()
    assert all(
        t.correct_mask[i, int(y) + 1 :].all() and not t.correct_mask[i, : int(y) + 1].any()
        for i, y in enumerate(yy)
    )
    assert (t.clean[ar, t.positions["END"]] == tok.convert_tokens_to_ids("17")).all()


def test_sentiment_contrast_pairs(tok):
    t = sentiment(tok, n=40, seed=0)
    _check_common(t)
    ar = torch.arange(len(t))
    assert set(t.meta["polarity"]) == {"positive"}
    diff = t.clean != t.corrupted
    assert (diff.sum(1) == 1).all() and diff[ar, t.positions["SENT"]].all()  # only the SENT word
    assert t.candidates is not None and t.correct_mask is not None
    assert t.correct_mask[
        ar[:, None], (t.candidates[None, :] == t.correct[:, None]).int().argmax(1)[:, None]
    ].all()
    m = sentiment(tok, n=40, seed=0, polarity="mixed")
    assert m.candidates is not None and m.correct_mask is not None
    neg = torch.tensor((m.meta["polarity"] == "negative").to_numpy())
    assert neg.any() and (~neg).any()
    # the correct adjective always matches the clean prompt's polarity
    for i in range(len(m)):
        j = int((m.candidates == m.correct[i]).nonzero())
        assert (
            m.correct_mask[i, j]
            and not m.correct_mask[i, int((m.candidates == m.incorrect[i]).nonzero())]
        )
    w = contrast_words(tok)
    assert (
        w.clean.shape == (len(w), 2)
        and (w.clean[:, 1] == w.correct).all()
        and (w.corrupted[:, 1] == w.incorrect).all()
    )


def test_neutral(tok):
    t = neutral(tok, n=30, seed=0)
    _check_common(t)
    assert torch.equal(t.clean, t.corrupted)
    ar = torch.arange(len(t))
    assert (t.clean[ar, t.positions["END"] + 1] == t.correct).all()
    assert (t.clean != tok.unk_token_id).all()
    with pytest.raises(TaskError):
        neutral(tok, n=3, sentences=(3, 1))


def test_subset_and_positions(tok):
    t = ioi(tok, n=20, seed=0)
    s = t.subset([3, 1])
    assert len(s) == 2 and s.prompts == [t.prompts[3], t.prompts[1]]
    assert s.clean.shape[1] == int(s.lengths.max())
    assert torch.equal(s.clean[0, : s.lengths[0]], t.clean[3, : t.lengths[3]])
    assert torch.equal(s.positions["S2"], t.positions["S2"][[3, 1]])
    assert len(t.subset(slice(0, 5))) == 5 and len(t.subset(torch.arange(20) < 4)) == 4
    with pytest.raises(PositionError, match="has no position 'X'"):
        t.position("X")
    with pytest.raises(KeyError):  # PositionError refines KeyError
        t.position("X")
    with pytest.raises(TaskError):
        t.subset([])


def test_task_validates_shapes(tok):
    t = ioi(tok, n=4, seed=0)
    from dataclasses import replace

    with pytest.raises(TaskError, match="shapes differ"):
        replace(t, corrupted=t.corrupted[:, :-1])
    with pytest.raises(TaskError, match="batch 4"):
        replace(t, correct=t.correct[:2])


# ---------------------------------------------------------------------------------------------
# GPT-2's tokenizer (the package ships circuitsteer/assets/gpt2-tokenizer)


def test_gpt2_ioi_single_token_names(gpt2_tokenizer):
    t = ioi(gpt2_tokenizer, n=200, seed=0)
    _check_common(t)
    ar = torch.arange(len(t))
    assert (t.clean[ar, t.positions["IO"]] == t.correct).all()
    assert (t.clean[ar, t.positions["S2"]] == t.incorrect).all()
    for name in set(t.meta["io"]) | set(t.meta["s"]) | set(t.meta["c_s2"]):
        assert len(gpt2_tokenizer.encode(" " + name)) == 1, name
    # the task's tokens are exactly GPT-2's tokenization of the whole prompt
    for i in range(0, 200, 17):
        ids = [gpt2_tokenizer.eos_token_id, *gpt2_tokenizer.encode(t.prompts[i])]
        assert t.clean[i, : t.lengths[i]].tolist() == ids
        cids = [gpt2_tokenizer.eos_token_id, *gpt2_tokenizer.encode(t.corrupted_prompts[i])]
        assert t.corrupted[i, : t.lengths[i]].tolist() == cids
    assert gpt2_tokenizer.encode(" Mary") == [5335]


def test_gpt2_drops_multi_token_names(gpt2_tokenizer):
    t = ioi(gpt2_tokenizer, n=50, seed=0, names=["Mary", "John", "Alice", "Bob", "Tom", "Xzqwvbnm"])
    assert "Xzqwvbnm" not in set(
        t.meta[["io", "s", "c_first", "c_second", "c_s2"]].to_numpy().ravel()
    )


def test_gpt2_greater_than_and_sentiment(gpt2_tokenizer):
    g = greater_than(gpt2_tokenizer, n=100, seed=0)
    _check_common(g)
    assert g.candidates is not None and len(set(g.candidates.tolist())) == 100
    ar = torch.arange(len(g))
    assert gpt2_tokenizer.decode(g.clean[0, g.positions["YY"][0]]) == f"{g.meta['yy'][0]:02d}"
    assert (g.clean[ar, g.positions["END"]] == gpt2_tokenizer.encode(" 17")[0]).all()
    for i in range(0, 100, 13):
        assert g.clean[i, : g.lengths[i]].tolist() == [50256, *gpt2_tokenizer.encode(g.prompts[i])]
    s = sentiment(gpt2_tokenizer, n=50, seed=0, polarity="mixed")
    _check_common(s)
    n = neutral(gpt2_tokenizer, n=10, seed=0)
    assert n.clean[0, : n.lengths[0]].tolist() == [50256, *gpt2_tokenizer.encode(n.prompts[0])]
