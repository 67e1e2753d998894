"""The analysis layer: audits of heads and circuits, each returning a tidy pandas DataFrame.

* :func:`head_scores`: previous-token, duplicate-token and induction scores on repeated tokens.
* :func:`attention`: mean attention between a task's named positions, per head (and per order).
* :func:`direct_logit_attribution`: each node's direct share of the logit difference.
* :func:`path_patching`, :func:`path_patching_grid`: Wang et al.'s path patching.
* :func:`find_ioi_circuit`: a model's IOI circuit, path patching backwards from the logits;
  :func:`faithfulness_mean_ablation` measures it.

Example:
    >>> import circuitsteer as cs
    >>> model = cs.load_model("toy-ioi")                        # doctest: +SKIP
    >>> scores = cs.analysis.head_scores(model, n=200)          # doctest: +SKIP
    >>> task = cs.tasks.ioi(model, n=200)                       # doctest: +SKIP
    >>> dla = cs.analysis.direct_logit_attribution(model, task)  # doctest: +SKIP
"""

from circuitsteer.analysis.attribution import direct_logit_attribution as direct_logit_attribution
from circuitsteer.analysis.heads import KINDS as KINDS
from circuitsteer.analysis.heads import attention as attention
from circuitsteer.analysis.heads import head_scores as head_scores
from circuitsteer.analysis.heads import ordinary_token_ids as ordinary_token_ids
from circuitsteer.analysis.heads import repeated_tokens as repeated_tokens
from circuitsteer.analysis.ioi_circuit import (
    faithfulness_mean_ablation as faithfulness_mean_ablation,
)
from circuitsteer.analysis.ioi_circuit import find_ioi_circuit as find_ioi_circuit
from circuitsteer.analysis.path_patching import path_patching as path_patching
from circuitsteer.analysis.path_patching import path_patching_grid as path_patching_grid
from circuitsteer.errors import AnalysisError as AnalysisError
