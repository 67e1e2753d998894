"""The YAML boundary: pydantic models of a spec file (strict about keys: ``extra="forbid"``).

Everything here is only the file's shape; :mod:`circuitsteer.spec._load` turns a validated
file into the frozen dataclasses of :mod:`circuitsteer.spec._types` and checks what pydantic
cannot (vector names, node names, task options, the model's shape).

Example:
    >>> m = TaskModel.model_validate({"name": "ioi", "n": 16})
    >>> m.n, m.seed
    (16, 0)
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Position = int | str
Positions = Position | list[Position]
MetricName = Literal["logit_diff", "prob_diff", "accuracy", "answer_loss", "kl", "top_token_change"]
Mode = Literal["zero", "mean", "resample"]
TASKS = ("ioi", "greater_than", "sentiment", "neutral")


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskModel(_Base):
    name: Literal["ioi", "greater_than", "sentiment", "neutral"] = "ioi"
    n: int = Field(100, ge=1)
    seed: int = 0
    options: dict[str, Any] = Field(default_factory=dict)


class VectorModel(_Base):
    recipe: Literal["mean_difference", "pca", "random_like"] | None = None
    file: str | None = None
    site: str | None = None
    positions: Positions = "END"
    of: str | None = None
    seed: int = 0
    component: int = Field(0, ge=0)
    scale: Literal["std", "unit"] = "std"

    @model_validator(mode="after")
    def _one_source(self) -> VectorModel:
        if (self.recipe is None) == (self.file is None):
            raise ValueError(
                "give exactly one of 'recipe' (mean_difference, random_like) or 'file'"
            )
        if self.recipe in ("mean_difference", "pca") and not self.site:
            raise ValueError(f"recipe {self.recipe} needs a 'site' (e.g. a2.h1 or resid_pre.2)")
        if self.recipe == "random_like" and not self.of:
            raise ValueError("recipe random_like needs 'of': the name of the vector to match")
        return self


class ReportModel(BaseModel):
    """Read by the report builder (``circuitsteer.report``); other keys are kept for it."""

    model_config = ConfigDict(extra="allow", frozen=True)
    title: str | None = None
    out: str | None = None


# ---- grid operations -------------------------------------------------------------------


class AblateOp(_Base):
    op: Literal["ablate"]
    modes: list[Mode] = Field(default_factory=lambda: ["zero", "mean", "resample"], min_length=1)


class ScaleOp(_Base):
    op: Literal["scale"]
    factors: list[float] = Field(min_length=1)


class AddOp(_Base):
    op: Literal["add"]
    vectors: list[str] = Field(min_length=1)
    coefs: list[float] = Field(min_length=1)


class ProjectOutOp(_Base):
    op: Literal["project_out"]
    vectors: list[str] = Field(min_length=1)


Operation = Annotated[AblateOp | ScaleOp | AddOp | ProjectOutOp, Field(discriminator="op")]


# ---- analyses --------------------------------------------------------------------------


class _Analysis(_Base):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    metric: MetricName | list[MetricName] | None = None


class GridAnalysis(_Analysis):
    kind: Literal["grid"]
    sites: str | list[str] = "all_heads"
    positions: list[Positions] = Field(default_factory=lambda: ["all"], min_length=1)
    operations: list[Operation] = Field(min_length=1)
    n_boot: int = Field(1000, ge=0)
    shard_size: int = Field(128, ge=1)
    max_batch: int = Field(256, ge=1)


class HeadAblationAnalysis(_Analysis):
    kind: Literal["head_ablation"]
    modes: list[Mode] = Field(default_factory=lambda: ["resample"], min_length=1)
    positions: Positions = "all"
    layers: list[int] | None = None
    n_boot: int = Field(1000, ge=1)
    heads_per_shard: int = Field(8, ge=1)


class CompareAnalysis(_Analysis):
    kind: Literal["compare_ablation_addition"]
    coefs: list[float] = Field(default_factory=lambda: [0.5, 1.0, 2.0])
    modes: list[Mode] = Field(default_factory=lambda: ["zero", "mean", "resample"], min_length=1)
    nodes: list[str] | None = None
    positions: Positions | None = None
    random: bool = True
    vectors: list[str] = Field(default_factory=list)
    n_boot: int = Field(1000, ge=1)
    nodes_per_shard: int = Field(4, ge=1)


class InterventionModel(_Base):
    op: Literal["ablate", "add", "scale", "project_out"]
    node: str | None = None
    positions: Positions = "all"
    mode: Mode = "resample"
    vector: str | None = None
    coef: float = 1.0
    factor: float = 0.0

    @model_validator(mode="after")
    def _needs(self) -> InterventionModel:
        if self.op in ("add", "project_out") and not self.vector:
            raise ValueError(f"op {self.op} needs 'vector' (a name from 'vectors:')")
        if self.op in ("ablate", "scale") and not self.node:
            raise ValueError(f"op {self.op} needs 'node' (e.g. a1.h3 or m2)")
        return self


class DownstreamAnalysis(_Analysis):
    kind: Literal["downstream_effects"]
    interventions: list[InterventionModel] = Field(min_length=1)
    nodes: str | list[str] | None = None
    at: str | list[str] = "END"
    circuit: bool = True


class SweepAnalysis(_Analysis):
    kind: Literal["coefficient_sweep"]
    vectors: list[str] = Field(min_length=1)
    coefs: list[float] = Field(
        default_factory=lambda: [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
    )
    positions: Positions = "all"
    kl_threshold: float = 1.0
    n_diag: int = Field(32, ge=1)
    neutral_n: int = Field(100, ge=1)
    n_boot: int = Field(1000, ge=1)


class CurveModel(_Base):
    scores: str
    fractions: list[float] | None = None
    level: Literal["edge", "node"] = "edge"
    ablation: Mode = "resample"


class FaithfulnessAnalysis(_Analysis):
    kind: Literal["faithfulness"]
    ablations: list[Mode] = Field(default_factory=lambda: ["mean"], min_length=1)
    levels: list[Literal["node", "edge"]] = Field(default_factory=lambda: ["node"], min_length=1)
    positions: Positions = "all"
    n_boot: int = Field(1000, ge=1)
    curve: CurveModel | None = None


class PcaAnalysis(_Analysis):
    kind: Literal["pca_study"]
    sites: list[str] = Field(min_length=1)
    k: int = Field(3, ge=1)
    coefs: list[float] = Field(default_factory=lambda: [1.0, 2.0, 4.0])
    positions: Positions = "all"
    scale: Literal["std", "unit"] = "std"
    n_boot: int = Field(1000, ge=1)


class DiscoveryAnalysis(_Analysis):
    kind: Literal["discovery"]
    method: Literal["acdc", "eap", "eap_ig"]
    ablation: Mode = "resample"
    positions: Positions = "all"
    threshold: float = Field(0.01, ge=0)
    steps: int = Field(5, ge=1)
    ig_method: Literal["inputs", "activations"] = "inputs"

    @field_validator("metric")
    @classmethod
    def _one_metric(cls, v: Any) -> Any:
        if isinstance(v, list) or v not in (None, "kl", "logit_diff"):
            raise ValueError("discovery takes one metric: 'kl' or 'logit_diff'")
        return v


Analysis = Annotated[
    GridAnalysis | HeadAblationAnalysis | CompareAnalysis | DownstreamAnalysis | SweepAnalysis
    | FaithfulnessAnalysis | PcaAnalysis | DiscoveryAnalysis,
    Field(discriminator="kind"),
]  # fmt: skip

KIND_MODELS: dict[str, type[_Analysis]] = {
    "grid": GridAnalysis,
    "head_ablation": HeadAblationAnalysis,
    "compare_ablation_addition": CompareAnalysis,
    "downstream_effects": DownstreamAnalysis,
    "coefficient_sweep": SweepAnalysis,
    "faithfulness": FaithfulnessAnalysis,
    "pca_study": PcaAnalysis,
    "discovery": DiscoveryAnalysis,
}
OP_MODELS: dict[str, type[_Base]] = {
    "ablate": AblateOp, "scale": ScaleOp, "add": AddOp, "project_out": ProjectOutOp,
}  # fmt: skip


class SpecModel(_Base):
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    model: str
    task: TaskModel = Field(default_factory=lambda: TaskModel.model_validate({}))
    circuit: str | None = None
    seed: int = 0
    vectors: dict[str, VectorModel] = Field(default_factory=dict)
    metrics: list[MetricName] = Field(default_factory=lambda: ["logit_diff"], min_length=1)
    analyses: list[Analysis] = Field(min_length=1)
    report: ReportModel = Field(default_factory=lambda: ReportModel.model_validate({}))
