"""EAP and EAP-IG cost against a raw forward + backward, today's code and a git revision's,
measured in alternating processes so both see the same machine load.

    python benchmarks/eap_revisions.py [--rev c3077b1] [--rounds 3] [--reps 9] [--threads 2]
                                       [--model ioi-circuit --prompts 96]

Each process loads the model and the IOI task, then, ``reps`` times: raw fwd+bwd, the method,
raw fwd+bwd again; the ratio of each repetition is the method's time over the mean of the two
raw passes around it (so slow drift cancels), and the process prints the median ratio per
method. Raw forward + backward = the HF forward from the input embeddings and the gradient to
them (activation gradients only), logit difference at END: the baseline of
benchmarks/discovery.py. The revision runs from a temporary ``git worktree`` (removed after).
Issue 13's budgets: EAP <= 3x, EAP-IG with m steps <= (m + 2)x.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, statistics, sys, time
os.environ["TQDM_DISABLE"] = "1"; os.environ["CIRCUITSTEER_QUIET"] = "1"
import torch
threads, reps, name, n, steps = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                                 int(sys.argv[4]), int(sys.argv[5]))
torch.set_num_threads(threads)
import circuitsteer as cs
from circuitsteer import discovery as dc
model = cs.load_model(name)
task = cs.tasks.ioi(model, n=n, seed=0)
emb = model.hf.get_input_embeddings()
def raw():
    e = emb(task.clean).detach().requires_grad_(True)
    lg = model.hf(inputs_embeds=e, use_cache=False).logits
    torch.autograd.grad(cs.metrics.logit_diff(lg, task).sum(), [e])
cases = {"eap": lambda: dc.eap(model, task),
         "eap-ig": lambda: dc.eap_ig(model, task, steps=steps)}
for f in (raw, *cases.values()):
    f()
ratios, secs = {k: [] for k in cases}, {"raw": [], **{k: [] for k in cases}}
def timed(f):
    t = time.perf_counter(); f(); return time.perf_counter() - t
for _ in range(reps):
    for k, f in cases.items():
        a, b, c = timed(raw), timed(f), timed(raw)
        ratios[k].append(b / ((a + c) / 2)); secs[k].append(b); secs["raw"] += [a, c]
print(json.dumps({"file": cs.__file__,
                  "ratio": {k: statistics.median(v) for k, v in ratios.items()},
                  "ms": {k: 1000 * statistics.median(v) for k, v in secs.items()}}))
"""


def run(path: Path | None, args: argparse.Namespace) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    if path is not None:
        env["PYTHONPATH"] = str(path)
    cmd = [sys.executable, "-c", CHILD, str(args.threads), str(args.reps), args.model,
           str(args.prompts), str(args.steps)]  # fmt: skip
    out = subprocess.run(cmd, env=env, cwd=tempfile.gettempdir(), capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rev", default="c3077b1", help="the revision to compare with")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="ioi-circuit")
    ap.add_argument("--prompts", type=int, default=96)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(old), args.rev],
                       cwd=ROOT, check=True)  # fmt: skip
        try:
            rows = []
            for r in range(args.rounds):
                for label, path in ((args.rev, old), ("today", ROOT)):
                    got = run(path, args)
                    assert Path(got["file"]).resolve().is_relative_to(path.resolve()), got
                    rows.append((label, got))
                    print(f"round {r + 1} {label:>8}: raw {got['ms']['raw']:.1f} ms, "
                          + ", ".join(f"{k} {v:.2f}x" for k, v in got["ratio"].items()),
                          flush=True)  # fmt: skip
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT)
    print(f"\n{args.model}, {args.prompts} prompts, {args.threads} threads, m = {args.steps}: "
          "median over rounds")  # fmt: skip
    for label in (args.rev, "today"):
        got = [g for lab, g in rows if lab == label]
        med = {k: statistics.median(g["ratio"][k] for g in got) for k in got[0]["ratio"]}
        print(f"  {label:>8}: " + ", ".join(f"{k} {v:.2f}x" for k, v in med.items()))
    print(f"  budgets: eap <= 3x, eap-ig <= {args.steps + 2}x")


if __name__ == "__main__":
    main()
