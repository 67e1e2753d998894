"""Sentiment: prompts whose next word is a positive or negative adjective, in contrast pairs.

"I loved the movie. It was really" -> a positive adjective; the same prompt with the
sentiment verb flipped ("I hated the movie. It was really") -> a negative one.

* clean / corrupted are **contrast pairs**: identical prompts except for the sentiment word
  (named position SENT), so ``clean - corrupted`` activations give a steering vector
  (mean difference / ActAdd) and the corrupted prompts are what you steer.
* ``polarity``: "positive" (default: clean prompts positive, corrupted negative), "negative", or
  "mixed" (half each; use it to measure accuracy without a polarity bias).
* ``correct`` / ``incorrect``: the adjective pair drawn for the example (e.g. " great" /
  " terrible"), ordered by the clean prompt's polarity; ``candidates`` = all adjectives
  (positive first) and ``correct_mask`` marks those of the clean prompt's polarity, so
  :func:`circuitsteer.metrics.prob_diff` gives p(right polarity) - p(wrong polarity).
* :func:`contrast_words` gives single-word pairs ("love"/"hate", ...) for ActAdd-style vectors.

Example:
    >>> from circuitsteer.zoo.tokenizer import toy_tokenizer
    >>> t = sentiment(toy_tokenizer(), n=2, seed=0)
    >>> t.meta["polarity"].tolist()
    ['positive', 'positive']
    >>> sorted(t.positions)
    ['END', 'SENT']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from circuitsteer.errors import TaskError
from circuitsteer.tasks.base import Task, build_task, check_n, resolve, rng_for, single_tokens

# "{S}" = subject phrase, "[VERB]" = the sentiment word, "[THING]" = a noun; the adjective follows.
TEMPLATES: tuple[str, ...] = (
    "I [VERB] the [THING]. It was really",
    "We [VERB] the [THING] so much. The [THING] was",
    "She [VERB] this [THING]. It was truly",
    "My friends [VERB] the [THING]. They said it was",
    "Everyone [VERB] the [THING]. It was so",
    "He [VERB] the [THING] and told us it was",
    "They [VERB] that [THING]. In the end it was",
    "You [VERB] the [THING]. Honestly, it was",
)

# (positive, negative) sentiment verbs; each pair is used together so the pair aligns.
VERBS: tuple[tuple[str, str], ...] = (
    ("loved", "hated"), ("enjoyed", "disliked"), ("liked", "despised"), ("praised", "criticized"),
    ("admired", "resented"),
)  # fmt: skip
THINGS: tuple[str, ...] = (
    "movie", "book", "food", "show", "song", "game", "trip", "hotel", "meal", "play", "concert",
    "class", "album", "party", "film", "story",
)  # fmt: skip
ADJECTIVES: tuple[tuple[str, str], ...] = (
    ("great", "terrible"), ("good", "bad"), ("wonderful", "awful"), ("excellent", "horrible"),
    ("amazing", "boring"), ("fantastic", "disappointing"), ("beautiful", "ugly"),
    ("perfect", "dreadful"),
)  # fmt: skip
CONTRAST_WORDS: tuple[tuple[str, str], ...] = (
    ("love", "hate"), ("happy", "sad"), ("good", "bad"), ("great", "terrible"), ("like", "dislike"),
)  # fmt: skip
POLARITIES = ("positive", "negative", "mixed")


def _pairs(
    tok: Any, pairs: Sequence[tuple[str, str]], what: str
) -> list[tuple[int, int, str, str]]:
    """(pos id, neg id, pos, neg) for the pairs whose two words are single tokens."""
    out = []
    for p, q in pairs:
        ids = single_tokens(tok, [p, q])
        if len(ids) == 2:
            out.append((ids[p], ids[q], p, q))
    if not out:
        raise TaskError(
            f"sentiment: none of the {what} pairs is two single tokens for this tokenizer",
            fix=f"pass {what}=[(positive, negative), ...] with one-token words",
        )
    return out


def sentiment(
    model_or_tokenizer: Any,
    n: int = 100,
    seed: int = 0,
    polarity: str = "positive",
    templates: Sequence[int] | None = None,
    verbs: Sequence[tuple[str, str]] | None = None,
    adjectives: Sequence[tuple[str, str]] | None = None,
) -> Task:
    """Sentiment contrast pairs; see the module docstring.

    ``meta`` columns: template, polarity, verb, contrast_verb, thing, correct_word, incorrect_word.

    >>> from circuitsteer.zoo.tokenizer import toy_tokenizer
    >>> t = sentiment(toy_tokenizer(), n=4, seed=0, polarity="mixed")
    >>> sorted(t.meta["polarity"].unique())
    ['negative', 'positive']
    """
    check_n(n, "sentiment")
    if polarity not in POLARITIES:
        raise TaskError(
            f"sentiment: unknown polarity {polarity!r}", fix=f"use one of {', '.join(POLARITIES)}"
        )
    tok = resolve(model_or_tokenizer)
    rng = rng_for(seed)
    tmpl = list(TEMPLATES) if templates is None else [TEMPLATES[i] for i in _check_idx(templates)]
    verb_pairs = _pairs(tok, verbs if verbs is not None else VERBS, "verbs")
    adj_pairs = _pairs(tok, adjectives if adjectives is not None else ADJECTIVES, "adjectives")
    things = list(single_tokens(tok, THINGS))
    cands = torch.tensor([a[0] for a in adj_pairs] + [a[1] for a in adj_pairs], dtype=torch.long)
    n_adj = len(adj_pairs)
    pols = [polarity] * n if polarity != "mixed" else (["positive", "negative"] * n)[:n]
    if polarity == "mixed":
        rng.shuffle(pols)
    clean, corrupted, correct, incorrect, rows = [], [], [], [], []
    mask = torch.zeros(n, 2 * n_adj, dtype=torch.bool)
    for i in range(n):
        ti = rng.randrange(len(tmpl))
        _, _, vp, vn = rng.choice(verb_pairs)
        ap, an, wp, wn = rng.choice(adj_pairs)
        thing = rng.choice(things)
        pos = pols[i] == "positive"
        verb, cverb = (vp, vn) if pos else (vn, vp)
        clean.append(_segments(tmpl[ti], verb, thing))
        corrupted.append(_segments(tmpl[ti], cverb, thing))
        correct.append(ap if pos else an)
        incorrect.append(an if pos else ap)
        mask[i, :n_adj] = pos
        mask[i, n_adj:] = not pos
        rows.append({
            "template": TEMPLATES.index(tmpl[ti]), "polarity": pols[i], "verb": verb,
            "contrast_verb": cverb, "thing": thing,
            "correct_word": wp if pos else wn, "incorrect_word": wn if pos else wp,
        })  # fmt: skip
    return build_task(
        tok, "sentiment", clean, corrupted, correct, incorrect, pd.DataFrame(rows),
        slots=["SENT"], candidates=cands, correct_mask=mask, extra={"polarity": polarity},
    )  # fmt: skip


def _check_idx(templates: Sequence[int]) -> list[int]:
    bad = [
        t
        for t in templates
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < len(TEMPLATES)
    ]
    if bad or not templates:
        raise TaskError(
            f"sentiment: bad template indices {list(templates)}", fix=f"use 0..{len(TEMPLATES) - 1}"
        )
    return list(templates)


def _segments(template: str, verb: str, thing: str) -> list[tuple[str, str | None]]:
    head, tail = template.split(" [VERB]")
    return [(head, None), (f" {verb}", "SENT"), (tail.replace("[THING]", thing), None)]


def contrast_words(model_or_tokenizer: Any, pairs: Sequence[tuple[str, str]] | None = None) -> Task:
    """One-word contrast prompts for ActAdd: clean = BOS + " love", corrupted = BOS + " hate", ...

    Pairs whose words are not single tokens are dropped. END is the word itself.

    >>> from circuitsteer.zoo.tokenizer import toy_tokenizer
    >>> contrast_words(toy_tokenizer()).clean.shape[1]
    2
    """
    tok = resolve(model_or_tokenizer)
    ok = _pairs(tok, pairs if pairs is not None else CONTRAST_WORDS, "pairs")
    clean = [[(f" {p}", "WORD")] for _, _, p, _ in ok]
    corrupted = [[(f" {q}", "WORD")] for _, _, _, q in ok]
    meta = pd.DataFrame({"positive": [p for *_, p, _ in ok], "negative": [q for *_, q in ok]})
    return build_task(
        tok, "sentiment-words", clean, corrupted, [a for a, *_ in ok], [b for _, b, *_ in ok], meta,
        slots=["WORD"],
    )  # fmt: skip
