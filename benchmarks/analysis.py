"""The analysis layer's grid, timed against the same grid as separate engine.run calls.

    python benchmarks/analysis.py [--n 200] [--threads N] [--quick]

``compare_ablation_addition`` over every head and MLP of the zoo model ``ioi-circuit``
(32 heads + 4 MLPs) with 3 coefficients and 3 ablation modes on ``--n`` IOI prompts: per node
3 ablations + 3 mean-difference additions + 3 matched random additions = 324 variants, stacked
in ``engine.run_variants``. Target (issue 12): under 60 s on the 2-core CPU at n = 200.

The comparison runs the very same function with ``engine.run_variants`` replaced by a loop of
``engine.run`` calls (one per variant, same reduce), in the same process, and checks that the two
tables are identical. ``--quick``: 3 nodes instead of 36 (a smoke test of the script).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from unittest import mock

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars inside timed cases

import pandas as pd  # noqa: E402
import torch  # noqa: E402

import circuitsteer as cs  # noqa: E402
from circuitsteer.engine import VariantResults  # noqa: E402


def separate_runs(model, tokens, variants, max_batch=256, reduce=None, progress=None, **_):
    """``run_variants``'s contract, one ``engine.run`` per variant."""
    n = tokens.clean.shape[0]
    outs = []
    for v in variants:
        logits, _ = cs.engine.run(model, tokens, v, max_batch=max_batch, progress=False)
        outs.append(reduce(logits, slice(0, n)) if reduce is not None else logits)
    return VariantResults(torch.stack(outs), {})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = cs.load_model("ioi-circuit")
    task = cs.tasks.ioi(model, n=args.n, seed=0)
    nodes = cs.nodes.all_heads(model.shape) + cs.nodes.all_mlps(model.shape)
    nodes = nodes[:: len(nodes) // 3][:3] if args.quick else nodes
    kw = dict(nodes=nodes, coefs=[0.5, 1.0, 2.0], modes=["zero", "mean", "resample"], progress=False)  # fmt: skip
    cs.analysis.compare_ablation_addition(model, task, nodes=nodes[:1], coefs=[1.0])  # warm-up

    t = time.perf_counter()
    stacked = cs.analysis.compare_ablation_addition(model, task, **kw)
    t_stacked = time.perf_counter() - t
    with mock.patch.object(cs.engine, "run_variants", separate_runs):
        t = time.perf_counter()
        loop = cs.analysis.compare_ablation_addition(model, task, **kw)
        t_loop = time.perf_counter() - t
    pd.testing.assert_frame_equal(stacked, loop)  # the same numbers either way

    k = len(stacked[stacked.metric == "logit_diff"])
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")  # fmt: skip
    print(f"ioi-circuit, n = {len(task)} prompts x {task.clean.shape[1]} tokens, {len(nodes)} nodes, "
          f"{k} variants (+ clean and corrupted runs)")  # fmt: skip
    print(f"compare_ablation_addition (run_variants, stacked): {t_stacked:7.2f} s"
          f"   target < 60 s: {'met' if t_stacked < 60 else 'NOT met'}")  # fmt: skip
    print(f"same grid, one engine.run per variant:            {t_loop:7.2f} s")
    print(f"ratio separate / stacked: {t_loop / t_stacked:.2f}x   (tables identical)")


if __name__ == "__main__":
    main()
