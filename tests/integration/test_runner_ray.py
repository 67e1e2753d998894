"""The Ray backend on a local Ray instance (2 CPUs, no dashboard): the same tables as the local
backend, one model load per actor, and a resume across backends."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

import circuitsteer as cs

ray = pytest.importorskip("ray", reason="the Ray backend's test needs the extra: pip install 'circuitsteer[ray]'")  # fmt: skip

ROOT = Path(__file__).resolve().parents[2]

SPEC = """\
name: raysmall
model: ioi-circuit
task: {name: ioi, n: 8, seed: 2}
circuit: ioi-circuit/ioi
vectors:
  v: {recipe: mean_difference, site: a2.h1, positions: END}
analyses:
  - name: grid
    kind: grid
    sites: [a0.h1, a1.h3, m0, m2]
    positions: [all, END]
    operations:
      - {op: ablate, modes: [zero, mean, resample]}
      - {op: add, vectors: [v], coefs: [1, 4]}
    n_boot: 50
    shard_size: 6
  - {name: cmp, kind: compare_ablation_addition, coefs: [2], nodes: [a1.h3, m3], n_boot: 20, nodes_per_shard: 1}
"""


@pytest.fixture(scope="module")
def ray_instance():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("spec") / "raysmall.yaml"
    p.write_text(SPEC)
    return p


def test_ray_equals_local(ray_instance, spec_path, tmp_path):
    local = cs.runner.run_spec(spec_path, runs_dir=tmp_path / "local", quiet=True)
    remote = cs.runner.run_spec(spec_path, backend="ray", runs_dir=tmp_path / "ray", quiet=True)
    pd.testing.assert_frame_equal(pd.read_parquet(remote / "results.parquet"),
                                  pd.read_parquet(local / "results.parquet"))  # fmt: skip
    meta = json.loads((remote / "meta.json").read_text())
    local_meta = json.loads((local / "meta.json").read_text())
    assert meta["backend"] == "ray" and meta["status"] == "complete"
    assert meta["model"]["hash"] == local_meta["model"]["hash"]  # every worker loaded the same
    assert len(meta["timings"]["worker_load_s"]) == 2  # one model load per actor
    assert {s["backend"] for s in meta["shards"].values()} == {"ray"}


def test_resume_local_run_on_ray(ray_instance, spec_path, tmp_path):
    local = cs.runner.run_spec(spec_path, runs_dir=tmp_path, quiet=True)
    reference = pd.read_parquet(local / "results.parquet")
    for p in sorted((local / "shards").glob("*.parquet"))[3:]:
        p.unlink()  # as if the run had stopped after 3 shards
    (local / "results.parquet").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in (local / "shards").glob("*.parquet")}
    cs.runner.run_spec(spec_path, backend="ray", runs_dir=tmp_path, resume=local.name, quiet=True)
    assert {k: (local / "shards" / k).stat().st_mtime_ns for k in kept} == kept
    pd.testing.assert_frame_equal(pd.read_parquet(local / "results.parquet"), reference)


@pytest.mark.slow
def test_grid_500_both_backends(ray_instance, tmp_path):
    spec = ROOT / "analyses" / "grid_500.yaml"
    local = cs.runner.run_spec(spec, runs_dir=tmp_path / "local", quiet=True)
    remote = cs.runner.run_spec(spec, backend="ray", runs_dir=tmp_path / "ray", quiet=True)
    a = pd.read_parquet(local / "results.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(remote / "results.parquet"), a)
    assert len(a) == a.variant.nunique() == 504


def test_worker_typed_error_is_reraised(ray_instance, tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(
        SPEC.split("  - name: cmp")[0]
        + """\
  - name: down
    kind: downstream_effects
    at: IO2
    interventions: [{op: ablate, node: a1.h3, mode: zero}]
"""
    )
    with pytest.raises(cs.AnalysisError, match="no position 'IO2'"):
        cs.runner.run_spec(p, backend="ray", runs_dir=tmp_path / "runs", quiet=True)
    (run,) = (tmp_path / "runs").iterdir()
    assert json.loads((run / "meta.json").read_text())["status"] == "running"
