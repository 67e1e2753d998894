"""Tokenizers that load offline: GPT-2's BPE (the package's own copy of its files) and a
byte-level tokenizer for random test models.

Example:
    >>> tok = byte_tokenizer()  # byte-level alphabet order, not byte values
    >>> tok.encode("hi"), tok.eos_token_id
    ([71, 72], 256)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from circuitsteer.errors import ModelNotAvailableError

# GPT-2's BPE files (encoder.json/vocab.bpe of OpenAI's GPT-2 release, MIT, see LICENSE there)
# ship inside the package, so the tokenizer loads offline wherever circuitsteer is installed
GPT2_TOKENIZER_DIR = Path(__file__).resolve().parent / "assets" / "gpt2-tokenizer"


def _find_gpt2_tokenizer_dir() -> Path | None:
    candidates = [os.environ.get("CIRCUITSTEER_GPT2_TOKENIZER"), str(GPT2_TOKENIZER_DIR)]
    for c in candidates:
        if c and (Path(c) / "encoder.json").exists() and (Path(c) / "vocab.bpe").exists():
            return Path(c)
    return None


def gpt2_tokenizer(required: bool = False) -> Any:
    """GPT-2's BPE tokenizer: the package's copy (or $CIRCUITSTEER_GPT2_TOKENIZER).

    Without those files: a byte-level fallback (ids 0..255 + ``<|endoftext|>``) unless ``required``.
    """
    from tokenizers import Tokenizer, models

    d = _find_gpt2_tokenizer_dir()
    if d is None:
        if required:
            raise ModelNotAvailableError(
                "GPT-2 tokenizer files (encoder.json, vocab.bpe) not found",
                fix="reinstall circuitsteer (it ships them in circuitsteer/assets/gpt2-tokenizer) or set CIRCUITSTEER_GPT2_TOKENIZER to their folder",
            )
        return byte_tokenizer()
    tk = Tokenizer(models.BPE.from_file(str(d / "encoder.json"), str(d / "vocab.bpe")))
    return _byte_level_fast(tk)


def _byte_level_fast(tk: Any) -> Any:
    """Wrap a BPE ``tokenizers.Tokenizer`` GPT-2 style: byte-level pre-tokenizer and decoder,
    ``<|endoftext|>`` as BOS, EOS, pad and unk."""
    from tokenizers import decoders, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )


def byte_tokenizer() -> Any:
    """A byte-level tokenizer (256 byte tokens + ``<|endoftext|>`` as 256) for random test models."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<|endoftext|>"] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    return _byte_level_fast(tk)
