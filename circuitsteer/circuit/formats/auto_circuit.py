"""auto-circuit edge names (Miller et al., github.com/UFO-101/auto-circuit).

auto-circuit's factorized graph (``auto_circuit/model_utils/transformer_lens_utils.py``) names
source nodes ``Resid Start`` (``blocks.0.hook_resid_pre``), ``A{L}.{H}`` (head output,
``attn.hook_result``) and ``MLP {L}`` (``hook_mlp_out``); destination nodes ``A{L}.{H}.Q``,
``.K``, ``.V`` (``hook_{q,k,v}_input``; with ``separate_qkv=False`` just ``A{L}.{H}``, the
joint ``hook_attn_in``), ``MLP {L}`` (``hook_mlp_in``) and ``Resid End`` (last
``hook_resid_post``). An edge is named ``"{src.name}->{dest.name}"``; an edge with a sequence
position carries it separately (``Edge.seq_idx``), not in the name. The unfactorized graph's
``Block {L} Resid Mid/Post`` nodes are not circuit nodes and are refused.

Example:
    >>> c = from_auto_circuit({"A0.1->A2.3.Q": 0.5, "A2.3->Resid End": 1.0})
    >>> [(e.name, e.score) for e in c.edges]
    [('a0.h1->a2.h3<q>', 0.5), ('a2.h3->logits', 1.0)]
    >>> to_auto_circuit(c)
    ['A0.1->A2.3.Q', 'A2.3->Resid End']
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from circuitsteer.circuit._graph import Circuit
from circuitsteer.errors import CircuitFormatError, NodeNameError
from circuitsteer.nodes import CHANNELS, head, mlp, parse_node

_SRC = re.compile(r"Resid Start|A(\d+)\.(\d+)|MLP (\d+)")
_DST = re.compile(r"Resid End|A(\d+)\.(\d+)(?:\.([QKV]))?|MLP (\d+)")
_FIX = (
    "use auto-circuit's factorized names: 'Resid Start', 'A{L}.{H}', 'MLP {L}' -> "
    "'A{L}.{H}.Q|K|V', 'MLP {L}', 'Resid End', e.g. 'A0.1->A2.3.Q'"
)


def parse_auto_circuit_edge(name: Any) -> list[tuple[str, str, str | None]]:
    """``(src, dst, channel)`` edges for one auto-circuit edge name (three for a joint
    ``A{L}.{H}`` destination, which reads q, k and v at once)."""
    if not isinstance(name, str) or "->" not in name:
        raise CircuitFormatError(f"auto-circuit edge {name!r} has no '->'", fix=_FIX)
    src_s, dst_s = (p.strip() for p in name.split("->", 1))
    ms, md = _SRC.fullmatch(src_s), _DST.fullmatch(dst_s)
    if not ms or not md:
        raise CircuitFormatError(f"auto-circuit edge {name!r}: unknown node name", fix=_FIX)
    if ms[0] == "Resid Start":
        src = "input"
    else:
        src = head(int(ms[1]), int(ms[2])) if ms[1] else mlp(int(ms[3]))
    if md[0] == "Resid End":
        return [(src, "logits", None)]
    if md[4]:
        return [(src, mlp(int(md[4])), None)]
    dst = head(int(md[1]), int(md[2]))
    channels = [md[3].lower()] if md[3] else list(CHANNELS)
    return [(src, dst, ch) for ch in channels]


def auto_circuit_name(src: str, dst: str, channel: str | None) -> str:
    """auto-circuit's name for an edge (factorized graph, separate q/k/v)."""

    def name(n: str, is_dst: bool) -> str:
        p = parse_node(n)
        if p.kind == "input":
            return "Resid Start"
        if p.kind == "logits":
            return "Resid End"
        if p.kind == "mlp":
            return f"MLP {p.layer}"
        return f"A{p.layer}.{p.head}" + (f".{channel.upper()}" if is_dst and channel else "")

    return f"{name(src, False)}->{name(dst, True)}"


def from_auto_circuit(
    edges: Iterable[Any] | Mapping[Any, Any],
    *,
    name: str = "auto-circuit",
    model: str | None = None,
    shape: Any = None,
    source: str | None = "auto-circuit",
) -> Circuit:
    """A circuit from auto-circuit edge names: a list of names, or a mapping name -> score.

    An item may be ``(name, seq_idx)``: positions are collected per edge and per-position
    scores kept in the edge's ``meta["scores_by_position"]``.
    """
    items = list(edges.items()) if isinstance(edges, Mapping) else [(e, None) for e in edges]
    found: dict[tuple[str, str, str | None], dict[str, Any]] = {}
    seen: set[tuple[tuple[str, str, str | None], int | None]] = set()
    for i, (key, score) in enumerate(items):
        seq = None
        if (
            isinstance(key, tuple)
            and len(key) == 2
            and isinstance(key[1], int)
            and not isinstance(key[1], bool)
        ):
            key, seq = key
        if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
            raise CircuitFormatError(
                f"auto-circuit entry {i} ({key!r}): score {score!r} is not a number",
                fix="give scores as numbers",
            )
        for k in parse_auto_circuit_edge(key):
            if (k, seq) in seen:
                raise CircuitFormatError(
                    f"auto-circuit entry {i} repeats edge {key!r}",
                    fix="list each edge (and position) once",
                )
            seen.add((k, seq))
            rec = found.setdefault(k, {"positions": [], "scores": {}, "score": None, "all": False})
            if seq is None:
                rec["score"], rec["all"] = score, True
            else:
                rec["positions"].append(seq)
                rec["scores"][str(seq)] = score
    c = Circuit(name, model=model, source=source)
    try:
        for (src, dst, ch), rec in found.items():
            positions = None if rec["all"] else sorted(rec["positions"])
            c.add_edge(
                src,
                dst,
                ch,
                positions=positions,
                score=rec["score"],
                meta={"scores_by_position": rec["scores"]} if rec["scores"] else None,
            )
    except NodeNameError as e:
        raise CircuitFormatError(f"auto-circuit edges: {e.message}", fix=e.fix or _FIX) from None
    if shape is not None:
        c.shape = c.check_model(shape)
    return c


def to_auto_circuit(
    circuit: Circuit, *, scores: bool = False
) -> list[str] | dict[str, float | None]:
    """The circuit's edges as auto-circuit names (with ``scores=True``, a name -> score dict)."""
    names = [(auto_circuit_name(e.src, e.dst, e.channel), e.score) for e in circuit.edges]
    return dict(names) if scores else [n for n, _ in names]
