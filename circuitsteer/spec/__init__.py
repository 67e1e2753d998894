"""Analysis specs: YAML files in ``analyses/`` that declare a model, a task, a circuit, steering
vectors and a list of analyses (with their parameters, metrics and the report to make).

* :func:`load_spec` reads, validates (pydantic at the YAML boundary) and resolves a file into a
  frozen :class:`Spec` (every default filled in); :func:`load_spec_text` does the same for text.
* Errors are :class:`~circuitsteer.errors.SpecError`: file, offending key, its line, and the
  nearest valid key or value.
* :data:`KINDS`: the analysis kinds (``grid``, ``head_ablation``, ``compare_ablation_addition``,
  ``downstream_effects``, ``coefficient_sweep``, ``faithfulness``, ``pca_study``, ``discovery``).

The format is documented in docs/specs.md; :mod:`circuitsteer.runner` runs a spec.

Example:
    >>> from circuitsteer.spec import load_spec_text
    >>> spec = load_spec_text('''
    ... model: ioi-circuit
    ... task: {name: ioi, n: 16}
    ... analyses:
    ...   - {name: heads, kind: head_ablation, modes: [zero, resample]}
    ... ''', name="demo")
    >>> spec.name, spec.analyses[0].params["metric"], spec.analyses[0].params["positions"]
    ('demo', ['logit_diff'], 'all')
"""

from circuitsteer.errors import SpecError as SpecError
from circuitsteer.spec._load import load_spec as load_spec
from circuitsteer.spec._load import load_spec_text as load_spec_text
from circuitsteer.spec._load import spec_from_dict as spec_from_dict
from circuitsteer.spec._schema import KIND_MODELS as _KIND_MODELS
from circuitsteer.spec._types import AnalysisSpec as AnalysisSpec
from circuitsteer.spec._types import Spec as Spec
from circuitsteer.spec._types import TaskSpec as TaskSpec
from circuitsteer.spec._types import VectorSpec as VectorSpec

KINDS: tuple[str, ...] = tuple(_KIND_MODELS)

__all__ = [
    "KINDS", "AnalysisSpec", "Spec", "SpecError", "TaskSpec", "VectorSpec", "load_spec",
    "load_spec_text", "spec_from_dict",
]  # fmt: skip
