"""Discovery on the zoo model ioi-circuit: the committed circuits (circuits/ioi-circuit/acdc.json,
eap-ig.json) re-measured from their recorded recipe, EAP-IG's scores against ACDC's circuit,
full and empty graphs, EAP = the mask gradient at this scale."""

from __future__ import annotations

import pytest
import torch

import circuitsteer as cs
from circuitsteer import discovery as dc
from circuitsteer.discovery._common import references
from circuitsteer.discovery._metric import make_metric
from circuitsteer.discovery.reproduce import settings
from circuitsteer.engine.masks import EdgeMask, run_with_mask

pytestmark = pytest.mark.integration
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    return cs.load_model("ioi-circuit")


@pytest.fixture(scope="module")
def recipe():
    return cs.load_circuit("ioi-circuit/acdc").metadata


@pytest.fixture(scope="module")
def task(model, recipe):
    data = recipe["data"]
    task = cs.tasks.ioi(model, n=data["n"], seed=recipe["seed"])
    assert data["tokens_sha1"] == _sha(task)  # the prompts the circuits were found on
    return task


def _sha(task):
    from circuitsteer.discovery._common import data_meta

    return data_meta(task)["tokens_sha1"]


@pytest.mark.parametrize("name", ["acdc", "eap-ig"])
def test_committed_circuit_metadata_and_faithfulness(model, task, name):
    c = cs.load_circuit(f"ioi-circuit/{name}")
    c.check_model(model)
    meta = c.metadata
    for key in ("method", "metric", "ablation", "data", "seed", "timings", "faithfulness",
                "size", "roc_auc_vs_hand_found"):  # fmt: skip
        assert key in meta, key
    assert meta["ablation"] == "resample" and meta["faithfulness"]["ablation"] == "resample"
    n_total = cs.edge_graph.count_full_edges(model.shape)
    assert meta["size"]["n_edges"] == len(c.edges) and len(c.edges) <= 0.15 * n_total
    got = dc.circuit_faithfulness(model, task, c)
    want = meta["faithfulness"]["discovery_prompts"]
    assert got["normalized"] == pytest.approx(want["normalized"], abs=1e-3)
    assert got["value"] == pytest.approx(want["value"], abs=1e-3)
    if name == "acdc":  # the bar: <= 15% of edges, >= 90% of the logit difference
        assert got["normalized"] >= 0.9 and got["value"] >= 0.9
        assert meta["threshold"] == settings()["acdc"]["threshold"]


def test_eap_ig_recovers_acdc_circuit(model, task):
    acdc = cs.load_circuit("ioi-circuit/acdc")
    ig = dc.eap_ig(model, task, steps=5)
    auc = dc.roc_auc(ig, acdc)
    assert auc >= 0.85, auc
    recorded = cs.load_circuit("ioi-circuit/eap-ig").metadata["roc_auc_vs_acdc"]
    assert auc == pytest.approx(recorded, abs=1e-3)


def test_full_and_empty_graph_on_the_zoo_model(model, task):
    refs = references(model, task, "resample")
    with torch.no_grad():
        clean, corrupted = model(task.clean), model(task.corrupted)
        full = run_with_mask(model, task.clean, EdgeMask(model), refs.ablated)
        empty = run_with_mask(model, task.clean, EdgeMask(model, value=1.0), refs.ablated)
    assert torch.equal(full, clean)
    torch.testing.assert_close(empty, corrupted, atol=1e-4, rtol=1e-4)


def test_eap_is_the_mask_gradient_on_the_zoo_model(model, task):
    sub = task.subset(range(16))
    got = dc.eap(model, sub).frame["score"]
    met = make_metric("logit_diff", model, sub)
    refs = references(model, sub, "resample")
    mask = EdgeMask(model, requires_grad=True)
    g = torch.autograd.grad(met(run_with_mask(model, sub.clean, mask, refs.ablated)).mean(),
                            mask.parameters())  # fmt: skip
    want = dc.EdgeScores.from_tensors(model.shape, dict(zip(mask.tensors, g, strict=True)), {})
    assert (got - want.frame["score"]).abs().max() < 1e-5 * float(want.frame["score"].abs().max())
