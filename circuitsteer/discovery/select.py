"""From edge scores to a circuit: top-n, threshold, greedy (with pruning), ACDC's kept edges.

Every function returns a :class:`~circuitsteer.Circuit` whose edges carry their scores and whose
``metadata`` holds the scores' run metadata (method, metric, ablation, positions, data, seed,
timings) plus the selection. Edges are ranked by ``|score|`` (``by="abs"``, the default) or by the
signed score (``by="signed"``); an edge whose score is exactly 0 or NaN carries nothing measurable
and is never selected.

``prune`` keeps only edges on some path from ``input`` to ``logits`` (an edge out of a node
nothing feeds, or into a node that reaches nothing, cannot carry the input's effect to the
output).

Example:
    >>> from circuitsteer.nodes import ModelShape
    >>> from circuitsteer.discovery._common import EdgeScores
    >>> s = ModelShape(n_layers=1, n_heads=1, d_model=4, d_head=4, d_mlp=0, d_vocab=5)
    >>> sc = EdgeScores.from_values(s, [0.5, 0.0, -0.1, 0.2, 0.3], {"method": "demo"})
    >>> [e.name for e in top_n(sc, 2).edges]
    ['input->a0.h0<q>', 'a0.h0->logits']
    >>> [e.name for e in threshold(sc, 0.15).edges]
    ['input->a0.h0<q>', 'input->logits', 'a0.h0->logits']
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from typing import Any

import networkx as nx
import numpy as np

from circuitsteer.discovery._common import DiscoveryError, EdgeScores, channel

BY = ("abs", "signed")
# where each method comes from (a circuit's ``source``)
SOURCES = {
    "acdc": "ACDC (Conmy et al. 2023)",
    "eap": "edge attribution patching (Syed et al. 2023)",
    "eap-ig-inputs": "EAP-IG on inputs (Hanna et al. 2024)",
    "eap-ig-activations": "EAP-IG on activations (Hanna et al. 2024; integrated gradients "
    "along the edge mask, Miller et al. 2024)",
    "exact": "exact single-edge activation patching (Wang et al. 2022; Conmy et al. 2023)",
}


def ranking(scores: EdgeScores, by: str = "abs") -> np.ndarray:
    """The value each edge is ranked by (``-inf`` for NaN and exact zeros)."""
    if by not in BY:
        raise DiscoveryError(f"unknown ranking {by!r}", fix=f"use one of {BY}")
    v = scores.frame["score"].to_numpy(dtype=float)
    r = np.abs(v) if by == "abs" else v.copy()
    r[~np.isfinite(v) | (v == 0)] = -np.inf
    return r


def to_circuit(
    scores: EdgeScores, rows: Iterable[int], selection: dict[str, Any], name: str | None = None
) -> Any:
    """The circuit of the edges at frame positions ``rows``, scored, with metadata."""
    import circuitsteer as cs

    f = scores.frame
    idx = sorted(set(rows))
    meta = {
        **scores.meta,
        "selection": selection,
        "n_edges": len(idx),
        "n_edges_total": len(f),
    }
    c = cs.Circuit(
        name or f"{scores.meta.get('method', 'discovered')}",
        model=scores.meta.get("model"),
        source=f"{SOURCES.get(str(scores.meta.get('method')), 'discovered')}, "
        "found with circuitsteer.discovery",
        shape=scores.shape,
        metadata=_jsonable(meta),
    )
    src, dst, ch, sc = (f[k].to_numpy() for k in ("src", "dst", "channel", "score"))
    for i in idx:
        s = float(sc[i])
        c.add_edge(src[i], dst[i], channel(ch[i]), score=s if math.isfinite(s) else None)
    return c


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    return x


def top_n(scores: EdgeScores, n: int, by: str = "abs", name: str | None = None) -> Any:
    """The ``n`` highest-ranked edges (fewer when fewer edges score nonzero)."""
    if not isinstance(n, int) or n < 0:
        raise DiscoveryError(f"n must be an int >= 0, got {n!r}", fix="pass the number of edges")
    r = ranking(scores, by)
    order = np.argsort(-r, kind="stable")[:n]
    rows = [int(i) for i in order if r[i] > -np.inf]
    return to_circuit(scores, rows, {"how": "top_n", "n": n, "by": by}, name)


def threshold(scores: EdgeScores, t: float, by: str = "abs", name: str | None = None) -> Any:
    """Every edge ranked at ``t`` or above."""
    r = ranking(scores, by)
    rows = [int(i) for i in np.flatnonzero(r >= t) if r[i] > -np.inf]
    return to_circuit(scores, rows, {"how": "threshold", "t": float(t), "by": by}, name)


def kept(scores: EdgeScores, name: str | None = None) -> Any:
    """ACDC's circuit: the edges its run kept (needs a ``kept`` column)."""
    if "kept" not in scores.frame:
        raise DiscoveryError(
            f"scores of {scores.meta.get('method')!r} have no 'kept' column",
            fix="use kept() on acdc(...) results; top_n/threshold/greedy for the others",
        )
    rows = np.flatnonzero(scores.frame["kept"].to_numpy())
    return to_circuit(scores, [int(i) for i in rows], {"how": "acdc"}, name)


def greedy(scores: EdgeScores, n: int, by: str = "abs", name: str | None = None) -> Any:
    """EAP-IG's greedy selection: grow from ``logits`` backwards, each step adding the best edge
    into a node already in the circuit, until ``n`` edges; then :func:`prune`."""
    r = ranking(scores, by)
    f = scores.frame
    into: dict[str, list[int]] = {}
    for i, d in enumerate(f["dst"].to_numpy()):
        into.setdefault(d, []).append(i)
    src = f["src"].to_numpy()
    heap: list[tuple[float, int]] = []
    expanded: set[str] = set()

    def expand(node: str) -> None:
        if node in expanded:
            return
        expanded.add(node)
        for i in into.get(node, ()):
            if r[i] > -np.inf:
                heapq.heappush(heap, (-r[i], i))

    expand("logits")
    rows: list[int] = []
    while heap and len(rows) < n:
        _, i = heapq.heappop(heap)
        rows.append(i)
        expand(src[i])
    c = to_circuit(scores, rows, {"how": "greedy", "n": n, "by": by}, name)
    return prune(c)


def prune(circuit: Any) -> Any:
    """Drop the edges on no path from ``input`` to ``logits`` (and the nodes left bare)."""
    g = circuit.graph
    fed = nx.descendants(g, "input") | {"input"} if "input" in g else set()
    feeding = nx.ancestors(g, "logits") | {"logits"} if "logits" in g else set()
    for e in circuit.edges:
        if e.src not in fed or e.dst not in feeding:
            circuit.remove_edge(e.src, e.dst, e.channel)
    for node in [n for n in circuit.nodes if g.degree(n) == 0]:
        circuit.remove_node(node)
    circuit.metadata["n_edges"] = len(circuit.edges)
    circuit.metadata.setdefault("selection", {})["pruned"] = True
    return circuit
