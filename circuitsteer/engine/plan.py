"""Compiling interventions and capture names into edits on activation *slots*.

A slot is one activation tensor of the forward that a hook can see: the residual stream before
a block, between attention and MLP (sequential residual only) and after the block; the
concatenated head outputs ``z`` (input of the attention output projection); a head's d_model
output; a head's q/k/v input (per head and channel); the MLP input, output and neurons; the
final residual. Where each slot lives is the architecture adapter's business (``model.arch``);
this module knows only slots. Each edit reads the selected values of its slot and returns new
ones; a sender restricted with ``Site(to=...)`` leaves its slot alone and turns the change into
a d_model delta that only its receivers' inputs get.

What an edit does comes from the op's own declarations (:class:`~circuitsteer.interventions.Op`):
its function, whether it is a pure addition, whether it is ``x * mul + add`` (fusable), whether
it stacks with others at a site, and whether it needs a source.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from circuitsteer.engine.positions import Selector, resolve
from circuitsteer.errors import InterventionError, ShapeMismatchError
from circuitsteer.interventions import Op, value_key
from circuitsteer.nodes import (
    CHANNELS,
    Node,
    feeds,
    format_site,
    mlp,
    parse_capture,
    parse_receiver,
    resid,
    validate_node,
)

# receiver keys: ("qkv", layer, head, channel) | ("mlp_in", layer, -1, "") | ("logits", -1, -1, "")
ReceiverKey = tuple[str, int, int, str]


@dataclass(frozen=True)
class Slot:
    """Where in the forward a value lives. ``cols`` picks a head's or a neuron's columns."""

    kind: str  # resid_pre | resid_mid | resid_post | z | head_resid | qkv_in | mlp_in | mlp_out | neurons | logits_in | pattern
    layer: int
    cols: slice | None = None
    head: int | None = None
    channel: str | None = None

    @property
    def key(self) -> str:
        return f"{self.kind}.{self.layer}.{self.head}.{self.channel}.{self.cols}"


@dataclass
class Edit:
    """One compiled intervention."""

    iv: Op
    slot: Slot
    sel: Selector
    fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]  # (selected, source) -> new
    additive: torch.Tensor | None = None  # a pure addition: the d-vector itself (hooks skip reads)
    affine: tuple[float, torch.Tensor | None] | None = None  # x * mul + add (fusable)
    source: Any = None  # per-example / per-position source values (slot width)
    source_mode: str = ""  # "aligned" (index like the activation) | "values" ([n,k,D] ready)
    receivers: list[ReceiverKey] = field(default_factory=list)
    w_out: torch.Tensor | None = None  # sender: output rows [width, d_model] (change -> resid)

    def new_values(self, x: torch.Tensor) -> torch.Tensor:
        src = None
        if self.source is not None:
            src = (
                self.source
                if self.source_mode == "values"
                else self.sel.get(self.source, relative=True)
            )
        return self.fn(x, src)


def site_slot(node: Node, channel: str | None, space: str | None, model: Any) -> tuple[Slot, int]:
    """The slot a site acts on and that slot's width."""
    s = model.shape
    L = node.layer if node.layer is not None else 0
    if node.kind == "input":
        return Slot("resid_pre", 0), s.d_model
    if node.kind == "resid":
        return Slot(node.resid or "", L), s.d_model
    if node.kind == "head":
        h = node.head or 0
        if channel is not None:
            return Slot("qkv_in", L, head=h, channel=channel), s.d_model
        if space == "resid":
            return Slot("head_resid", L, head=h), s.d_model
        return Slot("z", L, cols=slice(h * s.d_head, (h + 1) * s.d_head), head=h), s.d_head
    if node.kind == "mlp":
        if space == "neurons":
            return Slot("neurons", L), s.d_mlp
        return Slot("mlp_out", L), s.d_model
    if node.kind == "neuron":
        i = node.index or 0
        return Slot("neurons", L, cols=slice(i, i + 1)), 1
    raise InterventionError(
        f"cannot intervene at {node.name}", fix="use a head, MLP, neuron, input or residual site"
    )


def infer_space(iv: Op, node: Node, model: Any) -> str | None:
    """Pick the space from an explicit ``space`` or the length of the op's ``space_hint``."""
    space = getattr(iv, "space", None)
    s = model.shape
    vec = iv.space_hint()
    if node.kind == "head" and iv.site.channel is None:
        if space in ("out", "neurons"):
            raise InterventionError(
                f"space {space!r} does not apply to head {node.name}", fix="use 'z' or 'resid'"
            )
        if space is None and vec is not None:
            return "z" if vec.numel() == s.d_head else "resid" if vec.numel() == s.d_model else "z"
        return space
    if node.kind == "mlp":
        if space in ("z", "resid"):
            raise InterventionError(
                f"space {space!r} does not apply to MLP {node.name}", fix="use 'out' or 'neurons'"
            )
        if space is None and vec is not None:
            return (
                "out"
                if vec.numel() == s.d_model
                else "neurons"
                if vec.numel() == s.d_mlp
                else "out"
            )
        return space
    if space is not None:
        raise InterventionError(
            f"space {space!r} given for {node.name}", fix="drop space: only heads and MLPs have two"
        )
    return None


def _vector(name: str, v: torch.Tensor, width: int, iv: Op, slot: Slot, model: Any) -> torch.Tensor:
    if v.numel() != width:
        raise ShapeMismatchError(
            f"{type(iv).__name__} at {iv.site}: {name} has {v.numel()} entries but the site "
            f"({slot.kind}) is {width} wide",
            fix=_width_help(model),
        )
    return v.to(device=model.device, dtype=model.dtype)


def _width_help(model: Any) -> str:
    s = model.shape
    return (
        f"heads take d_head={s.d_head} (space 'z') or d_model={s.d_model} (space 'resid'); MLPs "
        f"d_model={s.d_model} ('out') or d_mlp={s.d_mlp} ('neurons'); neurons 1; residual sites, "
        f"q/k/v inputs and input d_model={s.d_model}"
    )


def receiver_keys(sender: Node, to: tuple[str, ...], model: Any) -> list[ReceiverKey]:
    keys: list[ReceiverKey] = []
    for r in to:
        try:
            node, ch = parse_receiver(r)
        except ValueError as e:  # keep the engine's error type for receivers
            raise InterventionError(
                str(getattr(e, "message", e)), fix=getattr(e, "fix", None)
            ) from e
        validate_node(node, model.shape)
        if not feeds(sender, node, model.shape):
            raise InterventionError(
                f"receiver {r} is not downstream of sender {sender.name}"
                + (
                    " (with a parallel residual, an MLP reads the layer's input, before its heads)"
                    if model.shape.parallel_residual and node.kind == "mlp"
                    else ""
                ),
                fix="receivers read the sender's output, so they must come later in the forward pass",
            )
        if node.kind == "head":
            keys += [
                ("qkv", node.layer or 0, node.head or 0, c) for c in ([ch] if ch else CHANNELS)
            ]
        elif node.kind == "mlp":
            keys.append(("mlp_in", node.layer or 0, -1, ""))
        else:
            keys.append(("logits", -1, -1, ""))
    return sorted(set(keys))


def capture_slot(name: str, model: Any) -> Slot:
    """The slot a capture name reads (grammar: :func:`circuitsteer.nodes.parse_capture`)."""
    c = parse_capture(name)
    node, point = c.node, c.point
    if node.kind == "logits":
        return Slot("logits_in", -1)
    validate_node(node, model.shape)
    L = node.layer or 0
    if point in CHANNELS:
        return Slot("qkv_in", L, head=node.head, channel=point)
    if point == "pattern":
        return Slot("pattern", L, head=node.head)
    if point == "result":
        return Slot("head_resid", L, head=node.head)
    if point == "in":
        return Slot("mlp_in", L)
    if point == "neurons":
        return Slot("neurons", L)
    return site_slot(node, None, "z" if node.kind == "head" else None, model)[0]


def source_point(slot: Slot) -> str:
    """The capture point of a node whose values fill ``slot`` (for reference runs and caches)."""
    if slot.kind == "qkv_in":
        return slot.channel or "q"
    if slot.kind == "head_resid":
        return "result"
    if slot.kind == "neurons" and slot.cols is None:
        return "neurons"
    return "out"


def _conflict_label(node: Node, slot: Slot) -> str:
    if node.kind == "head":
        return format_site(node, slot.channel)
    if node.kind in ("mlp", "neuron"):
        return mlp(slot.layer)
    return resid(slot.kind, slot.layer)


def _overlap(a: Selector, b: Selector) -> bool:
    if "all" in (a.kind, b.kind) or isinstance(a.fixed, slice) or isinstance(b.fixed, slice):
        return True
    if a.kind == b.kind == "fixed":
        fa, fb = tuple(a.fixed or ()), tuple(b.fixed or ())
        if any(p < 0 for p in fa) != any(p < 0 for p in fb):
            return (
                True  # -1 and 4 may be the same position; the length is only known in the forward
            )
        return bool(set(fa) & set(fb))
    if (
        a.kind == b.kind == "per_example"
        and a.per_example is not None
        and b.per_example is not None
    ):
        return bool((a.per_example[:, :, None] == b.per_example[:, None, :]).any())
    return True  # fixed vs per-example: conservatively overlapping


def _conflicts(a: Edit, b: Edit) -> bool:
    """Two edits at one site conflict unless both stack (Adds), their positions are disjoint, or
    both are edge-restricted to disjoint receivers (each receiver then sees one change)."""
    if a.iv.stacks and b.iv.stacks:
        return False
    if a.receivers and b.receivers and not set(a.receivers) & set(b.receivers):
        return False
    return _overlap(a.sel, b.sel)


def compile_plan(
    model: Any,
    interventions: Sequence[Op],
    positions: Mapping[str, torch.Tensor] | None,
    prepare_source: Callable[[Edit, Node], None],
    row0: int = 0,
    n: int | None = None,
) -> list[Edit]:
    """Validate interventions against the model and compile them into (fused) edits.

    ``prepare_source(edit, node)`` attaches reference/patch values to edits whose op declares a
    ``source_kind``. Sites with equal positions share one selector (and its device index cache).
    """
    edits: list[Edit] = []
    seen: dict[str, list[Edit]] = {}
    selectors: dict[Any, Selector] = {}
    arch = model.arch
    for iv in interventions:
        if not isinstance(iv, Op):
            raise InterventionError(
                f"not an intervention: {iv!r}",
                fix="use cs.Add, cs.Ablate, cs.ProjectOut, cs.Scale or cs.Patch",
            )
        node = validate_node(iv.site.node, model.shape)
        space = infer_space(iv, node, model)
        slot, width = site_slot(node, iv.site.channel, space, model)
        pkey = value_key(iv.site.positions)
        sel = selectors.get(pkey)
        if sel is None:
            sel = selectors[pkey] = resolve(iv.site.positions, positions, row0, n)
        vecs = {k: _vector(k, v, width, iv, slot, model) for k, v in iv.vectors().items()}
        e = Edit(
            iv=iv,
            slot=slot,
            sel=sel,
            fn=iv.function(vecs),
            additive=iv.additive(vecs),
            affine=iv.affine(vecs),
        )
        if iv.needs_source:
            prepare_source(e, node)
        if iv.site.to:
            e.receivers = receiver_keys(node, iv.site.to, model)
            if slot.kind == "z":
                e.w_out = arch.out_rows(model.module(arch.path("attn_out", slot.layer)), slot.cols)
            elif slot.kind == "neurons":
                down = model.module(arch.path("mlp_down", slot.layer))
                e.w_out = arch.out_rows(down, slot.cols or slice(None))
        label = _conflict_label(node, slot)
        for other in seen.get(label, []):
            if _conflicts(other, e):
                raise InterventionError(
                    f"conflicting interventions on {label}: {type(other.iv).__name__} at "
                    f"{other.iv.site} and {type(iv).__name__} at {iv.site} touch the same positions",
                    fix="only Adds may share a site's positions (edge-restricted changes may if "
                    "their receivers are disjoint); merge them, or use disjoint positions",
                )
        seen.setdefault(label, []).append(e)
        edits.append(e)
    return fuse_head_edits(edits, model)


def _sel_key(e: Edit) -> tuple:
    s = e.sel
    fixed = (
        s.fixed if not isinstance(s.fixed, slice) else (s.fixed.start, s.fixed.stop, s.fixed.step)
    )
    return (e.slot.layer, s.kind, s.row0, s.n, fixed, id(s.per_example))


def fuse_head_edits(edits: list[Edit], model: Any) -> list[Edit]:
    """Merge node-level edits of the form ``x * mul + add`` (the op's ``affine``: Add, Scale,
    zero-Ablate) on heads of one layer that share a selector into one ``x * mul + add`` over
    ``[batch, pos, head, d_head]``: one read and one write per layer instead of one per head
    (144 heads cost one small op per layer). Equal position specs share one selector, so heads
    edited at the same named positions fuse too.

    Exact: untouched heads get ``x * 1 + 0``; the conflict check already forbids mixing
    non-stacking ops at the same head and positions.
    """
    groups: dict[tuple, list[Edit]] = {}
    rest: list[Edit] = []
    for e in edits:
        if e.slot.kind == "z" and not e.receivers and e.source is None and e.affine is not None:
            groups.setdefault(_sel_key(e), []).append(e)
        else:
            rest.append(e)
    s = model.shape
    fused: list[Edit] = []
    for members in groups.values():
        if len(members) == 1:
            fused.append(members[0])
            continue
        mul = torch.ones(s.n_heads, 1, device=model.device, dtype=model.dtype)
        add = torch.zeros(s.n_heads, s.d_head, device=model.device, dtype=model.dtype)
        for e in members:
            assert e.affine is not None
            h = e.slot.head or 0
            m, a = e.affine
            mul[h] *= m
            add[h] *= m
            if a is not None:
                add[h] += a
        fused.append(
            Edit(
                iv=members[0].iv,
                slot=Slot("z", members[0].slot.layer),
                sel=members[0].sel,
                fn=lambda x, _src, mul=mul, add=add: x * mul + add,
            )
        )
    return rest + fused
