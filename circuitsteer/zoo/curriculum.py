"""Training data where *repetition* is the only consistent cue for IOI (the ioi-circuit recipe).

toy-ioi learned IOI from the 15 templates alone and solved it by slot: in those templates the
repeated name, the S2 slot and the last name before END coincide. This mixture pulls them apart
and makes duplicate detection and copying pay off beyond IOI, as language modelling does for
GPT-2:

* ``induction``: random words with repeated spans (several copies per sequence), so
  previous-token and induction heads pay off everywhere.
* ``dup_list``: "Mary, John, Anna, John, Mary. Then everyone said to Anna": copy the name
  mentioned once (duplicate-token detection + a mover that avoids duplicated names).
* ``ioi``: IOI on training name pairs and templates (:mod:`circuitsteer.tasks.ioi_probes`):
  half with a name-bearing prefix (fresh name or S), some with a name-bearing suffix after the
  answer; the S2 slot sometimes holds a fresh name: then, if S was repeated in the prefix, the
  answer is still the once-mentioned first-clause name, and if nothing repeats the target is
  either first-clause name with probability 1/2 (no slot or recency shortcut pays).
* ``greater_than``, ``sentiment``, ``neutral``: kept at about 10% each.

Phase 1 (``induction_steps``) is induction-heavy so that the previous-token -> induction chain
forms first (a loss cliff at ~500-700 steps was measured on this model size), then the mixture.

Example:
    >>> from circuitsteer.zoo.tokenizer import toy_tokenizer
    >>> seqs = curriculum_chunk(toy_tokenizer(), PHASE2, size=8, seed=0, chunk=0)
    >>> len(seqs), all(s[0] == toy_tokenizer().bos_token_id for s in seqs)
    (8, True)
"""

from __future__ import annotations

import random
from typing import Any

from circuitsteer.tasks.ioi import NAMES
from circuitsteer.tasks.ioi_probes import TRAIN_TEMPLATES, ioi_variant
from circuitsteer.zoo.data import TASK_SEQS

PHASE1 = {"induction": 0.6, "dup_list": 0.1, "ioi": 0.1, "greater_than": 0.07,
          "sentiment": 0.07, "neutral": 0.06}  # fmt: skip
PHASE2 = {"induction": 0.25, "dup_list": 0.1, "ioi": 0.35, "greater_than": 0.1,
          "sentiment": 0.1, "neutral": 0.1}  # fmt: skip

# v2: a shorter, lighter induction phase (in v1 every layer-1 head became an induction head), a
# per-position duplicate-marking task, and more IOI
PHASE1_V2 = {"induction": 0.45, "dup_mark": 0.1, "dup_list": 0.1, "ioi": 0.15,
             "greater_than": 0.07, "sentiment": 0.07, "neutral": 0.06}  # fmt: skip
PHASE2_V2 = {"induction": 0.15, "dup_mark": 0.08, "dup_list": 0.1, "ioi": 0.4,
             "greater_than": 0.09, "sentiment": 0.09, "neutral": 0.09}  # fmt: skip

# v3: many-name duplicate lists where repeated names occur 2-3 times, so boosting every name in
# context and suppressing the repeated ones loses to attending the once-mentioned name (the
# name-mover solution); 6 layers give S-inhibition -> name-mover composition room
PHASE2_V3 = {"induction": 0.12, "dup_mark": 0.06, "dup_list": 0.06, "dup_list_many": 0.16,
             "ioi": 0.33, "greater_than": 0.09, "sentiment": 0.09, "neutral": 0.09}  # fmt: skip

CURRICULUM_DOC = {
    "induction": "64 random words with spans of 4-16 earlier tokens copied again, several times",
    "dup_mark": "names each followed by ',' when first mentioned and '.' when repeated",
    "dup_list": "'A, B, C, B, A. Then everyone said to C': the name mentioned once",
    "dup_list_many": "'A, B, C, B, A, D, C, B. Then everyone said to D': 4-7 names, all but one "
    "mentioned 2-3 times",
    "ioi": "IOI (training pairs, 20 training templates) + answer: 35% standard, 20% fresh-name "
    "prefix, 10% S in a prefix, 15% S in a prefix and a fresh name in the S2 slot (answer IO), "
    "20% nothing repeated (fresh S2 name; either first-clause name, 50/50); 30% with a "
    "name-bearing suffix after the answer",
    "greater_than": "circuitsteer.tasks.greater_than + a year > YY (uniform)",
    "sentiment": "circuitsteer.tasks.sentiment(polarity='mixed') + adjective of that polarity + '.'",
    "neutral": "circuitsteer.tasks.neutral + EOS",
}

# (prefix, s2, weight) for the IOI component
IOI_KINDS: tuple[tuple[str | None, str, float], ...] = (
    (None, "S", 0.35),
    ("fresh", "S", 0.2),
    ("S", "S", 0.1),
    ("S", "fresh", 0.15),
    (None, "fresh", 0.1),
    ("fresh", "fresh", 0.1),
)
SUFFIXES = (" . [N] was happy .", " . Then [N] went home .", " . [N] liked it .")


def _words(tok: Any) -> list[int]:
    special = set(tok.all_special_ids)
    return [i for i in range(len(tok)) if i not in special]


def induction_seq(rng: random.Random, words: list[int], bos: int, length: int = 64) -> list[int]:
    """BOS + random words where spans of 4-16 earlier tokens are copied again, several times."""
    seq = [bos] + [rng.choice(words) for _ in range(rng.randint(6, 20))]
    while len(seq) < length:
        if rng.random() < 0.7 and len(seq) > 5:
            span = rng.randint(4, 16)
            start = rng.randint(1, max(1, len(seq) - span))
            seq += seq[start : start + span]
        else:
            seq += [rng.choice(words) for _ in range(rng.randint(2, 8))]
    return seq[:length]


def dup_list_seq(
    rng: random.Random, tok: Any, names: list[str], k: tuple[int, int] = (2, 5), most: int = 2
) -> list[int]:
    """A list of ``k`` names where every name but one appears 2..``most`` times; the answer is
    the single one."""
    chosen = rng.sample(names, rng.randint(*k))
    once = chosen[0]
    if most == 2:  # the v1/v2 stream, kept bit-identical for the shipped models' commands
        items = [once] + chosen[1:] * 2
    else:
        items = [once] + [n for n in chosen[1:] for _ in range(rng.randint(2, most))]
    rng.shuffle(items)
    text = ", ".join(items) + ". Then everyone said to " + once + " ."
    return [tok.bos_token_id, *tok.encode(text, add_special_tokens=False)]


def dup_mark_seq(rng: random.Random, tok: Any, names: list[str]) -> list[int]:
    """Names each followed by "," the first time and "." when repeated: predicting the mark
    at a name's own position needs "has this token occurred before?" (a duplicate-token head)."""
    pool = rng.sample(names, rng.randint(3, 7))
    seen: set[str] = set()
    words: list[str] = []
    for _ in range(rng.randint(8, 16)):
        n = rng.choice(pool)
        words += [n, "." if n in seen else ","]
        seen.add(n)
    return [tok.bos_token_id, *tok.encode(" ".join(words), add_special_tokens=False)]


def ioi_seqs(tok: Any, n: int, seed: int, rng: random.Random) -> list[list[int]]:
    """IOI variants on training pairs and templates + the answer (+ sometimes a suffix)."""
    total = sum(w for *_, w in IOI_KINDS)
    out: list[list[int]] = []
    for j, (prefix, s2, w) in enumerate(IOI_KINDS):
        k = max(1, round(n * w / total))
        t = ioi_variant(tok, n=k, seed=seed * 31 + j, prefix=prefix, s2=s2,
                        templates=TRAIN_TEMPLATES, split="train")  # fmt: skip
        for i in range(k):
            row = t.clean[i, : int(t.lengths[i])].tolist()
            ans = int(t.correct[i])
            if s2 == "fresh" and prefix != "S" and rng.random() < 0.5:
                ans = int(t.incorrect[i])  # nothing repeats: either name, 50/50
            seq = row + [ans]
            if rng.random() < 0.3:
                name = str(rng.choice([t.meta["io"][i], t.meta["s"][i], rng.choice(NAMES)]))
                suffix = rng.choice(SUFFIXES).replace("[N]", name)
                seq += tok.encode(suffix, add_special_tokens=False)
            out.append(seq)
    rng.shuffle(out)
    return out[:n]


def curriculum_chunk(
    tok: Any, mixture: dict[str, float], size: int, seed: int, chunk: int
) -> list[list[int]]:
    """``size`` shuffled training sequences (BOS first) from ``mixture``; deterministic."""
    s = (seed * 7919 + chunk) % 9_000  # below the evaluation seeds
    rng = random.Random(s)
    total = sum(mixture.values())
    counts = {k: int(round(size * w / total)) for k, w in mixture.items()}
    words = _words(tok)
    names = [n for n in NAMES if len(tok.encode(" " + n, add_special_tokens=False)) == 1]
    seqs: list[list[int]] = []
    for name, k in counts.items():
        if k <= 0:
            continue
        if name == "induction":
            seqs += [induction_seq(rng, words, tok.bos_token_id) for _ in range(k)]
        elif name == "dup_list":
            seqs += [dup_list_seq(rng, tok, names) for _ in range(k)]
        elif name == "dup_list_many":
            seqs += [dup_list_seq(rng, tok, names, k=(4, 7), most=3) for _ in range(k)]
        elif name == "dup_mark":
            seqs += [dup_mark_seq(rng, tok, names) for _ in range(k)]
        elif name == "ioi":
            seqs += ioi_seqs(tok, k, s, rng)
        elif name in TASK_SEQS:
            seqs += TASK_SEQS[name](tok, k, s, rng)
        else:
            raise ValueError(f"unknown mixture component {name!r}")
    rng.shuffle(seqs)
    return seqs[:size]
