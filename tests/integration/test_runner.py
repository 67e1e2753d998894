"""The local runner on the zoo model: the run folder's files, tables equal to calling the
analysis functions directly, identical reruns, every kind, a crash resumed, bad input before
any work, and the Ray backend missing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

import circuitsteer as cs
from circuitsteer.runner import _kinds
from circuitsteer.runner._store import tidy_for_parquet

SMALL = """\
name: small
model: ioi-circuit
task: {name: ioi, n: 8, seed: 1}
circuit: ioi-circuit/ioi
vectors:
  v: {recipe: mean_difference, site: a2.h1, positions: END}
analyses:
  - name: grid
    kind: grid
    sites: [a0.h1, a1.h3, m0]
    positions: [all, END]
    operations:
      - {op: ablate, modes: [zero, mean, resample]}
      - {op: scale, factors: [0.5]}
      - {op: add, vectors: [v], coefs: [1, 2]}
    n_boot: 50
    shard_size: 5
  - {name: heads, kind: head_ablation, modes: [zero, resample], layers: [0, 1], n_boot: 50}
report: {title: small}
"""

ALL_KINDS = SMALL.replace(
    "vectors:\n", "vectors:\n  pc: {recipe: pca, site: resid_pre.2, positions: all, component: 1}\n"
).replace(
    "report: {title: small}\n",
    """\
  - {name: cmp, kind: compare_ablation_addition, coefs: [1], nodes: [a1.h3, a2.h4, m3], vectors: [v], n_boot: 20, nodes_per_shard: 2}
  - name: down
    kind: downstream_effects
    interventions:
      - {op: ablate, node: a1.h3, positions: S2, mode: resample}
      - {op: add, vector: v, coef: 4, positions: END}
  - {name: sweep, kind: coefficient_sweep, vectors: [v, pc], coefs: [0, 4], neutral_n: 4, n_diag: 2, n_boot: 20}
  - name: faith
    kind: faithfulness
    ablations: [mean]
    levels: [node, edge]
    n_boot: 20
    curve: {scores: ioi-circuit/eap-ig, fractions: [0.1, 1.0]}
  - {name: pca, kind: pca_study, sites: [resid_pre.2], k: 1, coefs: [2], n_boot: 20}
  - {name: eap, kind: discovery, method: eap}
""",
)


def _plain(df: pd.DataFrame) -> pd.DataFrame:
    """Missing values as None in object columns (NaN vs None is a dtype detail)."""
    return df.astype(object).where(df.notna(), None)


@pytest.fixture(scope="module")
def small_spec(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("specs") / "small.yaml"
    p.write_text(SMALL)
    return p


@pytest.fixture(scope="module")
def small_run(small_spec, tmp_path_factory) -> Path:
    return cs.runner.run_spec(small_spec, runs_dir=tmp_path_factory.mktemp("runs"), quiet=True)


def test_run_folder(small_run, small_spec):
    spec = cs.spec.load_spec(small_spec)
    assert small_run.name.startswith("small-") and small_run.name.endswith(spec.digest[:8])
    assert yaml.safe_load((small_run / "spec.yaml").read_text()) == spec.to_dict()
    meta = json.loads((small_run / "meta.json").read_text())
    assert meta["status"] == "complete" and meta["spec_digest"] == spec.digest
    assert meta["seed"] == 0 and meta["task_seed"] == 1 and len(meta["model"]["hash"]) == 64
    assert meta["versions"]["torch"] and meta["versions"]["pandas"] and meta["versions"]["python"]
    assert {"load_s", "shards_s", "total_s"} <= set(meta["timings"])
    # grid: 3 sites x 2 positions x 4 + 2 positions x 2 coefs = 28 variants -> 6 shards; heads: 2
    shards = sorted((small_run / "shards").glob("*.parquet"))
    assert (
        [p.name for p in shards]
        == [f"{i:05d}.parquet" for i in range(8)]
        == sorted(f"{k}.parquet" for k in meta["shards"])
    )
    df = pd.read_parquet(small_run / "results.parquet")
    parts = pd.concat([pd.read_parquet(p) for p in shards], ignore_index=True)
    pd.testing.assert_frame_equal(_plain(df), _plain(parts), check_dtype=False)
    assert list(df.columns[:12]) == ["analysis", "kind", *cs.analysis.COLUMNS]
    assert df.groupby("analysis", sort=False).size().to_dict() == {"grid": 28, "heads": 32}
    assert not list(small_run.rglob(".*tmp*"))


def test_grid_equals_direct_call(small_run, small_spec):
    spec = cs.spec.load_spec(small_spec)
    model = cs.load_model("ioi-circuit")
    task = cs.tasks.ioi(model, n=8, seed=1)
    v = cs.vectors.mean_difference(model, "a2.h1", task, positions="END")
    entry = spec.analysis("grid")
    cases = cs.runner.expand(entry.params, model.shape, vector_sites={"v": "a2.h1"})
    direct = cs.runner.intervention_grid(model, task, cases, {"v": v}, metric="logit_diff",
                                         n_boot=50, seed=0)  # fmt: skip
    got = pd.read_parquet(small_run / "results.parquet")
    got = got[got.analysis == "grid"].drop(columns=["analysis", "kind"]).dropna(axis=1, how="all")
    expected = tidy_for_parquet(direct).dropna(axis=1, how="all")
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected, check_dtype=False)
    # spot-check one row against a plain engine run
    row = got[(got.node == "a1.h3") & (got["mode"] == "zero") & (got.positions == "END")].iloc[0]
    logits, _ = cs.engine.run(model, task, [cs.Ablate(cs.Site("a1.h3", positions="END"))])
    assert row.value == pytest.approx(float(cs.metrics.logit_diff(logits, task).mean()), abs=1e-5)


def test_head_ablation_equals_compare(small_run):
    model = cs.load_model("ioi-circuit")
    task = cs.tasks.ioi(model, n=8, seed=1)
    heads = [h for h in cs.nodes.all_heads(model.shape) if h.startswith(("a0.", "a1."))]
    direct = cs.analysis.compare_ablation_addition(model, task, None, coefs=(), nodes=heads,
                                                   modes=["zero", "resample"], random=False,
                                                   n_boot=50, positions="all")  # fmt: skip
    got = pd.read_parquet(small_run / "results.parquet")
    got = got[got.analysis == "heads"].reset_index(drop=True)
    assert list(got.node) == list(direct.node)
    assert got.value.tolist() == pytest.approx(direct.value.tolist(), abs=0)
    assert got.effect_lo.tolist() == pytest.approx(direct.effect_lo.tolist(), abs=0)
    assert (got.node == "a" + got.layer.astype(str) + ".h" + got["head"].astype(str)).all()


def test_two_runs_identical(small_run, small_spec, tmp_path):
    again = cs.runner.run_spec(small_spec, runs_dir=tmp_path, quiet=True)
    assert again.name != small_run.name or again.parent != small_run.parent
    pd.testing.assert_frame_equal(pd.read_parquet(again / "results.parquet"),
                                  pd.read_parquet(small_run / "results.parquet"))  # fmt: skip


def test_every_kind_runs(tmp_path):
    p = tmp_path / "all.yaml"
    p.write_text(ALL_KINDS)
    run = cs.runner.run_spec(p, runs_dir=tmp_path / "runs", quiet=True)
    df = pd.read_parquet(run / "results.parquet")
    kinds = df.groupby("kind", sort=False).size()
    assert set(kinds.index) == set(cs.spec.KINDS), kinds
    assert (df.groupby("analysis", sort=False).kind.nunique() == 1).all()
    down = df[df.analysis == "down"]
    assert down.intervention.nunique() == 2 and set(down.node_kind.dropna()) <= {"head", "mlp", "logits"}  # fmt: skip
    assert set(df[df.analysis == "sweep"].vector) == {"v", "pc"}
    eap = df[df.analysis == "eap"]
    assert len(eap) == len(cs.full_edge_graph(cs.load_model("ioi-circuit").shape).edge_keys())
    assert set(df[df.analysis == "faith"].metric) >= {"faithfulness", "cpr", "cmd"}
    # compare: node i's random control seeded seed + i as in one call
    model = cs.load_model("ioi-circuit")
    task = cs.tasks.ioi(model, n=8, seed=1)
    v = cs.vectors.mean_difference(model, "a2.h1", task, positions="END")
    direct = cs.analysis.compare_ablation_addition(model, task, cs.load_circuit("ioi-circuit/ioi"),
                                                   vectors={"v": v}, coefs=[1],
                                                   nodes=["a1.h3", "a2.h4", "m3"], n_boot=20)  # fmt: skip
    got = df[df.analysis == "cmp"].reset_index(drop=True)
    assert list(got.node) == list(direct.node) and list(got.vector.fillna("-")) == list(direct.vector.fillna("-"))  # fmt: skip
    assert got.value.tolist() == pytest.approx(direct.value.tolist(), abs=0)


def test_crash_leaves_shards_and_resumes(small_spec, small_run, tmp_path, monkeypatch):
    real = _kinds.RUNNERS["head_ablation"]

    def boom(*a, **k):
        raise RuntimeError("simulated crash")

    monkeypatch.setitem(_kinds.RUNNERS, "head_ablation", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        cs.runner.run_spec(small_spec, runs_dir=tmp_path, quiet=True)
    (run,) = tmp_path.iterdir()
    written = {p.name: p.stat().st_mtime_ns for p in (run / "shards").glob("*.parquet")}
    assert len(written) == 6 and not (run / "results.parquet").exists()
    assert json.loads((run / "meta.json").read_text())["status"] == "running"
    monkeypatch.setitem(_kinds.RUNNERS, "head_ablation", real)
    calls = []
    monkeypatch.setitem(_kinds.RUNNERS, "grid", lambda *a: calls.append(a))  # must not run
    out = cs.runner.run_spec(small_spec, runs_dir=tmp_path, resume=run.name, quiet=True)
    assert out == run and not calls
    assert {p.name: p.stat().st_mtime_ns for p in (run / "shards").glob("0000[0-5].parquet")} == written  # fmt: skip
    pd.testing.assert_frame_equal(pd.read_parquet(run / "results.parquet"),
                                  pd.read_parquet(small_run / "results.parquet"))  # fmt: skip
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "complete" and len(meta["resumed"]) == 1


def test_bad_input_creates_no_run_folder(small_spec, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMALL.replace("kind: grid", "kind: gird"))
    runs = tmp_path / "runs"
    with pytest.raises(cs.SpecError, match="did you mean 'grid'"):
        cs.runner.run_spec(bad, runs_dir=runs)
    with pytest.raises(cs.SpecError, match="unknown backend"):
        cs.runner.run_spec(small_spec, runs_dir=runs, backend="spark")
    with pytest.raises(cs.RunError, match="no run 'nope'"):
        cs.runner.run_spec(small_spec, runs_dir=runs, resume="nope")
    assert not runs.exists()


def test_resume_refuses_another_spec(small_run, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text(SMALL.replace("n: 8", "n: 9"))
    with pytest.raises(cs.RunError, match="different spec"):
        cs.runner.run_spec(other, runs_dir=small_run.parent, resume=small_run.name, quiet=True)


def test_ray_missing_is_a_typed_error(small_spec, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(cs.BackendUnavailableError) as e:
        cs.runner.run_spec(small_spec, backend="ray", runs_dir=tmp_path / "runs")
    assert "pip install 'circuitsteer[ray]'" in str(e.value)
    assert not (tmp_path / "runs").exists()


def test_only_kinds(small_spec, tmp_path):
    run = cs.runner.run_spec(small_spec, runs_dir=tmp_path, quiet=True, only_kinds=["head_ablation"])  # fmt: skip
    df = pd.read_parquet(run / "results.parquet")
    assert set(df.analysis) == {"heads"}
    with pytest.raises(cs.SpecError, match="no analysis of kind"):
        cs.runner.run_spec(small_spec, runs_dir=tmp_path, only_kinds=["discovery"])


def test_error_inside_a_shard_keeps_the_finished_ones(tmp_path):
    p = tmp_path / "late.yaml"
    p.write_text(
        SMALL.replace(
            "report: {title: small}\n",
            """\
  - name: down
    kind: downstream_effects
    circuit: false
    at: IO2
    interventions: [{op: ablate, node: a1.h3, mode: zero}]
""",
        )
    )
    with pytest.raises(cs.AnalysisError, match="no position 'IO2'"):
        cs.runner.run_spec(p, runs_dir=tmp_path / "runs", quiet=True)
    (run,) = (tmp_path / "runs").iterdir()
    assert len(list((run / "shards").glob("*.parquet"))) == 8  # grid and heads are kept
    assert json.loads((run / "meta.json").read_text())["status"] == "running"
