"""A few training steps of the zoo recipe end to end (fast; runs in CI)."""

from __future__ import annotations

import json
from dataclasses import replace

import torch

from circuitsteer.zoo import FOLDER_FILES
from circuitsteer.zoo.train import RECIPES, main, train


def test_train_few_steps_writes_a_loadable_folder(tmp_path):
    r = replace(RECIPES["toy-ioi"], steps=3, batch=8, chunk_steps=3, n_layer=2, n_embd=32)
    card = train(r, out=tmp_path, eval_n=8, quiet=True)
    for f in FOLDER_FILES:
        assert (tmp_path / f).exists(), f
    assert json.loads((tmp_path / "card.json").read_text())["scores"] == card["scores"]
    assert set(card["scores"]) >= {"ioi_logit_diff", "ioi_accuracy", "ioi_abc_logit_diff",
                                   "greater_than_prob_diff", "sentiment_accuracy", "neutral_loss"}  # fmt: skip

    from transformers import AutoTokenizer, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    hf = GPT2LMHeadModel.from_pretrained(tmp_path, local_files_only=True)
    assert hf.config.n_layer == 2 and tok.bos_token == "<|endoftext|>"


def test_training_is_deterministic(tmp_path):
    r = replace(RECIPES["toy-ioi"], steps=2, batch=4, chunk_steps=2, n_layer=1, n_embd=16)
    a = train(r, out=tmp_path / "a", eval_n=4, quiet=True)
    b = train(r, out=tmp_path / "b", eval_n=4, quiet=True)
    assert a["scores"] == b["scores"] and a["training"]["final_loss"] == b["training"]["final_loss"]
    from safetensors.torch import load_file

    wa, wb = (
        load_file(tmp_path / "a" / "model.safetensors"),
        load_file(tmp_path / "b" / "model.safetensors"),
    )
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_cli(tmp_path, capsys):
    assert (
        main(["toy-ioi", "--steps", "1", "--out", str(tmp_path), "--eval-n", "4", "--quiet"]) == 0
    )
    assert "ioi_logit_diff" in capsys.readouterr().out
    card = json.loads((tmp_path / "card.json").read_text())
    assert card["command"] == "python -m circuitsteer.zoo.train toy-ioi --steps 1 --seed 0"


def test_curriculum_recipe_and_resume_from_checkpoint(tmp_path):
    # ioi-circuit's two-phase curriculum; a run cut after 2 steps and resumed from its
    # checkpoint ends with the same weights as an uncut run
    r = replace(RECIPES["ioi-circuit"], steps=4, batch=4, chunk_steps=3, phase1_steps=2,
                n_layer=1, n_embd=16, n_head=2, n_inner=16)  # fmt: skip
    train(r, out=tmp_path / "a", eval_n=4, quiet=True)
    ck = tmp_path / "ck.pt"
    assert train(r, out=None, quiet=True, checkpoint=ck, checkpoint_every=2, until=2) == {}
    assert ck.exists()
    train(r, out=tmp_path / "b", eval_n=4, quiet=True, checkpoint=ck, checkpoint_every=2)
    from safetensors.torch import load_file

    wa = load_file(tmp_path / "a" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
