"""The ACDC-style edge graph of a model, as plain names.

Senders are ``input`` (embeddings), every head's output and every MLP's output; receivers are
every head's q, k and v input, every MLP's input and ``logits``. An edge runs from every sender
to every receiver deeper than it (:func:`circuitsteer.nodes.depth` of the model's shape: with a
sequential residual (GPT-2, Llama) heads of layer L feed MLP L and everything in later layers;
with a parallel residual (GPT-NeoX/Pythia) MLP L reads the layer's input, so heads of layer L
do not feed it). GPT-2 small (12 x 12) has 32,491 such edges; the same shape with a parallel
residual has 32,347.

A model with ``d_mlp == 0`` is treated as attention-only (no MLP nodes), as in
TransformerLens's ``attn-only-*`` models.

Nothing here knows about :class:`~circuitsteer.circuit.Circuit`: it works on node names, so the
engine's dense edge masks and the circuit package share it (it sits beside :mod:`circuitsteer.nodes`,
below both). Which edges exist is :func:`circuitsteer.nodes.is_edge`; nothing here re-states it.

Example:
    >>> from circuitsteer.nodes import ModelShape
    >>> shape = ModelShape(n_layers=12, n_heads=12, d_model=768, d_head=64, d_mlp=3072, d_vocab=50257)
    >>> count_full_edges(shape)
    32491
    >>> next(iter(full_edges(shape)))
    ('input', 'a0.h0', 'q')
    >>> from dataclasses import replace
    >>> count_full_edges(replace(shape, parallel_residual=True))
    32347
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache

from circuitsteer.nodes import CHANNELS, ModelShape, head, is_edge, mlp, parse_node

EdgeKey = tuple[str, str, str | None]  # (src, dst, channel)
Positions = tuple[int | str, ...]


def has_mlps(shape: ModelShape) -> bool:
    """False for attention-only models (``d_mlp == 0``)."""
    return shape.d_mlp > 0


def all_nodes(shape: ModelShape) -> list[str]:
    """Every circuit node of a model, in forward order (EAP-IG's node order)."""
    out = ["input"]
    for layer in range(shape.n_layers):
        out += [head(layer, h) for h in range(shape.n_heads)]
        if has_mlps(shape):
            out.append(mlp(layer))
    out.append("logits")
    return out


def full_edges(shape: ModelShape) -> Iterator[EdgeKey]:
    """Every edge of the model's edge graph, in EAP-IG's construction order.

    Per layer: every earlier sender into each head's q, k, v; then every sender so far
    (including this layer's heads, unless the residual is parallel) into the MLP; finally
    every sender into ``logits``.
    """
    senders = ["input"]
    for layer in range(shape.n_layers):
        heads = [head(layer, h) for h in range(shape.n_heads)]
        for s in senders:
            for h in heads:
                for ch in CHANNELS:
                    yield (s, h, ch)
        mlp_senders = list(senders) if shape.parallel_residual else senders + heads
        senders += heads
        if has_mlps(shape):
            m = mlp(layer)
            for s in mlp_senders:
                yield (s, m, None)
            senders.append(m)
    for s in senders:
        yield (s, "logits", None)


def count_full_edges(shape: ModelShape) -> int:
    """Closed form of ``len(list(full_edges(shape)))``."""
    h, m = shape.n_heads, int(has_mlps(shape))
    own = 0 if shape.parallel_residual else h  # this layer's heads feed its MLP
    total = 0
    for layer in range(shape.n_layers):
        before = 1 + layer * (h + m)  # senders visible to this layer's heads
        total += 3 * h * before + m * (before + own)
    return total + 1 + shape.n_layers * (h + m)


@lru_cache(maxsize=65536)  # sorting 32k edges asks for the same ~160 nodes over and over
def node_key(name: str) -> tuple[float, int]:
    """Sort key: forward order, then head index."""
    n = parse_node(name)
    return (n.depth(), n.head if n.head is not None else -1)


def edge_key(src: str, dst: str, channel: str | None) -> tuple:
    """Canonical edge order: by receiver (ACDC lists child first), its channel, then sender."""
    ch = CHANNELS.index(channel) if channel in CHANNELS else -1  # type: ignore[arg-type]
    return (node_key(dst), ch, node_key(src))


def implied_edges(nodes: Iterable[str], shape: ModelShape | None = None) -> list[EdgeKey]:
    """Every edge of the full edge graph whose two ends are both in ``nodes`` (canonical order;
    the edge rule of ``shape``'s architecture when given).

    >>> implied_edges(["input", "a0.h1", "logits"])
    [('input', 'a0.h1', 'q'), ('input', 'a0.h1', 'k'), ('input', 'a0.h1', 'v'), ('input', 'logits', None), ('a0.h1', 'logits', None)]
    """
    parsed = sorted({parse_node(n) for n in nodes}, key=lambda n: (n.depth(), n.head or 0))
    out: list[EdgeKey] = []
    for dst in parsed:
        channels: Sequence[str | None] = CHANNELS if dst.kind == "head" else (None,)
        for ch in channels:
            out += [(src.name, dst.name, ch) for src in parsed if is_edge(src, dst, shape)]
    return out


def edge_positions(
    src_positions: Positions | None, dst_positions: Positions | None, channel: str | None
) -> Positions | None:
    """Positions of an edge implied by its ends' positions.

    A query (and an MLP or the logits) reads the sender at the receiver's own position, so a
    ``q`` edge (or one without channel) lives at the receiver's positions. Keys and values are
    read at the positions the receiver attends to, i.e. where the sender acted, so ``k``/``v``
    edges live at the sender's positions. ``None`` means all positions.

    >>> edge_positions(("S1+1",), ("S2",), "k"), edge_positions(("END",), ("END",), "q")
    (('S1+1',), ('END',))
    """
    if channel in ("k", "v"):
        return src_positions
    return dst_positions
