"""Engine overhead, measured side by side in one process (ratios, never bare times).

    python benchmarks/engine.py [--quick] [--device cpu|cuda]

Each case is timed interleaved with the raw Hugging Face forward it is compared with (same
tokens, same thread count), and the ratio of medians is printed. Targets (issue 5):
GPT-2-small shape, batch 8 x 16: node-level (1 and 144 heads) <= 1.05x raw, edge-restricted
<= 1.3x; toy-ioi: node-level <= 1.25x; run_variants K=16 >= 1.5x faster than 16 runs.
Issue 9: node-level on a Llama-shaped model of GPT-2-small size <= 1.05x; a dense mask over
all ~32k edges <= 2.5x the raw forward, forward+backward for the mask gradients <= 3x a raw
forward+backward; resample-patching every head with run_variants >= 1.5x faster than
TransformerLens's patching.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack

# no progress bars inside timed cases: tqdm reads TQDM_DISABLE when it is first imported (by
# circuitsteer or TransformerLens), so it is set before those imports
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

import circuitsteer as cs  # noqa: E402

try:  # the GPU machine may lack TransformerLens; the engine does not need it
    import transformer_lens  # noqa: F401

    HAVE_TL = True
except ImportError:
    HAVE_TL = False


def timed(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def compare(
    cases: dict[str, Callable[[], object]], reps: int, sync: Callable[[], None]
) -> dict[str, float]:
    """Median seconds per case, measured round-robin so drift hits every case alike."""
    for fn in cases.values():  # warm-up
        fn()
        fn()
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(reps):
        for k, fn in cases.items():
            samples[k].append(timed(fn, sync))
    return {k: statistics.median(v) for k, v in samples.items()}


def in_scope(model, ivs, tokens, stack: ExitStack):
    """A forward with the interventions installed: hooks go on a weight-sharing twin of the
    model and stay there (``apply`` held open), so the raw forward runs hook-free beside it."""
    twin = model.twin()
    stack.enter_context(cs.engine.apply(twin, ivs))
    return lambda: twin.hf(input_ids=tokens, use_cache=False)


def tl_one_head(model, z, tokens):
    """The same 1-head addition the TransformerLens way: a hook on the bridge's hook_z."""

    def hook(act, hook):
        act[:, -1, 9] += 2.0 * z
        return act

    return lambda: model.bridge.run_with_hooks(
        tokens, return_type="logits", fwd_hooks=[("blocks.9.attn.hook_z", hook)]
    )


def with_setup(model, ivs, tokens):
    """``engine.run`` end to end: compile, install, forward, remove."""
    return lambda: cs.engine.run(model, tokens, ivs)


def raw(model, tokens):
    return lambda: model.hf(input_ids=tokens, use_cache=False)


def bench_gpt2_small(reps: int, device: str, sync) -> list[tuple[str, float, str]]:
    model = cs.load_model("gpt2-small-shape", device=device, bridge=HAVE_TL)
    s = model.shape
    tokens = torch.randint(0, s.d_vocab, (8, 16), generator=torch.Generator().manual_seed(0)).to(
        device
    )
    z = torch.randn(s.d_head)
    one = [cs.Add(cs.Site("a9.h9", positions=-1), z, coef=2.0)]
    all_heads = [cs.Ablate(cs.Site(h, positions=-1), mode="zero") for h in cs.nodes.all_heads(s)]
    receivers = tuple(f"a9.h{h}<q>" for h in range(12)) + ("m9",)
    edge = [cs.Add(cs.Site("a7.h3", positions=-1, to=receivers), z, coef=2.0)]
    edge_all = [
        cs.Ablate(
            cs.Site("a5.h5", to=tuple(f"a{L}.h{h}" for L in (6, 7, 8) for h in range(12))),
            mode="zero",
        )
    ]
    with torch.no_grad(), ExitStack() as stack:
        cases = {
            "raw": raw(model, tokens),
            "1 head": in_scope(model, one, tokens, stack),
            "144 heads": in_scope(model, all_heads, tokens, stack),
            "edge: 1 sender -> 12 q + 1 MLP": in_scope(model, edge, tokens, stack),
            "edge: 1 sender -> 36 heads x q,k,v": in_scope(model, edge_all, tokens, stack),
            "run(): 144 heads, compile+install+forward": with_setup(model, all_heads, tokens),
        }
        if HAVE_TL:
            cases["bridge forward (TransformerLens)"] = lambda: model.bridge(
                tokens, return_type="logits"
            )
            cases["bridge run_with_hooks, same 1-head add"] = tl_one_head(model, z, tokens)
        med = compare(cases, reps, sync)
    base = med["raw"]
    targets = {
        "1 head": "<= 1.05",
        "144 heads": "<= 1.05",
        "edge: 1 sender -> 12 q + 1 MLP": "<= 1.3",
        "edge: 1 sender -> 36 heads x q,k,v": "<= 1.3",
        "run(): 144 heads, compile+install+forward": "(info)",
        "bridge forward (TransformerLens)": "(info)",
        "bridge run_with_hooks, same 1-head add": "(info)",
    }
    return [
        (f"gpt2-small-shape 8x16, {k}", med[k] / base, t) for k, t in targets.items() if k in med
    ]


def bench_llama_shape(reps: int, device: str, sync) -> list[tuple[str, float, str]]:
    """Node-level interventions on a Llama-shaped model of GPT-2-small size (random weights)."""
    model = cs.models.random_model(
        "llama", n_layers=12, n_heads=12, d_model=768, d_mlp=2048, d_vocab=32000, n_ctx=128
    )
    model.hf.to(device)
    s = model.shape
    tokens = torch.randint(0, 256, (8, 16), generator=torch.Generator().manual_seed(0)).to(device)
    z = torch.randn(s.d_head)
    one = [cs.Add(cs.Site("a9.h9", positions=-1), z, coef=2.0)]
    all_heads = [cs.Ablate(cs.Site(h, positions=-1), mode="zero") for h in cs.nodes.all_heads(s)]
    with torch.no_grad(), ExitStack() as stack:
        med = compare(
            {
                "raw": raw(model, tokens),
                "1 head": in_scope(model, one, tokens, stack),
                "144 heads": in_scope(model, all_heads, tokens, stack),
            },
            reps,
            sync,
        )
    return [
        (f"llama-shape 8x16, {k}", med[k] / med["raw"], "<= 1.05") for k in ("1 head", "144 heads")
    ]


def bench_masks(reps: int, device: str, sync) -> list[tuple[str, float, str]]:
    """A forward with a dense mask over all 32,491 edges of the GPT-2-small shape (every value
    0.5), and forward + backward for the mask gradients, against the raw forward and a raw
    forward + backward to the input embeddings (activation gradients only, in both)."""
    model = cs.load_model("gpt2-small-shape", device=device)
    s = model.shape
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, s.d_vocab, (8, 16), generator=g).to(device)
    corrupt = torch.randint(0, s.d_vocab, (8, 16), generator=g).to(device)
    ref = cs.engine.sender_outputs(model, corrupt)
    mask = cs.engine.EdgeMask(model, value=0.5)
    gmask = cs.engine.EdgeMask(model, value=0.5, requires_grad=True)
    emb = model.hf.get_input_embeddings()

    def masked():
        with torch.no_grad():
            cs.engine.run_with_mask(model, clean, mask, ref)

    def masked_grad():
        lg = cs.engine.run_with_mask(model, clean, gmask, ref)
        torch.autograd.grad(lg[:, -1, :100].sum(), gmask.parameters())

    def raw_grad():
        e = emb(clean).detach().requires_grad_(True)
        lg = model.hf(inputs_embeds=e, use_cache=False).logits
        torch.autograd.grad(lg[:, -1, :100].sum(), [e])

    med = compare(
        {
            "raw": lambda: torch.no_grad()(raw(model, clean))(),
            "mask": masked,
            "raw fwd+bwd": raw_grad,
            "mask fwd+bwd": masked_grad,
        },
        reps,
        sync,
    )
    n = gmask.n_edges
    return [
        (
            f"gpt2-small-shape 8x16, dense mask over {n} edges, forward",
            med["mask"] / med["raw"],
            "<= 2.5",
        ),
        (
            "gpt2-small-shape 8x16, dense mask, forward + backward (mask grads) / raw fwd+bwd",
            med["mask fwd+bwd"] / med["raw fwd+bwd"],
            "<= 3",
        ),
    ]


def bench_toy(reps: int, device: str, sync) -> list[tuple[str, float, str]]:
    try:
        model = cs.load_model("toy-ioi", device=device, bridge=HAVE_TL)
    except cs.ModelNotAvailableError as e:
        print(f"toy-ioi not available ({e.message}); skipping its cases", file=sys.stderr)
        return []
    task = cs.tasks.ioi(model, n=8, seed=0)
    tokens = task.clean.to(device)
    s = model.shape
    z = torch.randn(s.d_head, device=device)
    node = [
        cs.Ablate(cs.Site(f"a{s.n_layers - 1}.h0", positions=-1), mode="zero"),
        cs.Add(cs.Site("a1.h1"), z),
    ]
    variants = [
        [cs.Add(cs.Site(f"a{k % s.n_layers}.h{k % s.n_heads}"), z, coef=float(k))]
        for k in range(16)
    ]

    def separate():
        for ivs in variants:
            cs.engine.run(model, tokens, ivs)

    def stacked():
        cs.engine.run_variants(model, tokens, variants)

    with torch.no_grad(), ExitStack() as stack:
        med = compare(
            {"raw": raw(model, tokens), "node": in_scope(model, node, tokens, stack)}, reps, sync
        )
        var = compare({"16 runs": separate, "run_variants": stacked}, max(5, reps // 10), sync)
        rows = [
            ("toy-ioi 8 prompts, node-level (2 heads)", med["node"] / med["raw"], "<= 1.25"),
            (
                "toy-ioi K=16: 16 runs / run_variants (speed-up)",
                var["16 runs"] / var["run_variants"],
                ">= 1.5",
            ),
        ]
        if HAVE_TL:
            rows.append(patching_speedup(model, max(3, reps // 40), sync))
    return rows


def patching_speedup(model, reps: int, sync) -> tuple[str, float, str]:
    """Per-head resample patching of every head (all positions), 64 prompts: TransformerLens's
    ``patching.get_act_patch_attn_head_out_all_pos`` on the bridge vs ``run_variants``."""
    from transformer_lens import patching

    task = cs.tasks.ioi(model, n=64, seed=0)

    def metric(logits):
        return cs.metrics.logit_diff(logits, task).mean()

    def tl():
        _, cache = model.bridge.run_with_cache(task.corrupted)
        patching.get_act_patch_attn_head_out_all_pos(model.bridge, task.clean, cache, metric)

    heads = cs.nodes.all_heads(model.shape)
    variants = [[cs.Ablate(cs.Site(h), mode="resample", reference=task.corrupted)] for h in heads]

    def ours():
        cs.engine.run_variants(model, task, variants, reduce=metric)

    med = compare({"tl": tl, "ours": ours}, reps, sync)
    name = "toy-ioi 64 prompts, patch every head: TL patching / run_variants (speed-up)"
    return (name, med["tl"] / med["ours"], ">= 1.5")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    os.environ.setdefault("CIRCUITSTEER_QUIET", "1")  # no progress bars inside timed cases
    reps = 15 if args.quick else 60
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    print(
        f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, reps {reps}"
    )
    rows = bench_gpt2_small(reps, args.device, sync)
    rows += bench_llama_shape(reps, args.device, sync)
    rows += bench_masks(max(5, reps // 3), args.device, sync)
    rows += bench_toy(reps * 4, args.device, sync)
    width = max(len(r[0]) for r in rows)
    print(f"{'case'.ljust(width)}  ratio   target")
    for name, ratio, target in rows:
        print(f"{name.ljust(width)}  {ratio:5.3f}  {target}")


if __name__ == "__main__":
    main()
