"""Circuit discovery cost, measured side by side in one process (ratios, plus the issue's
wall-clock targets).

    python benchmarks/discovery.py [--quick] [--threads N]

Issue 13 targets: EAP over the whole graph <= 3x one raw forward + backward of the same batch
(GPT-2-small shape and the zoo model ioi-circuit); EAP-IG with m steps <= (m + 2)x; exact
patching of every edge of a ~500-edge model (toy-ioi: 479 edges; ioi-circuit has 1,519) with 96
prompts under 20 s; ACDC per tested edge <= 1.5x one raw forward of the same batch; a full ACDC
run on the zoo model at one tau under 30 s.

Raw forward + backward = the HF forward from the input embeddings and the gradient to them
(activation gradients only, as the methods compute), with the logit-difference metric at END.
Each ratio times the method call whole (recording forwards and contractions included),
round-robin with its baseline, median of the repetitions.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("CIRCUITSTEER_QUIET", "1")

import torch  # noqa: E402

import circuitsteer as cs  # noqa: E402
from circuitsteer import discovery as dc  # noqa: E402
from circuitsteer.discovery.reproduce import settings  # noqa: E402


def compare(cases: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median seconds per case, measured round-robin so drift hits every case alike."""
    for fn in cases.values():
        fn()
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(reps):
        for k, fn in cases.items():
            t = time.perf_counter()
            fn()
            samples[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in samples.items()}


def baselines(model, task):
    emb = model.hf.get_input_embeddings()

    def raw():
        with torch.no_grad():
            model(task.clean)

    def raw_grad():
        e = emb(task.clean).detach().requires_grad_(True)
        lg = model.hf(inputs_embeds=e, use_cache=False).logits
        torch.autograd.grad(cs.metrics.logit_diff(lg, task).sum(), [e])

    return raw, raw_grad


def bench_gradients(label: str, model, task, reps: int, steps: int = 5) -> list[tuple]:
    raw, raw_grad = baselines(model, task)
    med = compare(
        {
            "raw fwd+bwd": raw_grad,
            "eap": lambda: dc.eap(model, task),
            "eap-ig": lambda: dc.eap_ig(model, task, steps=steps),
            "eap-ig-act": lambda: dc.eap_ig(model, task, steps=steps, method="activations"),
        },
        reps,
    )
    fb = med["raw fwd+bwd"]
    return [
        (f"{label}: EAP / raw fwd+bwd", med["eap"] / fb, "<= 3"),
        (f"{label}: EAP-IG inputs, m={steps} / raw fwd+bwd", med["eap-ig"] / fb, f"<= {steps + 2}"),
        (f"{label}: EAP-IG activations, m={steps} / raw fwd+bwd", med["eap-ig-act"] / fb,
         "(info)"),
    ]  # fmt: skip


def bench_exact(name: str, n: int) -> tuple:
    model = cs.load_model(name)
    task = cs.tasks.ioi(model, n=n, seed=0)
    t = time.perf_counter()
    sc = dc.exact_patching(model, task, progress=False)
    dt = time.perf_counter() - t
    return (f"{name}: exact patching of all {len(sc)} edges, {n} prompts (s)", dt, "< 20 s")


def bench_acdc(n: int, reps: int) -> list[tuple]:
    """ACDC with the recipe of the shipped circuit (circuitsteer.discovery.reproduce)."""
    cfg = settings(n)["acdc"]
    tau = cfg["threshold"]
    model = cs.load_model("ioi-circuit")
    task = cs.tasks.ioi(model, n=n, seed=0)
    raw, _ = baselines(model, task)
    found = dc.acdc(model, task, progress=False, **cfg)
    per_edge = found.meta["timings"]["per_tested_edge_s"]
    med = compare({"raw": raw}, reps)
    return [
        (f"ioi-circuit, {n} prompts: ACDC per tested edge / raw forward", per_edge / med["raw"],
         "<= 1.5"),
        (f"ioi-circuit, {n} prompts: full ACDC, {cfg['metric']} tau={tau} "
         f"({found.meta['n_tested']} tested, {found.meta['n_kept']} kept) (s)",
         found.meta["timings"]["total_s"], "< 30 s"),
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, ACDC on 32 prompts")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = 5 if args.quick else 15
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, reps {reps}")
    rows = []
    g2 = cs.load_model("gpt2-small-shape")
    rows += bench_gradients("gpt2-small-shape, IOI 8 prompts", g2, cs.tasks.ioi(g2, n=8), reps)
    zoo = cs.load_model("ioi-circuit")
    rows += bench_gradients("ioi-circuit, IOI 96 prompts", zoo, cs.tasks.ioi(zoo, n=96), reps)
    rows.append(bench_exact("toy-ioi", 96))
    rows.append(bench_exact("ioi-circuit", 96))
    rows += bench_acdc(32 if args.quick else 96, reps)
    width = max(len(r[0]) for r in rows)
    print(f"{'case'.ljust(width)}  value   target")
    for name, v, target in rows:
        print(f"{name.ljust(width)}  {v:6.3f}  {target}")


if __name__ == "__main__":
    main()
