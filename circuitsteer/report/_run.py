"""Reading a run directory (``runs/<id>/``): the resolved spec, the provenance and the results.

A run directory holds ``spec.yaml`` (the resolved spec: ``name``, ``model``, ``task``,
``circuit``, ``analyses`` (entries with a unique ``name`` and a ``kind``), ``report``),
``meta.json`` (versions, seed, model hash, timings) and ``results.parquet`` (one tidy table:
``analysis`` = the entry's name, ``kind``, then the analysis function's own columns).

Example:
    >>> from circuitsteer.report import load_run
    >>> run = load_run("runs/ioi-demo")                     # doctest: +SKIP
    >>> run.analyses[0]["kind"], len(run.rows(run.analyses[0]["name"]))  # doctest: +SKIP
    ('head_ablation', 32)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from circuitsteer.errors import ReportError

REQUIRED_COLUMNS = ("analysis", "kind")


@dataclass
class Run:
    """One run directory, read: ``spec`` (dict), ``meta`` (dict), ``results`` (DataFrame)."""

    path: Path
    spec: dict[str, Any]
    meta: dict[str, Any]
    results: pd.DataFrame
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The spec's ``name`` (else the folder's name)."""
        return str(self.spec.get("name") or self.path.name)

    @property
    def title(self) -> str:
        """``report.title`` of the spec, else its name."""
        rep = self.spec.get("report") or {}
        return str((rep.get("title") if isinstance(rep, dict) else None) or self.name)

    @property
    def analyses(self) -> list[dict[str, Any]]:
        """The spec's analysis entries, in spec order, followed by any analysis that has rows
        in the results but no entry (named by the rows, kind from the rows)."""
        entries = [dict(a) for a in (self.spec.get("analyses") or []) if isinstance(a, dict)]
        for i, a in enumerate(entries):
            a.setdefault("name", f"analysis_{i}")
        known = {str(a["name"]) for a in entries}
        for name in dict.fromkeys(self.results["analysis"].astype(str)):
            if name not in known:
                kinds = self.results.loc[self.results["analysis"].astype(str) == name, "kind"]
                entries.append({"name": name, "kind": str(kinds.iloc[0]) if len(kinds) else "?"})
        return entries

    def rows(self, analysis: str) -> Any:
        """The result rows of one analysis entry (a DataFrame), with columns that are empty
        there dropped."""
        df: Any = self.results[self.results["analysis"].astype(str) == str(analysis)]
        return df.dropna(axis=1, how="all").reset_index(drop=True)


def load_run(path: str | Path) -> Run:
    """Read a run directory; :class:`~circuitsteer.errors.ReportError` when it is not one.

    >>> load_run("/nonexistent")
    Traceback (most recent call last):
    ...
    circuitsteer.errors.ReportError: /nonexistent is not a run directory (no such folder). Fix: ...
    """
    p = Path(path)
    fix = "pass a folder written by `circuitsteer run` (runs/<id>/ with spec.yaml and results.parquet)"
    if not p.is_dir():
        raise ReportError(f"{p} is not a run directory (no such folder)", fix=fix)
    missing = [f for f in ("spec.yaml", "results.parquet") if not (p / f).is_file()]
    if missing:
        raise ReportError(f"{p} is not a run directory (no {' or '.join(missing)})", fix=fix)
    spec = _read_spec(p / "spec.yaml")
    meta: dict[str, Any] = {}
    warnings: list[str] = []
    if (p / "meta.json").is_file():
        try:
            loaded = json.loads((p / "meta.json").read_text(encoding="utf-8"))
            meta = loaded if isinstance(loaded, dict) else {"meta": loaded}
        except (OSError, ValueError) as e:
            warnings.append(f"meta.json could not be read ({e}); provenance is incomplete")
    else:
        warnings.append("the run has no meta.json; provenance is incomplete")
    try:
        results = pd.read_parquet(p / "results.parquet")
    except Exception as e:  # noqa: BLE001 - any reader error means the same to the user
        raise ReportError(
            f"{p / 'results.parquet'} cannot be read: {type(e).__name__}: {e}",
            fix="re-run or resume the run so that results.parquet is rewritten",
        ) from e
    lacking = [c for c in REQUIRED_COLUMNS if c not in results.columns]
    if lacking:
        raise ReportError(
            f"{p / 'results.parquet'} lacks the column(s) {lacking}",
            fix="results must have 'analysis' (the spec entry's name) and 'kind' columns",
        )
    return Run(p, spec, meta, results, warnings)


def _read_spec(path: Path) -> dict[str, Any]:
    import yaml

    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ReportError(
            f"{path} cannot be read as YAML: {e}", fix="the run's spec.yaml must be valid YAML"
        ) from e
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise ReportError(
            f"{path} is not a mapping", fix="spec.yaml must be a mapping with name, model, analyses"
        )
    return spec
