"""The :class:`Task` container and the tokenization helpers every task generator shares.

A task is a batch of prompts with everything a metric or an intervention needs: clean and
corrupted tokens of identical shape, the answer token ids, and per-example indices of named
positions. Rows are right-padded, so under causal attention padding never influences a real
position, and ``positions["END"]`` is where the next-token prediction is scored.

Example:
    >>> from circuitsteer.tasks import ioi
    >>> from circuitsteer.zoo.tokenizer import toy_tokenizer
    >>> task = ioi(toy_tokenizer(), n=4, seed=0)
    >>> len(task), task.clean.shape == task.corrupted.shape
    (4, True)
    >>> sorted(task.positions)
    ['END', 'IO', 'S1', 'S1+1', 'S2']
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd
import torch

from circuitsteer.errors import PositionError, TaskError

# A prompt is a list of text segments; a segment may carry a slot name (its first token's index
# becomes a named position). Segments must split the text at pre-token boundaries (before a
# space or punctuation) so that tokenizing them one by one equals tokenizing the whole text.
Segment = tuple[str, str | None]


@dataclass(frozen=True, eq=False)
class Task:
    """A batch of prompts with clean/corrupted tokens, answers and named positions.

    Fields (``batch`` examples, ``pos`` padded length):
        name: task name ("ioi", "greater-than", "sentiment", "neutral", ...).
        clean, corrupted: LongTensor ``[batch, pos]``, BOS first, right-padded with ``pad_id``.
        positions: name -> LongTensor ``[batch]``; the same for clean and corrupted.
            Every task defines ``"END"`` (the position whose next-token prediction is scored).
        correct, incorrect: LongTensor ``[batch]`` answer token ids (e.g. IO and S).
        lengths: LongTensor ``[batch]`` real (unpadded) lengths.
        prompts, corrupted_prompts: the texts (without BOS).
        meta: one row per example (template, order, names, ...).
        candidates, correct_mask: optional answer sets (greater-than: the year tokens "00".."99"
            and ``correct_mask[i, j]`` = candidate j is a correct continuation of example i).
        pad_id: the id used for padding.

    >>> from circuitsteer.tasks import greater_than
    >>> from circuitsteer.zoo.tokenizer import toy_tokenizer
    >>> t = greater_than(toy_tokenizer(), n=3, seed=1)
    >>> t.candidates.shape, t.correct_mask.shape
    (torch.Size([100]), torch.Size([3, 100]))
    >>> len(t.subset([0, 2]))
    2
    """

    name: str
    clean: torch.Tensor
    corrupted: torch.Tensor
    positions: dict[str, torch.Tensor]
    correct: torch.Tensor
    incorrect: torch.Tensor
    lengths: torch.Tensor
    prompts: list[str]
    corrupted_prompts: list[str]
    meta: pd.DataFrame
    candidates: torch.Tensor | None = None
    correct_mask: torch.Tensor | None = None
    pad_id: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        b = self.clean.shape[0]
        if self.clean.shape != self.corrupted.shape:
            raise TaskError(
                f"{self.name}: clean {tuple(self.clean.shape)} and corrupted "
                f"{tuple(self.corrupted.shape)} token shapes differ",
                fix="build clean and corrupted prompts that tokenize to the same length",
            )
        if "END" not in self.positions:
            raise TaskError(f"{self.name}: no 'END' position", fix="every task must define END")
        sizes = {
            "correct": self.correct.shape[0],
            "incorrect": self.incorrect.shape[0],
            "lengths": self.lengths.shape[0],
            "prompts": len(self.prompts),
            "meta": len(self.meta),
            **{f"positions[{k!r}]": v.shape[0] for k, v in self.positions.items()},
        }
        bad = {k: s for k, s in sizes.items() if s != b}
        if bad:
            raise TaskError(f"{self.name}: batch {b} but {bad}", fix="give one entry per example")

    def __len__(self) -> int:
        return self.clean.shape[0]

    @property
    def position_names(self) -> list[str]:
        return list(self.positions)

    def position(self, name: str) -> torch.Tensor:
        """Index of the named position per example; :class:`PositionError` if undefined."""
        if name not in self.positions:
            raise PositionError(
                f"task {self.name!r} has no position {name!r}",
                fix=f"use one of {', '.join(self.positions)}",
            )
        return self.positions[name]

    def real_mask(self) -> torch.Tensor:
        """BoolTensor ``[batch, pos]``: True on real (non-padding) tokens."""
        return length_mask(self.lengths, self.clean.shape[1])

    def subset(self, idx: Sequence[int] | torch.Tensor | slice) -> Task:
        """The examples at ``idx`` (a list, tensor, boolean mask or slice), trimmed of extra padding."""
        if isinstance(idx, slice):
            idx = torch.arange(len(self))[idx]
        ix = torch.as_tensor(idx)
        if ix.dtype == torch.bool:
            ix = ix.nonzero().flatten()
        ix = ix.long()
        if len(ix) == 0:
            raise TaskError(f"{self.name}: empty subset", fix="select at least one example")
        width = int(self.lengths[ix].max())
        rows = ix.tolist()
        return replace(
            self,
            clean=self.clean[ix, :width],
            corrupted=self.corrupted[ix, :width],
            positions={k: v[ix] for k, v in self.positions.items()},
            correct=self.correct[ix],
            incorrect=self.incorrect[ix],
            lengths=self.lengths[ix],
            prompts=[self.prompts[i] for i in rows],
            corrupted_prompts=[self.corrupted_prompts[i] for i in rows],
            meta=self.meta.iloc[rows].reset_index(drop=True),
            correct_mask=None if self.correct_mask is None else self.correct_mask[ix],
        )

    def to(self, device: str | torch.device) -> Task:
        """The same task with every tensor on ``device``."""
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(
            self,
            clean=self.clean.to(device),
            corrupted=self.corrupted.to(device),
            positions={k: v.to(device) for k, v in self.positions.items()},
            correct=self.correct.to(device),
            incorrect=self.incorrect.to(device),
            lengths=self.lengths.to(device),
            candidates=mv(self.candidates),
            correct_mask=mv(self.correct_mask),
        )

    def __repr__(self) -> str:
        return (
            f"Task({self.name!r}, n={len(self)}, pos={self.clean.shape[1]}, "
            f"positions={self.position_names})"
        )


def length_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """BoolTensor ``[batch, width]``, True where position < length.

    >>> length_mask(torch.tensor([1, 3]), 3).tolist()
    [[True, False, False], [True, True, True]]
    """
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


# ---------------------------------------------------------------------------------------------
# tokenizer helpers


@dataclass(frozen=True)
class Tok:
    """A tokenizer with the ids a task needs (BOS, pad, unk) resolved once."""

    tokenizer: Any
    bos_id: int
    pad_id: int
    unk_id: int | None

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def single(self, text: str) -> int | None:
        """The id if ``text`` is exactly one known token, else None."""
        ids = self.encode(text)
        if len(ids) != 1 or ids[0] == self.unk_id:
            return None
        return ids[0]


def resolve(model_or_tokenizer: Any) -> Tok:
    """Accept a :class:`circuitsteer.Model` (uses its tokenizer and BOS) or a HF tokenizer."""
    tk = getattr(model_or_tokenizer, "tokenizer", None)
    if tk is not None and hasattr(model_or_tokenizer, "bos_token_id"):
        bos = int(model_or_tokenizer.bos_token_id)
    elif hasattr(model_or_tokenizer, "encode"):
        tk = model_or_tokenizer
        bos_raw = tk.bos_token_id if tk.bos_token_id is not None else tk.eos_token_id
        if bos_raw is None:
            raise TaskError(
                "the tokenizer has neither a BOS nor an EOS token",
                fix="set tokenizer.bos_token (e.g. '<|endoftext|>') before building tasks",
            )
        bos = int(bos_raw)
    else:
        raise TaskError(
            f"expected a circuitsteer Model or a tokenizer, got {type(model_or_tokenizer).__name__}",
            fix="pass cs.load_model(...) or a transformers tokenizer",
        )
    pad = tk.pad_token_id if tk.pad_token_id is not None else tk.eos_token_id
    unk = tk.unk_token_id
    # GPT-2's unk is <|endoftext|>, a real token; only a distinct unk marks unknown words
    unk_id = None if unk is None or unk == bos else int(unk)
    return Tok(tk, bos, int(pad if pad is not None else bos), unk_id)


def check_n(n: int, what: str) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise TaskError(f"{what}: n must be a positive int, got {n!r}", fix="pass n >= 1")


def single_tokens(tok: Tok, words: Sequence[str], prefix: str = " ") -> dict[str, int]:
    """The words (with ``prefix``) that are one known token, with their ids; order kept."""
    out: dict[str, int] = {}
    for w in words:
        tid = tok.single(prefix + w)
        if tid is not None and tid not in out.values():
            out[w] = tid
    return out


def encode_segments(tok: Tok, segments: Sequence[Segment]) -> tuple[list[int], dict[str, int]]:
    """Tokens (BOS first) and the index of each slot's first token."""
    ids = [tok.bos_id]
    slots: dict[str, int] = {}
    for text, slot in segments:
        if slot is not None:
            slots[slot] = len(ids)
        ids.extend(tok.encode(text))
    return ids, slots


def text_of(segments: Sequence[Segment]) -> str:
    return "".join(t for t, _ in segments)


def build_task(
    tok: Tok,
    name: str,
    clean: Sequence[Sequence[Segment]],
    corrupted: Sequence[Sequence[Segment]],
    correct: Sequence[int],
    incorrect: Sequence[int],
    meta: pd.DataFrame,
    slots: Sequence[str],
    candidates: torch.Tensor | None = None,
    correct_mask: torch.Tensor | None = None,
    extra: dict[str, Any] | None = None,
) -> Task:
    """Tokenize segment lists into a right-padded :class:`Task`; END is each prompt's last token.

    Checks that clean and corrupted prompts have the same length and the same slot indices.
    """
    rows, crows, pos = [], [], {s: [] for s in slots}
    for i, (c, k) in enumerate(zip(clean, corrupted, strict=True)):
        ids, at = encode_segments(tok, c)
        cids, cat = encode_segments(tok, k)
        if len(ids) != len(cids) or at != cat:
            raise TaskError(
                f"{name}: example {i}: clean {text_of(c)!r} ({len(ids)} tokens) and corrupted "
                f"{text_of(k)!r} ({len(cids)} tokens) do not align",
                fix="use words that are single tokens for this tokenizer (the generators filter "
                "names; pass a names/nouns list whose words are one token each)",
            )
        for s in slots:
            pos[s].append(at[s])
        rows.append(ids)
        crows.append(cids)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    width = int(lengths.max())
    clean_t = torch.full((len(rows), width), tok.pad_id, dtype=torch.long)
    corr_t = clean_t.clone()
    for i, (r, c) in enumerate(zip(rows, crows, strict=True)):
        clean_t[i, : len(r)] = torch.tensor(r)
        corr_t[i, : len(c)] = torch.tensor(c)
    positions = {s: torch.tensor(v, dtype=torch.long) for s, v in pos.items()}
    positions["END"] = lengths - 1
    return Task(
        name=name,
        clean=clean_t,
        corrupted=corr_t,
        positions=positions,
        correct=torch.tensor(list(correct), dtype=torch.long),
        incorrect=torch.tensor(list(incorrect), dtype=torch.long),
        lengths=lengths,
        prompts=[text_of(c) for c in clean],
        corrupted_prompts=[text_of(k) for k in corrupted],
        meta=meta.reset_index(drop=True),
        candidates=candidates,
        correct_mask=correct_mask,
        pad_id=tok.pad_id,
        extra=extra or {},
    )


def rng_for(seed: int) -> random.Random:
    """A seeded, platform-independent RNG (Python's Mersenne Twister)."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TaskError(f"seed must be an int, got {seed!r}", fix="pass an integer seed")
    return random.Random(seed)
