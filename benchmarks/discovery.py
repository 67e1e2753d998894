"""Circuit discovery cost, measured side by side in one process (ratios, plus the issue's
wall-clock targets), each method now and as it was before the fast paths (``--before REV``,
default the commit before them: the masked forward's hooks of that commit, no resumed
forwards in ACDC, exact patching through Patch variants), round-robin in the same run. EAP and
EAP-IG on inputs have no "before" column here: benchmarks/eap_revisions.py times them against a
git revision.

    python benchmarks/discovery.py [--quick] [--threads N] [--before REV | --no-before]

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
import importlib
import os
import statistics
import subprocess
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("CIRCUITSTEER_QUIET", "1")

import torch  # noqa: E402

import circuitsteer as cs  # noqa: E402
from circuitsteer import discovery as dc  # noqa: E402
from circuitsteer.discovery.reproduce import settings  # noqa: E402

BEFORE = "b028c55"  # the last commit before the fast paths (resumed masked forwards, ...)
_mods = {n: importlib.import_module(f"circuitsteer.{n}") for n in
         ("engine.masks", "discovery.acdc")}  # fmt: skip


def old_mask_hooks(rev: str) -> types.ModuleType:
    """``circuitsteer/engine/mask_hooks.py`` as it was at ``rev``, loaded beside today's."""
    root = Path(__file__).resolve().parents[1]
    src = subprocess.run(["git", "show", f"{rev}:circuitsteer/engine/mask_hooks.py"], cwd=root,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    mod = types.ModuleType("old_mask_hooks")
    exec(compile(src, f"{rev}:mask_hooks.py", "exec"), mod.__dict__)
    return mod


@contextmanager
def before(old: types.ModuleType | None) -> Iterator[None]:
    """Inside, discovery runs as before the fast paths: ``old``'s masked-forward hooks (every
    receiver of every layer computed), ACDC's forwards whole (no prefix). Exact patching's old
    path is ``via="patch"``. EAP and EAP-IG on inputs were rewritten since (factored gradients
    and senders, streamed contraction): benchmarks/eap_revisions.py times them against a git
    revision instead."""
    if old is None:
        yield
        return
    masks, acdc = (_mods[n] for n in ("engine.masks", "discovery.acdc"))
    saved = (masks.MaskHooks, acdc.mask_prefix)
    masks.MaskHooks = lambda model, mask, ref, resume=None, cache=None: old.MaskHooks(
        model, mask, ref
    )
    acdc.mask_prefix = lambda model, tokens, ref: ref
    try:
        yield
    finally:
        masks.MaskHooks, acdc.mask_prefix = saved


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


def bench_gradients(label: str, model, task, reps: int, old, steps: int = 5) -> list[tuple]:
    raw, raw_grad = baselines(model, task)

    def was(fn):
        def run():
            with before(old):
                fn()

        return run

    cases = {
        "raw fwd+bwd": raw_grad,
        "eap": lambda: dc.eap(model, task),
        "eap-ig": lambda: dc.eap_ig(model, task, steps=steps),
        "eap-ig-act": lambda: dc.eap_ig(model, task, steps=steps, method="activations"),
    }
    if old is not None:  # EAP / EAP-IG on inputs: benchmarks/eap_revisions.py
        cases["eap-ig-act before"] = was(cases["eap-ig-act"])
    med = compare(cases, reps)
    fb = med["raw fwd+bwd"]
    b = lambda k: med[f"{k} before"] / fb if f"{k} before" in med else float("nan")  # noqa: E731
    return [
        (f"{label}: EAP / raw fwd+bwd", b("eap"), med["eap"] / fb, "<= 3"),
        (f"{label}: EAP-IG inputs, m={steps} / raw fwd+bwd", b("eap-ig"), med["eap-ig"] / fb,
         f"<= {steps + 2}"),
        (f"{label}: EAP-IG activations, m={steps} / raw fwd+bwd", b("eap-ig-act"),
         med["eap-ig-act"] / fb, "(info)"),
    ]  # fmt: skip


def bench_exact(name: str, n: int, old) -> tuple:
    model = cs.load_model(name)
    task = cs.tasks.ioi(model, n=n, seed=0)
    times = {}
    for via in ("mask", "patch") if old is not None else ("mask",):
        t = time.perf_counter()
        sc = dc.exact_patching(model, task, progress=False, via=via)
        times[via] = time.perf_counter() - t
    return (f"{name}: exact patching of all {len(sc)} edges, {n} prompts (s)",
            times.get("patch", float("nan")), times["mask"], "< 20 s")  # fmt: skip


def bench_acdc(n: int, reps: int, old) -> list[tuple]:
    """ACDC with the recipe of the shipped circuit (circuitsteer.discovery.reproduce), now and
    before; the raw forward timed between the runs."""
    cfg = settings(n)["acdc"]
    tau = cfg["threshold"]
    model = cs.load_model("ioi-circuit")
    task = cs.tasks.ioi(model, n=n, seed=0)
    raw, _ = baselines(model, task)
    found = dc.acdc(model, task, progress=False, **cfg)
    med = compare({"raw": raw}, reps)
    prev = None
    if old is not None:
        with before(old):
            prev = dc.acdc(model, task, progress=False, **cfg)
        med2 = compare({"raw": raw}, reps)
        med["raw"] = (med["raw"] + med2["raw"]) / 2
        same = prev.frame[["tested", "kept"]].equals(found.frame[["tested", "kept"]])
        print(f"ACDC before and after test and keep the same edges: {same}")

    def t(sc, k):
        return float("nan") if sc is None else sc.meta["timings"][k]

    return [
        (f"ioi-circuit, {n} prompts: ACDC per tested edge / raw forward",
         t(prev, "per_tested_edge_s") / med["raw"],
         found.meta["timings"]["per_tested_edge_s"] / med["raw"], "<= 1.5"),
        (f"ioi-circuit, {n} prompts: full ACDC, {cfg['metric']} tau={tau} "
         f"({found.meta['n_tested']} tested, {found.meta['n_kept']} kept) (s)",
         t(prev, "total_s"), found.meta["timings"]["total_s"], "< 30 s"),
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, ACDC on 32 prompts")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--before", default=BEFORE, help="the commit whose paths are 'before'")
    ap.add_argument("--no-before", action="store_true", help="time today's paths only")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = 5 if args.quick else 15
    old = None if args.no_before else old_mask_hooks(args.before)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, reps {reps}, "
          f"before = {None if old is None else args.before}")  # fmt: skip
    rows = []
    g2 = cs.load_model("gpt2-small-shape")
    rows += bench_gradients("gpt2-small-shape, IOI 8 prompts", g2, cs.tasks.ioi(g2, n=8), reps,
                            old)  # fmt: skip
    zoo = cs.load_model("ioi-circuit")
    rows += bench_gradients("ioi-circuit, IOI 96 prompts", zoo, cs.tasks.ioi(zoo, n=96), reps,
                            old)  # fmt: skip
    rows.append(bench_exact("toy-ioi", 96, old))
    rows.append(bench_exact("ioi-circuit", 96, old))
    rows += bench_acdc(32 if args.quick else 96, reps, old)
    width = max(len(r[0]) for r in rows)
    print(f"{'case'.ljust(width)}   before    after  target")
    for name, b, v, target in rows:
        print(f"{name.ljust(width)}  {b:7.3f}  {v:7.3f}  {target}")


if __name__ == "__main__":
    main()
