"""The bundled toy-ioi model: loads offline and fast, and reproduces its model card."""

from __future__ import annotations

import json
import time

import pytest
import torch

from circuitsteer.models import ZOO_DIR, load_model
from circuitsteer.zoo import FOLDER_FILES
from circuitsteer.zoo.evaluate import evaluate

FOLDER = ZOO_DIR / "toy-ioi"


@pytest.fixture(scope="module")
def toy():
    return load_model("toy-ioi")


@pytest.fixture(scope="module")
def card():
    return json.loads((FOLDER / "card.json").read_text())


@pytest.fixture(scope="module")
def measured(toy, card):
    ev = card["evaluation"]
    return evaluate(toy, n=ev["n"], seed=ev["seed"])


def test_folder_contents():
    for f in FOLDER_FILES:
        assert (FOLDER / f).exists(), f
    assert (FOLDER / "model.safetensors").stat().st_size <= 20 * 2**20


def test_loads_offline_under_5s(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    m = load_model("toy-ioi")
    took = time.monotonic() - start
    assert took < 5.0, f"load_model('toy-ioi') took {took:.1f}s"
    assert m.shape.n_layers >= 4 and m.shape.n_heads >= 4
    assert m.card["name"] == "toy-ioi"
    assert type(m.hf).__name__ == "GPT2LMHeadModel"


def test_tokenizer_is_the_task_tokenizer(toy):
    from transformers import PreTrainedTokenizerFast

    from circuitsteer.zoo.tokenizer import toy_tokenizer

    shipped = PreTrainedTokenizerFast(tokenizer_file=str(FOLDER / "tokenizer.json"))
    assert shipped.get_vocab() == toy_tokenizer().get_vocab() == toy.tokenizer.get_vocab()
    assert toy.bos_token_id == toy.tokenizer.eos_token_id == toy.tokenizer.pad_token_id


def test_card_records_training(card):
    for key in ("data_mixture", "command", "training", "scores", "evaluation", "architecture"):
        assert key in card
    assert card["command"].startswith("python -m circuitsteer.zoo.train toy-ioi")
    assert card["training"]["seed"] == 0 and card["training"]["steps"] > 0
    assert (FOLDER / "README.md").read_text().count(str(card["scores"]["ioi_logit_diff"])) >= 1


def test_reproduces_card_scores(card, measured):
    for key, want in card["scores"].items():
        tol = 0.01 if "accuracy" in key or "prob_diff" in key else 0.02
        assert measured[key] == pytest.approx(want, abs=tol), key


def test_meets_issue_thresholds(measured):
    assert measured["ioi_logit_diff"] >= 3.0
    assert measured["ioi_accuracy"] >= 0.95
    assert measured["greater_than_prob_diff"] >= 0.5
    assert measured["sentiment_accuracy"] >= 0.90


def test_ioi_depends_on_the_repeated_name(measured):
    # ABC: no IO or S in the prompt; S2: IO and S present once each, nothing repeated
    assert abs(measured["ioi_abc_logit_diff"]) < 0.1 * measured["ioi_logit_diff"]
    assert abs(measured["ioi_s2_logit_diff"]) < 0.1 * measured["ioi_logit_diff"]


def test_per_example_abc_drop(toy):
    from circuitsteer import metrics
    from circuitsteer.tasks import ioi

    t = ioi(toy, n=100, seed=123, split="heldout")
    with torch.no_grad():
        clean = metrics.logit_diff(toy(t.clean), t)
        corrupted = metrics.logit_diff(toy(t.corrupted), t)
    assert (clean > corrupted).float().mean() >= 0.95
