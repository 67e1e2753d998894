"""Head scores and attention: against models whose answer is known by construction, and against
patterns recorded by the independent forward in gpt2_reference.py."""

from __future__ import annotations

import doctest
import importlib

import gpt2_reference as ref
import pytest
import torch
from analysis_models import strong_gpt2

import circuitsteer as cs
from circuitsteer.analysis import AnalysisError, attention, head_scores, repeated_tokens
from circuitsteer.errors import NodeNameError, PositionError

S = 10  # seq_len of the constructed tests


@pytest.fixture(scope="module")
def model():
    return strong_gpt2(seed=1)


@pytest.fixture(scope="module")
def task(model):
    return cs.tasks.ioi(model, n=12, seed=3)


@torch.no_grad()
def constructed_model(beta: float = 6.0):
    """2 layers x 3 heads, d_model 192 = [position one-hot | token vector | previous token].

    a0.h0 attends to the previous position; a0.h1 to earlier copies of the current token (and
    itself); a0.h0 writes the previous token's vector into the third block, which a1.h0 matches
    against the current token (an induction head); every other head has zero queries and so
    attends uniformly over the causal window.
    """
    m = cs.random_gpt2(n_layers=2, n_heads=3, d_model=192, d_vocab=257, n_ctx=64, seed=0)
    hf, d, dh = m.hf, 192, 64
    g = torch.Generator().manual_seed(0)
    tok = torch.randn(257, 64, generator=g)
    tok = tok - tok.mean(1, keepdim=True)
    tok = tok / tok.norm(dim=1, keepdim=True)  # zero mean, unit norm: LayerNorm scales all alike
    hf.transformer.wte.weight.zero_()
    hf.transformer.wte.weight[:, 64:128] = tok
    hf.transformer.wpe.weight.zero_()
    hf.transformer.wpe.weight[:, :64] = torch.eye(64)
    eye = torch.eye(64)
    for blk in hf.transformer.h:
        for ln in (blk.ln_1, blk.ln_2):
            ln.weight.fill_(1.0)
            ln.bias.zero_()
        for p in (blk.attn.c_attn.weight, blk.attn.c_attn.bias, blk.attn.c_proj.weight):
            p.zero_()
        blk.attn.c_proj.bias.zero_()
        blk.mlp.c_proj.weight.zero_()
        blk.mlp.c_proj.bias.zero_()
    q, k, v = (slice(i * d, (i + 1) * d) for i in range(3))
    a0 = hf.transformer.h[0].attn
    Wq, Wk, Wv = a0.c_attn.weight[:, q], a0.c_attn.weight[:, k], a0.c_attn.weight[:, v]
    Wq[1:64, 0:63] = beta * torch.eye(63)  # head 0: query at p looks for key p - 1
    Wk[0:64, 0:64] = eye
    Wv[64:128, 0:64] = eye  # head 0 carries the token vector of the position it attends to
    Wq[64:128, dh : 2 * dh] = beta * eye  # head 1: same token
    Wk[64:128, dh : 2 * dh] = eye
    scale = (2.0 / 192) ** 0.5  # undo LayerNorm's 1/std so the copied vector has norm ~1
    a0.c_proj.weight[0:64, 128:192] = scale * eye
    a1 = hf.transformer.h[1].attn
    a1.c_attn.weight[:, q][64:128, 0:64] = beta * eye  # current token ...
    a1.c_attn.weight[:, k][128:192, 0:64] = eye  # ... against the previous token of each key
    return m


def uniform_scores(seq_len: int) -> dict[str, float]:
    w = lambda i: 1.0 / (i + 1)  # noqa: E731  causal uniform attention from query i
    prev = sum(w(i) for i in range(1, 2 * seq_len + 1)) / (2 * seq_len)
    later = sum(w(i) for i in range(seq_len + 1, 2 * seq_len + 1)) / seq_len
    return {"previous_token": prev, "duplicate_token": later, "induction": later}


def test_constructed_heads_get_the_known_scores():
    m = constructed_model()
    df = head_scores(m, n=8, seq_len=S, seed=1)
    score = {(r.node, r.kind): r.score for r in df.itertuples()}
    assert score[("a0.h0", "previous_token")] > 0.999
    assert abs(score[("a0.h1", "duplicate_token")] - 0.5) < 1e-3  # itself and its earlier copy
    assert score[("a1.h0", "induction")] > 0.999
    for head, kind in [
        ("a0.h0", "induction"),
        ("a0.h1", "previous_token"),
        ("a1.h0", "duplicate_token"),
    ]:
        assert score[(head, kind)] < 1e-3
    uni = uniform_scores(S)
    for head in ("a0.h2", "a1.h1", "a1.h2"):
        for kind, want in uni.items():
            assert score[(head, kind)] == pytest.approx(want, abs=1e-6), (head, kind)


def test_scores_match_patterns_of_the_reference_forward(model):
    df = head_scores(model, n=5, seq_len=7, seed=2, batch=2)
    toks = repeated_tokens(model, n=5, seq_len=7, seed=2)
    rec: dict = {}
    ref.forward(model, toks, record=rec)
    for r in df.itertuples():
        p = rec[("pattern", r.layer, r.head)]
        if r.kind == "previous_token":
            want = torch.stack([p[:, i, i - 1] for i in range(1, 15)], 1).mean()
        elif r.kind == "duplicate_token":
            want = torch.stack([p[:, i, i - 7] for i in range(8, 15)], 1).mean()
        else:
            want = torch.stack([p[:, i, i - 6] for i in range(8, 15)], 1).mean()
        assert r.score == pytest.approx(float(want), abs=1e-5), (r.node, r.kind)
    assert set(df.columns) >= {"layer", "head", "node", "kind", "score"}
    assert len(df) == 3 * 4 * 3


def test_repeated_tokens(model):
    t = repeated_tokens(model, n=20, seq_len=12, seed=4)
    assert t.shape == (20, 25)
    assert (t[:, 0] == model.bos_token_id).all()
    assert torch.equal(t[:, 1:13], t[:, 13:])
    special = set(model.tokenizer.all_special_ids)
    assert not special & set(t[:, 1:].flatten().tolist())
    assert all(len(set(row[1:13].tolist())) == 12 for row in t)  # no repeat within a half
    assert torch.equal(t, repeated_tokens(model, n=20, seq_len=12, seed=4))
    assert not torch.equal(t, repeated_tokens(model, n=20, seq_len=12, seed=5))


def test_small_vocabulary_falls_back_to_sampling_with_replacement():
    m = cs.random_gpt2(d_vocab=257, n_ctx=700, seed=0)
    t = repeated_tokens(m, n=2, seq_len=300)  # 256 ordinary byte tokens < 300
    assert torch.equal(t[:, 1:301], t[:, 301:])


def test_head_score_errors(model):
    with pytest.raises(AnalysisError, match="seq_len"):
        head_scores(model, n=2, seq_len=40)  # 81 tokens > n_ctx 64
    with pytest.raises(AnalysisError, match="kinds"):
        head_scores(model, n=2, seq_len=4, kinds=["copying"])
    with pytest.raises(AnalysisError, match="n must"):
        head_scores(model, n=0)


def test_attention_matches_reference_and_sums_to_at_most_one(model, task):
    df = attention(model, task, heads=None, batch=5)
    rec: dict = {}
    ref.forward(model, task.clean, record=rec)
    r = torch.arange(len(task))
    end = task.positions["END"]
    for row in df[df.order == "all"].itertuples():
        p = rec[("pattern", row.layer, row.head)]
        want = p[r, end, task.positions[row.to]].mean()
        assert row.attention == pytest.approx(float(want), abs=1e-5)
    sums = df.groupby(["node", "order"])["attention"].sum()
    assert (sums <= 1 + 1e-6).all() and (sums > 0).all()
    assert set(df.order) == {"all", "ABBA", "BABA"}
    n = df.groupby("order")["n"].first()
    assert n["ABBA"] + n["BABA"] == n["all"] == len(task)
    assert list(df.columns) == ["node", "layer", "head", "from", "to", "order", "attention", "n"]


def test_attention_per_order_is_the_mean_over_that_order(model, task):
    df = attention(model, task, heads="a2.h1", to="IO")
    for order in ("ABBA", "BABA"):
        idx = [i for i, o in enumerate(task.meta["order"]) if o == order]
        sub = attention(model, task.subset(idx), heads="a2.h1", to="IO")
        got = df[df.order == order].attention.item()
        assert got == pytest.approx(sub[sub.order == "all"].attention.item(), abs=1e-6)


def test_attention_on_padded_rows_equals_each_row_alone(model, task):
    assert len(set(task.lengths.tolist())) > 1  # the batch really is right-padded
    df = attention(model, task, heads=["a1.h3"], to=("S1", "S2"))
    alone = [
        attention(model, task.subset([i]), heads=["a1.h3"], to=("S1", "S2"))
        for i in range(len(task))
    ]
    for to in ("S1", "S2"):
        want = sum(a[(a.order == "all") & (a.to == to)].attention.item() for a in alone) / len(task)
        got = df[(df.order == "all") & (df.to == to)].attention.item()
        assert got == pytest.approx(want, abs=1e-6)


def test_attention_errors(model, task):
    with pytest.raises(PositionError, match="use one of"):
        attention(model, task, to=("IO", "XYZ"))
    with pytest.raises(PositionError):
        attention(model, task, from_pos="START")
    with pytest.raises(AnalysisError, match="no heads"):
        attention(model, task, heads=[])
    with pytest.raises(AnalysisError, match="not an attention head"):
        attention(model, task, heads=["m1"])
    with pytest.raises(NodeNameError):
        attention(model, task, heads=["a1h2"])
    with pytest.raises(cs.ShapeMismatchError):
        attention(model, task, heads=["a7.h0"])
    with pytest.raises(AnalysisError, match="no target"):
        attention(model, task, to=())


@pytest.mark.parametrize(
    "module", ["analysis", "analysis.heads", "analysis.attribution", "analysis.path_patching"]
)
def test_docstring_examples(module):
    mod = importlib.import_module(f"circuitsteer.{module}")
    assert doctest.testmod(mod, optionflags=doctest.ELLIPSIS).failed == 0
