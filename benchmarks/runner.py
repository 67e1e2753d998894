"""The runner's overhead: ``circuitsteer run analyses/grid_500.yaml`` (504 interventions on the
zoo model, 4 shards written atomically, meta, results) against calling the grid's analysis
function directly (model load, task, one ``intervention_grid`` call over all 504 cases), in
the same process, alternating, best of ``--repeats`` in wall-clock and in CPU time (the
process's, robust when other jobs share the CPU). Checks that both tables are identical
and prints the ratio (target: under 1.10). ``--ray`` also runs the spec on the Ray backend
(a local Ray instance with 2 CPUs) and checks its table equals the local backend's.

    OMP_NUM_THREADS=1 python benchmarks/runner.py [--repeats 3] [--ray] [--spec analyses/grid_500.yaml]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

import circuitsteer as cs  # noqa: E402
from circuitsteer.runner import _context  # noqa: E402


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(t0: tuple[float, float]) -> tuple[float, float]:
    return time.perf_counter() - t0[0], time.process_time() - t0[1]


def direct(spec_path: str) -> tuple[tuple[float, float], pd.DataFrame]:
    """What a user would write by hand: load, build the task, call the analysis function."""
    spec = cs.spec.load_spec(spec_path)
    entry = spec.analyses[0]
    t0 = _clock()
    model = cs.load_model(spec.model)
    task = cs.tasks.ioi(model, n=spec.task.n, seed=spec.task.seed, **spec.task.options)
    cases = cs.runner.expand(entry.params, model.shape)
    df = cs.runner.intervention_grid(model, task, cases, metric=entry.params["metric"],
                                     n_boot=entry.params["n_boot"], seed=spec.seed,
                                     max_batch=entry.params["max_batch"], progress=False)  # fmt: skip
    return _since(t0), df


def through_runner(spec_path: str, runs: str, backend: str = "local") -> tuple[tuple[float, float], pd.DataFrame]:  # fmt: skip
    _context._CACHE.clear()  # load the model again, as a fresh command would
    t0 = _clock()
    run = cs.runner.run_spec(spec_path, backend=backend, runs_dir=runs, quiet=True)
    took = _since(t0)
    return took, pd.read_parquet(run / "results.parquet")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="analyses/grid_500.yaml")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ray", action="store_true", help="also run on the Ray backend and compare")
    args = ap.parse_args()
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, spec {args.spec}")  # fmt: skip
    runs = tempfile.mkdtemp(prefix="cs-bench-runs-")
    direct(args.spec)  # warm-up: imports, file caches
    d_times, r_times = [], []
    d_df = r_df = None
    for i in range(args.repeats):  # alternate which goes first
        for which in ("direct", "runner") if i % 2 == 0 else ("runner", "direct"):
            if which == "direct":
                t, d_df = direct(args.spec)
                d_times.append(t)
            else:
                t, r_df = through_runner(args.spec, runs)
                r_times.append(t)
    assert d_df is not None and r_df is not None
    table = r_df.drop(columns=["analysis", "kind"])
    from circuitsteer.runner._store import tidy_for_parquet

    expected = tidy_for_parquet(d_df)
    same = table.reset_index(drop=True).equals(expected.reset_index(drop=True)) or table.astype(object).equals(expected.astype(object))  # fmt: skip
    if not same:
        pd.testing.assert_frame_equal(table, expected, check_dtype=False)
        same = True
    print(f"interventions: {len(d_df)} rows")
    for k, what in ((0, "wall"), (1, "CPU (process_time)")):
        d = min(x[k] for x in d_times)
        r = min(x[k] for x in r_times)
        print(f"{what}: direct (load + task + intervention_grid) best {d:.2f} s "
              f"{[round(x[k], 2) for x in d_times]}; runner (run_spec local: shards, meta, "
              f"results) best {r:.2f} s {[round(x[k], 2) for x in r_times]}; "
              f"runner / direct = {r / d:.3f} (target < 1.10)")  # fmt: skip
    print(f"tables identical: {same}")
    if args.ray:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            (t, _), ray_df = through_runner(args.spec, runs, backend="ray")
        finally:
            ray.shutdown()
        pd.testing.assert_frame_equal(ray_df, r_df)
        print(f"ray backend (2 actors, incl. their model loads): {t:.2f} s; table equals local: True")  # fmt: skip
    print(f"runs written under {Path(runs)}")


if __name__ == "__main__":
    main()
