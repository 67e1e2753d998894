"""Model loading: local HF folders, random models, offline hub ids, the bridge's numerics."""

from __future__ import annotations

import json
import time

import pytest
import torch

import circuitsteer as cs
from circuitsteer.errors import ModelNotAvailableError, UnsupportedArchitectureError


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A GPT-2-architecture model saved as a plain HF folder (weights + tokenizer)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(3)
    cfg = GPT2Config(
        n_layer=2,
        n_head=4,
        n_embd=32,
        vocab_size=257,
        n_positions=32,
        bos_token_id=256,
        eos_token_id=256,
    )
    model = GPT2LMHeadModel(cfg)
    d = tmp_path_factory.mktemp("hfgpt2")
    model.save_pretrained(d)
    cs.models.byte_tokenizer().save_pretrained(d)
    return d


def test_local_folder_logits_equal_raw_hf(hf_dir):
    from transformers import GPT2LMHeadModel

    model = cs.load_model(hf_dir)
    assert model.source == "local" and model.shape.n_heads == 4
    raw = GPT2LMHeadModel.from_pretrained(hf_dir, attn_implementation="eager").eval()
    tokens = model.to_tokens(["hello world", "circuits!!!"])
    with torch.no_grad():
        ours = model(tokens)
        ref = raw(tokens).logits
        bridge = model.bridge(tokens, return_type="logits")
    assert ours.shape == (2, tokens.shape[1], 257)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(bridge, ref, atol=1e-5, rtol=0)


def test_bridge_shares_weights(hf_dir):
    model = cs.load_model(hf_dir)
    w = model.hf.transformer.h[0].attn.c_attn.weight
    assert any(p is w for p in model.bridge.parameters())


def test_raw_tree_has_no_bridge_wrappers(hf_dir):
    model = cs.load_model(hf_dir)
    assert type(model.hf.transformer.h[0].attn).__module__.startswith("transformers.")


def test_random_model_is_seeded():
    a, b = cs.random_gpt2(seed=5), cs.random_gpt2(seed=5)
    c = cs.random_gpt2(seed=6)
    wa, wb, wc = (m.hf.transformer.h[0].attn.c_attn.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_missing_folder_is_typed():
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        cs.load_model("./no/such/model")


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="config.json"):
        cs.load_model(tmp_path)


def test_unsupported_architecture(tmp_path):
    # (llama was the unsupported example before issue 9 added the Llama family)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "hidden_size": 8}))
    with pytest.raises(UnsupportedArchitectureError, match="t5") as e:
        cs.load_model(tmp_path)
    for supported in ("gpt2", "gpt_neox", "llama", "qwen2", "mistral"):
        assert supported in str(e.value)
    with pytest.raises(UnsupportedArchitectureError, match="supported"):
        cs.models.random_model("bert")


@pytest.mark.parametrize(
    "family,cfg",
    [("gpt2", {}), ("gpt_neox", {}), ("llama", {"n_kv_heads": 2}), ("qwen2", {}), ("mistral", {})],
)
def test_local_folder_of_every_family(tmp_path, family, cfg):
    from transformers import AutoModelForCausalLM

    src = cs.models.random_model(family, n_layers=2, n_heads=4, d_model=32, seed=4, **cfg)
    src.hf.save_pretrained(tmp_path)
    src.tokenizer.save_pretrained(tmp_path)
    model = cs.load_model(tmp_path)
    assert model.arch.family == src.arch.family and model.shape == src.shape
    assert model._bridge is None  # the TransformerLens bridge boots on first use only
    raw = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    tokens = model.to_tokens(["hello", "world"])
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), raw(tokens).logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(
            cs.engine.run(model, tokens, [])[0], raw(tokens).logits, atol=1e-5, rtol=0
        )


def test_bridge_is_lazy():
    """Loading and running the engine never imports TransformerLens; ``model.bridge`` boots it."""
    import subprocess
    import sys

    code = (
        "import sys, torch, circuitsteer as cs\n"
        "m = cs.random_model('llama', n_kv_heads=2)\n"
        "cs.engine.run(m, torch.randint(0, 256, (1, 4)), [cs.Scale(cs.Site('m0'), 0.5)])\n"
        "assert m._bridge is None\n"
        "print(any(k.startswith('transformer_lens') for k in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"
    model = cs.random_gpt2(seed=7)
    assert model._bridge is None and model.bridge is model._bridge is not None


@pytest.mark.parametrize("offline_env", ["1", None])
def test_offline_hub_id_fails_fast(monkeypatch, tmp_path, offline_env):
    # an empty cache: the id cannot be there; with no network the hub cannot be either
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    if offline_env is None:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        # a hub endpoint that refuses at once, so the test does not depend on this machine's network
        monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", offline_env)
    start = time.monotonic()
    with pytest.raises(ModelNotAvailableError) as e:
        cs.load_model("openai-community/gpt2-no-such-model")
    assert time.monotonic() - start < 10
    msg = str(e.value)
    assert "local Hugging Face cache" in msg and "the hub" in msg
    assert "pass the folder" in msg and "cs.load_model('/path/to/" in msg


def test_gpt2_small_shape():
    model = cs.load_model("gpt2-small-shape")
    s = model.shape
    assert (s.n_layers, s.n_heads, s.d_model, s.d_head, s.d_mlp, s.d_vocab) == (
        12,
        12,
        768,
        64,
        3072,
        50257,
    )


def test_gpt2_tokenizer_encodes_mary(gpt2_tokenizer):
    assert gpt2_tokenizer.encode(" Mary") == [5335]


def test_to_tokens_prepends_bos(tiny_model):
    t = tiny_model.to_tokens("ab")
    assert t[0, 0].item() == tiny_model.bos_token_id and t.shape == (1, 3)
