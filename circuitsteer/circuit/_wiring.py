"""Class-level wiring: compact rules that expand into a circuit's explicit edges.

A circuit file may keep, in ``metadata["wiring"]``, the rules its edges were written from,
e.g. the IOI paper's "S-inhibition -> name movers (q)". Each rule is::

    {"src": [selector, ...], "dst": [selector, ...], "channels": ["q"], "note": "..."}

A selector is a class label of the circuit or a node name. A rule yields every pair that is an
edge of the model's edge graph (:func:`circuitsteer.nodes.is_edge`); ``channels`` (default q,
k, v) applies to head receivers only. Implied positions follow
:func:`circuitsteer.edge_graph.edge_positions`.

Example:
    >>> from circuitsteer.circuit import Circuit
    >>> c = Circuit("toy")
    >>> for n, cls in [("a1.h0", "prev"), ("a2.h1", "ind")]:
    ...     _ = c.add_node(n, cls=cls)
    >>> [e.name for e in wire(c, [{"src": ["prev"], "dst": ["ind"], "channels": ["k"]}]).edges]
    ['a1.h0->a2.h1<k>']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from circuitsteer import edge_graph as eg
from circuitsteer.circuit._parts import graph_key
from circuitsteer.errors import CircuitFormatError
from circuitsteer.nodes import CHANNELS, is_edge, parse_node

if TYPE_CHECKING:
    from circuitsteer.circuit._graph import Circuit

_FIX = (
    "write rules as {'src': [class or node, ...], 'dst': [...], 'channels': ['q', 'k', 'v']} "
    "(channels optional)"
)


class Rule(BaseModel):
    """One wiring rule (strict: selectors are strings, channels q/k/v, nothing else)."""

    model_config = ConfigDict(strict=True, extra="forbid")
    src: list[str]
    dst: list[str]
    channels: list[Literal["q", "k", "v"]] | None = Field(None, min_length=1)
    note: str | None = None


def wiring_rules(c: Circuit, rules: Sequence[Any] | None = None) -> list[Rule]:
    """Validated rules (``rules`` or ``metadata['wiring']``); ``CircuitFormatError`` otherwise."""
    raw = c.metadata.get("wiring", []) if rules is None else rules
    where = f"circuit {c.name!r}: wiring"
    if not isinstance(raw, list):
        raise CircuitFormatError(f"{where}: must be a list of rules", fix=_FIX)
    out = []
    for i, r in enumerate(raw):
        try:
            rule = Rule.model_validate(r)
        except ValidationError as e:
            err = e.errors(include_url=False)[0]
            at = "".join(f".{x}" if isinstance(x, str) else f"[{x}]" for x in err["loc"])
            raise CircuitFormatError(f"{where}[{i}]{at}: {err['msg']}", fix=_FIX) from None
        for s in rule.src + rule.dst:
            _resolve(c, s, f"{where}[{i}]")
        out.append(rule)
    return out


def _resolve(c: Circuit, selector: str, where: str) -> list[str]:
    classes = c.classes
    if selector in classes:
        return classes[selector]
    if selector in c.graph:
        return [selector]
    raise CircuitFormatError(
        f"{where}: {selector!r} is neither a class nor a node of circuit {c.name!r}",
        fix=f"use one of the classes {sorted(classes)} or a declared node name",
    )


def wired_edges(c: Circuit, rules: Sequence[Any] | None = None) -> list[eg.EdgeKey]:
    """The (src, dst, channel) edges the rules imply, in canonical order (no duplicates)."""
    where = f"circuit {c.name!r}: wiring"
    seen: dict[eg.EdgeKey, None] = {}
    for rule in wiring_rules(c, rules):
        srcs = [parse_node(n) for sel in rule.src for n in _resolve(c, sel, where)]
        dsts = [parse_node(n) for sel in rule.dst for n in _resolve(c, sel, where)]
        for s in srcs:
            for d in dsts:
                if is_edge(s, d, c.shape):
                    for ch in (rule.channels or CHANNELS) if d.kind == "head" else (None,):
                        seen[(s.name, d.name, ch)] = None
    return sorted(seen, key=lambda e: eg.edge_key(*e))


def wire(c: Circuit, rules: Sequence[Any] | None = None, *, name: str | None = None) -> Circuit:
    """A copy of ``c`` with the rules' edges added (existing edges are kept as they are)."""
    out = c.copy(name)
    attrs = out.graph.nodes
    for src, dst, ch in wired_edges(c, rules):
        if not out.graph.has_edge(src, dst, graph_key(ch)):
            pos = eg.edge_positions(attrs[src]["positions"], attrs[dst]["positions"], ch)
            out.add_edge(src, dst, ch, positions=pos, add_nodes=False)
    return out
