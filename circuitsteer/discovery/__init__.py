"""Circuit discovery: ACDC, EAP, EAP-IG and exact patching, deterministic, scored like MIB.

Every method returns :class:`EdgeScores` (one score per edge of the model's edge graph, with
the run's metadata); :mod:`.select` turns scores into a :class:`~circuitsteer.Circuit` and
:mod:`.evaluate` measures circuits and scores (faithfulness and CPR/CMD curves through
:mod:`circuitsteer.analysis`, ROC AUC, Spearman, a comparison table). See docs/discovery.md.

Example:
    >>> import circuitsteer as cs
    >>> m = cs.load_model("ioi-circuit")                            # doctest: +SKIP
    >>> task = cs.tasks.ioi(m, n=32, seed=0)                        # doctest: +SKIP
    >>> found = cs.discovery.acdc(m, task, threshold=0.02)          # doctest: +SKIP
    >>> circuit = cs.discovery.kept(found)                          # doctest: +SKIP
    >>> ig = cs.discovery.eap_ig(m, task, steps=5)                  # doctest: +SKIP
    >>> cs.discovery.roc_auc(ig, circuit) > 0.5                     # doctest: +SKIP
    True
"""

from circuitsteer.discovery._common import DiscoveryError as DiscoveryError
from circuitsteer.discovery._common import EdgeScores as EdgeScores
from circuitsteer.discovery.acdc import acdc as acdc
from circuitsteer.discovery.eap import eap as eap
from circuitsteer.discovery.eap import eap_ig as eap_ig
from circuitsteer.discovery.evaluate import circuit_faithfulness as circuit_faithfulness
from circuitsteer.discovery.evaluate import compare as compare
from circuitsteer.discovery.evaluate import curve as curve
from circuitsteer.discovery.evaluate import roc_auc as roc_auc
from circuitsteer.discovery.evaluate import score_map as score_map
from circuitsteer.discovery.evaluate import spearman as spearman
from circuitsteer.discovery.exact import exact_patching as exact_patching
from circuitsteer.discovery.select import greedy as greedy
from circuitsteer.discovery.select import kept as kept
from circuitsteer.discovery.select import prune as prune
from circuitsteer.discovery.select import threshold as threshold
from circuitsteer.discovery.select import top_n as top_n

__all__ = [
    "DiscoveryError", "EdgeScores", "acdc", "circuit_faithfulness", "compare", "curve", "eap",
    "eap_ig", "exact_patching", "greedy", "kept", "prune", "roc_auc", "score_map", "spearman",
    "threshold", "top_n",
]  # fmt: skip
