"""Neutral text for loss and KL measurements (how much an intervention disturbs the model).

Short paragraphs of 2-4 plain sentences from a small grammar ("The farmer opened the door in the
morning. It was cold and the sky was grey.") with no names, years or sentiment words, so they
do not overlap the other tasks. The words are common English (one or a few GPT-2 tokens each)
and all in the zoo models' vocabulary.

Returns a :class:`~circuitsteer.tasks.Task` so it plugs in wherever a task goes:
``clean`` = ``corrupted`` = the text tokens (BOS first, right-padded), ``lengths`` the real
lengths, ``END`` = the second-to-last real token, ``correct`` = the last token (what END predicts),
``incorrect`` = BOS. Use it with ``metrics.loss(logits, task.clean, task.lengths)`` and
``metrics.kl_div(ref, new, task.real_mask())``.

Example:
    >>> from circuitsteer.zoo.tokenizer import toy_tokenizer
    >>> t = neutral(toy_tokenizer(), n=3, seed=0)
    >>> bool((t.clean[0, t.positions["END"][0] + 1] == t.correct[0]).item())
    True
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pandas as pd
import torch

from circuitsteer.errors import TaskError
from circuitsteer.tasks.base import Task, build_task, check_n, resolve, rng_for

SUBJECTS = (
    "The man", "The woman", "A child", "The dog", "The cat", "My neighbor", "The teacher",
    "The doctor", "The farmer", "Our team", "The old man", "A young girl", "The driver",
    "The boy", "The baker",
)  # fmt: skip
VERBS = (
    "opened", "closed", "cleaned", "painted", "found", "carried", "watched", "visited", "fixed",
    "moved", "looked at", "walked to", "waited near", "talked about", "read about", "sat near",
)  # fmt: skip
OBJECTS = (
    "the door", "the window", "a letter", "the car", "the table", "a box", "the river",
    "the road", "the city", "the bridge", "a chair", "the bus", "the farm", "the kitchen",
    "the tree", "the wall", "a bag", "the water",
)  # fmt: skip
TIMES = (
    "in the morning", "after dinner", "on Monday", "every day", "yesterday", "last week",
    "at night", "before noon", "in the evening", "on the weekend",
)  # fmt: skip
FILLERS = (
    "It was cold and the sky was grey.", "The rain stopped after an hour.",
    "Nobody said a word.", "The streets were quiet.", "Then everyone went home.",
    "The light in the kitchen was on.", "There was a long line at the bus stop.",
    "The wind moved the trees.", "It took about ten minutes.", "The water was warm.",
)  # fmt: skip


def neutral_text(rng: Any, sentences: tuple[int, int] = (2, 4)) -> str:
    """One paragraph of ``sentences[0]..sentences[1]`` sentences."""
    out = []
    for _ in range(rng.randint(*sentences)):
        if rng.random() < 0.3:
            out.append(rng.choice(FILLERS))
        else:
            s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
            out.append(f"{s} {rng.choice(TIMES)}." if rng.random() < 0.6 else f"{s}.")
    return " ".join(out)


def neutral(
    model_or_tokenizer: Any, n: int = 100, seed: int = 0, sentences: tuple[int, int] = (2, 4)
) -> Task:
    """``n`` neutral paragraphs as a Task (see the module docstring). ``meta`` column: text.

    >>> from circuitsteer.zoo.tokenizer import toy_tokenizer
    >>> neutral(toy_tokenizer(), n=2, seed=0).lengths.tolist() == neutral(toy_tokenizer(), n=2, seed=0).lengths.tolist()
    True
    """
    check_n(n, "neutral")
    lo, hi = sentences
    if not 1 <= lo <= hi:
        raise TaskError(
            f"neutral: bad sentences range {sentences}", fix="pass (min, max) with 1 <= min <= max"
        )
    tok = resolve(model_or_tokenizer)
    rng = rng_for(seed)
    texts = [neutral_text(rng, sentences) for _ in range(n)]
    segs = [[(t, None)] for t in texts]
    task = build_task(
        tok,
        "neutral",
        segs,
        segs,
        [0] * n,
        [tok.bos_id] * n,
        pd.DataFrame({"text": texts}),
        slots=[],
    )
    # END predicts the last real token (the final '.')
    end = task.lengths - 2
    last = task.clean[torch.arange(n), task.lengths - 1]
    return replace(task, positions={"END": end}, correct=last, corrupted=task.clean)
