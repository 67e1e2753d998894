"""IOI variants that separate *repetition* from *slot* and *recency*: the behavioural probe set.

In the 15 standard templates the repeated name, the subject slot of the second clause (S2) and
the last name before END coincide, so a model that finds S by its slot scores as well as one
that finds it by repetition. These variants pull the cues apart:

* ``prefix``: a sentence before the template that mentions a name: ``"fresh"`` (a third name:
  harmless context), ``"S"`` (the subject, now mentioned three times) or ``"IO"`` (IO and S
  each mentioned twice: equalised counts).
* ``s2``: what fills the S2 slot: ``"S"`` (standard) or ``"fresh"`` (a third name, so nothing
  in the first clause repeats unless the prefix repeats it).
* ``templates``: indices into :data:`ALL_TEMPLATES`: the 15 standard ones (0-14),
  :data:`TRAIN_EXTRA` (15-19: varied second clauses the zoo trains on) and :data:`HELDOUT`
  (20-22: S2 is not the grammatical subject; never trained on).

The answer is always the first-clause name that is not S (``correct`` = IO, ``incorrect`` = S).
With ``s2="fresh"`` and no repeated prefix, nothing tells IO from S: the roles follow the
template's slots and a repetition-based model should be indifferent (logit difference ~0).
Positions: IO, S1, S1+1, S2 (the slot, whatever fills it), END, and P (the prefix name).

Example:
    >>> from circuitsteer.zoo.tokenizer import toy_tokenizer
    >>> t = ioi_variant(toy_tokenizer(), n=2, seed=0, prefix="S", s2="fresh", order="BABA")
    >>> sorted(t.positions)
    ['END', 'IO', 'P', 'S1', 'S1+1', 'S2']
    >>> bool((t.clean[0, t.positions["P"][0]] == t.incorrect[0]).item())
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from circuitsteer.errors import TaskError
from circuitsteer.tasks.base import Segment, Task, build_task, check_n, resolve, rng_for
from circuitsteer.tasks.base import single_tokens as _single_tokens
from circuitsteer.tasks.ioi import (
    NAMES,
    OBJECTS,
    PLACES,
    TEMPLATES,
    _orders,
    _pairs,
    _parse,
    _segments,
    _with_s1_plus_1,
)

TRAIN_EXTRA: tuple[str, ...] = (
    "Then, [B] and [A] went to the [PLACE]. The man said that [B] gave a [OBJECT] to [A]",
    "After [B] and [A] had dinner at the [PLACE], the woman told [B] to give a [OBJECT] to [A]",
    "[B] and [A] went to the [PLACE] on Monday. Then [B] gave a [OBJECT] to [A]",
    "[B] visited [A] at the [PLACE]. Then [B] gave a [OBJECT] to [A]",
    "[B] and [A] found a [OBJECT]. It was at the [PLACE], so [B] gave it to [A]",
)
HELDOUT: tuple[str, ...] = (
    "Then, [B] and [A] went to the [PLACE]. The teacher told [B] to give a [OBJECT] to [A]",
    "When [B] and [A] were at the [PLACE], the doctor told [B] to give it to [A]",
    "Then, [B] and [A] were working at the [PLACE]. Everyone said that [B] gave a [OBJECT] to [A]",
)
ALL_TEMPLATES: tuple[str, ...] = TEMPLATES + TRAIN_EXTRA + HELDOUT
STANDARD = tuple(range(len(TEMPLATES)))
TRAIN_TEMPLATES = tuple(range(len(TEMPLATES) + len(TRAIN_EXTRA)))
HELDOUT_TEMPLATES = tuple(range(len(TRAIN_TEMPLATES), len(ALL_TEMPLATES)))

# one-name sentences before the template (every word is in the zoo's vocabulary)
PREFIXES: tuple[str, ...] = (
    "[P] went to the [PLACE2].",
    "[P] was happy.",
    "[P] found a [OBJECT2].",
    "[P] visited the [PLACE2] yesterday.",
    "Everyone loved [P].",
    "In the morning, [P] opened the door.",
    "[P] read about the war.",
    "The teacher told [P] a story.",
)
PREFIX_KINDS = (None, "fresh", "S", "IO")
S2_KINDS = ("S", "fresh")


def _prefix_segments(text: str, name: str, place: str, obj: str) -> list[Segment]:
    before, _, after = text.partition("[P]")
    after = after.replace("[PLACE2]", place).replace("[OBJECT2]", obj)
    segs: list[Segment] = []
    lead = " " if before.endswith(" ") else ""
    if before.strip():
        segs.append((before[: len(before) - len(lead)], None))
    segs.append((lead + name, "P"))
    segs.append((after, None))
    return segs


def _after_prefix(prefix: list[Segment], segs: list[Segment]) -> list[Segment]:
    """Join a prefix sentence and the template: the space goes before the template's first
    word (GPT-2's pre-tokens carry their leading space)."""
    (text, slot), rest = segs[0], segs[1:]
    return prefix + [(" " + text, slot), *rest]


def ioi_variant(
    model_or_tokenizer: Any,
    n: int = 100,
    seed: int = 0,
    prefix: str | None = None,
    s2: str = "S",
    order: str = "mixed",
    templates: Sequence[int] | None = None,
    split: str | None = None,
    names: Sequence[str] | None = None,
) -> Task:
    """IOI prompts with an optional name-bearing prefix and a chosen S2 filler (see module doc).

    ``corrupted`` is the ABC twin: every name (prefix too) replaced by a fresh distinct one.
    ``meta`` columns: template, order, io, s, s2_name, p_name, prefix, s2, split.
    """
    check_n(n, "ioi_variant")
    if prefix not in PREFIX_KINDS:
        raise TaskError(
            f"ioi_variant: unknown prefix {prefix!r}", fix="use None, 'fresh', 'S' or 'IO'"
        )
    if s2 not in S2_KINDS:
        raise TaskError(f"ioi_variant: unknown s2 {s2!r}", fix="use 'S' or 'fresh'")
    idx = list(templates) if templates is not None else list(STANDARD)
    bad = [
        t
        for t in idx
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < len(ALL_TEMPLATES)
    ]
    if not idx or bad:
        raise TaskError(
            f"ioi_variant: bad template indices {bad or idx}",
            fix=f"pass indices 0..{len(ALL_TEMPLATES) - 1} (see ALL_TEMPLATES)",
        )
    tok = resolve(model_or_tokenizer)
    rng = rng_for(seed)
    name_ids = _single_tokens(tok, list(names) if names is not None else NAMES)
    pool = list(name_ids)
    if len(pool) < 7:
        raise TaskError(
            f"ioi_variant: only {len(pool)} usable single-token names (need 7)",
            fix="pass names=[...] that this tokenizer encodes as one token each",
        )
    pairs = _pairs(pool, split)
    parsed = {t: _parse(ALL_TEMPLATES[t]) for t in set(idx)}
    orders = _orders(order, n, rng)
    clean, corrupted, correct, incorrect, rows = [], [], [], [], []
    for i in range(n):
        ti = idx[rng.randrange(len(idx))]
        io, s = pairs[rng.randrange(len(pairs))]
        if rng.random() < 0.5:
            io, s = s, io
        place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
        fresh = rng.sample([x for x in pool if x not in (io, s)], 5)
        first = ("IO", "S1") if orders[i] == "ABBA" else ("S1", "IO")
        s2_name = s if s2 == "S" else fresh[0]
        fill = {"IO": io, "S1": s, "S2": s2_name, "PLACE": place, "OBJECT": obj}
        cfill = {**fill, first[0]: fresh[2], first[1]: fresh[3], "S2": fresh[4]}
        segs = _segments(parsed[ti], fill, first)
        csegs = _segments(parsed[ti], cfill, first)
        p_name = {None: None, "fresh": fresh[1], "S": s, "IO": io}[prefix]
        if p_name is not None:
            ptext = rng.choice(PREFIXES)
            pplace, pobj = rng.choice(PLACES), rng.choice(OBJECTS)
            segs = _after_prefix(_prefix_segments(ptext, p_name, pplace, pobj), segs)
            csegs = _after_prefix(_prefix_segments(ptext, fresh[1], pplace, pobj), csegs)
        clean.append(_with_s1_plus_1(_lead_space(segs)))
        corrupted.append(_with_s1_plus_1(_lead_space(csegs)))
        correct.append(name_ids[io])
        incorrect.append(name_ids[s])
        rows.append({
            "template": ti, "order": orders[i], "io": io, "s": s, "s2_name": s2_name,
            "p_name": p_name, "prefix": prefix, "s2": s2, "split": _split_of(io, s),
        })  # fmt: skip
    slots = ["IO", "S1", "S1+1", "S2"] + (["P"] if prefix is not None else [])
    return build_task(
        tok, "ioi", clean, corrupted, correct, incorrect, pd.DataFrame(rows), slots=slots,
        extra={"corruption": "ABC", "order": order, "prefix": prefix, "s2": s2},
    )  # fmt: skip


def _lead_space(segs: list[Segment]) -> list[Segment]:
    """A prompt that starts with a name gets a leading space: GPT-2's names are one token only
    with their space (a word-level tokenizer ignores it)."""
    text, slot = segs[0]
    if slot is not None and not text.startswith(" "):
        return [(" " + text, slot), *segs[1:]]
    return segs


def _split_of(a: str, b: str) -> str:
    from circuitsteer.tasks.ioi import pair_split

    return pair_split(a, b)


# name -> (prefix, s2, templates): the probe set; gates compare these (docs/zoo.md)
PROBES: dict[str, tuple[str | None, str, tuple[int, ...]]] = {
    "standard": (None, "S", STANDARD),
    "prefix_fresh": ("fresh", "S", STANDARD),
    "prefix_S": ("S", "S", STANDARD),
    "prefix_IO": ("IO", "S", STANDARD),  # equalised counts: IO and S twice each
    "s2_fresh": (None, "fresh", STANDARD),  # no repeat at all
    "prefix_S_s2_fresh": ("S", "fresh", STANDARD),  # repeated name outside the S2 slot
    "prefix_fresh_s2_fresh": ("fresh", "fresh", STANDARD),  # its control
    "heldout_templates": (None, "S", HELDOUT_TEMPLATES),  # S2 not the grammatical subject
}


def ioi_probes(
    model_or_tokenizer: Any, n: int = 200, seed: int = 0, split: str | None = "heldout",
    order: str = "mixed", probes: Sequence[str] | None = None,
) -> dict[str, Task]:  # fmt: skip
    """The behavioural probe set: probe name -> Task (see :data:`PROBES`).

    >>> from circuitsteer.zoo.tokenizer import toy_tokenizer
    >>> sorted(ioi_probes(toy_tokenizer(), n=2, probes=["standard", "s2_fresh"]))
    ['s2_fresh', 'standard']
    """
    chosen = list(probes) if probes is not None else list(PROBES)
    unknown = [p for p in chosen if p not in PROBES]
    if unknown:
        raise TaskError(f"ioi_probes: unknown probes {unknown}", fix=f"use some of {list(PROBES)}")
    out: dict[str, Task] = {}
    for k, name in enumerate(chosen):
        prefix, s2, tmpl = PROBES[name]
        out[name] = ioi_variant(
            model_or_tokenizer, n=n, seed=seed + 7 * k, prefix=prefix, s2=s2, order=order,
            templates=tmpl, split=split,
        )  # fmt: skip
    return out
