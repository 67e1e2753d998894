"""Path patching against hand computations with the independent forward in gpt2_reference.py:
a receiver's input = its clean input + (corrupted sender output - clean sender output), all else
clean."""

from __future__ import annotations

import gpt2_reference as ref
import pytest
import torch
from analysis_models import strong_gpt2

import circuitsteer as cs
from circuitsteer.analysis import AnalysisError, path_patching, path_patching_grid
from circuitsteer.errors import PositionError
from circuitsteer.metrics import logit_diff


@pytest.fixture(scope="module")
def model():
    return strong_gpt2(seed=3)


@pytest.fixture(scope="module")
def task(model):
    return cs.tasks.ioi(model, n=8, seed=2)


@pytest.fixture(scope="module")
def recs(model, task):
    clean, corrupted = {}, {}
    ref.forward(model, task.clean, record=clean)
    ref.forward(model, task.corrupted, record=corrupted)
    return clean, corrupted


OUTPUT = {"head": "head_resid", "mlp": "mlp_out", "input": "resid_pre"}
# receiver name -> the reference forward's input points it reads the sender through
INPUTS = {
    "a2.h3<q>": [("qkv_in", 2, 3, "q")],
    "a2.h3<k>": [("qkv_in", 2, 3, "k")],
    "a2.h3<v>": [("qkv_in", 2, 3, "v")],
    "a2.h3": [("qkv_in", 2, 3, c) for c in "qkv"],
    "m1": [("mlp_in", 1, None, None)],
    "logits": [("logits_in", -1, None, None)],
}


def sender_delta(recs, sender, task, positions):
    clean, corrupted = recs
    node = cs.parse_node(sender)
    key = (OUTPUT[node.kind], node.layer or 0) + ((node.head,) if node.kind == "head" else ())
    d = corrupted[key] - clean[key]
    if positions == "END":
        keep = torch.zeros(d.shape[:2], dtype=torch.bool)
        keep[torch.arange(len(task)), task.positions["END"]] = True
        d = d * keep[..., None]
    return d


def by_hand(model, task, recs, senders, receivers, positions):
    """Mean logit diff when each receiver input gets the summed deltas of its upstream senders."""
    gets: dict[tuple, torch.Tensor] = {}
    for s in senders:
        d = sender_delta(recs, s, task, positions)
        for r in receivers:
            if cs.parse_node(r.split("<")[0]).depth(3) > cs.parse_node(s).depth(3):
                for point in INPUTS[r]:
                    gets[point] = gets.get(point, 0) + d

    def edit(point, layer, head, channel, t):
        return (
            t + gets[(point, layer, head, channel)] if (point, layer, head, channel) in gets else t
        )

    return logit_diff(ref.forward(model, task.clean, edit), task).mean().item()


@pytest.mark.parametrize("receiver", ["a2.h3<q>", "a2.h3<k>", "a2.h3", "m1", "logits"])
@pytest.mark.parametrize("positions", ["all", "END"])
def test_single_sender_equals_hand_computation(model, task, recs, receiver, positions):
    df = path_patching(model, task, "a0.h1", receiver, positions=positions)
    want = by_hand(model, task, recs, ["a0.h1"], [receiver], positions)
    assert df.patched.item() == pytest.approx(want, abs=1e-5)
    clean = logit_diff(ref.forward(model, task.clean), task).mean().item()
    corrupted = logit_diff(ref.forward(model, task.corrupted), task).mean().item()
    assert df.clean.item() == pytest.approx(clean, abs=1e-5)
    assert df.corrupted.item() == pytest.approx(corrupted, abs=1e-5)
    assert df.effect.item() == pytest.approx(want - clean, abs=1e-5)
    assert df.frac_of_gap.item() == pytest.approx((clean - want) / (clean - corrupted), abs=1e-4)


def test_sender_and_receiver_sets_equal_hand_computation(model, task, recs):
    senders, receivers = ["a0.h1", "m0", "a1.h2"], ["a2.h3<v>", "m1", "logits"]
    df = path_patching(model, task, senders, receivers)
    assert df.patched.item() == pytest.approx(
        by_hand(model, task, recs, senders, receivers, "all"), abs=1e-5
    )
    assert (df.senders.item(), df.receivers.item()) == ("a0.h1+m0+a1.h2", "a2.h3<v>+m1+logits")


def test_several_sets_give_one_row_each(model, task):
    df = path_patching(
        model, task, [["a0.h1"], ["a0.h2", "m0"]], [["a2.h0"], ["logits"]], max_batch=16
    )
    assert len(df) == 4
    for row in df.itertuples():
        one = path_patching(model, task, row.senders.split("+"), row.receivers.split("+"))
        assert row.patched == pytest.approx(one.patched.item(), abs=1e-6)


def test_every_node_to_logits_is_the_corrupted_run(model, task):
    """The logits read the sum of all node outputs: sending all of them is the corrupted run."""
    everything = ["input", *cs.nodes.all_heads(model.shape), *cs.nodes.all_mlps(model.shape)]
    df = path_patching(model, task, everything, "logits")
    assert df.patched.item() == pytest.approx(df.corrupted.item(), abs=1e-4)
    assert df.frac_of_gap.item() == pytest.approx(1.0, abs=1e-4)


def test_all_readers_as_receivers_is_a_node_patch(model, task):
    """A sender patched into every later reader equals patching the node itself."""
    readers = [f"a{L}.h{h}" for L in (1, 2) for h in range(4)] + ["m0", "m1", "m2", "logits"]
    df = path_patching(model, task, "a0.h3", readers, positions="END")
    _, cache = cs.engine.run(model, task.corrupted, [], capture=["a0.h3"])
    logits, _ = cs.engine.run(
        model, task, [cs.Patch(cs.Site("a0.h3", positions="END"), source=cache)]
    )
    assert df.patched.item() == pytest.approx(logit_diff(logits, task).mean().item(), abs=1e-5)


def test_grid_rows_equal_single_calls(model, task):
    g = path_patching_grid(model, task, receivers=["a2.h0<k>", "m2"], max_batch=32)
    # every head upstream of some receiver: layer 2's heads feed m2 (but not a2.h0)
    assert list(g.node) == [f"a{L}.h{h}" for L in (0, 1, 2) for h in range(4)]
    assert list(g.columns[:3]) == ["node", "layer", "head"]
    for row in g.iloc[[0, 5, 9]].itertuples():
        one = path_patching(model, task, row.node, ["a2.h0<k>", "m2"])
        assert row.patched == pytest.approx(one.patched.item(), abs=1e-6)
    logits_grid = path_patching_grid(model, task, "logits", positions="END")
    assert len(logits_grid) == 12


def test_other_metrics_and_sources(model, task):
    acc = path_patching(model, task, "a0.h0", "logits", metric="accuracy")
    assert acc.metric.item() == "accuracy" and 0 <= acc.patched.item() <= 1
    same = path_patching(model, task, "a0.h0", "logits", source=task.clean.clone())
    assert same.effect.item() == pytest.approx(0.0, abs=1e-6)  # patching clean into clean
    custom = path_patching(model, task, "a0.h0", "logits", metric=lambda lg, t: -logit_diff(lg, t))
    base = path_patching(model, task, "a0.h0", "logits")
    assert custom.patched.item() == pytest.approx(-base.patched.item(), abs=1e-6)


def test_errors(model, task):
    with pytest.raises(AnalysisError, match="no receiver downstream"):
        path_patching(model, task, "a2.h0", "a1.h0<q>")
    with pytest.raises(AnalysisError, match="no senders"):
        path_patching(model, task, [], "logits")
    with pytest.raises(AnalysisError, match="unknown metric"):
        path_patching(model, task, "a0.h0", "logits", metric="kl")
    with pytest.raises(AnalysisError, match="source"):
        path_patching(model, task, "a0.h0", "logits", source="mean")
    with pytest.raises(AnalysisError, match="same"):
        path_patching(model, task, "a0.h0", "logits", source=task.clean[:2])
    with pytest.raises(AnalysisError, match="not a head, an MLP"):
        path_patching(model, task, "resid_pre.1", "logits")
    with pytest.raises(cs.NodeNameError):
        path_patching(model, task, "a0.h0", "a2.h1<x>")
    with pytest.raises(cs.NodeNameError, match="not a head, MLP or logits"):
        path_patching(model, task, "a0.h0", "resid_pre.2")
    with pytest.raises(cs.NodeNameError, match="not a head, MLP or logits"):
        path_patching(model, task, "a0.h0", "m2<q>")
    with pytest.raises(AnalysisError, match="max_batch"):
        path_patching(model, task, "a0.h0", "logits", max_batch=0)
    with pytest.raises(PositionError):
        path_patching(model, task, "a0.h0", "logits", positions="NOPE")
    with pytest.raises(AnalysisError, match="upstream"):
        path_patching_grid(model, task, receivers="a0.h2<q>")
    with pytest.raises(AnalysisError, match="not a head"):
        path_patching_grid(model, task, receivers="logits", senders=["m0"])
