"""Compiling interventions and capture names into edits on activation *slots*.

A slot is one activation tensor of the HF GPT-2 forward that a hook can see: the residual stream
before/after a block's attention or MLP, the concatenated head outputs ``z`` (input of the
attention's ``c_proj``), a head's d_model output, the joint q/k/v projection's input per head and
channel, the MLP output, the MLP neurons. Each edit reads the selected values of its slot and
returns new ones; a sender restricted with ``Site(to=...)`` leaves its slot alone and turns the
change into a d_model delta that only its receivers' inputs get.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from circuitsteer.engine.positions import Selector
from circuitsteer.errors import InterventionError, ShapeMismatchError
from circuitsteer.interventions import Ablate, Add, Intervention, Patch, ProjectOut, Scale
from circuitsteer.nodes import CHANNELS, Node, parse_node, validate_node

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

    iv: Intervention
    slot: Slot
    sel: Selector
    fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]  # (selected, source) -> new
    additive: torch.Tensor | None = None  # Add: the d-vector itself (lets hooks skip reads)
    source: torch.Tensor | None = None  # per-example / per-position source values (slot width)
    source_mode: str = ""  # "aligned" (index like the activation) | "values" ([n,k,D] ready)
    receivers: list[ReceiverKey] = field(default_factory=list)
    w_out: torch.Tensor | None = None  # head sender: W_O rows [d_head, d_model] (z delta -> resid)

    def new_values(self, x: torch.Tensor) -> torch.Tensor:
        src = None
        if self.source is not None:
            src = (
                self.source
                if self.source_mode == "values"
                else self.sel.get(self.source, relative=True)
            )
        return self.fn(x, src)


def shape_of(model: Any):
    return model.shape


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


def infer_space(iv: Intervention, node: Node, model: Any) -> str | None:
    """Pick the space from an explicit ``space`` or the vector's length."""
    space = getattr(iv, "space", None)
    s = model.shape
    vec = iv.vector if isinstance(iv, Add) else iv.direction if isinstance(iv, ProjectOut) else None
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


def _vector(
    name: str, v: torch.Tensor, width: int, iv: Intervention, slot: Slot, model: Any
) -> torch.Tensor:
    if v.numel() != width:
        raise ShapeMismatchError(
            f"{type(iv).__name__} at {iv.site}: {name} has {v.numel()} entries but the site "
            f"({slot.kind}) is {width} wide",
            fix=_width_help(slot, model),
        )
    return v.to(device=model.device, dtype=model.dtype)


def _width_help(slot: Slot, model: Any) -> str:
    s = model.shape
    return (
        f"heads take d_head={s.d_head} (space 'z') or d_model={s.d_model} (space 'resid'); MLPs "
        f"d_model={s.d_model} ('out') or d_mlp={s.d_mlp} ('neurons'); neurons 1; residual sites, "
        f"q/k/v inputs and input d_model={s.d_model}"
    )


def receiver_keys(sender: Node, to: tuple[str, ...], model: Any) -> list[ReceiverKey]:
    keys: list[ReceiverKey] = []
    for r in to:
        name, _, ch = r.partition("<")
        ch = ch.rstrip(">") or None
        node = validate_node(name, model.shape)
        if not sender.depth() < node.depth(model.shape.n_layers):
            raise InterventionError(
                f"receiver {r} is not downstream of sender {sender.name}",
                fix="receivers read the sender's output, so they must come later in the forward pass",
            )
        if node.kind == "head":
            chans = [ch] if ch else list(CHANNELS)
            if ch and ch not in CHANNELS:
                raise InterventionError(
                    f"unknown channel in receiver {r!r}", fix="use <q>, <k> or <v>"
                )
            keys += [("qkv", node.layer or 0, node.head or 0, c) for c in chans]
        elif node.kind == "mlp" and not ch:
            keys.append(("mlp_in", node.layer or 0, -1, ""))
        elif node.kind == "logits" and not ch:
            keys.append(("logits", -1, -1, ""))
        else:
            raise InterventionError(
                f"receiver {r!r} is not a head, MLP or logits",
                fix="name receivers as 'a9.h9', 'a9.h9<q>', 'm5' or 'logits'",
            )
    return sorted(set(keys))


def make_fn(
    iv: Intervention, slot: Slot, width: int, model: Any
) -> tuple[Callable, torch.Tensor | None]:
    """(fn(selected, source) -> new values, additive vector or None)."""
    if isinstance(iv, Add):
        v = _vector("vector", iv.vector, width, iv, slot, model) * iv.coef
        return (lambda x, _src: x + v), v
    if isinstance(iv, Scale):
        f = iv.factor
        return (lambda x, _src: x * f), None
    if isinstance(iv, ProjectOut):
        d = _vector("direction", iv.direction, width, iv, slot, model)
        d = d / d.norm()
        return (lambda x, _src: x - (x @ d)[..., None] * d), None
    if isinstance(iv, Ablate) and iv.mode == "zero":
        return (lambda x, _src: torch.zeros_like(x)), None
    if isinstance(iv, (Ablate, Patch)):
        return (lambda x, src: src.expand_as(x).to(x.dtype)), None
    raise InterventionError(
        f"not an intervention: {iv!r}", fix="use Add, Ablate, ProjectOut, Scale or Patch"
    )


def parse_capture(name: str, model: Any) -> Slot:
    """Capture names: node names (heads give z), ``a9.h9:result`` (d_model output), ``a9.h9<q>``
    (q input), ``a9.h9:pattern``, ``m3`` (output), ``m3:in``, ``m3:neurons``, ``m3.n5``,
    ``input``, residual sites, ``logits:in`` (input of the final LayerNorm)."""
    base, _, suffix = name.partition(":")
    base, _, ch = base.partition("<")
    ch = ch.rstrip(">") or None
    if base == "logits":
        if suffix != "in":
            raise InterventionError(
                "capture 'logits' is the returned logits",
                fix="capture 'logits:in' for the final residual",
            )
        return Slot("logits_in", -1)
    node = validate_node(parse_node(base), model.shape)
    L = node.layer or 0
    if ch is not None:
        if node.kind != "head" or ch not in CHANNELS or suffix:
            raise InterventionError(f"bad capture name {name!r}", fix="use e.g. 'a9.h9<q>'")
        return Slot("qkv_in", L, head=node.head, channel=ch)
    if node.kind == "head":
        if suffix == "pattern":
            return Slot("pattern", L, head=node.head)
        if suffix == "result":
            return Slot("head_resid", L, head=node.head)
        if suffix:
            raise InterventionError(
                f"bad capture suffix in {name!r}", fix="use ':result' or ':pattern' for heads"
            )
        slot, _ = site_slot(node, None, "z", model)
        return slot
    if node.kind == "mlp" and suffix == "in":
        return Slot("mlp_in", L)
    if node.kind == "mlp" and suffix == "neurons":
        return Slot("neurons", L)
    if suffix:
        raise InterventionError(
            f"bad capture suffix in {name!r}",
            fix="':in'/':neurons' apply to MLPs, ':result'/':pattern' to heads",
        )
    slot, _ = site_slot(node, None, None, model)
    return slot


def _sel_key(e: Edit) -> tuple:
    s = e.sel
    fixed = (
        s.fixed if not isinstance(s.fixed, slice) else (s.fixed.start, s.fixed.stop, s.fixed.step)
    )
    return (e.slot.layer, s.kind, s.row0, s.n, fixed, id(s.per_example))


def fuse_head_edits(edits: list[Edit], model: Any) -> list[Edit]:
    """Merge node-level Add / Scale / zero-Ablate edits on heads of one layer that share a
    selector into one ``x * mul + add`` over ``[batch, pos, head, d_head]``: one read and one
    write per layer instead of one per head (144 heads cost one small op per layer).

    Exact: untouched heads get ``x * 1 + 0``; the conflict check already forbids mixing Scale or
    Ablate with anything else at the same head and positions.
    """
    groups: dict[tuple, list[Edit]] = {}
    rest: list[Edit] = []
    for e in edits:
        fusable = (
            e.slot.kind == "z"
            and not e.receivers
            and e.source is None
            and (
                isinstance(e.iv, (Add, Scale)) or (isinstance(e.iv, Ablate) and e.iv.mode == "zero")
            )
        )
        if fusable:
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
            h = e.slot.head or 0
            if isinstance(e.iv, Add):
                assert e.additive is not None
                add[h] += e.additive
            elif isinstance(e.iv, Scale):
                mul[h] *= e.iv.factor
            else:
                mul[h], add[h] = 0.0, 0.0
        fused.append(
            Edit(
                iv=members[0].iv,
                slot=Slot("z", members[0].slot.layer),
                sel=members[0].sel,
                fn=lambda x, _src, mul=mul, add=add: x * mul + add,
            )
        )
    return rest + fused
