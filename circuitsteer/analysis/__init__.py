"""The analysis layer: audits of heads and circuits, each returning a tidy pandas DataFrame.

* :func:`head_scores`: previous-token, duplicate-token and induction scores on repeated tokens.
* :func:`attention`: mean attention between a task's named positions, per head (and per order).
* :func:`direct_logit_attribution`: each node's direct share of the logit difference.
* :func:`path_patching`, :func:`path_patching_grid`: Wang et al.'s path patching.
* :func:`find_ioi_circuit`: a model's IOI circuit, path patching backwards from the logits;
  :func:`faithfulness_mean_ablation` measures it.

Effects of interventions (docs/analysis.md), tidy tables with the common columns ``model, task,
seed, node, operation, mode, coef, positions, metric, value`` (``COLUMNS``) so they concatenate:

* :func:`compare_ablation_addition`: per node, ablation (zero/mean/resample) versus adding its
  mean-difference direction, a matched random direction and given vectors.
* :func:`downstream_effects`: every node's output, attention and DLA change under an
  intervention, in total and through a circuit's edges.
* :func:`coefficient_sweep`, :func:`break_point`: metrics and breakdown diagnostics per
  coefficient, and the coefficient where the model breaks.
* :func:`faithfulness`, :func:`completeness`, :func:`minimality` (Wang et al.),
  :func:`faithfulness_curve` and :func:`area_under_curve` (MIB's CPR and CMD).
* :func:`pca_study`: principal directions of a site as steering vectors, against controls.

Example:
    >>> import circuitsteer as cs
    >>> model = cs.load_model("toy-ioi")                        # doctest: +SKIP
    >>> scores = cs.analysis.head_scores(model, n=200)          # doctest: +SKIP
    >>> task = cs.tasks.ioi(model, n=200)                       # doctest: +SKIP
    >>> dla = cs.analysis.direct_logit_attribution(model, task)  # doctest: +SKIP
"""

from circuitsteer.analysis._rows import COLUMNS as COLUMNS
from circuitsteer.analysis.attribution import direct_logit_attribution as direct_logit_attribution
from circuitsteer.analysis.compare import compare_ablation_addition as compare_ablation_addition
from circuitsteer.analysis.effects import downstream_effects as downstream_effects
from circuitsteer.analysis.faithfulness import MIB_FRACTIONS as MIB_FRACTIONS
from circuitsteer.analysis.faithfulness import area_under_curve as area_under_curve
from circuitsteer.analysis.faithfulness import completeness as completeness
from circuitsteer.analysis.faithfulness import faithfulness as faithfulness
from circuitsteer.analysis.faithfulness import faithfulness_curve as faithfulness_curve
from circuitsteer.analysis.faithfulness import minimality as minimality
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
from circuitsteer.analysis.pca_study import pca_study as pca_study
from circuitsteer.analysis.sweep import break_point as break_point
from circuitsteer.analysis.sweep import coefficient_sweep as coefficient_sweep
from circuitsteer.errors import AnalysisError as AnalysisError
