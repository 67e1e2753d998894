"""The zoo's word-level tokenizer: one token per word, punctuation mark or two-digit number.

The vocabulary is every word the task generators (:mod:`circuitsteer.tasks`) can produce, so
every task prompt tokenizes without unknown words; names are one token each (as in GPT-2 with a
leading space). Years split into two-digit tokens ("1732" -> "17", "32"), like GPT-2 does for
most years. ``<|endoftext|>`` is BOS, EOS and padding; ``<unk>`` marks unknown words.

Example:
    >>> tok = toy_tokenizer()
    >>> tok.convert_ids_to_tokens(tok.encode("Then, Mary gave 1732", add_special_tokens=False))
    ['Then', ',', 'Mary', 'gave', '17', '32']
"""

from __future__ import annotations

import importlib
import re
from functools import lru_cache
from typing import Any

SPECIALS = ("<|endoftext|>", "<unk>")


def _pre_tokenizer() -> Any:
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Split(Regex(r"\d\d"), behavior="isolated")]
    )


def task_texts() -> list[str]:
    """Every template and word list of the tasks, as text (slot markers removed)."""
    # the package re-exports the generator functions under the module names, so go by path
    ioi, greater_than, sentiment, neutral = (
        importlib.import_module(f"circuitsteer.tasks.{m}")
        for m in ("ioi", "greater_than", "sentiment", "neutral")
    )
    texts: list[str] = []
    texts += list(ioi.TEMPLATES) + list(ioi.NAMES) + list(ioi.PLACES) + list(ioi.OBJECTS)
    texts += ["The lasted from the year to the year", *greater_than.NOUNS]
    texts += [f"{y:02d}" for y in range(100)]
    texts += list(sentiment.TEMPLATES) + list(sentiment.THINGS)
    for pairs in (sentiment.VERBS, sentiment.ADJECTIVES, sentiment.CONTRAST_WORDS):
        texts += [w for p in pairs for w in p]
    for words in (neutral.SUBJECTS, neutral.VERBS, neutral.OBJECTS, neutral.TIMES, neutral.FILLERS):
        texts += list(words)
    return [re.sub(r"\[\w+\]", " ", t) for t in texts]


def build_tokenizer(texts: list[str]) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` over the words of ``texts`` (sorted, deterministic)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    pre = _pre_tokenizer()
    words = sorted({w for t in texts for w, _ in pre.pre_tokenize_str(t)} - set(SPECIALS))
    vocab = {w: i for i, w in enumerate([*SPECIALS, *words])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        pad_token="<|endoftext|>", unk_token="<unk>", model_max_length=64,
    )  # fmt: skip


@lru_cache(maxsize=1)
def toy_tokenizer() -> Any:
    """The tokenizer the zoo's toy models use (built from :func:`task_texts`)."""
    return build_tokenizer(task_texts())
