"""``circuitsteer run`` through typer's CliRunner: exit codes 0 / 2 (bad input) / 1 (failure),
nothing created for bad input, resume, the Ray extra missing, and the report hook."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import circuitsteer as cs
from circuitsteer.cli import app

SPEC = """\
name: clismall
model: ioi-circuit
task: {name: ioi, n: 8, seed: 0}
analyses:
  - name: grid
    kind: grid
    sites: [a0.h1, m1]
    operations:
      - {op: ablate, modes: [zero, resample]}
    n_boot: 20
    shard_size: 2
"""


@pytest.fixture
def spec(tmp_path) -> Path:
    p = tmp_path / "clismall.yaml"
    p.write_text(SPEC)
    return p


def _run(*args: str):
    return CliRunner().invoke(app, ["run", *args])


def test_run_writes_a_run_and_resume_finishes_it(spec, tmp_path):
    runs = tmp_path / "runs"
    res = _run(str(spec), "--runs-dir", str(runs), "--quiet", "--no-report")
    assert res.exit_code == 0, res.output
    (run,) = runs.iterdir()
    assert f"run: {run}" in res.output.replace("\n", "")
    df = pd.read_parquet(run / "results.parquet")
    assert len(df) == 4 and set(df.analysis) == {"grid"}
    # resume a finished run: nothing to compute, same table
    before = {p.name: p.stat().st_mtime_ns for p in (run / "shards").iterdir()}
    res = _run(str(spec), "--runs-dir", str(runs), "--resume", run.name, "-q", "--no-report")
    assert res.exit_code == 0, res.output
    assert {p.name: p.stat().st_mtime_ns for p in (run / "shards").iterdir()} == before
    pd.testing.assert_frame_equal(pd.read_parquet(run / "results.parquet"), df)


@pytest.mark.parametrize(
    "edit, needle",
    [
        (("kind: grid", "kind: gridd"), "did you mean 'grid'"),
        (("sites: [a0.h1, m1]", "sites: [a0.h9, m1]"), "use heads 0..7"),
        (("n_boot: 20", "n_boots: 20"), "did you mean 'n_boot'"),
    ],
)
def test_bad_spec_exits_2_before_any_work(spec, tmp_path, edit, needle):
    spec.write_text(SPEC.replace(*edit))
    runs = tmp_path / "runs"
    res = _run(str(spec), "--runs-dir", str(runs))
    assert res.exit_code == 2, res.output
    assert needle in res.output.replace("\n", " ") and "clismall.yaml:" in res.output
    assert not runs.exists()


def test_bad_arguments_exit_2(spec, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    assert _run(str(tmp_path / "nope.yaml"), "--runs-dir", str(runs)).exit_code == 2
    res = _run(str(spec), "--runs-dir", str(runs), "--resume", "nope")
    assert res.exit_code == 2 and "no run 'nope'" in res.output
    assert _run(str(spec), "--backend", "spark").exit_code == 2  # typer's own check
    res = _run(str(spec), "--address", "auto", "--runs-dir", str(runs))
    assert res.exit_code == 2 and "--backend ray" in res.output
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    res = _run(str(spec), "--backend", "ray", "--runs-dir", str(runs))
    assert res.exit_code == 2 and "pip install 'circuitsteer[ray]'" in res.output
    assert not runs.exists()


def test_failure_exits_1(spec, tmp_path, monkeypatch):
    def crash(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(cs.runner, "run_spec", crash)
    res = _run(str(spec), "--runs-dir", str(tmp_path / "runs"), "-q")
    assert res.exit_code == 1 and "disk on fire" in res.output


def test_report_is_made_unless_no_report(spec, tmp_path, monkeypatch):
    calls: list[tuple[Path, Path | None]] = []

    def render_report(run_dir, out=None):
        calls.append((Path(run_dir), out))
        return Path(run_dir) / "report" if out is None else Path(out)

    monkeypatch.setattr("circuitsteer.report.render_report", render_report)
    res = _run(str(spec), "--runs-dir", str(tmp_path / "runs"), "-q")
    assert res.exit_code == 0, res.output
    assert len(calls) == 1 and (calls[0][0] / "results.parquet").exists() and calls[0][1] is None
    assert "report:" in res.output
    res = _run(str(spec), "--runs-dir", str(tmp_path / "runs"), "-q", "--no-report")
    assert res.exit_code == 0 and len(calls) == 1
    out = tmp_path / "new" / "rep"  # its parent is made
    res = _run(str(spec), "--runs-dir", str(tmp_path / "runs"), "-q", "--report-out", str(out))
    assert res.exit_code == 0 and calls[-1][1] == out and out.parent.is_dir(), res.output


def test_progress_bar_unless_quiet(spec, tmp_path):
    res = _run(str(spec), "--runs-dir", str(tmp_path / "runs"), "--no-report")
    assert res.exit_code == 0 and "2/2" in res.output and "clismall-" in res.output, res.output
    res = _run(str(spec), "--runs-dir", str(tmp_path / "runs"), "--no-report", "--quiet")
    assert res.exit_code == 0 and "2/2" not in res.output


def test_help_has_an_example():
    res = CliRunner().invoke(app, ["run", "--help"])
    assert res.exit_code == 0 and "Example" in res.output and "--resume" in res.output
