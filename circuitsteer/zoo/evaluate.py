"""Measure a zoo model on held-out task examples (the numbers on its model card).

* IOI: ``split="heldout"`` name pairs (never seen together in training), mixed order, all 15
  templates. Logit difference and accuracy on clean prompts; the logit difference on the
  ABC-corrupted prompts (three fresh names) and on "S2"-corrupted prompts (the repeated name
  replaced, so no name repeats) checks that the model's answer depends on the repetition.
* greater-than: probability difference (clean and 01-corrupted), examples from an unseen seed.
* sentiment: next-word accuracy = the top-1 token over the whole vocabulary at END is an
  adjective of the prompt's polarity (``polarity="mixed"``).
* neutral: mean next-token loss on neutral paragraphs.

Example:
    >>> from circuitsteer.models import load_model
    >>> scores = evaluate(load_model("toy-ioi"), n=100)        # doctest: +SKIP
    >>> scores["ioi_logit_diff"] > 3                            # doctest: +SKIP
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from circuitsteer import metrics
from circuitsteer.tasks import Task, greater_than, ioi, neutral, sentiment

EVAL_SEED = 10_000  # training data uses seeds below this (see circuitsteer.zoo.data)


@dataclass
class Runner:
    """The minimum a task generator and :func:`evaluate` need: a tokenizer and a forward pass."""

    hf: Any
    tokenizer: Any

    @property
    def bos_token_id(self) -> int:
        tid = self.tokenizer.bos_token_id
        return int(tid if tid is not None else self.tokenizer.eos_token_id)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=tokens, use_cache=False).logits


@torch.no_grad()
def run_logits(model: Any, tokens: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Logits of ``model(tokens)`` computed in chunks of rows."""
    return torch.cat([model(tokens[i : i + chunk]).float() for i in range(0, len(tokens), chunk)])


def _end_logits(model: Any, tokens: torch.Tensor, task: Task) -> torch.Tensor:
    return metrics.end_logits(run_logits(model, tokens), task)


def evaluate(model: Any, n: int = 500, seed: int = EVAL_SEED) -> dict[str, float]:
    """Held-out scores of ``model`` (a circuitsteer Model or a :class:`Runner`)."""
    was_training = getattr(getattr(model, "hf", None), "training", False)
    if was_training:
        model.hf.eval()
    out: dict[str, float] = {}
    t = ioi(model, n=n, seed=seed, split="heldout")
    clean = _end_logits(model, t.clean, t)
    ld = metrics.logit_diff(clean, t)
    out["ioi_logit_diff"] = ld.mean().item()
    out["ioi_accuracy"] = metrics.accuracy(clean, t).mean().item()
    for order in ("ABBA", "BABA"):
        out[f"ioi_logit_diff_{order}"] = (
            ld[torch.tensor((t.meta["order"] == order).to_numpy())].mean().item()
        )
    out["ioi_abc_logit_diff"] = (
        metrics.logit_diff(_end_logits(model, t.corrupted, t), t).mean().item()
    )
    s2 = ioi(model, n=n, seed=seed, split="heldout", corruption="S2")
    s2_ld = metrics.logit_diff(_end_logits(model, s2.corrupted, s2), s2)
    out["ioi_s2_logit_diff"] = s2_ld.mean().item()
    out["ioi_s2_abs_logit_diff"] = s2_ld.abs().mean().item()

    g = greater_than(model, n=n, seed=seed)
    out["greater_than_prob_diff"] = (
        metrics.prob_diff(_end_logits(model, g.clean, g), g).mean().item()
    )
    out["greater_than_corrupted_prob_diff"] = (
        metrics.prob_diff(_end_logits(model, g.corrupted, g), g).mean().item()
    )

    s = sentiment(model, n=n, seed=seed, polarity="mixed")
    e = _end_logits(model, s.clean, s)
    assert s.candidates is not None and s.correct_mask is not None  # sentiment always sets them
    top = e.argmax(-1)
    right = (top[:, None] == s.candidates[None, :]) & s.correct_mask
    out["sentiment_accuracy"] = right.any(-1).float().mean().item()
    out["sentiment_prob_diff"] = metrics.prob_diff(e, s).mean().item()

    nt = neutral(model, n=min(n, 200), seed=seed)
    out["neutral_loss"] = (
        metrics.loss(run_logits(model, nt.clean), nt.clean, nt.lengths).mean().item()
    )
    if was_training:
        model.hf.train()
    return {k: round(v, 4) for k, v in out.items()}
