"""Running specs: every analysis of a spec split into shards, run locally or on a Ray cluster,
written shard by shard (atomically) into ``runs/<id>/``, resumable after a crash or a kill.

* :func:`run_spec` (``circuitsteer run SPEC``): returns the run folder, which holds
  ``spec.yaml`` (the resolved spec), ``meta.json`` (versions, seeds, the model's hash,
  timings, per-shard rows and seconds), ``shards/<NNNNN>.parquet`` and ``results.parquet``
  (every shard concatenated in shard order: columns ``analysis``, ``kind``, then the analysis
  function's tidy columns).
* :func:`plan_shards`: how a spec is split (docs/specs.md).
* :func:`intervention_grid`, :func:`expand`: the ``grid`` kind's analysis function.
* Backends: :mod:`circuitsteer.runner.local` (default) and :mod:`circuitsteer.runner.ray`.

Example:
    >>> import circuitsteer as cs
    >>> run = cs.runner.run_spec("analyses/ablation_vs_addition.yaml", quiet=True)  # doctest: +SKIP
    >>> import pandas as pd                                                          # doctest: +SKIP
    >>> pd.read_parquet(run / "results.parquet").groupby("analysis").size()          # doctest: +SKIP
"""

from circuitsteer.runner._run import BACKENDS as BACKENDS
from circuitsteer.runner._run import Shard as Shard
from circuitsteer.runner._run import plan_shards as plan_shards
from circuitsteer.runner._run import run_spec as run_spec
from circuitsteer.runner.grid import Case as Case
from circuitsteer.runner.grid import expand as expand
from circuitsteer.runner.grid import intervention_grid as intervention_grid

__all__ = ["BACKENDS", "Case", "Shard", "expand", "intervention_grid", "plan_shards", "run_spec"]
