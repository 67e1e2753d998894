"""The gates a zoo IOI model must pass: behaviour, heads and composition, measured with the
library's own audit features on held-out name pairs (issue 8; numbers go on the model card).

* behaviour (:func:`circuitsteer.tasks.ioi_probes`): IOI accuracy >= 0.95 and logit
  difference >= 3; with a fresh-name prefix >= 80% of the standard logit difference; a repeated
  name outside the S2 slot is disfavoured: logit difference with S repeated in a prefix and a
  fresh name in the S2 slot >= 2 above the same prompts with a fresh prefix name.
* heads: an induction head scoring >= 0.3 (repeated random tokens); a duplicate-token head
  attending S2 -> S1 >= 0.3 whose attention falls on no-repeat prompts (to at most half);
  name movers attending END -> IO >= 0.5 with IO/S1 >= 3 in both name orders, whose direct
  effect on IO - S is >= 20% of the logit difference.
* composition: path patching the S-inhibition heads -> the name movers' queries carries >= 20%
  of the logit difference.
* other tasks: greater-than probability difference >= 0.5, sentiment accuracy >= 0.9.

Example:
    >>> import circuitsteer as cs                                        # doctest: +SKIP
    >>> model = cs.load_model("ioi-circuit")                             # doctest: +SKIP
    >>> table = ioi_gates(model, cs.load_circuit("ioi-circuit/ioi"))     # doctest: +SKIP
    >>> bool(table["passed"].all())                                      # doctest: +SKIP
    True
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from circuitsteer import metrics
from circuitsteer.analysis.attribution import direct_logit_attribution
from circuitsteer.analysis.heads import attention, head_scores
from circuitsteer.analysis.path_patching import path_patching
from circuitsteer.nodes import format_site
from circuitsteer.tasks.ioi_probes import ioi_probes
from circuitsteer.zoo.evaluate import EVAL_SEED, run_logits


def probe_scores(model: Any, n: int = 300, seed: int = EVAL_SEED) -> dict[str, float]:
    """Mean logit difference (and accuracy) per probe of :func:`ioi_probes`, held-out pairs."""
    out: dict[str, float] = {}
    for name, t in ioi_probes(model, n=n, seed=seed).items():
        logits = metrics.end_logits(run_logits(model, t.clean), t)
        out[f"{name}_logit_diff"] = round(metrics.logit_diff(logits, t).mean().item(), 4)
        out[f"{name}_accuracy"] = round(metrics.accuracy(logits, t).float().mean().item(), 4)
    return out


def _gate(rows: list[dict[str, Any]], group: str, gate: str, value: Any, op: str,
          bound: float, detail: str = "") -> None:  # fmt: skip
    ok = value >= bound if op == ">=" else value <= bound
    rows.append({"group": group, "gate": gate, "value": round(float(value), 4), "op": op,
                 "bound": bound, "passed": bool(ok), "detail": detail})  # fmt: skip


def ioi_gates(
    model: Any, circuit: Any, n: int = 300, seed: int = EVAL_SEED,
    scores: dict[str, float] | None = None,
) -> pd.DataFrame:  # fmt: skip
    """One row per gate: ``group, gate, value, op, bound, passed, detail``.

    ``circuit``: the model's IOI circuit (its classes name the name movers and S-inhibition
    heads). ``scores``: :func:`circuitsteer.zoo.evaluate.evaluate` output for the other tasks
    (computed when not given).
    """
    from circuitsteer.zoo.evaluate import evaluate

    rows: list[dict[str, Any]] = []
    probes = ioi_probes(model, n=n, seed=seed, probes=["standard", "s2_fresh"])
    ps = probe_scores(model, n=n, seed=seed)
    std = ps["standard_logit_diff"]
    _gate(rows, "behaviour", "IOI accuracy", ps["standard_accuracy"], ">=", 0.95)
    _gate(rows, "behaviour", "IOI logit difference", std, ">=", 3.0)
    _gate(rows, "behaviour", "fresh-name prefix / standard logit difference",
          ps["prefix_fresh_logit_diff"] / std, ">=", 0.8)  # fmt: skip
    _gate(rows, "behaviour", "S repeated in prefix minus fresh prefix (fresh S2 slot)",
          ps["prefix_S_s2_fresh_logit_diff"] - ps["prefix_fresh_s2_fresh_logit_diff"], ">=", 2.0,
          f"{ps['prefix_S_s2_fresh_logit_diff']:.2f} vs {ps['prefix_fresh_s2_fresh_logit_diff']:.2f}")  # fmt: skip

    hs = head_scores(model, n=100, seq_len=20, seed=seed)
    ind_rows = hs[hs["kind"] == "induction"]
    ind = ind_rows.loc[ind_rows["score"].idxmax()]
    _gate(rows, "heads", "best induction score", ind["score"], ">=", 0.3, str(ind["node"]))

    std_t, fresh_t = probes["standard"], probes["s2_fresh"]
    a_std = attention(model, std_t, from_pos="S2", to="S1")
    a_fr = attention(model, fresh_t, from_pos="S2", to="S1")
    a_std = a_std[a_std["order"] == "all"].set_index("node")["attention"]
    a_fr = a_fr[a_fr["order"] == "all"].set_index("node")["attention"]
    dup = circuit.classes.get("duplicate token", []) or list(a_std.index)
    best = max(dup, key=lambda h: a_std[h] - a_fr[h])
    _gate(rows, "heads", "duplicate-token head S2 -> S1 attention", a_std[best], ">=", 0.3,
          f"{best}; on no-repeat prompts {a_fr[best]:.3f}")  # fmt: skip
    _gate(rows, "heads", "its attention on no-repeat prompts / repeated",
          a_fr[best] / max(a_std[best], 1e-9), "<=", 0.5, best)  # fmt: skip

    movers = circuit.classes.get("name mover", [])
    if not movers:
        others = [
            h for c in ("S suppression", "negative name mover") for h in circuit.classes.get(c, [])
        ]
        _gate(rows, "heads", "name movers END -> IO attention", 0.0, ">=", 0.5,
              f"no head of class 'name mover' (heads writing to the logits: {'+'.join(others)})")  # fmt: skip
    att = attention(model, std_t, from_pos="END", to=("IO", "S1"))
    every = {
        str(r.node): float(r.attention)
        for r in att[(att["order"] == "all") & (att["to"] == "IO")].itertuples()
    }
    best_io = max(every, key=lambda h: every[h])
    best = att[att["node"] == best_io].set_index(["order", "to"])["attention"]
    ratios = ", ".join(
        f"IO/S1 {o} {best[(o, 'IO')] / max(best[(o, 'S1')], 1e-9):.2f}" for o in ("ABBA", "BABA")
    )
    rows.append({"group": "info", "gate": "best END -> IO attention of any head",
                 "value": round(float(every[best_io]), 4), "op": "", "bound": float("nan"),
                 "passed": True, "detail": f"{best_io}; {ratios}"})  # fmt: skip
    for h in movers:
        sub = att[att["node"] == h].set_index(["order", "to"])["attention"]
        _gate(rows, "heads", f"{h} END -> IO attention", sub[("all", "IO")], ">=", 0.5, h)
        for order in ("ABBA", "BABA"):
            ratio = sub[(order, "IO")] / max(sub[(order, "S1")], 1e-9)
            _gate(rows, "heads", f"{h} IO/S1 attention ratio ({order})", ratio, ">=", 3.0, h)
    dla = direct_logit_attribution(model, std_t).set_index("node")
    share = float(dla.loc[movers, "frac_of_logit_diff"].sum()) if movers else 0.0
    _gate(rows, "heads", "name movers' direct effect / logit difference", share, ">=", 0.2,
          "+".join(movers) or "no name movers")  # fmt: skip
    supp = circuit.classes.get("S suppression", [])
    if supp:  # not a gate: how much the heads that attend to S and write against it carry
        rows.append({"group": "info", "gate": "S suppression heads' direct effect / logit difference",
                     "value": round(float(dla.loc[supp, "frac_of_logit_diff"].sum()), 4),
                     "op": "", "bound": float("nan"), "passed": True, "detail": "+".join(supp)})  # fmt: skip

    sinh = circuit.classes.get("S-inhibition", [])
    if sinh and movers:
        pp = path_patching(
            model, std_t, senders=sinh, receivers=[format_site(h, "q") for h in movers]
        )
        r = pp.iloc[0]
        carried = (r["clean"] - r["patched"]) / r["clean"]
        detail = f"{'+'.join(sinh)} -> {'+'.join(movers)} <q>"
    else:
        carried, detail = 0.0, "no S-inhibition heads or name movers"
    _gate(rows, "composition", "S-inhibition -> name movers' queries / logit difference",
          carried, ">=", 0.2, detail)  # fmt: skip
    writers = movers + circuit.classes.get("S suppression", [])
    flags = circuit.classes.get("induction", []) + circuit.classes.get("duplicate token", [])
    if writers and flags:  # not a gate: composition through the writers' keys and values
        kv = [format_site(h, c) for h in writers for c in "kv"]
        r = path_patching(model, std_t, senders=flags, receivers=kv).iloc[0]
        rows.append({"group": "info", "gate": "induction/duplicate -> movers' keys+values / logit difference",
                     "value": round(float((r["clean"] - r["patched"]) / r["clean"]), 4), "op": "",
                     "bound": float("nan"), "passed": True,
                     "detail": f"{'+'.join(flags)} -> {'+'.join(writers)} <k,v>"})  # fmt: skip

    sc = scores if scores is not None else evaluate(model, n=n, seed=seed)
    _gate(rows, "other tasks", "greater-than probability difference",
          sc["greater_than_prob_diff"], ">=", 0.5)  # fmt: skip
    _gate(rows, "other tasks", "sentiment accuracy", sc["sentiment_accuracy"], ">=", 0.9)
    return pd.DataFrame(rows)
