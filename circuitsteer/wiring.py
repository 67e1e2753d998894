"""Class-level wiring: compact rules that expand into a circuit's explicit edges.

A circuit file may keep, in ``metadata["wiring"]``, the rules its edges were written from,
e.g. the IOI paper's "S-inhibition -> name movers (q)". Each rule is::

    {"src": [selector, ...], "dst": [selector, ...], "channels": ["q"]}

A selector is a class label of the circuit or a node name. A rule yields every pair that
points forward in depth; ``channels`` (default q, k, v) applies to head receivers only.
Implied positions follow :func:`circuitsteer.edge_graph.edge_positions`.

Example:
    >>> from circuitsteer.graph import Circuit
    >>> c = Circuit("toy")
    >>> for n, cls in [("a1.h0", "prev"), ("a2.h1", "ind")]:
    ...     _ = c.add_node(n, cls=cls)
    >>> [e.name for e in wire(c, [{"src": ["prev"], "dst": ["ind"], "channels": ["k"]}]).edges]
    ['a1.h0->a2.h1<k>']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from circuitsteer import edge_graph as eg
from circuitsteer.errors import CircuitFormatError
from circuitsteer.graph import Circuit
from circuitsteer.nodes import CHANNELS

_FIX = (
    "write rules as {'src': [class or node, ...], 'dst': [...], 'channels': ['q', 'k', 'v']} "
    "(channels optional)"
)


def wiring_rules(c: Circuit, rules: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    """Validated rules (``rules`` or ``metadata['wiring']``); ``CircuitFormatError`` otherwise."""
    raw = c.metadata.get("wiring", []) if rules is None else rules
    where = f"circuit {c.name!r}: wiring"
    if not isinstance(raw, list):
        raise CircuitFormatError(f"{where}: must be a list of rules", fix=_FIX)
    out = []
    for i, r in enumerate(raw):
        if not isinstance(r, dict) or not set(r) <= {"src", "dst", "channels", "note"}:
            raise CircuitFormatError(f"{where}[{i}]: not a rule object", fix=_FIX)
        for k in ("src", "dst"):
            sel = r.get(k)
            if not isinstance(sel, list) or not all(isinstance(s, str) for s in sel):
                raise CircuitFormatError(f"{where}[{i}].{k}: must be a list of strings", fix=_FIX)
            for s in sel:
                _resolve(c, s, f"{where}[{i}].{k}")
        ch = r.get("channels")
        if ch is not None and (not isinstance(ch, list) or not set(ch) <= set(CHANNELS) or not ch):
            raise CircuitFormatError(
                f"{where}[{i}].channels: {ch!r} is not a list of q/k/v", fix=_FIX
            )
        out.append(r)
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
    """The (src, dst, channel) edges the rules imply, in canonical order."""
    valid = wiring_rules(c, rules)
    return eg.expand_rules(valid, lambda s: _resolve(c, s, f"circuit {c.name!r}: wiring"), c.shape)


def wire(c: Circuit, rules: Sequence[Any] | None = None, *, name: str | None = None) -> Circuit:
    """A copy of ``c`` with the rules' edges added (existing edges are kept as they are)."""
    out = c.copy(name)
    have = out.edge_keys()
    for src, dst, ch in wired_edges(c, rules):
        if (src, dst, ch) not in have:
            pos = eg.edge_positions(
                out.graph.nodes[src]["positions"], out.graph.nodes[dst]["positions"], ch
            )
            out.add_edge(src, dst, ch, positions=pos, add_nodes=False)
    return out
