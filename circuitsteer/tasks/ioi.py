"""Indirect object identification (Wang et al. 2022, "Interpretability in the Wild").

"Then, Mary and John went to the store. John gave a ring to" -> " Mary". The indirect object
(IO) is the first-clause name that is *not* repeated; the subject (S) appears twice (S1, S2).

* 15 templates (Wang et al.'s BABA templates; ABBA swaps the two first-clause names).
* ``order``: "BABA" (S first), "ABBA" (IO first) or "mixed" (half each, shuffled).
* corrupted prompts (``corruption``): "ABC" (Wang et al.: the same template and place/object
  with three fresh distinct names, none of them IO or S) or "S2" (only the repeated name is
  replaced by a fresh one, so nothing is repeated: "Then, Mary and John ... Alice gave a ring to";
  a model that uses repetition is indifferent there).
* named positions: IO, S1, S1+1, S2 (first token of each) and END (the last prompt token).
* ``split``: name *pairs* are split deterministically (stable hash of the unordered pair) into
  "train" (~90%) and "heldout" (~10%), so a model can be measured on pairs it never saw.

With GPT-2's tokenizer only names that are one token with a leading space are used.

Example:
    >>> from circuitsteer.zoo.tokenizer import toy_tokenizer
    >>> t = ioi(toy_tokenizer(), n=2, seed=0, templates=[0], order="BABA")
    >>> t.prompts[0].startswith("Then, ")
    True
    >>> bool((t.clean[0, t.positions["IO"][0]] == t.correct[0]).item())
    True
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

import pandas as pd

from circuitsteer.errors import TaskError
from circuitsteer.tasks.base import (
    Segment,
    Task,
    build_task,
    check_n,
    resolve,
    rng_for,
    single_tokens,
)

TEMPLATES: tuple[str, ...] = (
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to [A]",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument, and afterwards [B] said to [A]",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to [A]",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to [A]",
    "While [B] and [A] were commuting to the [PLACE], [B] gave a [OBJECT] to [A]",
    "After the lunch, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Afterwards, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument. Afterwards [B] said to [A]",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to [A]",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to [A]",
)

NAMES: tuple[str, ...] = (
    "Michael", "Christopher", "Jessica", "Matthew", "Ashley", "Jennifer", "Joshua", "Amanda",
    "Daniel", "David", "James", "Robert", "John", "Joseph", "Andrew", "Ryan", "Brandon", "Jason",
    "Justin", "Sarah", "William", "Jonathan", "Stephanie", "Brian", "Nicole", "Nicholas",
    "Anthony", "Heather", "Eric", "Elizabeth", "Adam", "Megan", "Melissa", "Kevin", "Steven",
    "Thomas", "Timothy", "Christina", "Kyle", "Rachel", "Laura", "Lauren", "Amber", "Brittany",
    "Danielle", "Richard", "Kimberly", "Jeffrey", "Amy", "Crystal", "Michelle", "Tiffany",
    "Jeremy", "Benjamin", "Mark", "Emily", "Aaron", "Charles", "Rebecca", "Jacob", "Stephen",
    "Patrick", "Sean", "Erin", "Jamie", "Kelly", "Samantha", "Nathan", "Sara", "Dustin", "Paul",
    "Angela", "Tyler", "Scott", "Katherine", "Andrea", "Gregory", "Erica", "Mary", "Travis",
    "Lisa", "Kenneth", "Bryan", "Lindsey", "Kristen", "Jose", "Alexander", "Jesse", "Katie",
    "Lindsay", "Shannon", "Vanessa", "Courtney", "Christine", "Alicia", "Cody", "Allison",
    "Bradley", "Samuel", "George", "Alice", "Peter", "Anna", "Henry", "Grace", "Jack",
)  # fmt: skip

PLACES: tuple[str, ...] = (
    "store", "garden", "restaurant", "school", "hospital", "office", "house", "station",
)  # fmt: skip
OBJECTS: tuple[str, ...] = (
    "ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack",
)  # fmt: skip

ORDERS = ("ABBA", "BABA", "mixed")
CORRUPTIONS = ("ABC", "S2")
SPLITS = ("train", "heldout")
HELDOUT_FRACTION = 0.1
_SLOT = re.compile(r"\[(A|B|PLACE|OBJECT)\]")


def pair_split(a: str, b: str) -> str:
    """'heldout' for ~10% of unordered name pairs (stable across runs and platforms), else 'train'.

    >>> pair_split("Mary", "John") == pair_split("John", "Mary")
    True
    """
    key = "|".join(sorted((a, b))).encode()
    h = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64
    return "heldout" if h < HELDOUT_FRACTION else "train"


def _parse(template: str) -> list[tuple[str, str | None]]:
    """Split a template into literal text and slot names; the final ' [A]' (the answer) is dropped."""
    t = template.rstrip()
    if not t.endswith(" [A]"):
        raise TaskError(
            f"IOI template {template!r} must end with ' [A]' (the answer)",
            fix="write templates like 'Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]'",
        )
    t = t[: -len(" [A]")]
    parts: list[tuple[str, str | None]] = []
    last = 0
    for m in _SLOT.finditer(t):
        parts.append((t[last : m.start()], None))
        parts.append(("", m.group(1)))
        last = m.end()
    parts.append((t[last:], None))
    names = [s for _, s in parts if s in ("A", "B")]
    if names != ["B", "A", "B"]:
        raise TaskError(
            f"IOI template {template!r} has name slots {names} before the answer",
            fix="use the BABA form: '[B] and [A] ... [B] ... [A]' (ABBA is derived by swapping)",
        )
    return parts


def _segments(
    parts: list[tuple[str, str | None]], fill: dict[str, str], first: tuple[str, str]
) -> list[Segment]:
    """Fill a parsed template. ``first`` names the two first-clause slots' roles (IO/S order).

    Each slot's fill takes the space before it (pre-token boundary); names get slot labels.
    """
    segs: list[Segment] = []
    pending = ""
    name_i = 0
    roles = [first[0], first[1], "S2"]  # roles of the three name slots, in text order
    for text, slot in parts:
        if slot is None:
            pending += text
            continue
        lead = " " if pending.endswith(" ") else ""
        if pending[: len(pending) - len(lead)]:
            segs.append((pending[: len(pending) - len(lead)], None))
        pending = ""
        if slot in ("A", "B"):
            role = roles[name_i]
            name_i += 1
            segs.append((lead + fill[role], role))
        else:
            segs.append((lead + fill[slot], None))
    if pending:
        segs.append((pending, None))
    return segs


def ioi(
    model_or_tokenizer: Any,
    n: int = 100,
    seed: int = 0,
    order: str = "mixed",
    templates: Sequence[int | str] | None = None,
    names: Sequence[str] | None = None,
    places: Sequence[str] | None = None,
    objects: Sequence[str] | None = None,
    corruption: str = "ABC",
    split: str | None = None,
) -> Task:
    """IOI prompts with ABC-corrupted twins; correct = IO token, incorrect = S token.

    Args:
        model_or_tokenizer: a circuitsteer Model or a HF tokenizer.
        n: number of examples. seed: RNG seed (same seed, same task).
        order: "ABBA", "BABA" or "mixed". templates: indices into :data:`TEMPLATES` or template
            strings (BABA form ending in " [A]"); default all 15.
        names, places, objects: word lists (default Wang et al.'s); names must be one token with a
            leading space (others are dropped).
        corruption: "ABC" (three fresh names) or "S2" (only the repeated name replaced).
        split: None (all name pairs), "train" or "heldout" (see :func:`pair_split`).

    Returns a :class:`Task` with positions IO, S1, S1+1, S2, END; ``meta`` columns template,
    order, io, s, place, object, c_first, c_second, c_s2 (the corrupted names), split.

    >>> from circuitsteer.zoo.tokenizer import toy_tokenizer
    >>> t = ioi(toy_tokenizer(), n=3, seed=1, order="ABBA")
    >>> t.meta["order"].tolist()
    ['ABBA', 'ABBA', 'ABBA']
    """
    check_n(n, "ioi")
    if order not in ORDERS:
        raise TaskError(f"ioi: unknown order {order!r}", fix=f"use one of {', '.join(ORDERS)}")
    if corruption not in CORRUPTIONS:
        raise TaskError(
            f"ioi: unknown corruption {corruption!r}", fix=f"use one of {', '.join(CORRUPTIONS)}"
        )
    if split is not None and split not in SPLITS:
        raise TaskError(f"ioi: unknown split {split!r}", fix="use None, 'train' or 'heldout'")
    tok = resolve(model_or_tokenizer)
    rng = rng_for(seed)
    tmpl = _templates(templates)
    parsed = [_parse(t) for t in tmpl]
    name_ids = single_tokens(tok, list(names) if names is not None else NAMES)
    min_names = 5  # IO, S and three distinct corrupting names
    if len(name_ids) < min_names:
        raise TaskError(
            f"ioi: only {len(name_ids)} of the names are a single token with a leading space for "
            f"this tokenizer (need {min_names})",
            fix="pass names=[...] that this tokenizer encodes as one token each (' Mary' -> 1 token)",
        )
    pool = list(name_ids)
    places_l = _words(places, PLACES, "places")
    objects_l = _words(objects, OBJECTS, "objects")
    pairs = _pairs(pool, split)

    orders = _orders(order, n, rng)
    clean, corrupted, correct, incorrect, rows = [], [], [], [], []
    for i in range(n):
        ti = rng.randrange(len(tmpl))
        io, s = pairs[rng.randrange(len(pairs))]
        if rng.random() < 0.5:
            io, s = s, io
        place, obj = rng.choice(places_l), rng.choice(objects_l)
        fresh = rng.sample([x for x in pool if x not in (io, s)], 3)
        first = ("IO", "S1") if orders[i] == "ABBA" else ("S1", "IO")
        fill = {"IO": io, "S1": s, "S2": s, "PLACE": place, "OBJECT": obj}
        if corruption == "ABC":
            cfill = {**fill, first[0]: fresh[0], first[1]: fresh[1], "S2": fresh[2]}
        else:
            cfill = {**fill, "S2": fresh[2]}
        segs = _segments(parsed[ti], fill, first)
        clean.append(_with_s1_plus_1(segs))
        corrupted.append(_with_s1_plus_1(_segments(parsed[ti], cfill, first)))
        correct.append(name_ids[io])
        incorrect.append(name_ids[s])
        rows.append({
            "template": int(templates[ti]) if templates is not None and isinstance(templates[ti], int) else ti,
            "order": orders[i], "io": io, "s": s, "place": place, "object": obj,
            "c_first": cfill[first[0]], "c_second": cfill[first[1]], "c_s2": cfill["S2"],
            "split": pair_split(io, s),
        })  # fmt: skip
    task = build_task(
        tok, "ioi", clean, corrupted, correct, incorrect, pd.DataFrame(rows),
        slots=["IO", "S1", "S1+1", "S2"], extra={"corruption": corruption, "order": order},
    )  # fmt: skip
    return task


def _with_s1_plus_1(segs: list[Segment]) -> list[Segment]:
    """Mark the segment right after S1 so its first token is the S1+1 position."""
    out = list(segs)
    for j, (_, slot) in enumerate(out):
        if slot == "S1" and j + 1 < len(out):
            text, nxt = out[j + 1]
            if nxt is None:
                out[j + 1] = (text, "S1+1")
            else:  # "[B] [A]" adjacency never occurs in the shipped templates
                raise TaskError(
                    "ioi: the token after S1 is another name", fix="use another template"
                )
    return out


def _templates(templates: Sequence[int | str] | None) -> list[str]:
    if templates is None:
        return list(TEMPLATES)
    if len(templates) == 0:
        raise TaskError("ioi: templates is empty", fix="pass None (all 15) or some indices 0..14")
    out = []
    for t in templates:
        if isinstance(t, bool) or not isinstance(t, int | str):
            raise TaskError(
                f"ioi: template {t!r} is neither an index nor a string", fix="pass ints 0..14"
            )
        if isinstance(t, int):
            if not 0 <= t < len(TEMPLATES):
                raise TaskError(
                    f"ioi: template index {t} out of range", fix=f"use 0..{len(TEMPLATES) - 1}"
                )
            out.append(TEMPLATES[t])
        else:
            out.append(t)
    return out


def _words(given: Sequence[str] | None, default: Sequence[str], what: str) -> list[str]:
    words = list(given) if given is not None else list(default)
    if not words:
        raise TaskError(f"ioi: {what} is empty", fix=f"pass at least one of the {what} or None")
    return words


def _pairs(pool: list[str], split: str | None) -> list[tuple[str, str]]:
    pairs = [(a, b) for i, a in enumerate(pool) for b in pool[i + 1 :]]
    if split is not None:
        pairs = [p for p in pairs if pair_split(*p) == split]
    if not pairs:
        raise TaskError(
            f"ioi: no name pairs in split {split!r}", fix="pass more names, or split=None"
        )
    return pairs


def _orders(order: str, n: int, rng: Any) -> list[str]:
    if order != "mixed":
        return [order] * n
    orders = ["ABBA", "BABA"] * (n // 2 + 1)
    orders = orders[:n]
    rng.shuffle(orders)
    return orders
