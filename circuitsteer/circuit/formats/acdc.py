"""ACDC edge dictionaries (Conmy et al. 2023, github.com/ArthurConmy/Automatic-Circuit-Discovery).

ACDC keys an edge child first: ``(child_hook, child_index, parent_hook, parent_index)``, with
TransformerLens hook names and ``TorchIndex`` tuples (``(None,)`` for a whole activation,
``(None, None, 3)`` for head 3). Its true-edge helpers map such keys to ``True``; an
experiment's ``corr.edges`` nests the same four levels (``edges[child][idx][parent][idx]``)
and holds ``Edge`` objects with ``present`` and ``effect_size``.

Accepted here: that flat dict, the nested form, a list of rows
``[child_hook, child_index, parent_hook, parent_index(, value)]`` (the JSON form: indices as
lists with ``null``, or strings such as ``"[:, :, 3]"``), or a path to JSON (pickles only with
``trusted=True``). Values: ``True``/``False`` (present), a number (effect size, kept as the
score), ``None``, an object with ``present``/``effect_size`` or a dict with those keys.

ACDC's graph also has edges *inside* components (``hook_q_input -> attn.hook_q``,
``attn.hook_q -> attn.hook_result``, ``hook_mlp_in -> hook_mlp_out``). They carry no residual
information here: the import skips them and counts them in ``metadata["acdc"]``;
:meth:`Circuit.acdc_edge_count` adds back the q/k/v ones ACDC counts.

Example:
    >>> c = from_acdc({("blocks.1.hook_v_input", (None, None, 4), "blocks.0.attn.hook_result", (None, None, 5)): 0.3},
    ...               n_layers=4)
    >>> [(e.name, e.score) for e in c.edges]
    [('a0.h5->a1.h4<v>', 0.3)]
    >>> to_acdc(c, n_layers=4)
    {('blocks.1.hook_v_input', (None, None, 4), 'blocks.0.attn.hook_result', (None, None, 5)): 0.3}
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from circuitsteer.circuit._graph import Circuit
from circuitsteer.circuit._parts import graph_key
from circuitsteer.circuit.formats._common import read_input
from circuitsteer.errors import CircuitFormatError, NodeNameError
from circuitsteer.hook_names import node_from_tl_hook, tl_hook
from circuitsteer.nodes import Node

Row = tuple[str, tuple[int | None, ...], str, tuple[int | None, ...], Any]
_FIX = (
    "give ACDC edges as {(child_hook, child_index, parent_hook, parent_index): value}, the nested "
    "corr.edges form, or rows [child_hook, [null, null, 3], parent_hook, [null], value]"
)
_LAYER = re.compile(r"blocks\.(\d+)\.")
# component-internal ACDC edges (child hooks that are outputs of a component)
_INTERNAL_CHILD = re.compile(r"blocks\.\d+\.(?:attn\.hook_[qkv]|attn\.hook_result|hook_mlp_out)")
_EMBED = re.compile(r"hook_(?:pos_)?embed")
_OLD_MLP_IN = re.compile(r"blocks\.(\d+)\.hook_resid_mid")  # early ACDC versions' MLP input


def parse_torch_index(raw: Any) -> tuple[int | None, ...]:
    """ACDC ``TorchIndex`` in any of its spellings -> a tuple of ints and Nones."""
    if hasattr(raw, "hashable_tuple"):
        raw = raw.hashable_tuple
    if raw is None:
        return (None,)
    if isinstance(raw, str):
        s = raw.strip().strip("[]()")
        parts = [p.strip() for p in s.split(",") if p.strip()] or [":"]
        out: list[int | None] = []
        for p in parts:
            if p in (":", "None", "null"):
                out.append(None)
            elif re.fullmatch(r"\d{1,6}", p):
                out.append(int(p))
            else:
                raise CircuitFormatError(
                    f"ACDC index {raw!r} is not a TorchIndex",
                    fix="write '[:, :, 3]' or [null, null, 3]",
                )
        return tuple(out)
    if isinstance(raw, list | tuple) and all(
        x is None or (isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 10**6)
        for x in raw
    ):
        return tuple(raw) or (None,)
    raise CircuitFormatError(
        f"ACDC index {raw!r} is not a TorchIndex", fix="write [null, null, 3] or '[:, :, 3]'"
    )


def _rows(obj: Any) -> list[Row]:
    if (
        isinstance(obj, Mapping)
        and "edges" in obj
        and not isinstance(obj.get("edges"), Mapping | bool | int | float)
    ):
        obj = obj["edges"]
    rows: list[Row] = []
    if isinstance(obj, Mapping) and obj and all(isinstance(k, tuple) for k in obj):
        for k, v in obj.items():
            if len(k) != 4:
                raise CircuitFormatError(f"ACDC key {k!r} does not have 4 parts", fix=_FIX)
            rows.append((k[0], parse_torch_index(k[1]), k[2], parse_torch_index(k[3]), v))
    elif isinstance(obj, Mapping):  # nested corr.edges
        for child, by_ci in obj.items():
            if not isinstance(by_ci, Mapping):
                raise CircuitFormatError(f"ACDC nested entry {child!r} is not a mapping", fix=_FIX)
            for ci, by_parent in by_ci.items():
                if not isinstance(by_parent, Mapping):
                    raise CircuitFormatError(
                        f"ACDC nested entry {child!r}[{ci!r}] is not a mapping", fix=_FIX
                    )
                for parent, by_pi in by_parent.items():
                    if not isinstance(by_pi, Mapping):
                        raise CircuitFormatError(
                            f"ACDC nested entry {child!r}[{ci!r}][{parent!r}] is not a mapping",
                            fix=_FIX,
                        )
                    for pi, v in by_pi.items():
                        rows.append(
                            (child, parse_torch_index(ci), parent, parse_torch_index(pi), v)
                        )
    elif isinstance(obj, list | tuple):
        for i, r in enumerate(obj):
            if not isinstance(r, list | tuple) or len(r) not in (4, 5):
                raise CircuitFormatError(
                    f"ACDC row {i} ({r!r}) is not [child, index, parent, index(, value)]", fix=_FIX
                )
            rows.append(
                (
                    r[0],
                    parse_torch_index(r[1]),
                    r[2],
                    parse_torch_index(r[3]),
                    r[4] if len(r) == 5 else True,
                )
            )
    else:
        raise CircuitFormatError(f"not an ACDC edge collection: {type(obj).__name__}", fix=_FIX)
    for r in rows:
        if not isinstance(r[0], str) or not isinstance(r[2], str):
            raise CircuitFormatError(f"ACDC edge {r[:4]!r}: hook names must be strings", fix=_FIX)
    return rows


def _value(v: Any, where: str) -> tuple[bool, float | None]:
    """(present, score) from an ACDC value."""
    if isinstance(v, Mapping):
        present, score = v.get("present", True), v.get("effect_size")
    elif hasattr(v, "present"):
        present, score = v.present, getattr(v, "effect_size", None)
    elif isinstance(v, bool) or v is None:
        present, score = v is not False, None
    else:
        present, score = True, v
    if not isinstance(present, bool):
        raise CircuitFormatError(f"{where}: 'present' must be a boolean, got {present!r}", fix=_FIX)
    if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
        raise CircuitFormatError(f"{where}: effect size {score!r} is not a number", fix=_FIX)
    try:
        return present, None if score is None else float(score)
    except OverflowError:
        raise CircuitFormatError(f"{where}: effect size too large", fix=_FIX) from None


def _node(
    hook: str, idx: tuple[int | None, ...], n_layers: int, child: bool, where: str
) -> tuple[Node, str | None]:
    """(node, channel) for one side of an ACDC edge."""
    if not child and _EMBED.fullmatch(hook):
        return Node(kind="input"), None
    if child and (m := _OLD_MLP_IN.fullmatch(hook)):
        return Node(kind="mlp", layer=int(m[1])), None
    head = idx[-1] if idx and isinstance(idx[-1], int) else None
    try:
        node, channel = node_from_tl_hook(hook, head, n_layers)
    except NodeNameError as e:
        raise CircuitFormatError(f"{where}: {e.message}", fix=e.fix or _FIX) from None
    out_hook = hook.endswith(("hook_result", "hook_z", "hook_mlp_out")) or node.kind == "input"
    if child == out_hook or (child and node.kind == "head" and channel is None):
        side = "child (receiver input)" if child else "parent (sender output)"
        raise CircuitFormatError(
            f"{where}: {hook!r} cannot be the {side} of a residual edge", fix=_FIX
        )
    return node, channel


def _infer_layers(rows: list[Row]) -> int:
    layers = [int(m[1]) for r in rows for h in (r[0], r[2]) if (m := _LAYER.match(h))]
    post = [int(m[1]) for r in rows if (m := re.fullmatch(r"blocks\.(\d+)\.hook_resid_post", r[0]))]
    return (post[0] + 1) if post else (max(layers) + 1 if layers else 1)


def from_acdc(
    edges: Any,
    *,
    n_layers: int | None = None,
    shape: Any = None,
    name: str = "acdc",
    model: str | None = None,
    source: str | None = "ACDC",
    trusted: bool = False,
    present_only: bool = True,
) -> Circuit:
    """A circuit from ACDC edges (see the module docstring for the accepted forms).

    ``n_layers`` (or ``shape``/a known ``model``) tells which ``hook_resid_post`` is the logits;
    without it, the layer of the ``hook_resid_post`` child (else the deepest layer) is used.
    With ``present_only=False`` edges marked not present are imported too.
    """
    obj, file = read_input(edges, trusted=trusted, what="ACDC edge dictionary")
    rows = _rows(obj)
    c = Circuit(name, model=model, source=source)
    shape = getattr(shape, "shape", shape) or c.shape
    n = n_layers or (shape.n_layers if shape is not None else _infer_layers(rows))
    internal = 0
    for child, ci, parent, pi, v in rows:
        where = f"{file or 'ACDC edges'}: ({child!r}, {ci}, {parent!r}, {pi})"
        present, score = _value(v, where)
        if _INTERNAL_CHILD.fullmatch(child):
            internal += present
            continue
        if not present and present_only:
            continue
        dst, channel = _node(child, ci, n, True, where)
        src, _ = _node(parent, pi, n, False, where)
        if c.graph.has_edge(src.name, dst.name, graph_key(channel)):
            if _EMBED.fullmatch(parent):
                continue  # hook_embed and hook_pos_embed are both 'input' here
            raise CircuitFormatError(f"{where}: duplicate edge", fix="list each edge once")
        try:
            c.add_edge(
                src.name,
                dst.name,
                channel,
                score=score,
                meta=None if present else {"present": False},
            )
        except (NodeNameError, CircuitFormatError) as e:
            raise CircuitFormatError(f"{where}: {e.message}", fix=e.fix or _FIX) from None
    c.metadata["acdc"] = {"internal_edges": internal, "n_layers": n}
    if shape is not None:
        c.shape = c.check_model(shape)
    return c


def read_acdc(path: str | os.PathLike[str], *, trusted: bool = False, **kwargs: Any) -> Circuit:
    """Read ACDC edges from JSON (or, with ``trusted=True``, a pickle)."""
    return from_acdc(path, trusted=trusted, **kwargs)


def _hooks(c: Circuit, n_layers: int) -> list[tuple[tuple[str, tuple, str, tuple], float | bool]]:
    out = []
    for e in c.edges:
        child, ci = tl_hook(e.dst, e.channel or "in", n_layers)
        parent, pi = tl_hook(e.src, "result", n_layers)
        key = (
            child,
            (None, None, ci) if ci is not None else (None,),
            parent,
            (None, None, pi) if pi is not None else (None,),
        )
        out.append((key, True if e.score is None else e.score))
    return out


def to_acdc(circuit: Circuit, *, n_layers: int | None = None, nested: bool = False) -> dict:
    """ACDC's ``{(child_hook, child_index, parent_hook, parent_index): effect size or True}``
    (``nested=True``: the four-level ``corr.edges`` layout). Residual edges only."""
    n = n_layers or (circuit.shape.n_layers if circuit.shape else None)
    if n is None:
        raise CircuitFormatError(
            f"circuit {circuit.name!r}: ACDC export needs the layer count",
            fix="pass n_layers= or give the circuit a shape",
        )
    flat = dict(_hooks(circuit, n))
    if not nested:
        return flat
    out: dict = {}
    for (child, ci, parent, pi), v in flat.items():
        out.setdefault(child, {}).setdefault(ci, {}).setdefault(parent, {})[pi] = v
    return out


def to_acdc_rows(circuit: Circuit, *, n_layers: int | None = None) -> list[list]:
    """The JSON form: ``[[child_hook, [null, null, 3], parent_hook, [null], value], ...]``."""
    return [
        [k[0], list(k[1]), k[2], list(k[3]), v]
        for k, v in to_acdc(circuit, n_layers=n_layers).items()
    ]
