"""Real GPT-2 small from the hub or the HF cache. Skipped where it cannot be had (offline)."""

from __future__ import annotations

import pytest
import torch

import circuitsteer as cs


@pytest.fixture(scope="module")
def gpt2():
    try:
        return cs.load_model("gpt2")
    except cs.ModelNotAvailableError as e:
        pytest.skip(f"GPT-2 small not available offline: {e.message}")


def test_gpt2_logits_match_hf(gpt2):
    from transformers import GPT2LMHeadModel

    raw = GPT2LMHeadModel.from_pretrained("gpt2", attn_implementation="eager").eval()
    tokens = gpt2.to_tokens("When Mary and John went to the store, John gave a drink to")
    with torch.no_grad():
        torch.testing.assert_close(gpt2(tokens), raw(tokens).logits, atol=1e-5, rtol=0)


# -- published IOI behaviour (Wang et al. 2022; numbers in docs/design.md "Acceptance") ------


@pytest.fixture(scope="module")
def ioi_task(gpt2):
    return cs.tasks.ioi(gpt2, n=200, seed=0)


def test_ioi_logit_difference_and_accuracy_near_published(gpt2, ioi_task):
    logits, _ = cs.engine.run(gpt2, ioi_task)
    ld = cs.metrics.logit_diff(logits, ioi_task)
    acc = cs.metrics.accuracy(logits, ioi_task).float().mean().item()
    # published: mean logit difference ~3.5 on this distribution; IO beats S on almost all
    assert 2.5 <= ld.mean().item() <= 5.0, ld.mean().item()
    assert acc >= 0.9, acc


def test_ioi_circuit_faithfulness_and_drop(gpt2, ioi_task):
    circuit = cs.load_circuit("gpt2-small/ioi", model=gpt2)
    assert len(circuit.heads) == 26
    f = cs.analysis.faithfulness_mean_ablation(gpt2, ioi_task, circuit)
    # published: the circuit alone (complement mean-ablated) keeps ~87% of the logit difference
    assert 0.6 <= f["faithfulness"] <= 1.2, f
    # and mean-ablating the circuit's own heads removes most of it
    empty = cs.Circuit("none", model="gpt2-small")
    complement = [h for h in cs.nodes.all_heads(gpt2.shape) if h not in set(circuit.heads)]
    for h in complement:
        empty.add_node(h)
    g = cs.analysis.faithfulness_mean_ablation(gpt2, ioi_task, empty)
    assert g["faithfulness"] < 0.5, g


def test_name_movers_attend_to_io(gpt2, ioi_task):
    df = cs.analysis.attention(gpt2, ioi_task, heads=["a9.h9", "a9.h6", "a10.h0"])
    att = df[df["order"] == "all"].pivot(index="node", columns="to", values="attention")
    assert (att["IO"] >= 0.3).all(), att
    assert (att["IO"] > 2 * att["S1"]).all(), att  # IO, not the subject
