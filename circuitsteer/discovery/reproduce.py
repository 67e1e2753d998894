"""Reproduce the discovered circuits shipped for the zoo model ``ioi-circuit``
(``circuits/ioi-circuit/acdc.json`` and ``eap-ig.json``) and the method comparison of
docs/discovery.md.

Run ``python -m circuitsteer.discovery.reproduce [--out circuits/ioi-circuit] [--n 96]``: ACDC
(negated logit difference, resample ablation, tau as set below) and EAP-IG (inputs, 5 steps) on ``n`` IOI prompts
(seed 0), EAP-IG's circuit the greedy selection of as many edges as ACDC kept; both measured
(edge-level faithfulness under resample ablation, on the discovery prompts and on 200 held-out
prompts, seed 1) and compared with the hand-found circuit ``ioi-circuit/ioi``. ``--table`` also
runs exact patching, EAP and EAP-IG on activations and prints the comparison table.

Example:
    >>> settings()["acdc"]["metric"]
    'logit_diff'
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

import circuitsteer as cs
from circuitsteer.discovery import evaluate, select
from circuitsteer.discovery.acdc import acdc
from circuitsteer.discovery.eap import eap, eap_ig
from circuitsteer.discovery.exact import exact_patching

MODEL = "ioi-circuit"
TAU = 0.015


def settings(n: int = 96) -> dict[str, Any]:
    """The recipe of the shipped circuits."""
    return {
        "model": MODEL,
        "task": {"name": "ioi", "n": n, "seed": 0},
        "heldout": {"name": "ioi", "n": 200, "seed": 1},
        "acdc": {
            "threshold": TAU,
            "metric": "logit_diff",
            "ablation": "resample",
            "order": "reverse",
        },
        "eap_ig": {"steps": 5, "method": "inputs", "metric": "logit_diff", "ablation": "resample"},
    }


def _measure(model: Any, tasks: dict[str, Any], circuit: Any) -> dict[str, Any]:
    """Edge-level faithfulness under resample ablation on each prompt set, and for reference the
    node-level one under mean ablation (heads and MLPs outside the circuit mean-ablated, as the
    hand-found circuit was judged)."""
    out: dict[str, Any] = {}
    keys = ("value", "normalized", "circuit_value", "model_value", "ablated_value")
    for name, task in tasks.items():
        f = evaluate.circuit_faithfulness(model, task, circuit)
        out[name] = {k: round(f[k], 4) for k in keys}
    task = tasks["discovery_prompts"]
    row = cs.analysis.faithfulness(
        model, task, circuit, ablation="mean", level="node", n_boot=200, progress=False
    ).iloc[0]
    out["node_level_mean_ablation"] = {k: round(float(row[k]), 4) for k in keys}
    return {"ablation": "resample", "level": "edge", "metric": "logit_diff", **out}


def run(out_dir: str | None = None, n: int = 96, table: bool = False) -> dict[str, Any]:
    """Find, measure and (with ``out_dir``) save both circuits; returns the summary."""
    torch.manual_seed(0)
    cfg = settings(n)
    model = cs.load_model(MODEL)
    task = cs.tasks.ioi(model, n=n, seed=0)
    held = cs.tasks.ioi(model, n=200, seed=1)
    tasks = {"discovery_prompts": task, "heldout_prompts": held}
    hand = cs.load_circuit(f"{MODEL}/ioi")
    seed = {"seed": 0}
    found = acdc(model, task, progress=True, meta=seed, **cfg["acdc"])
    c_acdc = select.kept(found, name="acdc")
    k = len(c_acdc.edges)
    ig = eap_ig(model, task, meta=seed, **cfg["eap_ig"])
    c_ig = select.greedy(ig, k, name="eap-ig")
    n_total = len(found)
    summary: dict[str, Any] = {"settings": cfg, "n_edges_total": n_total}
    for name, c, sc in (("acdc", c_acdc, found), ("eap-ig", c_ig, ig)):
        info = {
            "size": {
                "n_edges": len(c.edges),
                "fraction": round(len(c.edges) / n_total, 4),
                "n_heads": len(c.heads),
            },  # fmt: skip
            "faithfulness": _measure(model, tasks, c),
            "roc_auc_vs_hand_found": round(evaluate.roc_auc(sc, hand), 4),
        }
        if name == "eap-ig":
            info["roc_auc_vs_acdc"] = round(evaluate.roc_auc(ig, found), 4)
        c.metadata.update(info)
        c.metadata["recipe"] = (
            "python -m circuitsteer.discovery.reproduce --out circuits/ioi-circuit"
        )
        c.metadata["torch"] = {"version": torch.__version__, "threads": torch.get_num_threads()}
        summary[name] = info
        if out_dir:
            c.save(Path(out_dir) / f"{name}.json")
    summary["hand_found"] = {
        "size": {
            "n_edges": len(hand.edges),
            "fraction": round(len(hand.edges) / n_total, 4),
            "n_heads": len(hand.heads),
        },  # fmt: skip
        "faithfulness": _measure(model, tasks, hand),
        "heads_shared_with_acdc": sorted(set(hand.heads) & set(c_acdc.heads)),
        "heads_shared_with_eap_ig": sorted(set(hand.heads) & set(c_ig.heads)),
    }
    if table:
        t0 = time.perf_counter()
        methods = {
            "acdc": found,
            "eap": eap(model, task),
            "eap-ig-inputs": ig,
            "eap-ig-activations": eap_ig(model, task, steps=5, method="activations"),
        }
        exact = exact_patching(model, task, progress=True)
        methods["exact"] = exact
        df = evaluate.compare(model, task, methods, {"acdc": found, "hand": hand}, exact=exact)
        summary["table"] = df.round(4).to_dict(orient="records")
        summary["table_s"] = round(time.perf_counter() - t0, 1)
    return summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="folder to write acdc.json and eap-ig.json")
    p.add_argument("--n", type=int, default=96, help="IOI prompts for discovery")
    p.add_argument("--table", action="store_true", help="also compare every method")
    p.add_argument("--threads", type=int, default=1, help="torch threads (results are bit-exact "
                   "for one machine, torch build and thread count)")  # fmt: skip
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(json.dumps(run(a.out, a.n, a.table), indent=1, default=str))


if __name__ == "__main__":
    main()
