"""The analysis layer's grid, timed against the same grid as separate engine.run calls.

    python benchmarks/analysis.py [--n 200] [--threads N] [--quick]
    python benchmarks/analysis.py --numbers     # the measured tables of docs/analysis.md

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


def numbers(n: int) -> None:
    """The zoo numbers quoted in docs/analysis.md (ioi-circuit, its shipped circuit, n prompts)."""
    pd.set_option("display.width", 160)
    pd.set_option("display.max_columns", 20)
    pd.set_option("display.max_colwidth", 70)
    A = cs.analysis
    model = cs.load_model("ioi-circuit")
    task = cs.tasks.ioi(model, n=n, seed=0)
    circuit = cs.load_circuit("ioi-circuit/ioi")
    kw = dict(progress=False)

    print("\n## compare_ablation_addition: the circuit's nodes at their circuit positions")
    df = A.compare_ablation_addition(model, task, circuit, coefs=[1.0, 4.0], **kw)
    table = df.groupby("node", sort=False).positions.first().to_frame("pos")
    for mode in ("zero", "mean", "resample"):
        table[f"{mode} effect"] = df[df["mode"] == mode].set_index("node").effect
    for vec, c in (("mean_diff", 1.0), ("mean_diff", 4.0), ("random", 4.0)):
        sel = df[(df.vector == vec) & (df.coef == c)].set_index("node")
        table[f"{vec} c={c:g} effect"] = sel.effect
        table[f"{vec} c={c:g} frac_of_resample"] = sel.frac_of_resample
    table["corr mean_diff c=1"] = df[(df.vector == "mean_diff") & (df.coef == 1.0)].set_index("node").corr_with_resample  # fmt: skip
    print(f"clean logit diff {df.clean.iloc[0]:.3f}, ABC-corrupted {df.corrupted.iloc[0]:.3f}")
    print(table.round(3).T.to_string())

    print("\n## faithfulness of the shipped circuit (ratio F(C)/F(M), normalized)")
    rows = []
    for level in ("node", "edge"):
        for mode in ("zero", "mean", "resample"):
            f = A.faithfulness(model, task, circuit, ablation=mode, level=level, **kw).iloc[0]
            rows.append({"level": level, "mode": mode, "F(C)/F(M)": f.value, "lo": f.value_lo,
                         "hi": f.value_hi, "F(C)": f.circuit_value, "F(empty)": f.ablated_value,
                         "normalized": f.normalized})  # fmt: skip
    print(pd.DataFrame(rows).round(3).to_string(index=False))
    comp = A.completeness(model, task, circuit, ablation="mean", **kw)
    print("\ncompleteness (mean, node level): |F(C\\K) - F(M\\K)| per class K")
    print(comp[["subset", "value", "circuit_minus_k", "model_minus_k"]].round(3).to_string(index=False))  # fmt: skip
    mini = A.minimality(model, task, circuit, ablation="mean", **kw)
    print("\nminimality (mean, node level, K = {}): |F(C\\{v}) - F(C)|")
    print(mini[["node", "value", "relative"]].round(3).to_string(index=False))

    print("\n## MIB curve: edges ranked by attribution-patching scores (mask gradient)")
    mask = cs.engine.EdgeMask(model, value=0.0, requires_grad=True)
    logits = cs.engine.run_with_mask(model, task.clean, mask, task.corrupted)
    cs.metrics.logit_diff(logits, task).mean().backward()
    scores = {k: float(mask.tensors[g].grad[r, c])  # type: ignore[index]
              for k in cs.edge_graph.full_edges(model.shape) for g, r, c in [mask.locate(k)]}  # fmt: skip
    for mode in ("resample", "mean"):
        cur = A.faithfulness_curve(model, task, scores, ablation=mode, **kw)
        f = cur[cur.metric == "faithfulness"]
        print(f"{mode}: CPR {cur.attrs['cpr']:.3f}  CMD {cur.attrs['cmd']:.3f}  f(k): "
              + "  ".join(f"{k:g}:{v:.2f}" for k, v in zip(f.fraction, f.value, strict=True)))  # fmt: skip

    print("\n## downstream_effects: resample-ablating the induction head a1.h3 at S2")
    iv = cs.Ablate(cs.Site("a1.h3", positions="S2"), mode="resample", reference=task.corrupted)
    de = A.downstream_effects(model, task, circuit, iv)
    dla = de[de.metric == "dla_delta"].pivot_table(index="node", columns="part", values="value")
    att = de[(de.metric == "attn_delta") & (de.to == "S2")].pivot_table(
        index="node", columns="part", values="value"
    )
    print(pd.concat({"dla_delta": dla, "attn END->S2 delta": att}, axis=1).round(3).to_string())
    print(de[de.node == "logits"][["metric", "part", "value"]].round(3).to_string(index=False))

    print(
        "\n## coefficient_sweep: mean difference (clean - ABC) at resid_pre.2, END, added at all positions"
    )
    v = cs.vectors.mean_difference(model, "resid_pre.2", task, positions="END", progress=False)
    sw = A.coefficient_sweep(model, v, coefs=[-16, -8, -4, 1, 2, 4, 8, 16, 32], task=task, **kw)
    c = sw[sw.level == "coef"].pivot_table(index="coef", columns=["data", "metric"], values="value")
    print(f"||v|| = {v.norm:.3f}")
    print(c.round(3).to_string())
    bp = sw.attrs["break_point"]
    print(f"break point (neutral KL >= {bp['kl_threshold']}): c = {bp['coef']}, KL {bp['kl']:.3f}")
    lay = sw[sw.level == "layer"].pivot_table(index=["layer", "coef"], columns="metric", values="value")  # fmt: skip
    near = [0.0, 4.0, 8.0, 16.0, 32.0]
    print(lay[lay.index.get_level_values("coef").isin(near)].round(3).to_string())

    print("\n## pca_study at resid_pre.2, added at END (coefficients in standard deviations)")
    ps = A.pca_study(model, task, "resid_pre.2", k=3, coefs=[2.0, 8.0], positions="END", **kw)
    ld = ps[ps.metric == "logit_diff"]
    print(ld.pivot_table(index=["component", "vector"], columns="coef", values="effect").round(3).to_string())  # fmt: skip
    kl = ps[ps.metric == "kl"]
    print(kl.pivot_table(index=["component", "vector"], columns="coef", values="value").round(3).to_string())  # fmt: skip
    print(ld[ld.coef.abs() == 8.0][["vector", "component", "coef", "top_tokens"]].to_string(index=False))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--numbers", action="store_true", help="print docs/analysis.md's tables")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.numbers:
        numbers(args.n)
        return
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
