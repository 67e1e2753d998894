"""circuitsteer.vectors on tiny random models: every extraction method against an independent
computation (hand-written torch on captured activations, HF hidden states, an SVD, autograd),
streaming against in-memory, save/load, typed errors, on every architecture family."""

from __future__ import annotations

import doctest
import gc
import importlib
import json
import weakref

import pytest
import torch

import circuitsteer as cs
from circuitsteer.errors import PositionError, ShapeMismatchError
from circuitsteer.vectors import SteeringVector, VectorError, VectorMismatchError
from circuitsteer.zoo.tokenizer import toy_tokenizer

V = cs.vectors
FAMILIES = [
    ("gpt2", {}),
    ("gpt_neox", {}),
    ("llama", {"n_kv_heads": 2}),
    ("qwen2", {"n_kv_heads": 2}),
    ("mistral", {"n_kv_heads": 1}),
]


@torch.no_grad()
def _model(family: str = "gpt2", seed: int = 1, d_model: int = 32, **kw):
    m = cs.random_model(
        family,
        n_layers=2,
        n_heads=4,
        d_model=d_model,
        d_mlp=64,
        d_vocab=484,
        tokenizer=toy_tokenizer(),
        seed=seed,
        **kw,
    )
    g = torch.Generator().manual_seed(seed)
    for p in m.hf.parameters():  # unit-scale weights: activations that differ visibly
        if p.dim() >= 2:
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return m


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def task(model):
    return cs.tasks.sentiment(model, n=12, seed=0, polarity="mixed")


def _captured(model, tokens, site):
    return cs.engine.run(model, tokens, capture=[site])[1][site].double()


def _at(acts, idx):
    return acts[torch.arange(acts.shape[0]), idx]


def _real_rows(acts, lengths, exclude_first=True):
    mask = torch.arange(acts.shape[1])[None, :] < lengths[:, None]
    if exclude_first:
        mask[:, 0] = False
    return acts[mask]


def _flip_max_abs(rows):
    idx = rows.abs().argmax(dim=1)
    return rows * torch.sign(rows[torch.arange(rows.shape[0]), idx])[:, None]


# ---------------------------------------------------------------------------------------------
# mean difference


SITES = ["resid_pre.1", "resid_post.0", "a1.h2", "a1.h2:result", "a1.h1<v>", "m1", "m1:neurons"]


@pytest.mark.parametrize(("family", "kw"), FAMILIES)
def test_mean_difference_equals_manual_at_every_site(family, kw):
    m = _model(family, **kw)
    task = cs.tasks.sentiment(m, n=10, seed=0)
    for site in SITES:
        v = V.mean_difference(m, site, task, positions="END")
        end = task.positions["END"]
        manual = _at(_captured(m, task.clean, site), end).mean(0) - _at(
            _captured(m, task.corrupted, site), end
        ).mean(0)
        assert v.vector.dtype == torch.float32
        torch.testing.assert_close(v.vector.double(), manual, atol=1e-5, rtol=1e-5)
        assert v.norm > 1e-3, f"{family} {site}: the contrast should move the activation"
        assert v.site == site and v.method == "mean_difference"
        assert v.model is not None and v.model["name"] == m.name
        assert v.meta["n_a"] == v.meta["n_b"] == 10


def test_mean_difference_residual_matches_hf_hidden_states(model):
    a = torch.randint(0, 484, (6, 7))
    b = torch.randint(0, 484, (5, 7))
    v = V.mean_difference(model, "resid_pre.1", a, b, positions="all", exclude_first=False)
    with torch.no_grad():
        ha = model.hf(input_ids=a, output_hidden_states=True).hidden_states[1].double()
        hb = model.hf(input_ids=b, output_hidden_states=True).hidden_states[1].double()
    manual = ha.reshape(-1, 32).mean(0) - hb.reshape(-1, 32).mean(0)
    torch.testing.assert_close(v.vector.double(), manual, atol=1e-5, rtol=1e-5)


def test_mean_difference_all_positions_skip_first_and_padding(model):
    texts_a = ["the movie was good", "it was a really great song"]
    texts_b = ["the food was bad", "awful"]
    v = V.mean_difference(model, "m1", texts_a, texts_b, positions="all")
    rows = []
    for texts in (texts_a, texts_b):
        toks = [
            [model.bos_token_id, *model.tokenizer.encode(t, add_special_tokens=False)]
            for t in texts
        ]
        acts = [_captured(model, torch.tensor([t]), "m1")[0, 1:] for t in toks]  # one by one
        rows.append(torch.cat(acts).mean(0))
    torch.testing.assert_close(v.vector.double(), rows[0] - rows[1], atol=1e-5, rtol=1e-5)
    n_tokens = [len(model.tokenizer.encode(t, add_special_tokens=False)) for t in texts_b]
    assert v.meta["n_b"] == sum(n_tokens), "every real token after BOS, no padding"


def test_streaming_in_small_batches_equals_one_batch(model, task):
    one = V.mean_difference(model, "a1.h3", task, positions=["SENT", "END"])
    small = V.mean_difference(model, "a1.h3", task, positions=["SENT", "END"], batch_size=3)
    tiny_budget = V.mean_difference(model, "a1.h3", task, positions=["SENT", "END"], max_bytes=1)
    torch.testing.assert_close(one.vector, small.vector, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(one.vector, tiny_budget.vector, atol=1e-6, rtol=1e-6)
    assert one.meta["n_a"] == 2 * len(task)


def test_generator_data_is_consumed_lazily_and_not_kept(model):
    """Memory does not grow with the data: a piece is dropped once its forwards are done."""
    g = torch.Generator().manual_seed(0)
    pieces = [torch.randint(0, 484, (4, 6), generator=g) for _ in range(6)]
    refs: list[weakref.ref] = []
    pulled: list[int] = []

    def gen():
        for i in range(6):
            t = pieces[i].clone()
            refs.append(weakref.ref(t))
            pulled.append(i)
            if i >= 2:  # everything before the previous piece must be gone by now
                gc.collect()
                assert all(r() is None for r in refs[: i - 1]), "earlier pieces are still held"
            yield t
            del t

    chunks = V.stream(model, gen(), "resid_pre.1", positions=-1, batch_size=2)
    first = next(chunks)
    assert pulled == [0], "the stream must not read ahead"
    rest = list(chunks)
    assert len(rest) == 11 and pulled == list(range(6))
    assert first.example.tolist() == [0, 1] and rest[-1].example.tolist() == [22, 23]
    # the same statistics as the data held in memory
    whole = torch.cat(pieces)
    m_stream = V.mean_activation(model, "resid_pre.1", iter(pieces), positions=-1)[0]
    m_whole = V.mean_activation(model, "resid_pre.1", whole, positions=-1)[0]
    torch.testing.assert_close(m_stream, m_whole, atol=1e-10, rtol=1e-9)


def test_positions_resolve_on_real_tokens(model, task):
    acts = _captured(model, task.clean, "resid_post.1")
    last = V.activations(model, task, "resid_post.1", positions=-1)
    torch.testing.assert_close(last.double(), _at(acts, task.lengths - 1), atol=1e-6, rtol=0)
    fixed = V.activations(model, task, "resid_post.1", positions=[1, "SENT"])
    expect = torch.stack([acts[:, 1], _at(acts, task.positions["SENT"])], 1).reshape(-1, 32)
    torch.testing.assert_close(fixed.double(), expect, atol=1e-6, rtol=0)
    everything = V.collect(model, task, "resid_post.1", positions="all")
    assert len(everything) == int((task.lengths - 1).sum())
    torch.testing.assert_close(
        everything.values["resid_post.1"].double(),
        _real_rows(acts, task.lengths),
        atol=1e-6,
        rtol=0,
    )
    with pytest.raises(PositionError, match="IO"):
        V.activations(model, task, "m0", positions="IO")
    with pytest.raises(PositionError, match="named positions need a Task"):
        V.activations(model, task.clean, "m0", positions="END")
    with pytest.raises(PositionError, match="outside"):
        V.activations(model, task, "m0", positions=int(task.lengths.min()))
    with pytest.raises(VectorError):
        V.activations(model, task, "m0", positions=["all", 1])
    with pytest.raises(VectorError):
        V.activations(model, task, "m0", positions=1.5)  # type: ignore[arg-type]
    with pytest.raises(VectorError, match="cannot read"):
        V.activations(model, {"x": 1}, "m0")
    with pytest.raises(VectorError, match="pattern"):
        V.activations(model, task, "a0.h1:pattern")
    with pytest.raises(ShapeMismatchError):
        V.activations(model, task, "a5.h0")


# ---------------------------------------------------------------------------------------------
# PCA


def test_pca_components_are_orthonormal_and_equal_an_svd_of_centred_data(model, task):
    p = V.pca(model, "resid_post.0", task, n_components=6, batch_size=5)
    x = _real_rows(_captured(model, task.clean, "resid_post.0"), task.lengths)
    xc = x - x.mean(0)
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    comps = p.components
    torch.testing.assert_close(
        comps @ comps.T, torch.eye(6, dtype=torch.float64), atol=1e-10, rtol=0
    )
    torch.testing.assert_close(comps, _flip_max_abs(vh[:6]), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(
        p.explained_variance, s[:6] ** 2 / (x.shape[0] - 1), rtol=1e-6, atol=1e-9
    )
    total = (s**2).sum() / (x.shape[0] - 1)
    torch.testing.assert_close(p.explained_variance_ratio, p.explained_variance / total)
    # the stated sign convention holds: each component's largest |coordinate| is positive
    idx = comps.abs().argmax(1)
    assert bool((comps[torch.arange(6), idx] > 0).all())
    # projections: centred data on the components
    torch.testing.assert_close(p.projections(model, task), xc @ comps.T, atol=1e-5, rtol=1e-5)
    assert p.n == x.shape[0] and p.mean.shape == (32,)
    t = p.table()
    assert list(t.component) == list(range(6))
    assert t.cumulative_ratio.is_monotonic_increasing and t.cumulative_ratio.iloc[-1] <= 1 + 1e-9


def test_streaming_and_in_memory_pca_agree(model, task):
    streamed = V.pca(model, "a1.h0:result", task, n_components=5, batch_size=2)
    x = V.activations(model, task, "a1.h0:result")
    in_memory = V.pca_from_activations(x, n_components=5, site="a1.h0:result", model=model)
    torch.testing.assert_close(streamed.components, in_memory.components, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(
        streamed.explained_variance, in_memory.explained_variance, atol=1e-8, rtol=1e-6
    )
    torch.testing.assert_close(streamed.mean, in_memory.mean, atol=1e-6, rtol=1e-6)
    # and a shuffled order of the data gives the same components (the sign is fixed)
    perm = torch.randperm(len(task))
    shuffled = V.pca(model, "a1.h0:result", task.subset(perm), n_components=5, batch_size=4)
    torch.testing.assert_close(shuffled.components, streamed.components, atol=1e-6, rtol=1e-5)


def test_pca_keeps_first_token_only_when_asked(model, task):
    with_bos = V.pca(model, "resid_pre.1", task, n_components=2, exclude_first=False)
    without = V.pca(model, "resid_pre.1", task, n_components=2)
    assert with_bos.n == without.n + len(task)
    uncentred = V.pca(model, "resid_pre.1", task, n_components=2, center=False)
    x = _real_rows(_captured(model, task.clean, "resid_pre.1"), task.lengths)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    torch.testing.assert_close(uncentred.components, _flip_max_abs(vh[:2]), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(uncentred.explained_variance, s[:2] ** 2 / x.shape[0])
    assert float(uncentred.mean.abs().max()) == 0.0


def test_pca_of_paired_differences(model, task):
    p = V.pca_of_differences(model, "resid_post.1", task, positions="END", n_components=3)
    end = task.positions["END"]
    d = _at(_captured(model, task.clean, "resid_post.1"), end) - _at(
        _captured(model, task.corrupted, "resid_post.1"), end
    )
    _, s, vh = torch.linalg.svd(d, full_matrices=False)  # uncentred
    signs = torch.sign(vh[:3] @ d.mean(0))
    torch.testing.assert_close(p.components, vh[:3] * signs[:, None], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(p.explained_variance, s[:3] ** 2 / len(task), rtol=1e-6, atol=1e-9)
    assert bool((p.components @ d.mean(0) > 0).all()), "components point from b to a"
    # two separate datasets pair row by row; chunking them differently changes nothing
    q = V.pca_of_differences(
        model, "resid_post.1", task, V.corrupted_side(task), positions="END", n_components=3, batch_size=5
    )  # fmt: skip
    torch.testing.assert_close(q.components, p.components, atol=1e-6, rtol=1e-5)
    v = p.vector(0)
    assert v.method == "pca_differences" and v.meta["sign"].startswith("positive dot")
    other = cs.tasks.sentiment(model, n=5, seed=3)
    with pytest.raises(VectorError, match="pair"):
        V.pca_of_differences(model, "m0", task, other, positions="END")
    with pytest.raises(VectorError, match="pair"):
        V.pca_of_differences(model, "m0", task.clean, task.clean[:, :-1], positions="all")
    with pytest.raises(VectorError, match="n_components"):
        V.pca(model, "a0.h0", task, n_components=9)  # d_head is 8


# ---------------------------------------------------------------------------------------------
# contrast pairs (ActAdd)


def test_contrast_pair_equals_manual_difference_including_padding(model):
    a, b = "the movie was good", "it was"
    v = V.contrast_pair(model, "resid_pre.1", a, b, pad=".")
    ta = [model.bos_token_id, *model.tokenizer.encode(a, add_special_tokens=False)]
    tb = [model.bos_token_id, *model.tokenizer.encode(b, add_special_tokens=False)]
    dot = model.tokenizer.encode(".", add_special_tokens=False)[0]
    assert len(ta) > len(tb)
    tb_padded = tb + [dot] * (len(ta) - len(tb))
    acts = _captured(model, torch.tensor([ta, tb_padded]), "resid_pre.1")
    assert torch.equal(v.vector, (acts[0] - acts[1]).float())
    assert v.data["tokens_b"] == tb_padded and v.data["pad_id"] == dot
    assert float(v.vector[0].abs().max()) == 0.0, "BOS is the same in both prompts"
    avg = V.contrast_pair(model, "resid_pre.1", a, b, pad=dot, average=True)
    torch.testing.assert_close(
        avg.vector.double(), (acts[0] - acts[1])[1:].mean(0), atol=1e-6, rtol=0
    )
    # another pad token gives another vector: padding is part of the vector
    other = V.contrast_pair(model, "resid_pre.1", a, b, pad="the")
    assert not torch.allclose(other.vector[-1], v.vector[-1])
    # equal lengths need no pad (and a pad that is not one token is then never looked at)
    same = V.contrast_pair(model, "a1.h1", "good", "bad", pad=" ")
    assert same.data["pad_id"] is None and same.vector.shape == (2, 8)


def test_contrast_pair_is_added_front_aligned(model):
    v = V.contrast_pair(model, "resid_pre.1", "the movie was good", "it was", pad=".")
    prompt = torch.tensor(
        [
            [
                model.bos_token_id,
                *model.tokenizer.encode("we went to the river today", add_special_tokens=False),
            ]
        ]
    )
    clean = _captured(model, prompt, "resid_pre.1")
    ivs = v.interventions(coef=3.0, model=model)
    assert [iv.site.positions for iv in ivs] == list(range(v.vector.shape[0]))
    steered = cs.engine.run(model, prompt, ivs, capture=["resid_pre.1"])[1]["resid_pre.1"].double()
    n = v.vector.shape[0]
    torch.testing.assert_close(
        steered[0, :n] - clean[0, :n], 3.0 * v.vector.double(), atol=1e-5, rtol=0
    )
    assert torch.equal(steered[0, n:], clean[0, n:])
    shifted = v.interventions(coef=1.0, offset=2)
    assert [iv.site.positions for iv in shifted] == list(range(2, 2 + n))
    with pytest.raises(VectorError, match="interventions"):
        v.intervention(1.0)


def test_contrast_pair_pad_must_be_one_token(model):
    gpt2 = cs.random_gpt2(n_layers=1, n_heads=2, d_model=16, seed=0)
    v = V.contrast_pair(gpt2, "resid_pre.0", "Love", "Hate it")  # GPT-2's " " is one token
    assert v.data["pad_id"] == gpt2.tokenizer.encode(" ")[0]
    with pytest.raises(VectorError, match="one token"):
        V.contrast_pair(model, "resid_pre.0", "the movie was good", "it was", pad=" ")  # word-level
    with pytest.raises(VectorError, match="vocabulary"):
        V.contrast_pair(model, "resid_pre.0", "the movie was good", "it was", pad=10**6)
    with pytest.raises(VectorError, match="string"):
        V.contrast_pair(model, "resid_pre.0", 3.0, "it")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# SteeringVector


def _vec(model, site="resid_pre.1", **kw):
    return SteeringVector(torch.randn(site_width(model, site)), site=site, model=_ref(model), **kw)


def site_width(model, site):
    from circuitsteer.vectors._site import site_width as w

    return w(model, site)


def _ref(model):
    from circuitsteer.vectors._site import model_ref

    return model_ref(model)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_save_load_round_trips_bit_exactly(tmp_path, model, task, dtype):
    v = V.mean_difference(model, "a1.h2", task, positions="END").to(dtype=dtype)
    v = 3 * v
    path = v.save(tmp_path / "sub" / "sent")
    assert path.name == "sent.safetensors" and (tmp_path / "sub" / "sent.json").is_file()
    w = V.load(tmp_path / "sub" / "sent.safetensors")
    assert w.vector.dtype == dtype and w.vector.shape == v.vector.shape
    assert torch.equal(w.vector.view(torch.uint8), v.vector.contiguous().view(torch.uint8))
    assert w.provenance == v.provenance
    side = json.loads((tmp_path / "sub" / "sent.json").read_text())
    assert side["schema"] == "circuitsteer.vector/1" and side["method"] == "mean_difference"
    assert side["history"] == [{"op": "scale", "factor": 3.0}]
    assert side["data"]["a"]["task"] == "sentiment"


def test_save_load_per_position_and_detects_tampering(tmp_path, model):
    v = V.contrast_pair(model, "m1", "the movie was good", "it was", pad=".")
    v.save(tmp_path / "actadd.json")  # either suffix names the pair
    w = SteeringVector.load(tmp_path / "actadd")
    assert torch.equal(w.vector, v.vector) and w.per_position and w.data == v.data
    # the safetensors file holds no pickle: it is a JSON header and raw bytes
    raw = (tmp_path / "actadd.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert header["vector"]["dtype"] == "F32"
    side = json.loads((tmp_path / "actadd.json").read_text())
    side["shape"] = [1, 2]
    (tmp_path / "actadd.json").write_text(json.dumps(side))
    with pytest.raises(VectorError, match="does not match"):
        V.load(tmp_path / "actadd")
    (tmp_path / "other.json").write_text(json.dumps({"schema": "nope"}))
    (tmp_path / "other.safetensors").write_bytes(raw)
    with pytest.raises(VectorError, match="sidecar"):
        V.load(tmp_path / "other")
    with pytest.raises(VectorError, match="not found"):
        V.load(tmp_path / "missing")


def test_vector_at_a_site_of_another_size_fails_with_a_typed_error(model):
    v = _vec(model, "resid_pre.1")  # d_model = 32
    for site in ("a1.h0", "m0:neurons", "m0.n3"):  # d_head 8, d_mlp 64, one neuron
        with pytest.raises(VectorMismatchError, match="width") as e:
            v.intervention(1.0, model=model, site=site)
        assert isinstance(e.value, ShapeMismatchError) and isinstance(e.value, ValueError)
        assert "Fix:" in str(e.value)
    for site in ("resid_post.0", "a1.h0:result", "a1.h0<k>", "m1", "input"):  # all d_model
        v.intervention(1.0, model=model, site=site)
    head = _vec(model, "a0.h3")
    with pytest.raises(VectorMismatchError):
        head.check(model, "resid_pre.0")
    # without a model the engine refuses the width when it compiles the Add
    with pytest.raises(ShapeMismatchError):
        cs.engine.run(model, torch.randint(0, 484, (1, 4)), [v.intervention(1.0, site="a1.h0")])


def test_vector_for_another_model_fails_with_a_typed_error(model):
    v = _vec(model, "resid_pre.1")
    wider = _model(d_model=48)
    with pytest.raises(VectorMismatchError, match="extracted from"):
        v.intervention(1.0, model=wider)
    twin = _model(seed=2)  # same shape, other weights (and name)
    with pytest.raises(VectorMismatchError, match="different model"):
        v.intervention(1.0, model=twin)
    v.intervention(1.0, model=twin, check_model=False)
    with pytest.raises(VectorMismatchError, match="models"):
        v + _vec(twin, "resid_pre.1")
    with pytest.raises(VectorMismatchError, match="sites"):
        v + _vec(model, "resid_post.1")
    with pytest.raises(VectorMismatchError, match="shapes"):
        v + SteeringVector(torch.ones(2, 32), site="resid_pre.1")


def test_arithmetic_and_provenance(model):
    a, b = _vec(model, method="mean_difference"), _vec(model, method="pca")
    s = a + b
    assert torch.equal(s.vector, a.vector + b.vector) and s.method == "sum"
    assert [t["method"] for t in s.data["terms"]] == ["mean_difference", "pca"]
    assert torch.equal((a - b).vector, a.vector - b.vector)
    assert torch.allclose(sum([a, b, a]).vector, 2 * a.vector + b.vector)  # type: ignore[union-attr]
    assert torch.equal((2.5 * a).vector, a.vector * 2.5) and torch.equal(
        (a * 2.5).vector, (2.5 * a).vector
    )
    assert torch.allclose((a / 4).vector, a.vector / 4)
    assert torch.equal((-a).vector, -a.vector)
    n = a.normalize()
    assert n.norm == pytest.approx(1.0, abs=1e-6) and n.method == "mean_difference"
    assert n.history[-1]["op"] == "normalize" and n.cosine(a) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(VectorError):
        (0 * a).normalize()
    with pytest.raises(VectorError):
        a / 0
    with pytest.raises(TypeError):
        a * a  # type: ignore[operator]
    with pytest.raises(VectorError, match="non-finite"):
        SteeringVector(torch.tensor([float("nan")]), site="m0")
    with pytest.raises(VectorError, match="JSON"):
        SteeringVector(torch.ones(3), site="m0", data={"x": object()})
    with pytest.raises(cs.NodeNameError):
        SteeringVector(torch.ones(3), site="a1h2")
    assert "resid_pre.1" in repr(a)


@pytest.mark.parametrize(
    ("site", "read", "coef"),
    [
        ("resid_pre.1", "resid_pre.1", 2.0),
        ("a1.h2", "a1.h2", -1.5),  # z space: the captured z moves
        ("a1.h2:result", "resid_mid.1", 2.0),  # d_model on the head's output: resid_mid moves
        ("a1.h2<q>", "a1.h2<q>", 0.5),
        ("m0", "resid_post.0", 3.0),
        ("m0:neurons", "m0:neurons", 1.0),
        ("m0.n5", "m0.n5", 4.0),
    ],
)
def test_intervention_adds_in_the_sites_own_space(model, site, read, coef):
    tokens = torch.randint(0, 484, (3, 6))
    v = _vec(model, site)
    iv = v.intervention(coef, positions=[2, 4], model=model)
    clean = _captured(model, tokens, read)
    steered = cs.engine.run(model, tokens, [iv], capture=[read])[1][read].double()
    delta = steered - clean
    torch.testing.assert_close(
        delta[:, [2, 4]], (coef * v.vector.double()).expand(3, 2, -1), atol=1e-5, rtol=0
    )
    assert float(delta[:, [0, 1, 3]].abs().max()) == 0.0


# ---------------------------------------------------------------------------------------------
# random controls


def test_random_like_is_seeded_and_matches_the_norm(model):
    v = 5 * _vec(model, "a1.h1")
    r = V.random_like(v, seed=7)
    assert r.norm == pytest.approx(v.norm, rel=1e-6) and r.site == v.site and r.model == v.model
    assert torch.equal(r.vector, V.random_like(v, seed=7).vector)
    assert not torch.allclose(r.vector, V.random_like(v, seed=8).vector)
    assert abs(r.cosine(v)) < 0.9 and r.data["matched"]["method"] == "manual"
    actadd = V.contrast_pair(model, "resid_pre.1", "the movie was good", "it was", pad=".")
    ra = V.random_like(actadd, seed=0)
    torch.testing.assert_close(ra.vector.norm(dim=1), actadd.vector.norm(dim=1))
    assert float(ra.vector[0].abs().max()) == 0.0  # BOS row stays zero
    with pytest.raises(VectorError, match="seed"):
        V.random_like(v, seed=1.5)  # type: ignore[arg-type]


def test_random_from_covariance_draws_from_the_activation_covariance(model, task):
    mom = V.activation_moments(model, "m1", task, batch_size=4)
    x = _real_rows(_captured(model, task.clean, "m1"), task.lengths)
    torch.testing.assert_close(mom.covariance, torch.cov(x.T), atol=1e-8, rtol=1e-6)
    torch.testing.assert_close(mom.mean, x.mean(0), atol=1e-8, rtol=1e-6)
    draws = torch.stack(
        [V.random_from_covariance(mom, seed=s).vector.double() for s in range(3000)]
    )
    emp = draws.T @ draws / len(draws)
    err = (emp - mom.covariance).norm() / mom.covariance.norm()
    assert err < 0.12, f"the draws' covariance is off by {err:.3f}"
    like = _vec(model, "m1")
    r = V.random_from_covariance(mom, like=like, seed=0)
    assert r.norm == pytest.approx(like.norm, rel=1e-5) and r.method == "random_covariance"
    assert torch.equal(r.vector, V.random_from_covariance(mom, like=like, seed=0).vector)
    # a covariance draw leans on the top principal component far more than an isotropic one
    top = torch.linalg.eigh(mom.covariance)[1][:, -1]
    cov_align = torch.stack([(d / d.norm() @ top).abs() for d in draws[:500]]).mean()
    iso = torch.randn(500, 32, dtype=torch.float64)
    iso_align = ((iso / iso.norm(dim=1, keepdim=True)) @ top).abs().mean()
    assert cov_align > 1.5 * iso_align
    with pytest.raises(VectorMismatchError):
        V.random_from_covariance(mom, like=_vec(model, "m0"))


# ---------------------------------------------------------------------------------------------
# probes (ITI)


def test_fit_logistic_reaches_the_optimum_of_its_objective():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 80, 5, generator=g, dtype=torch.float64)
    y = (x[0, :, 0] + 0.5 * torch.randn(80, generator=g, dtype=torch.float64) > 0).double()
    l2 = 0.05
    w, b = V.fit_logistic(x, y, l2=l2)
    for h in range(3):  # the gradient of the objective, by autograd, vanishes at the solution
        wh = w[h].clone().requires_grad_(True)
        bh = b[h].clone().requires_grad_(True)
        z = x[h] @ wh + bh
        obj = torch.nn.functional.binary_cross_entropy_with_logits(z, y) + 0.5 * l2 * (wh**2).sum()
        gw, gb = torch.autograd.grad(obj, (wh, bh))
        assert float(gw.abs().max()) < 1e-8 and abs(float(gb)) < 1e-8
    # separable data: still finite (the penalty bounds the weights), every point classified
    xs = torch.tensor([[[-2.0], [-1.0], [1.0], [2.0]]], dtype=torch.float64)
    w, b = V.fit_logistic(xs, torch.tensor([0.0, 0.0, 1.0, 1.0]), l2=1e-3)
    assert bool(torch.isfinite(w).all()) and bool(
        ((xs[0] @ w[0] + b[0]) > 0).eq(torch.tensor([False, False, True, True])).all()
    )


def _planted(model, n=40, seed=0):
    """Two classes of random prompts that differ only in the last token (one word each)."""
    g = torch.Generator().manual_seed(seed)
    body = torch.randint(3, 484, (2 * n, 5), generator=g)
    last_a = torch.full((n, 1), 5)
    last_b = torch.full((n, 1), 6)
    bos = torch.full((n, 1), model.bos_token_id)
    return torch.cat([bos, body[:n], last_a], 1), torch.cat([bos, body[n:], last_b], 1)


def test_probe_heads_find_a_planted_signal_and_not_shuffled_labels(model):
    a, b = _planted(model)
    probes = V.probe_heads(model, a, b, positions=-1, seed=0)
    t = probes.table
    assert len(t) == 8 and set(t.columns) >= {
        "node",
        "layer",
        "head",
        "train_accuracy",
        "val_accuracy",
        "sigma",
        "rank",
    }
    assert sorted(t["rank"]) == list(range(1, 9))
    best = t.sort_values("rank").iloc[0]
    assert best.val_accuracy >= 0.85, t
    assert probes.top(3)[0] == best.node
    shuffled = V.probe_heads(model, a, b, positions=-1, seed=0, shuffle_labels=True).table
    assert abs(shuffled.val_accuracy.mean() - 0.5) < 0.1 and shuffled.val_accuracy.max() <= 0.7
    assert shuffled.set_index("node").val_accuracy[best.node] < best.val_accuracy - 0.25


def test_probe_directions_sigma_and_iti_interventions(model):
    a, b = _planted(model)
    probes = V.probe_heads(model, a, b, positions=-1, seed=0, val_frac=0.25)
    head = probes.top(1)[0]
    za, zb = (_captured(model, t, head)[:, -1] for t in (a, b))
    # mass mean on the train split (examples not held out), unit norm, towards a
    val = V.probes._split(40, 0.25, 0)
    mm = za[~val].mean(0) - zb[~val].mean(0)
    torch.testing.assert_close(probes.directions[head].double(), mm / mm.norm(), atol=1e-6, rtol=0)
    sigma = (torch.cat([za, zb]) @ (mm / mm.norm())).std(correction=0)
    assert probes.sigmas[head] == pytest.approx(float(sigma), rel=1e-6)
    probe_dir = V.probe_heads(model, a, b, positions=-1, seed=0, val_frac=0.25, direction="probe")
    assert probe_dir.directions[head].norm() == pytest.approx(1.0, abs=1e-6)
    assert float(probe_dir.directions[head].double() @ (za.mean(0) - zb.mean(0))) > 0
    # ITI: alpha * sigma * direction added to each chosen head's z at every position, one call
    ivs = probes.interventions(k=3, alpha=2.0)
    assert [iv.site.node for iv in ivs] == probes.top(3) and len(probes.interventions(k=50)) == 8
    for iv, h in zip(ivs, probes.top(3), strict=True):
        assert iv.coef == 2.0 and iv.space == "z" and iv.site.positions == "all"
        clean = _captured(model, a, h)
        steered = cs.engine.run(model, a, [iv], capture=[h])[1][h].double()
        expect = 2.0 * probes.sigmas[h] * probes.directions[h].double()
        torch.testing.assert_close(steered - clean, expect.expand(40, 7, -1), atol=1e-5, rtol=0)
    v = probes.vector(head)
    assert v.site == head and v.method == "probe_mass_mean" and v.meta["rank"] == 1
    with pytest.raises(VectorError, match="direction"):
        V.probe_heads(model, a, b, direction="pca")
    with pytest.raises(VectorError, match="attention head"):
        V.probe_heads(model, a, b, heads=["m0"])


# ---------------------------------------------------------------------------------------------
# every family: the whole API on GQA / parallel-residual models


@pytest.mark.parametrize(("family", "kw"), FAMILIES[1:])
def test_extraction_on_every_family(family, kw):
    m = _model(family, **kw)
    task = cs.tasks.sentiment(m, n=8, seed=0)
    p = V.pca(m, "a1.h3", task, n_components=4, batch_size=3)
    x = V.activations(m, task, "a1.h3")
    torch.testing.assert_close(
        p.components, V.pca_from_activations(x, 4).components, atol=1e-6, rtol=1e-5
    )
    cp = V.contrast_pair(m, "m1:neurons", "the movie was good", "it was", pad=".")
    assert cp.vector.shape[1] == 64
    probes = V.probe_heads(m, task, positions="END", heads=["a0.h0", "a1.h3"])
    assert list(probes.table.node) == ["a0.h0", "a1.h3"]
    v = V.mean_difference(m, "a1.h3:result", task)
    logits, _ = cs.engine.run(
        m, task, [v.intervention(2.0, "END", model=m), *probes.interventions(k=1, alpha=1.0)]
    )
    assert bool(torch.isfinite(logits).all())
    if m.shape.parallel_residual:
        with pytest.raises(ShapeMismatchError, match="parallel"):
            V.mean_difference(m, "resid_mid.1", task)


@pytest.mark.parametrize(
    "module",
    [
        "vectors",
        "vectors._site",
        "vectors.collect",
        "vectors.contrast",
        "vectors.errors",
        "vectors.mean_diff",
        "vectors.pca",
        "vectors.probes",
        "vectors.random",
        "vectors.stats",
        "vectors.steering_vector",
    ],
)
def test_docstring_examples(module):
    mod = importlib.import_module(f"circuitsteer.{module}")
    assert doctest.testmod(mod, optionflags=doctest.ELLIPSIS).failed == 0
