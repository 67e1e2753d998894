"""Architecture adapters, one module per model family: ``gpt2``, ``gpt_neox`` (GPT-NeoX,
Pythia), ``llama`` (Llama, Qwen2, Mistral). Each is data (module paths per role, the shape) plus
small functions (see :mod:`circuitsteer.engine.arch.base`); the engine core asks only these.

Example:
    >>> from transformers import GPT2Config
    >>> a = adapter_for(GPT2Config(n_layer=2, n_head=4, n_embd=32))
    >>> a.family, a.path("attn_out", 1), a.qkv_cols("k", 1)
    ('gpt2', 'transformer.h.1.attn.c_proj', slice(40, 48, None))
    >>> family_of("qwen2")
    'llama'
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from circuitsteer.engine.arch import gpt2, gpt_neox, llama
from circuitsteer.engine.arch.base import ROLES as ROLES
from circuitsteer.engine.arch.base import Adapter as Adapter
from circuitsteer.errors import UnsupportedArchitectureError

FAMILIES: dict[str, ModuleType] = {m.FAMILY: m for m in (gpt2, gpt_neox, llama)}
MODEL_TYPES: dict[str, str] = {t: m.FAMILY for m in FAMILIES.values() for t in m.MODEL_TYPES}


def supported() -> str:
    """The supported ``model_type`` values, for error messages."""
    return ", ".join(f"{t} ({f})" for t, f in MODEL_TYPES.items())


def family_of(model_type: Any, where: str = "model") -> str:
    """The adapter family of a Hugging Face ``model_type``; ``UnsupportedArchitectureError``
    listing the supported ones otherwise."""
    fam = MODEL_TYPES.get(model_type) if isinstance(model_type, str) else None
    if fam is None:
        raise UnsupportedArchitectureError(
            f"{where}: model_type {model_type!r} is not supported; supported: {supported()}",
            fix="load a checkpoint of a supported family (GPT-2, GPT-NeoX/Pythia, Llama, Qwen2, "
            "Mistral), or add an adapter in circuitsteer/engine/arch/",
        )
    return fam


def adapter_for(config: Any, where: str = "model") -> Adapter:
    """The adapter for a Hugging Face config (``model.config``)."""
    fam = family_of(getattr(config, "model_type", None), where)
    return FAMILIES[fam].adapter(config)


def random_config(family: str, **cfg: Any) -> Any:
    """A Hugging Face config of ``family`` (``gpt2``, ``gpt_neox``, ``llama``, ``qwen2``,
    ``mistral``) from circuitsteer's shape names (``n_layers``, ``n_heads``, ``d_model``,
    ``d_mlp``, ``d_vocab``, ``n_ctx``, ``n_kv_heads`` for the Llama family); other keywords are
    Hugging Face config fields (``rotary_pct``, ``use_parallel_residual``, ``attention_bias``)."""
    fam = family_of(family, where=f"random_model({family!r})") if family not in FAMILIES else family
    mod = FAMILIES[fam]
    if fam == "llama":
        return mod.random_config(
            model_type=family if family in llama.MODEL_TYPES else "llama", **cfg
        )
    if "n_kv_heads" in cfg and cfg.pop("n_kv_heads") not in (None, cfg.get("n_heads")):
        raise UnsupportedArchitectureError(
            f"{family} has no grouped-query attention",
            fix="drop n_kv_heads or use a Llama-family model",
        )
    return mod.random_config(**cfg)
