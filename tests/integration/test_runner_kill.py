"""A run killed with SIGKILL half-way and resumed: nothing already written is recomputed or
touched (mtime and sha256 of every shard file), nothing is lost, and the table equals an
uninterrupted run's."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import circuitsteer as cs

SPEC = """\
name: killme
model: ioi-circuit
task: {name: ioi, n: 16, seed: 0}
analyses:
  - name: grid
    kind: grid
    sites: all_nodes
    positions: [all, END]
    operations:
      - {op: ablate, modes: [zero, mean, resample]}
    n_boot: 0
    shard_size: 4
"""  # 36 nodes x 2 positions x 3 = 216 variants -> 54 shards


def _digest(p: Path) -> tuple[int, str]:
    return p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.slow
def test_sigkill_then_resume(tmp_path):
    spec = tmp_path / "killme.yaml"
    spec.write_text(SPEC)
    runs = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    code = f"import circuitsteer as cs; cs.runner.run_spec({str(spec)!r}, runs_dir={str(runs)!r}, quiet=True)"  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    shards: list[Path] = []
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            shards = sorted(runs.glob("*/shards/*.parquet")) if runs.exists() else []
            if len(shards) >= 3:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    (run,) = runs.iterdir()
    before = {p.name: _digest(p) for p in (run / "shards").glob("*.parquet")}
    assert 3 <= len(before) < 54, len(before)
    assert not (run / "results.parquet").exists()

    out = cs.runner.run_spec(spec, runs_dir=runs, resume=run.name, quiet=True)
    assert out == run
    after = {p.name: _digest(p) for p in (run / "shards").glob("*.parquet")}
    assert len(after) == 54
    assert {k: after[k] for k in before} == before  # untouched: same mtime, same bytes
    assert not list(run.rglob(".*.tmp-*"))

    fresh = cs.runner.run_spec(spec, runs_dir=tmp_path / "fresh", quiet=True)
    resumed = pd.read_parquet(run / "results.parquet")
    pd.testing.assert_frame_equal(resumed, pd.read_parquet(fresh / "results.parquet"))
    assert len(resumed) == 216 and resumed.variant.tolist() == list(range(216))
