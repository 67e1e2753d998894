"""Task datasets with named positions: IOI, greater-than, sentiment contrast pairs, neutral text.

Every generator takes a circuitsteer Model or a tokenizer, is seeded and deterministic, and
returns a :class:`Task` (clean and corrupted tokens of identical shape, answer ids, named
positions; ``END`` is where the prediction is scored). Invalid arguments raise
:class:`circuitsteer.errors.TaskError`.

Example:
    >>> from circuitsteer import tasks
    >>> from circuitsteer.zoo.tokenizer import toy_tokenizer
    >>> task = tasks.ioi(toy_tokenizer(), n=8, seed=0)
    >>> task.positions["END"].shape
    torch.Size([8])
"""

from circuitsteer.tasks.base import Task as Task
from circuitsteer.tasks.base import length_mask as length_mask
from circuitsteer.tasks.greater_than import greater_than as greater_than
from circuitsteer.tasks.ioi import ioi as ioi
from circuitsteer.tasks.ioi_probes import ioi_probes as ioi_probes
from circuitsteer.tasks.ioi_probes import ioi_variant as ioi_variant
from circuitsteer.tasks.neutral import neutral as neutral
from circuitsteer.tasks.sentiment import contrast_words as contrast_words
from circuitsteer.tasks.sentiment import sentiment as sentiment

__all__ = [
    "Task", "contrast_words", "greater_than", "ioi", "ioi_probes", "ioi_variant", "length_mask",
    "neutral", "sentiment",
]  # fmt: skip
