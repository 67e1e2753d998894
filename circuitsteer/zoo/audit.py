"""Audit a zoo model's IOI mechanism and write the results where users find them.

    python -m circuitsteer.zoo.audit ioi-circuit          # zoo name or a model folder

1. finds the IOI circuit by path patching backwards from the logits
   (:func:`circuitsteer.analysis.find_ioi_circuit`) and measures its faithfulness under mean
   ablation; writes ``circuits/<model>/ioi.json`` with each head's evidence;
2. measures the behavioural probes and every gate (:mod:`circuitsteer.zoo.gates`);
3. adds an ``audit`` section to the model's ``card.json`` and re-renders its README.md.

Example:
    >>> from circuitsteer.zoo.audit import audit                 # doctest: +SKIP
    >>> card = audit("ioi-circuit", write=False)                  # doctest: +SKIP
    >>> card["audit"]["all_gates_passed"]                         # doctest: +SKIP
    True
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from circuitsteer.analysis.heads import head_scores
from circuitsteer.analysis.ioi_circuit import faithfulness_mean_ablation, find_ioi_circuit
from circuitsteer.circuit import CIRCUIT_DIRS
from circuitsteer.models import load_model
from circuitsteer.tasks import ioi
from circuitsteer.zoo.evaluate import EVAL_SEED
from circuitsteer.zoo.gates import ioi_gates, probe_scores


def audit(name_or_path: str, n: int = 300, seed: int = EVAL_SEED, write: bool = True,
          threshold: float = 0.05) -> dict[str, Any]:  # fmt: skip
    """Run the audit; returns the updated card (written to the model folder when ``write``)."""
    t0 = time.monotonic()
    model = load_model(name_or_path, bridge=False)
    task = ioi(model, n=n, seed=seed, split="heldout")
    circuit, evidence = find_ioi_circuit(model, task, threshold=threshold)
    faith = faithfulness_mean_ablation(model, task, circuit)
    circuit.metadata["faithfulness"] = {
        **faith,
        "ablation": "node-level mean ablation of every head outside the circuit, mean over the "
        "ABC prompts of the same template per position; MLPs and embeddings kept",
        "n": n,
        "seed": seed,
    }
    circuit.metadata["evidence_columns"] = {
        "pp_logits": "path patching head -> logits: share of the clean - ABC logit difference",
        "pp_mover_q": "path patching head -> name movers' queries",
        "pp_sinh_kv": "path patching head -> S-inhibition heads' keys and values",
        "pp_ind_kv": "path patching head -> induction heads' keys and values",
        "attn_END>X / attn_S2>X": "mean attention from END / S2 to position X (per name order)",
        "score_*": "previous-token, duplicate-token, induction scores on repeated random tokens",
        "dla_frac": "direct logit attribution / logit difference",
    }
    card = dict(model.card)
    scores = card.get("scores") or {}
    gates = ioi_gates(model, circuit, n=n, seed=seed, scores=scores or None)
    hs = head_scores(model, n=100, seq_len=20, seed=seed)
    top: dict[str, list[dict[str, Any]]] = {}
    for kind in ("previous_token", "duplicate_token", "induction"):
        rows = [(float(r.score), str(r.node)) for r in hs[hs["kind"] == kind].itertuples()]
        top[kind] = [{"node": n, "score": round(v, 4)} for v, n in sorted(rows, reverse=True)[:3]]
    card["audit"] = {
        "command": f"python -m circuitsteer.zoo.audit {model.name} --n {n} --seed {seed}",
        "n": n,
        "seed": seed,
        "split": "heldout name pairs",
        "probes": probe_scores(model, n=n, seed=seed),
        "top_heads": top,
        "circuit": {
            "file": f"circuits/{model.name}/ioi.json",
            "classes": circuit.classes,
            "edges": len(circuit.edges),
            "threshold": threshold,
            "faithfulness": faith,
        },
        "gates": gates.to_dict("records"),
        "all_gates_passed": bool(gates["passed"].all()),
        "seconds": round(time.monotonic() - t0, 1),
    }
    if write:
        out = CIRCUIT_DIRS[0] / model.name / "ioi.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        circuit.save(out)
        if model.path is not None:
            from circuitsteer.zoo.train import render_card

            folder = Path(model.path)
            (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n")
            (folder / "README.md").write_text(render_card(card))
    return card


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m circuitsteer.zoo.audit", description=__doc__)
    p.add_argument("model", help="zoo name or model folder")
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--seed", type=int, default=EVAL_SEED)
    p.add_argument("--threshold", type=float, default=0.05)
    p.add_argument("--dry-run", action="store_true", help="print, write nothing")
    a = p.parse_args(argv)
    card = audit(a.model, n=a.n, seed=a.seed, write=not a.dry_run, threshold=a.threshold)
    for g in card["audit"]["gates"]:
        mark = "PASS" if g["passed"] else "FAIL"
        print(f"{mark}  {g['gate']}: {g['value']} {g['op']} {g['bound']}  {g['detail']}")
    print(json.dumps(card["audit"]["circuit"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
