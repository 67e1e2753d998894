"""Find a model's IOI circuit the way Wang et al. (2022) found GPT-2's: path patching backwards
from the logits, one class of heads at a time, with attention patterns naming each class.

1. name movers (and negative name movers): heads whose path to the logits carries a share of
   the clean - ABC logit difference above ``threshold`` (below ``-threshold``: negative);
2. S-inhibition: heads whose path to the name movers' queries does;
3. induction / duplicate token: heads whose path to the S-inhibition heads' keys and values
   does; a head is "induction" when its induction score on repeated random tokens exceeds its
   duplicate-token score, else "duplicate token";
4. previous token: heads whose path to the induction heads' keys and values does.

Each head's evidence (path-patching share, attention from its class position, head scores,
direct logit attribution) goes into the node's ``meta``; the circuit's head-to-head edges are
the paths found, scored by their share, and the embeddings and MLPs (which stay in the model)
feed every circuit head. The search follows the model's compositions wherever they are: a
model whose movers read the repetition through their keys (not their queries, as GPT-2's name
movers do through S-inhibition) gets those key/value paths. Finally its
faithfulness is measured: every head outside the circuit mean-ablated (per template and
position over the ABC prompts; MLPs and the circuit's heads untouched), logit difference of
that model over the full model's.

Example:
    >>> import circuitsteer as cs                                   # doctest: +SKIP
    >>> model = cs.load_model("ioi-circuit")                        # doctest: +SKIP
    >>> circuit, evidence = find_ioi_circuit(model, n=200)          # doctest: +SKIP
    >>> circuit.classes["name mover"]                               # doctest: +SKIP
    ['a3.h1', ...]
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from circuitsteer import engine, metrics
from circuitsteer.analysis.attribution import direct_logit_attribution
from circuitsteer.analysis.heads import attention, head_scores
from circuitsteer.analysis.path_patching import path_patching_grid
from circuitsteer.errors import AnalysisError
from circuitsteer.interventions import Ablate, Site
from circuitsteer.nodes import all_heads, all_mlps, format_site, parse_node

CLASS_POSITIONS = {
    "name mover": "END",
    "negative name mover": "END",
    "S suppression": "END",
    "S-inhibition": "END",
    "induction": "S2",
    "duplicate token": "S2",
    "previous token": "S1+1",
}
_MOVERS = ("name mover", "S suppression", "negative name mover")


def _hits(df: pd.DataFrame, threshold: float, exclude: set[str]) -> list[str]:
    """Heads (in grid order) whose path carries at least ``threshold`` of the gap."""
    return [
        str(r.node) for r in df.itertuples() if r.frac_of_gap >= threshold and r.node not in exclude
    ]


def _receivers(heads: list[str], channels: str) -> list[str]:
    return [format_site(h, c) for h in heads for c in channels]


def _pattern_class(sc: pd.DataFrame, head: str) -> str:
    """induction / duplicate token / previous token: the head's best score on repeated tokens."""
    kinds = {"induction": "induction", "duplicate_token": "duplicate token",
             "previous_token": "previous token"}  # fmt: skip
    return kinds[max(kinds, key=lambda k: float(sc.loc[head, k]))]


def find_ioi_circuit(
    model: Any,
    task: Any = None,
    n: int = 200,
    seed: int = 10_000,
    threshold: float = 0.05,
    name: str = "ioi",
    max_batch: int = 256,
) -> tuple[Any, pd.DataFrame]:
    """The model's IOI circuit (a :class:`circuitsteer.Circuit`) and one evidence row per head.

    ``task``: an IOI task with ABC-corrupted twins (default: ``tasks.ioi(model, n, seed,
    split="heldout")``). ``threshold``: the share of the clean - corrupted logit difference a
    head's path must carry to join the circuit.

    Classes: heads whose path to the logits helps are "name mover" when they attend from END
    to IO more than to S1 and S2 together, else "S suppression" (they attend to S and write
    against it, like copy suppression); heads whose path hurts are "negative name mover".
    Heads feeding the movers' queries are "S-inhibition"; heads feeding the movers' or the
    S-inhibition heads' keys/values, or the induction heads' keys/values, are named by their
    best score on repeated random tokens (induction, duplicate token, previous token). The
    circuit's head-to-head edges are exactly the paths found (with their share as the score).
    """
    from circuitsteer.circuit import Circuit
    from circuitsteer.tasks import ioi

    if task is None:
        task = ioi(model, n=n, seed=seed, split="heldout")
    heads = all_heads(model.shape)
    classes: dict[str, str] = {}
    evidence: dict[str, dict[str, float]] = {h: {} for h in heads}
    paths: list[tuple[str, str, str, float]] = []  # sender, receiver head, channel, share

    def grid(receivers: list[str], channels: str, key: str) -> list[str]:
        """Path-patch every upstream head to the receivers' channels; record; return hits."""
        ups = [h for h in heads if _layer(h) < max(_layer(r) for r in receivers)]
        if not ups:
            return []
        df = path_patching_grid(model, task, _receivers(receivers, channels),
                                senders=ups, max_batch=max_batch)  # fmt: skip
        for r in df.itertuples():
            evidence[str(r.node)][key] = round(float(r.frac_of_gap), 4)
        hits = _hits(df, threshold, set(classes))
        for h in hits:
            share = evidence[h][key]
            paths.extend(
                (h, r, c, share) for r in receivers if _layer(r) > _layer(h) for c in channels
            )
        return hits

    att = attention(model, task, from_pos="END", to=("IO", "S1", "S2"))
    att2 = attention(model, task, from_pos="S2", to=("S1", "S1+1"))
    end_att = att[att["order"] == "all"].pivot_table(index="node", columns="to", values="attention")
    g1 = path_patching_grid(model, task, ["logits"], max_batch=max_batch)
    for r in g1.itertuples():
        h = str(r.node)
        evidence[h]["pp_logits"] = round(float(r.frac_of_gap), 4)
        io, s_att = end_att.loc[h, "IO"], end_att.loc[h, "S1"] + end_att.loc[h, "S2"]
        if r.frac_of_gap >= threshold:
            classes[h] = "name mover" if io >= s_att else "S suppression"
        elif r.frac_of_gap <= -threshold:
            classes[h] = "negative name mover"
    movers = [h for h, c in classes.items() if c in _MOVERS]
    if not movers:
        raise AnalysisError(
            f"no head's path to the logits carries {threshold:.0%} of the logit difference",
            fix="lower threshold, or check that the model solves IOI (logit difference > 0)",
        )
    scores = head_scores(model, n=100, seq_len=20, seed=seed)
    sc = scores.pivot_table(index="node", columns="kind", values="score")
    sinh = grid(movers, "q", "pp_mover_q")
    classes |= dict.fromkeys(sinh, "S-inhibition")
    for h in grid(movers, "kv", "pp_mover_kv"):
        classes[h] = _pattern_class(sc, h)
    if sinh:
        for h in grid(sinh, "kv", "pp_sinh_kv"):
            classes[h] = _pattern_class(sc, h)
    induction = [h for h, c in classes.items() if c == "induction" and _layer(h) > 0]
    if induction:
        for h in grid(induction, "kv", "pp_ind_kv"):
            classes[h] = _pattern_class(sc, h)

    dla = direct_logit_attribution(model, task).set_index("node")
    for h in heads:
        ev = evidence[h]
        for df, src in ((att, "END"), (att2, "S2")):
            sub = df[(df["node"] == h)]
            for r in sub.itertuples():
                ev[f"attn_{src}>{r.to}" + ("" if r.order == "all" else f"_{r.order}")] = round(
                    float(r.attention), 4
                )
        for k in ("previous_token", "duplicate_token", "induction"):
            ev[f"score_{k}"] = round(float(sc.loc[h, k]), 4)
        ev["dla_frac"] = round(float(dla.loc[h, "frac_of_logit_diff"]), 4)

    circuit = Circuit(
        name, model=model.name, shape=model.shape,
        source="circuitsteer.analysis.find_ioi_circuit: path patching backwards from the logits "
        "(Wang et al. 2022), ABC corruption",
    )  # fmt: skip
    inputs = ["input", *all_mlps(model.shape)]
    for node in [*inputs, "logits"]:
        circuit.add_node(node)
    for h, c in sorted(classes.items(), key=lambda kv: _order(kv[0])):
        circuit.add_node(h, cls=c, positions=[CLASS_POSITIONS[c]], meta=evidence[h])
    for src, dst, ch, share in paths:
        if src in classes and dst in classes:
            circuit.add_edge(src, dst, ch, score=share)
    for h in classes:  # embeddings and MLPs stay in the model: they feed every circuit head
        for src in inputs:
            if src == "input" or _layer(src) < _layer(h):
                for ch in ("q", "k", "v"):
                    circuit.add_edge(src, h, ch)
    for h in movers:
        circuit.add_edge(h, "logits", score=evidence[h]["pp_logits"])
    circuit.add_edge("input", "logits")
    for m in inputs[1:]:
        circuit.add_edge(m, "logits")
    rows = [{"node": h, "class": classes.get(h), **evidence[h]} for h in heads]
    table = pd.DataFrame(rows)
    circuit.metadata.update({
        "method": {"threshold": threshold, "n": len(task), "seed": seed,
                   "corruption": task.extra.get("corruption", "ABC"),
                   "metric": "logit difference IO - S at END; shares of clean - corrupted",
                   "stages": "heads -> logits; -> movers' q; -> movers' k/v; -> S-inhibition "
                             "k/v; -> induction k/v"},
        "clean_logit_diff": round(float(g1["clean"].iloc[0]), 4),
        "corrupted_logit_diff": round(float(g1["corrupted"].iloc[0]), 4),
    })  # fmt: skip
    return circuit, table


def _layer(node: str) -> int:
    return int(parse_node(node).layer or 0)


def _order(node: str) -> tuple[int, int]:
    n = parse_node(node)
    return int(n.layer or 0), int(n.head or 0)


def faithfulness_mean_ablation(model: Any, task: Any, circuit: Any) -> dict[str, float]:
    """Logit difference with every head outside ``circuit`` mean-ablated, over the full model's.

    Means are taken over the task's ABC prompts of the same template, position by position (the
    prompts of one template align token by token); MLPs, embeddings and circuit heads keep
    their values. Returns ``model``, ``circuit`` and ``faithfulness`` (their ratio).
    """
    keep = set(circuit.heads)
    others = [h for h in all_heads(model.shape) if h not in keep]
    model_ld, circ_ld = [], []
    for t in sorted(set(task.meta["template"])):
        sub = task.subset(torch.tensor((task.meta["template"] == t).to_numpy()))
        if int(sub.lengths.min()) != int(sub.lengths.max()):
            raise AnalysisError(
                f"template {t}: prompts of different lengths",
                fix="mean ablation per position needs aligned prompts (single-token names)",
            )
        ivs = [Ablate(Site(h), mode="mean", reference=sub.corrupted) for h in others]
        full, _ = engine.run(model, sub)
        ablated, _ = engine.run(model, sub, ivs)
        model_ld.append(metrics.logit_diff(full, sub))
        circ_ld.append(metrics.logit_diff(ablated, sub))
    m, c = float(torch.cat(model_ld).mean()), float(torch.cat(circ_ld).mean())
    return {"model": round(m, 4), "circuit": round(c, 4), "faithfulness": round(c / m, 4)}
