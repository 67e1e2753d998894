"""Plain head lists, as papers and notebooks write them: ``"9.9, 10.0, 9.6"``.

Tokens are separated by commas, semicolons or whitespace; each is ``L.H`` or ``aL.hH``. A list of
strings or ``(layer, head)`` pairs works too.

Example:
    >>> c = from_heads("9.9, 10.0 9.6", cls="name mover")
    >>> c.heads, to_heads(c)
    (['a9.h9', 'a10.h0', 'a9.h6'], '9.6, 9.9, 10.0')
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from circuitsteer.circuit._graph import Circuit
from circuitsteer.errors import CircuitFormatError
from circuitsteer.nodes import head as head_name

_TOKEN = re.compile(r"(?:a)?(\d{1,6})\.(?:h)?(\d{1,6})")
_SPLIT = re.compile(r"[,;\s]+")
_FIX = "write heads as 'L.H' (e.g. '9.9, 10.0') or 'aL.hH'"


def parse_heads(spec: str | Iterable[Any]) -> list[str]:
    """Canonical head names, in the order given; typed errors for bad or repeated entries."""
    try:
        items = (
            [t for t in _SPLIT.split(spec.strip()) if t] if isinstance(spec, str) else list(spec)
        )
    except TypeError:
        raise CircuitFormatError(f"not a head list: {type(spec).__name__}", fix=_FIX) from None
    out: list[str] = []
    for i, item in enumerate(items):
        if (
            isinstance(item, tuple | list)
            and len(item) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in item)
        ):
            layer, head = item
        elif isinstance(item, str) and (m := _TOKEN.fullmatch(item.strip())):
            layer, head = int(m[1]), int(m[2])
        else:
            raise CircuitFormatError(f"head list entry {i} ({item!r}) is not a head", fix=_FIX)
        if layer < 0 or head < 0:
            raise CircuitFormatError(f"head list entry {i} ({item!r}) is negative", fix=_FIX)
        name = head_name(layer, head)
        if name in out:
            raise CircuitFormatError(
                f"head list entry {i} repeats {name}", fix="list each head once"
            )
        out.append(name)
    return out


def from_heads(
    spec: str | Iterable[Any],
    *,
    name: str = "heads",
    model: str | None = None,
    shape: Any = None,
    cls: str | None = None,
    source: str | None = None,
) -> Circuit:
    """A node circuit of heads (no edges; :meth:`Circuit.expand_edges` gives its edge set)."""
    c = Circuit(name, model=model, source=source)
    for h in parse_heads(spec):
        c.add_node(h, cls=cls)
    if shape is not None:
        c.shape = c.check_model(shape)
    return c


def to_heads(circuit: Circuit) -> str:
    """The circuit's heads as ``"L.H, ..."`` in layer, head order."""
    heads = sorted(
        (a["layer"], a["head"]) for _, a in circuit.graph.nodes(data=True) if a["kind"] == "head"
    )
    return ", ".join(f"{layer}.{head}" for layer, head in heads)
