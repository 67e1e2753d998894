"""A small run directory written without the runner, for tests, docs and trying reports out.

:func:`write_example_run` calls the analysis functions directly on the zoo model
``ioi-circuit`` (4 layers x 8 heads) with its shipped circuit and writes ``spec.yaml``,
``meta.json`` and ``results.parquet`` as ``circuitsteer run`` does: one entry of every kind the
report knows (and one it does not), ``n`` IOI prompts, a few seconds on a CPU.

Example:
    >>> from circuitsteer.report._example import write_example_run
    >>> run_dir = write_example_run("/tmp/example-run", n=24)     # doctest: +SKIP
    >>> import circuitsteer as cs
    >>> cs.report.render_report(run_dir)                           # doctest: +SKIP
    PosixPath('/tmp/example-run/report')

    ``python -m circuitsteer.report._example DIR`` does both.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

MODEL, CIRCUIT = "ioi-circuit", "ioi-circuit/ioi"


def _spec(n: int, seed: int, title: str | None) -> dict[str, Any]:
    return {
        "name": "ioi-circuit-example",
        "model": MODEL,
        "task": {"name": "ioi", "n": n, "seed": seed, "corruption": "ABC"},
        "circuit": CIRCUIT,
        "analyses": [
            {"name": "heads", "kind": "head_ablation", "mode": "resample", "metric": "logit_diff"},
            {"name": "ablation-vs-addition", "kind": "compare_ablation_addition", "coefs": [1, 4]},
            {"name": "induction-head-effects", "kind": "downstream_effects",
             "intervention": {"op": "ablate", "node": "a1.h3", "positions": "S2", "mode": "resample"}},
            {"name": "sweep", "kind": "coefficient_sweep", "site": "resid_pre.2",
             "vectors": ["mean_diff", "random"], "coefs": [1, 2, 4, 8, 16, 32, -16],
             "kl_threshold": 1.0},
            {"name": "faithfulness", "kind": "faithfulness", "ablations": ["zero", "mean", "resample"],
             "level": "node", "curve": {"scores": "eap", "ablation": "resample"}},
            {"name": "pca", "kind": "pca_study", "site": "resid_pre.2", "k": 2, "coefs": [2, 8],
             "positions": "END"},
            {"name": "eap", "kind": "discovery", "method": "eap", "ablation": "resample"},
            {"name": "grid", "kind": "grid", "interventions": [
                {"variant": "zero a1.h3", "op": "ablate", "node": "a1.h3", "mode": "zero"},
                {"variant": "zero a3.h6", "op": "ablate", "node": "a3.h6", "mode": "zero"}]},
            {"name": "head-scores", "kind": "head_scores", "n": 20},
        ],
        "report": {"title": title or "IOI circuit of the ioi-circuit zoo model"},
    }  # fmt: skip


def example_results(n: int = 24, seed: int = 0) -> tuple[pd.DataFrame, dict[str, float]]:
    """The rows of every analysis of the example spec, with ``analysis`` and ``kind`` columns,
    and the seconds each took."""
    import circuitsteer as cs

    model = cs.load_model(MODEL)
    task = cs.tasks.ioi(model, n=n, seed=seed)
    circuit = cs.load_circuit(CIRCUIT)
    quiet: dict[str, Any] = {"progress": False}
    heads = [f"a{l}.h{h}" for l in range(model.shape.n_layers) for h in range(model.shape.n_heads)]  # noqa: E741
    v = cs.vectors.mean_difference(model, "resid_pre.2", task, positions="END")
    scores = cs.discovery.eap(model, task)
    jobs: dict[str, tuple[str, Any]] = {
        "heads": ("head_ablation", lambda: cs.analysis.compare_ablation_addition(
            model, task, None, nodes=heads, coefs=[], modes=["resample"], random=False,
            n_boot=300, **quiet)),
        "ablation-vs-addition": ("compare_ablation_addition", lambda: cs.analysis.compare_ablation_addition(
            model, task, circuit, coefs=[1, 4], n_boot=300, **quiet)),
        "induction-head-effects": ("downstream_effects", lambda: cs.analysis.downstream_effects(
            model, task, circuit, cs.Ablate(cs.Site("a1.h3", positions="S2"), mode="resample",
                                            reference=task.corrupted)).assign(
            intervention="ablate resample a1.h3@S2")),
        "sweep": ("coefficient_sweep", lambda: pd.concat([cs.analysis.coefficient_sweep(
            model, vec, coefs=[1, 2, 4, 8, 16, 32, -16], task=task,
            neutral=cs.tasks.neutral(model, n=12), n_diag=4, **quiet).assign(vector=label)
            for label, vec in (("mean_diff", v), ("random", cs.vectors.random_like(v, seed=1)))])),
        "faithfulness": ("faithfulness", lambda: pd.concat(
            [cs.analysis.faithfulness(model, task, circuit, ablation=a, n_boot=300, **quiet)
             for a in ("zero", "mean", "resample")]
            + [cs.analysis.faithfulness_curve(model, task, scores.series().to_dict(), **quiet)
               .assign(scores="eap")])),
        "pca": ("pca_study", lambda: cs.analysis.pca_study(
            model, task, "resid_pre.2", k=2, coefs=[2, 8], positions="END", n_boot=300, **quiet)),
        "eap": ("discovery", lambda: scores.frame.rename(columns={"edge": "node", "score": "value"})
                .assign(model=MODEL, operation="eap", mode="resample", metric="logit_diff")),
        "grid": ("grid", lambda: cs.analysis.compare_ablation_addition(
            model, task, None, nodes=["a1.h3", "a3.h6"], coefs=[], modes=["zero"], random=False,
            n_boot=300, **quiet).assign(variant=lambda d: "zero " + d["node"])),
        "head-scores": ("head_scores", lambda: cs.analysis.head_scores(model, n=20)),
    }  # fmt: skip
    frames, timings = [], {}
    for name, (kind, fn) in jobs.items():
        t0 = time.perf_counter()
        df = fn().reset_index(drop=True)
        timings[name] = round(time.perf_counter() - t0, 3)
        # some analyses have a column of their own named kind (a node's kind, a score's kind)
        df = df.rename(columns={"kind": "node_kind"})
        df.insert(0, "kind", kind)
        df.insert(0, "analysis", name)
        frames.append(df)
    return tidy(pd.concat(frames, ignore_index=True)), timings


def tidy(df: Any) -> pd.DataFrame:
    """Object columns that mix numbers, booleans and None made Parquet-safe (as text where
    they hold text, else numeric)."""
    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object:
            vals = out[c].dropna()
            if vals.map(lambda x: isinstance(x, str)).any():
                out[c] = out[c].map(
                    lambda x: x if isinstance(x, str) else None if pd.isna(x) else str(x)
                )
            elif vals.map(lambda x: isinstance(x, bool)).all():
                out[c] = out[c].astype("boolean")
            else:
                out[c] = pd.to_numeric(out[c], errors="coerce")
    return out


def write_example_run(
    path: str | Path, n: int = 24, seed: int = 0, title: str | None = None
) -> Path:
    """Write the example run (spec.yaml, meta.json, results.parquet) into ``path``; return it."""
    import torch
    import yaml

    import circuitsteer as cs

    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results, timings = example_results(n, seed)
    spec = _spec(n, seed, title)
    weights = sorted(Path(cs.__file__).parent.joinpath("zoo", MODEL).glob("*.safetensors"))
    digest = hashlib.sha256(weights[0].read_bytes()).hexdigest()[:16] if weights else None
    meta = {
        "run_id": p.name, "spec": spec["name"], "seed": seed,
        "versions": {"circuitsteer": cs.__version__, "torch": torch.__version__,
                     "pandas": pd.__version__, "python": platform.python_version()},
        "model": {"name": MODEL, "hash": f"sha256:{digest}" if digest else None},
        "timings": {"total_s": round(time.perf_counter() - t0, 3), "analyses_s": timings},
        "written_by": "circuitsteer.report._example (not the runner)",
    }  # fmt: skip
    (p / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    (p / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    results.to_parquet(p / "results.parquet", index=False)
    return p


def cached_example(base: str | Path, n: int = 24) -> Path:
    """The example run (with its report in ``report/``) under ``base``, made once: later calls
    with the same ``base`` reuse it (tests in several modules share one)."""
    from circuitsteer.report import render_report

    run = Path(base) / "example-run"
    if not (run / "report" / "report.html").is_file():
        write_example_run(run, n=n)
        render_report(run)
    return run


if __name__ == "__main__":  # pragma: no cover
    from circuitsteer.report import render_report

    target = write_example_run(sys.argv[1] if len(sys.argv) > 1 else "runs/example")
    print(render_report(target))
