"""Peak memory of chunked runs as the prompt batch grows (issue 9: bounded in n).

    python benchmarks/memory.py [--sizes 1000 4000 16000]

Each (case, n) runs in a fresh subprocess on the bundled ioi-circuit model: build the IOI task,
note the peak resident memory, then run ``run_variants`` (4 variants, a two-argument
``reduce`` so only per-example metrics are kept) and report how much the peak rose. Cases:
``plain`` (a Scale at one head: no reference run, the baseline) and ``references`` (a
resample ablation and a mean ablation, both reading the corrupted batch). The extra memory of
``references`` over ``plain`` at the same n is what the reference captures cost; bounded
means it does not grow with n.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, os, resource, sys, torch
import circuitsteer as cs
torch.set_num_threads(1)
case, n = sys.argv[1], int(sys.argv[2])
model = cs.load_model("ioi-circuit")
task = cs.tasks.ioi(model, n=n, seed=1)
def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
before = rss()
if case == "plain":
    variants = [[cs.Scale(cs.Site(f"a{k}.h0"), 0.5)] for k in range(4)]
else:
    variants = [[cs.Ablate(cs.Site(f"a{k}.h0"), mode="resample", reference=task.corrupted),
                 cs.Ablate(cs.Site(f"a{k}.h1"), mode="mean", reference=task.corrupted)]
                for k in range(4)]
res = cs.engine.run_variants(model, task, variants, max_batch=256, progress=False,
                             reduce=lambda lg, rows: cs.metrics.logit_diff(lg, task.subset(rows)))
print(json.dumps({"case": case, "n": n, "before_mib": before, "rise_mib": rss() - before,
                  "out": list(res.logits.shape)}))
"""


def measure(case: str, n: int) -> dict:
    env = {**os.environ, "CIRCUITSTEER_QUIET": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, case, str(n)], capture_output=True, text=True, env=env
    )
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    args = p.parse_args()
    print(f"{'n':>7} {'plain rise MiB':>15} {'references rise MiB':>20} {'extra MiB':>10}")
    for n in args.sizes:
        plain, refs = measure("plain", n), measure("references", n)
        extra = refs["rise_mib"] - plain["rise_mib"]
        print(f"{n:>7} {plain['rise_mib']:>15.1f} {refs['rise_mib']:>20.1f} {extra:>10.1f}")


if __name__ == "__main__":
    main()
