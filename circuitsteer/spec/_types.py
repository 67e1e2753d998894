"""A validated spec as frozen dataclasses: what the runner reads (no pydantic inside).

``Spec.to_dict()`` is the *resolved* spec (every default filled in, the name set), which the
runner writes to ``runs/<id>/spec.yaml``; ``Spec.digest`` hashes it (the run id's suffix, and
the check that ``--resume`` continues the same spec).

Example:
    >>> t = TaskSpec(name="ioi", n=8, seed=0, options={})
    >>> a = AnalysisSpec(name="heads", kind="head_ablation", params={"modes": ["zero"]})
    >>> s = Spec(name="demo", model="toy-ioi", task=t, circuit=None, seed=0, vectors={},
    ...          metrics=("logit_diff",), analyses=(a,), report={}, description=None)
    >>> s.to_dict()["analyses"][0]
    {'name': 'heads', 'kind': 'head_ablation', 'modes': ['zero']}
    >>> len(s.digest)
    64
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TaskSpec:
    """The task: ``cs.tasks.<name>(model, n=n, seed=seed, **options)``."""

    name: str
    n: int
    seed: int
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "n": self.n, "seed": self.seed, "options": dict(self.options)}


@dataclass(frozen=True)
class VectorSpec:
    """A steering vector: extracted by ``recipe`` (``mean_difference`` at ``site`` and
    ``positions`` of the task's clean minus corrupted prompts; ``pca``: principal direction
    ``component`` of the activations there, unit norm or one standard deviation long
    (``scale``); ``random_like`` the vector ``of`` with a seeded matched-norm random direction)
    or loaded from ``file``."""

    name: str
    recipe: str | None
    file: str | None
    site: str | None
    positions: Any
    of: str | None
    seed: int
    component: int = 0
    scale: str = "std"

    def to_dict(self) -> dict[str, Any]:
        d = {"recipe": self.recipe, "file": self.file, "site": self.site,
             "positions": self.positions, "of": self.of, "seed": self.seed,
             "component": self.component, "scale": self.scale}  # fmt: skip
        return d


@dataclass(frozen=True)
class AnalysisSpec:
    """One entry of ``analyses:``: its unique ``name``, its ``kind`` and the kind's parameters
    with every default filled in (``metric`` resolved from the spec's ``metrics``)."""

    name: str
    kind: str
    params: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, **self.params}


@dataclass(frozen=True)
class Spec:
    """A whole spec; see docs/specs.md."""

    name: str
    model: str
    task: TaskSpec
    circuit: str | None
    seed: int
    vectors: dict[str, VectorSpec]
    metrics: tuple[str, ...]
    analyses: tuple[AnalysisSpec, ...]
    report: dict[str, Any]
    description: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec as plain data (what ``spec.yaml`` of a run holds)."""
        return {
            "name": self.name,
            "description": self.description,
            "model": self.model,
            "task": self.task.to_dict(),
            "circuit": self.circuit,
            "seed": self.seed,
            "vectors": {k: v.to_dict() for k, v in self.vectors.items()},
            "metrics": list(self.metrics),
            "analyses": [a.to_dict() for a in self.analyses],
            "report": dict(self.report),
        }

    @property
    def digest(self) -> str:
        """sha256 of the resolved spec (canonical JSON; the description is not hashed)."""
        d = self.to_dict()
        d.pop("description", None)
        text = json.dumps(d, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def analysis(self, name: str) -> AnalysisSpec:
        """The analysis entry called ``name``."""
        for a in self.analyses:
            if a.name == name:
                return a
        raise KeyError(name)
