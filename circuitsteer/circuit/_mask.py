"""Circuit <-> the engine's dense edge mask (:class:`circuitsteer.engine.masks.EdgeMask`).

The one implementation of both directions (``EdgeMask.from_circuit`` / ``to_circuit`` call
these through ``Circuit.to_mask`` / ``Circuit.from_mask``). The mask's layout is asked of the
mask itself (``sender_index``, ``locate``): once per node and per receiver, never per edge, and
the values are written and read as whole tensors per receiver group, so a full GPT-2-small
circuit (32,491 edges) converts in milliseconds.

Example:
    >>> import circuitsteer as cs
    >>> m = cs.random_gpt2(n_layers=2, n_heads=2, d_model=16)
    >>> c = cs.Circuit("c", shape=m.shape); _ = c.add_edge("a0.h1", "a1.h0", "k")
    >>> mask = c.to_mask(m)
    >>> float(mask["a0.h1", "a1.h0", "k"]), float(mask["input", "logits", None])
    (0.0, 1.0)
    >>> sorted(cs.Circuit.from_mask(mask).edge_keys())
    [('a0.h1', 'a1.h0', 'k')]
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

import torch

from circuitsteer import edge_graph as eg
from circuitsteer.circuit._parts import channel_of, edge_data, graph_key
from circuitsteer.engine.masks import EdgeMask
from circuitsteer.nodes import CHANNELS, parse_node

if TYPE_CHECKING:
    from circuitsteer.circuit._graph import Circuit


def to_mask(c: Circuit, model: Any, inside: float = 0.0, outside: float = 1.0) -> EdgeMask:
    """The mask that runs ``c``: its edges ``inside``, every other edge ``outside``."""
    mask = EdgeMask(model, value=outside)
    row = {n: mask.sender_index(n) for n in c.graph if c.graph.out_degree(n)}
    by_group: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for dst in c.graph:
        for k, senders in _senders_by_key(c, dst).items():
            group, _, col = mask.locate(("input", dst, channel_of(k)))
            rows, cols = by_group[group]
            rows += [row[s] for s in senders]
            cols += [col] * len(senders)
    with torch.no_grad():
        for group, (rows, cols) in by_group.items():
            r = torch.tensor(rows)
            if int(r.max()) >= mask.groups[group].senders:  # an edge the model does not have:
                for e in c.edge_keys():  # the mask's own error names the first one
                    mask.locate(e)
            mask.tensors[group][r, torch.tensor(cols)] = inside
    return mask


def _senders_by_key(c: Circuit, dst: str) -> dict[Any, list[str]]:
    out: dict[Any, list[str]] = defaultdict(list)
    for u, _, k in c.graph.in_edges(dst, keys=True):
        out[k].append(u)
    return out


def _receivers(mask: EdgeMask) -> dict[tuple[str, int], tuple[str, str | None]]:
    """(group, column) -> (receiver, channel), from the mask's own ``locate``."""
    out = {}
    for dst in eg.all_nodes(mask.shape)[1:]:
        for ch in CHANNELS if parse_node(dst).kind == "head" else (None,):
            group, _, col = mask.locate(("input", dst, ch))
            out[group, col] = (dst, ch)
    return out


def clean_edges(
    mask: EdgeMask, threshold: float, scores: bool = False
) -> tuple[list[str], list[tuple[str, str, Any, dict[str, Any]]]]:
    """The nodes (forward order) and graph edges of the mask's values below ``threshold``."""
    senders, receivers = mask.senders, _receivers(mask)
    edges = []
    for group, t in mask.tensors.items():
        values = t.detach().float().cpu()
        rows, cols = torch.nonzero(values < threshold, as_tuple=True)
        picked = values[rows, cols].tolist() if scores else [None] * len(rows)
        for r, col, v in zip(rows.tolist(), cols.tolist(), picked, strict=True):
            dst, ch = receivers[group, col]
            edges.append((senders[r], dst, graph_key(ch), edge_data(score=v)))
    ends = {n for e in edges for n in e[:2]}
    nodes = [n for n in eg.all_nodes(mask.shape) if n in ends]
    return nodes, edges
