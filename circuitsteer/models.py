"""Loading models: zoo names (bundled, offline), local Hugging Face folders, hub ids.

A :class:`Model` holds two views of the same weights:

* ``model.hf``: the raw Hugging Face causal LM (GPT-2, GPT-NeoX/Pythia, Llama, Qwen2, Mistral;
  eager attention). The engine puts plain torch hooks on its modules, so the hot path pays
  nothing for hook points it does not use; ``model.arch`` is the family's adapter that tells it
  where each activation lives (:mod:`circuitsteer.engine.arch`).
* ``model.bridge``: a TransformerLens 4.x ``TransformerBridge`` over a twin of that model that
  shares every parameter tensor (booting a bridge rewires the HF module tree in place, so it
  gets its own tree), booted on first use. Use it for TL's hook names, ``run_with_cache`` and
  ``transformer_lens.patching``. Compatibility mode (weight folding) is *not* enabled: raw
  numerics, equal to HF's.

Example:
    >>> import circuitsteer as cs
    >>> model = cs.load_model("toy-ioi")                    # doctest: +SKIP
    >>> logits = model(model.to_tokens("Then, Mary and John went to the store."))  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlparse

import torch

from circuitsteer.engine import arch
from circuitsteer.errors import ModelNotAvailableError, UnsupportedArchitectureError
from circuitsteer.nodes import ModelShape
from circuitsteer.random_models import random_gpt2 as random_gpt2
from circuitsteer.random_models import random_model as random_model
from circuitsteer.tokenizers import GPT2_TOKENIZER_DIR as GPT2_TOKENIZER_DIR
from circuitsteer.tokenizers import byte_tokenizer as byte_tokenizer
from circuitsteer.tokenizers import gpt2_tokenizer as gpt2_tokenizer

ZOO_DIR = Path(__file__).parent / "zoo"
# eager attention: what the bridge switches to anyway, and what exposes attention patterns
_EAGER: dict[str, Any] = {"attn_implementation": "eager"}


class Model:
    """A loaded model: raw HF module tree, its architecture adapter (``arch``), the
    TransformerLens bridge (booted on first use of ``bridge``), tokenizer and shape.

    Calling it runs the raw HF forward and returns logits ``[batch, pos, d_vocab]``.
    ``boot_bridge=True`` boots the bridge now (a broken bridge then fails at load).
    """

    def __init__(
        self,
        hf: Any,
        tokenizer: Any,
        *,
        name: str,
        source: str,
        path: str | None = None,
        card: dict[str, Any] | None = None,
        boot_bridge: bool = False,
    ) -> None:
        self.arch = arch.adapter_for(hf.config, where=name)
        self.hf = hf.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.source = source
        self.path = path
        self.card = card or {}
        self.shape = self.arch.shape
        self._bridge: Any = None
        self._modules = dict(self.hf.named_modules())
        if boot_bridge:
            _ = self.bridge  # boot now: a broken bridge should fail at load, not mid-analysis

    # -- the bridge ---------------------------------------------------------------------------
    @property
    def bridge(self) -> Any:
        """TransformerLens ``TransformerBridge`` sharing this model's weights."""
        if self._bridge is None:
            self._bridge = _boot_bridge(self.hf, self.tokenizer, self.name)
        return self._bridge

    def twin(self) -> Model:
        """A Model over a second HF module tree that shares every parameter tensor: hooks on one
        do not touch the other (benchmarks compare a hooked and a raw forward side by side)."""
        hf = copy.deepcopy(self.hf, memo={id(p): p for p in self.hf.parameters()})
        return Model(
            hf,
            self.tokenizer,
            name=self.name,
            source=self.source,
            path=self.path,
            card=self.card,
            boot_bridge=False,
        )

    # -- running ------------------------------------------------------------------------------
    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.forward(tokens)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Raw HF forward; logits ``[batch, pos, d_vocab]``."""
        return self.hf(input_ids=tokens.to(self.device), use_cache=False).logits

    def module(self, path: str) -> torch.nn.Module:
        """The HF submodule at ``path`` (paths come from ``model.arch.path(role, layer)``)."""
        return self._modules[path]

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def bos_token_id(self) -> int:
        tid = self.tokenizer.bos_token_id
        return int(tid if tid is not None else self.tokenizer.eos_token_id)

    # -- tokens -------------------------------------------------------------------------------
    def to_tokens(self, text: str | list[str], prepend_bos: bool = True) -> torch.Tensor:
        """Tokenize one string or a list of equal-length strings into ``[batch, pos]``."""
        texts = [text] if isinstance(text, str) else list(text)
        rows = [self.tokenizer.encode(t, add_special_tokens=False) for t in texts]
        if prepend_bos:
            rows = [[self.bos_token_id, *r] for r in rows]
        lengths = {len(r) for r in rows}
        if len(lengths) != 1:
            raise ValueError(
                f"texts tokenize to different lengths {sorted(lengths)}; tokenize them one by one"
            )
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def to_str_tokens(self, tokens: torch.Tensor | list[int]) -> list[str]:
        ids = tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
        return [self.tokenizer.decode([i]) for i in ids]

    def weights_hash(self) -> str:
        """sha256 over parameter names and bytes (recorded in run metadata)."""
        h = hashlib.sha256()
        for name, p in sorted(self.hf.state_dict().items()):
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        return f"Model({self.name!r}, {self.source}, {self.shape.describe()}, {self.device}, {self.dtype})"


# ---------------------------------------------------------------------------------------------
# loading


@dataclass(frozen=True)
class ZooEntry:
    name: str
    description: str
    build: Callable[[], tuple[Any, Any, str | None]]  # -> (hf model, tokenizer, path)
    shape: Callable[[], ModelShape | None] | None = None  # the shape, without loading weights


_ZOO: dict[str, ZooEntry] = {}

# GPT-2 small as GPT2Config's defaults give it (the zoo's gpt2-small-shape too)
GPT2_SMALL = ModelShape(
    n_layers=12, n_heads=12, d_model=768, d_head=64, d_mlp=3072, d_vocab=50257, n_ctx=1024
)
# hub models that shipped circuits name, known without downloading anything; attn-only-4l is
# TransformerLens's (d_mlp 0 marks it attention-only)
_HUB_SHAPES: dict[str, ModelShape] = {
    "gpt2-small": GPT2_SMALL,
    "gpt2": GPT2_SMALL,
    "attn-only-4l": ModelShape(
        n_layers=4, n_heads=8, d_model=512, d_head=64, d_mlp=0, d_vocab=48262, n_ctx=2048
    ),
}


def register_zoo(
    name: str,
    description: str,
    build: Callable[[], tuple[Any, Any, str | None]],
    shape: Callable[[], ModelShape | None] | None = None,
) -> None:
    """Add a model ``load_model(name)`` builds offline; ``shape`` (cheap, no weights) lets
    :func:`known_shape` and circuit files naming the model check against it."""
    _ZOO[name] = ZooEntry(name, description, build, shape)


def known_shape(name: object) -> ModelShape | None:
    """The shape of a model known by name, without loading weights: a zoo model (from its
    config.json) or a hub model the shipped circuits name; None for any other name.

    Circuit files that name such a model are checked against this shape when they load.

    >>> known_shape("toy-ioi").n_layers, known_shape("gpt2-small").n_heads, known_shape("mine")
    (4, 12, None)
    """
    if not isinstance(name, str):
        return None
    entry = _ZOO.get(name)
    if entry is not None and entry.shape is not None:
        return entry.shape()
    return _HUB_SHAPES.get(name)


def zoo_names() -> list[str]:
    """Names of the models that load offline (``load_model(name)``)."""
    return sorted(_ZOO)


def zoo_descriptions() -> dict[str, str]:
    """Zoo model name -> one-line description, sorted by name.

    >>> "toy-ioi" in zoo_descriptions()
    True
    """
    return {name: _ZOO[name].description for name in sorted(_ZOO)}


def load_model(
    name_or_path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    bridge: bool = False,
) -> Model:
    """Load a zoo model by name, a local Hugging Face folder, or a hub id of a supported family
    (GPT-2, GPT-NeoX/Pythia, Llama, Qwen2, Mistral; ``UnsupportedArchitectureError`` lists them).

    The TransformerLens bridge boots on the first ``model.bridge`` (so machines without
    TransformerLens, and code that only needs the engine, never pay for it); ``bridge=True``
    boots it now.

    Offline, a hub id that is not in the local HF cache fails within seconds with
    ``ModelNotAvailableError`` (no retries).

    >>> model = load_model("gpt2-small-shape")   # doctest: +SKIP
    """
    key = str(name_or_path)
    if key in _ZOO:
        hf, tok, path = _ZOO[key].build()
        model = Model(
            hf, tok, name=key, source="zoo", path=path, card=_read_card(path), boot_bridge=bridge
        )
    elif Path(key).expanduser().exists():
        path = Path(key).expanduser().resolve()
        hf, tok = _load_local(path)
        model = Model(hf, tok, name=path.name, source="local", path=str(path), boot_bridge=bridge)
    elif _looks_like_path(key):
        raise ModelNotAvailableError(
            f"model folder {key!r} does not exist",
            fix=f"pass an existing Hugging Face model folder, or a zoo name ({', '.join(zoo_names())})",
        )
    else:
        hf, tok = _load_hub(key)
        model = Model(hf, tok, name=key, source="hub", path=None, boot_bridge=bridge)
    return _place(model, device, dtype)


def _place(model: Model, device: str | torch.device | None, dtype: torch.dtype | None) -> Model:
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev != model.device or (dtype is not None and dtype != model.dtype):
        model.hf.to(device=dev, dtype=dtype)
    return model


def _looks_like_path(key: str) -> bool:
    return key.startswith((".", "/", "~")) or os.sep in key and key.count("/") > 1


def _read_card(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    f = Path(path) / "card.json"
    return json.loads(f.read_text()) if f.exists() else {}


def _load_local(path: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM

    if not (path / "config.json").exists():
        raise ModelNotAvailableError(
            f"{path} has no config.json, so it is not a Hugging Face model folder",
            fix="pass the folder that model.save_pretrained() wrote (config.json + weights)",
        )
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    except (ValueError, AttributeError) as e:
        raise ModelNotAvailableError(
            f"{path / 'config.json'} is not a valid config ({e})",
            fix="re-save the model with model.save_pretrained(DIR)",
        ) from e
    arch.family_of(model_type, where=str(path))
    hf = AutoModelForCausalLM.from_pretrained(
        path, local_files_only=True, attn_implementation="eager"
    )
    return hf, _local_tokenizer(path)


def _local_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    if (path / "tokenizer.json").exists() or (path / "vocab.json").exists():
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    return gpt2_tokenizer()


def _hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False, "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True, f"{host} reachable"
    except OSError as e:
        return False, f"{host}:443 unreachable ({e.__class__.__name__}: {e})"


def _load_hub(model_id: str) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tried = []
    start = time.monotonic()
    # 1. the local HF cache, with no network at all
    try:
        cfg = AutoConfig.from_pretrained(model_id, local_files_only=True)
        arch.family_of(cfg.model_type, where=model_id)
        hf = AutoModelForCausalLM.from_pretrained(
            model_id, local_files_only=True, attn_implementation="eager"
        )
        return hf, AutoTokenizer.from_pretrained(model_id, local_files_only=True)
    except (OSError, ValueError) as e:
        if isinstance(e, UnsupportedArchitectureError):
            raise
        tried.append(f"the local Hugging Face cache (not there: {e.__class__.__name__})")
    # 2. the hub, only when it answers within seconds (no retry loop)
    ok, why = _hub_reachable()
    if ok:
        try:
            cfg = AutoConfig.from_pretrained(model_id)
            arch.family_of(cfg.model_type, where=model_id)
            hf = AutoModelForCausalLM.from_pretrained(model_id, attn_implementation="eager")
            return hf, AutoTokenizer.from_pretrained(model_id)
        except OSError as e:
            tried.append(f"the hub ({e})")
    else:
        tried.append(f"the hub ({why})")
    raise ModelNotAvailableError(
        f"cannot load {model_id!r}: not a zoo name ({', '.join(zoo_names())}), not a local folder, "
        f"and tried {'; '.join(tried)} in {time.monotonic() - start:.1f}s",
        fix=f"download it on a machine with network (model.save_pretrained(DIR) and the tokenizer) and "
        f"pass the folder: cs.load_model('/path/to/{model_id.split('/')[-1]}'), or use a zoo model",
    )


def _boot_bridge(hf: Any, tokenizer: Any, name: str) -> Any:
    """Boot a TransformerBridge over a twin of ``hf`` that shares its parameters."""
    import logging

    from transformer_lens.model_bridge import TransformerBridge

    level = logging.getLogger("transformers").level
    twin = copy.deepcopy(hf, memo={id(p): p for p in hf.parameters()})  # params shared, not copied
    # TL re-loads a tokenizer by name unless it already adds BOS; ours is in memory (maybe no
    # folder), so say so. Tokenization in circuitsteer never relies on add_bos_token.
    tokenizer.init_kwargs.setdefault("name_or_path", name)
    tokenizer.init_kwargs["add_bos_token"] = True
    bridge = TransformerBridge.boot_transformers(
        name, hf_model=twin, tokenizer=tokenizer, device=str(next(hf.parameters()).device)
    )
    logging.getLogger("transformers").setLevel(level)  # importing the bridge silences transformers
    return bridge


# ---------------------------------------------------------------------------------------------
# tokenizers and built-in zoo entries


def _gpt2_small_shape() -> tuple[Any, Any, str | None]:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(**_EAGER)  # defaults are GPT-2 small's shape
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(cfg)
    torch.random.set_rng_state(state)
    return hf, gpt2_tokenizer(), None


@cache
def _folder_shape(name: str) -> ModelShape | None:
    """A zoo folder's shape from its config.json through its family's adapter (no weights, no
    transformers import: the file is a complete save_pretrained config)."""
    path = ZOO_DIR / name / "config.json"
    if not path.exists():
        return None
    try:
        cfg = SimpleNamespace(**json.loads(path.read_text()))
        return arch.adapter_for(cfg, where=str(path)).shape
    except (ValueError, TypeError, AttributeError) as e:
        raise ModelNotAvailableError(
            f"{path} does not describe a model ({type(e).__name__}: {e})",
            fix=f"reinstall circuitsteer, or retrain it: python -m circuitsteer.zoo.train {name}",
        ) from None


def _zoo_folder(name: str) -> Callable[[], tuple[Any, Any, str | None]]:
    def build() -> tuple[Any, Any, str | None]:
        path = ZOO_DIR / name
        if not (path / "model.safetensors").exists():
            raise ModelNotAvailableError(
                f"zoo model {name!r} has no weights at {path}",
                fix=f"reinstall circuitsteer, or retrain it: python -m circuitsteer.zoo.train {name}",
            )
        hf, tok = _load_local(path)
        return hf, tok, str(path)

    return build


register_zoo(
    "gpt2-small-shape",
    "GPT-2 small's architecture with seeded random weights (seed 0) and "
    "GPT-2's tokenizer (bundled)",
    _gpt2_small_shape,
    shape=lambda: GPT2_SMALL,
)
for _name in sorted({"toy-ioi", *(d.parent.name for d in ZOO_DIR.glob("*/config.json"))}):
    register_zoo(
        _name,
        f"bundled trained model {_name} (see its card.json)",
        _zoo_folder(_name),
        shape=lambda name=_name: _folder_shape(name),
    )
