"""find_ioi_circuit's mechanics and the mean-ablation faithfulness, against a hand computation."""

from __future__ import annotations

import pytest
import torch

import circuitsteer as cs
from circuitsteer.analysis.ioi_circuit import (
    faithfulness_mean_ablation,
    find_ioi_circuit,
)
from circuitsteer.errors import AnalysisError
from circuitsteer.tasks.ioi_probes import ioi_variant
from tests.unit.analysis_models import strong_gpt2


@pytest.fixture(scope="module")
def model():
    return strong_gpt2(seed=1, n_layers=3, n_heads=4)


@pytest.fixture(scope="module")
def task(model):
    return ioi_variant(model, n=24, seed=0, templates=[0, 5])


def _head_means(model, tokens) -> dict[int, torch.Tensor]:
    """Per layer, the c_proj input (concatenated head outputs) averaged over the batch."""
    means: dict[int, torch.Tensor] = {}
    blocks = model.hf.transformer.h
    handles = [
        blocks[layer].attn.c_proj.register_forward_pre_hook(
            lambda mod, args, layer=layer: means.__setitem__(layer, args[0].mean(0, keepdim=True))
        )
        for layer in range(model.shape.n_layers)
    ]
    try:
        with torch.no_grad():
            model.hf(tokens)
    finally:
        for h in handles:
            h.remove()
    return means


def _run_with_means(model, tokens, means, keep: set[str]) -> torch.Tensor:
    s = model.shape

    def ablate(args, layer):
        z = args[0].clone().view(*args[0].shape[:2], s.n_heads, s.d_head)
        mean = means[layer].view(1, -1, s.n_heads, s.d_head)
        for head in range(s.n_heads):
            if f"a{layer}.h{head}" not in keep:
                z[:, :, head] = mean[:, :, head]
        return (z.view(*args[0].shape),)

    handles = [
        model.hf.transformer.h[layer].attn.c_proj.register_forward_pre_hook(
            lambda mod, args, layer=layer: ablate(args, layer)
        )
        for layer in range(s.n_layers)
    ]
    try:
        with torch.no_grad():
            return model.hf(tokens).logits
    finally:
        for h in handles:
            h.remove()


def _hand_mean_ablation_ld(model, task, keep: set[str]) -> float:
    """Logit difference with every head not in ``keep`` replaced by its per-position mean over
    the ABC prompts of the same template: plain torch hooks on GPT-2's c_proj input."""
    lds = []
    for t in sorted(set(task.meta["template"])):
        sub = task.subset(torch.tensor((task.meta["template"] == t).to_numpy()))
        logits = _run_with_means(model, sub.clean, _head_means(model, sub.corrupted), keep)
        lds.append(cs.metrics.logit_diff(logits, sub))
    return float(torch.cat(lds).mean())


def test_faithfulness_matches_hand_mean_ablation(model, task):
    c = cs.Circuit("c", shape=model.shape)
    for h in ("a0.h1", "a2.h3"):
        c.add_node(h, cls="name mover")
    f = faithfulness_mean_ablation(model, task, c)
    hand = _hand_mean_ablation_ld(model, task, {"a0.h1", "a2.h3"})
    assert f["circuit"] == pytest.approx(hand, abs=1e-4)
    full = cs.metrics.logit_diff(cs.engine.run(model, task)[0], task).mean().item()
    assert f["model"] == pytest.approx(full, abs=1e-4)
    # keeping every head ablates nothing
    every = cs.Circuit("all", shape=model.shape)
    for h in cs.nodes.all_heads(model.shape):
        every.add_node(h, cls="x")
    assert faithfulness_mean_ablation(model, task, every)["faithfulness"] == pytest.approx(1.0)


def test_find_ioi_circuit_classes_follow_the_grids(model, task):
    # a random model has no IOI circuit; a very low threshold still exercises every stage
    circuit, ev = find_ioi_circuit(model, task, threshold=1e-4)
    assert len(ev) == model.shape.n_layers * model.shape.n_heads
    movers = [h for c in ("name mover", "S suppression", "negative name mover")
              for h in circuit.nodes_by_class(c)]  # fmt: skip
    assert movers
    for h in movers:  # the class is the sign of the path-patching share to the logits
        share = ev.set_index("node").loc[h, "pp_logits"]
        assert (share > 0) == (h not in circuit.nodes_by_class("negative name mover"))
        assert tuple(circuit.node(h)["positions"]) == ("END",)
    for h in circuit.nodes_by_class("S-inhibition"):
        assert ev.set_index("node").loc[h, "pp_mover_q"] >= 1e-4
    # head -> head edges are the paths found: S-inhibition -> movers through queries, scored
    evi = ev.set_index("node")
    for e in circuit.edges:
        if e.src in circuit.nodes_by_class("S-inhibition") and e.dst in movers:
            assert e.channel == "q" and e.score == evi.loc[e.src, "pp_mover_q"]
    assert circuit.metadata["method"]["threshold"] == 1e-4
    # deterministic: same data, same circuit
    again, _ = find_ioi_circuit(model, task, threshold=1e-4)
    assert again.classes == circuit.classes


def test_no_movers_is_a_clear_error(model, task):
    with pytest.raises(AnalysisError, match="threshold"):
        find_ioi_circuit(model, task, threshold=10.0)
