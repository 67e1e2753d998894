"""The engine's vocabulary: where (``Site``) and what (``Add``, ``Ablate``, ``ProjectOut``,
``Scale``, ``Patch``). Frozen dataclasses: plain data, validated on construction where that needs
no model, and against the model when the engine compiles them.

Interventions compare and hash by value: two ``Add``s at the same site with equal vector values
and the same coefficient are equal (tensors compare by their values, not their identity), so
they can key dictionaries and sets. Every op declares what it needs from the engine (see
:class:`Op`); the engine asks these declarations and never checks an op's type, so a new op is
one class.

Example:
    >>> import torch
    >>> s = Site("a9.h9", positions="END")
    >>> iv = Add(s, torch.ones(64), coef=2.0)
    >>> iv.site.node, iv.coef
    ('a9.h9', 2.0)
    >>> Ablate(Site("m3", positions=[4, 5]), mode="zero").mode
    'zero'
    >>> Add(s, torch.ones(64), coef=2.0) == Add(s, torch.ones(64), coef=2.0)
    True
    >>> len({Add(s, torch.ones(64)), Add(s, torch.ones(64))})
    1
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any, ClassVar, Literal

import torch

from circuitsteer.errors import InterventionError, NodeNameError
from circuitsteer.nodes import CHANNELS, format_site, parse_node, parse_receiver

PositionSpec = int | slice | str | tuple[int | str, ...]
AblationMode = Literal["zero", "mean", "resample"]
Space = Literal["z", "resid", "out", "neurons"]
_SPACES = ("z", "resid", "out", "neurons")


def _freeze_positions(p: Any) -> PositionSpec:
    if isinstance(p, (list, tuple)):
        if not p:
            raise InterventionError(
                "empty position list", fix='give at least one position, or "all"'
            )
        return tuple(p)
    if isinstance(p, bool) or not isinstance(p, (int, slice, str)):
        raise InterventionError(
            f"positions {p!r} of type {type(p).__name__} not understood",
            fix='use an int, a slice, "all", a named position such as "END", or a list of these',
        )
    return p


def value_key(x: Any) -> Any:
    """A hashable key that is equal exactly when two values are equal: tensors by their values
    (``-0.0`` equals ``0.0``; a float32 and a float64 tensor of the same values are equal),
    mappings by their items, slices by their bounds, other objects (a Task) by identity unless
    they are hashable by value themselves."""
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        t = t.to(torch.float64) + 0.0 if t.is_floating_point() else t.to(torch.int64)
        return ("tensor", tuple(t.shape), t.contiguous().numpy().tobytes())
    if isinstance(x, slice):
        return ("slice", x.start, x.stop, x.step)
    if isinstance(x, Mapping):
        return ("map", tuple(sorted((str(k), value_key(v)) for k, v in x.items())))
    if isinstance(x, (tuple, list)):
        return (type(x).__name__, tuple(value_key(v) for v in x))
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    try:
        hash(x)
    except TypeError:
        return ("id", id(x))
    return x if type(x).__eq__ is not object.__eq__ else ("id", id(x))


class _ByValue:
    """Equality and hashing by the values of the dataclass fields (:func:`value_key`)."""

    @cached_property
    def _value_key(self) -> tuple:
        return (type(self).__name__, *(value_key(getattr(self, f.name)) for f in fields(self)))  # type: ignore[arg-type]

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._value_key == other._value_key  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._value_key)


@dataclass(frozen=True, eq=False)
class Site(_ByValue):
    """Where an intervention acts.

    Args:
        node: ``a{L}.h{H}``, ``m{L}``, ``m{L}.n{i}``, ``input``, ``resid_pre.{L}`` /
            ``resid_mid.{L}`` / ``resid_post.{L}``.
        positions: an int, a slice, ``"all"``, a named position of the task (``"END"``), or a
            list of ints / names.
        channel: ``"q"``, ``"k"`` or ``"v"`` for a head's input (the d_model residual the head
            reads through that channel, before its LayerNorm; TransformerLens's ``hook_q_input``).
        to: receivers for an edge-restricted change: ``"a9.h9"`` (all three channels),
            ``"a9.h9<q>"``, ``"m5"`` or ``"logits"``. Only they see the changed output of ``node``;
            every other reader sees the clean value.
    """

    node: str
    positions: PositionSpec = "all"
    channel: str | None = None
    to: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        parsed = parse_node(self.node)  # NodeNameError on malformed names
        object.__setattr__(self, "positions", _freeze_positions(self.positions))
        if self.channel is not None:
            if self.channel not in CHANNELS:
                raise NodeNameError(
                    f"unknown channel {self.channel!r} at {self.node}", fix="use 'q', 'k' or 'v'"
                )
            if parsed.kind != "head":
                raise InterventionError(
                    f"channel {self.channel!r} given for {self.node}, which is not a head",
                    fix="only heads read q, k and v inputs; drop channel",
                )
        if self.to is not None:
            to = (self.to,) if isinstance(self.to, str) else tuple(self.to)
            if not to:
                raise InterventionError(
                    f"Site({self.node!r}, to=()) names no receivers",
                    fix="name receivers or drop 'to'",
                )
            for r in to:
                parse_receiver(r)  # NodeNameError on malformed receivers
            object.__setattr__(self, "to", to)
            if parsed.kind not in ("head", "mlp", "input"):
                raise InterventionError(
                    f"edge-restricted site {self.node}: only circuit nodes (input, heads, MLPs) send edges",
                    fix="use a head, an MLP or 'input' as the sender, or drop 'to'",
                )
            if self.channel is not None:
                raise InterventionError(
                    f"Site({self.node!r}) has both channel and to",
                    fix="a channel site changes the head's input; 'to' restricts a sender's output",
                )

    def __str__(self) -> str:
        to = f" ->[{', '.join(self.to)}]" if self.to else ""
        return f"{format_site(self.node, self.channel)}@{self.positions}{to}"


def _check_tensor(name: str, t: Any) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        try:
            t = torch.as_tensor(t, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as e:
            raise InterventionError(
                f"{name} is not a tensor ({type(t).__name__})", fix="pass a 1-D torch tensor"
            ) from e
    if t.dim() != 1:
        raise InterventionError(
            f"{name} must be 1-D, got shape {tuple(t.shape)}",
            fix="pass one vector of the site's width",
        )
    if not torch.isfinite(t).all():
        raise InterventionError(
            f"{name} has non-finite entries (nan or inf)", fix="check how the vector was computed"
        )
    return t  # a vector that requires grad keeps its graph: engine.run(grad=True) differentiates it


def _check_number(name: str, x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError) as e:
        raise InterventionError(
            f"{name} {x!r} is not a number", fix=f"pass a finite float {name}"
        ) from e
    if not math.isfinite(v):
        raise InterventionError(f"{name} is {v}", fix=f"pass a finite {name}")
    return v


def _check_space(space: str | None) -> None:
    if space is not None and space not in _SPACES:
        raise InterventionError(f"unknown space {space!r}", fix=f"use one of {', '.join(_SPACES)}")


Fn = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


class Op(_ByValue):
    """Base of every intervention: what the engine asks an op (a new op is one subclass).

    * ``stacks``: may share a site's positions with other stacking ops (``Add``s sum).
    * ``source_kind``: ``None``, or where the new values come from: ``"patch"`` (a given
      Cache/tensor), ``"resample"`` (the reference run, example by example) or ``"mean"`` (the
      reference run's mean). The engine prepares such a source and passes it to ``function``.
    * ``vectors()``: the vectors the engine checks against the site's width and moves to the
      model's device and dtype, by name; ``space_hint()``: the one whose length picks the space.
    * ``function(vecs)``: ``fn(selected, source) -> new values`` over ``[n, k, width]``.
    * ``additive(vecs)``: the vector to add when the op is a pure addition (lets the engine skip
      reading the activation); ``affine(vecs)``: ``(mul, add)`` when the op is ``x * mul + add``
      with a scalar ``mul`` (per-head edits of that form are fused into one op per layer).
    """

    site: Site
    stacks: ClassVar[bool] = False
    source_kind: str | None = None  # overridden per instance where it depends on a field

    def vectors(self) -> dict[str, torch.Tensor]:
        return {}

    def space_hint(self) -> torch.Tensor | None:
        return None

    def function(self, vecs: dict[str, torch.Tensor]) -> Fn:
        raise NotImplementedError

    def additive(self, vecs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return None

    def affine(self, vecs: dict[str, torch.Tensor]) -> tuple[float, torch.Tensor | None] | None:
        return None

    def source_data(self) -> Any:
        """What a source is made from: reference tokens or a Task (mean, resample), a Cache or
        tensor (patch)."""
        return None

    @property
    def needs_source(self) -> bool:
        return self.source_kind is not None


@dataclass(frozen=True, eq=False)
class Add(Op):
    """Add ``coef * vector`` at the site.

    ``space``: for heads ``"z"`` (d_head, before W_O: where ITI adds) or ``"resid"`` (d_model, on
    the head's output); for MLPs ``"out"`` (d_model) or ``"neurons"`` (d_mlp). ``None`` infers it
    from the vector's length.
    """

    site: Site
    vector: torch.Tensor
    coef: float = 1.0
    space: str | None = None
    stacks: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "vector", _check_tensor("vector", self.vector))
        object.__setattr__(self, "coef", _check_number("coef", self.coef))
        _check_space(self.space)

    def vectors(self) -> dict[str, torch.Tensor]:
        return {"vector": self.vector}

    def space_hint(self) -> torch.Tensor | None:
        return self.vector

    def additive(self, vecs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return vecs["vector"] * self.coef

    def affine(self, vecs: dict[str, torch.Tensor]) -> tuple[float, torch.Tensor | None] | None:
        return 1.0, self.additive(vecs)

    def function(self, vecs: dict[str, torch.Tensor]) -> Fn:
        v = vecs["vector"] * self.coef
        return lambda x, _src: x + v


@dataclass(frozen=True, eq=False)
class Ablate(Op):
    """Replace the site's value: ``zero``; ``mean`` over ``reference`` (a token tensor or a Task;
    per named position when the site's positions are named, else per position index);
    ``resample``: the value from ``reference`` (the corrupted input), matched example by example."""

    site: Site
    mode: str = "zero"
    reference: Any = field(default=None)

    @property
    def source_kind(self) -> str | None:  # type: ignore[override]
        return None if self.mode == "zero" else self.mode

    def affine(self, vecs: dict[str, torch.Tensor]) -> tuple[float, torch.Tensor | None] | None:
        return (0.0, None) if self.mode == "zero" else None

    def source_data(self) -> Any:
        return self.reference

    def function(self, vecs: dict[str, torch.Tensor]) -> Fn:
        if self.mode == "zero":
            return lambda x, _src: torch.zeros_like(x)
        return _from_source

    def __post_init__(self) -> None:
        if self.mode not in ("zero", "mean", "resample"):
            raise InterventionError(
                f"unknown ablation mode {self.mode!r}", fix="use 'zero', 'mean' or 'resample'"
            )
        if self.mode != "zero" and self.reference is None:
            raise InterventionError(
                f"Ablate(mode={self.mode!r}) at {self.site} needs reference data",
                fix="pass reference=task.corrupted (resample) or a reference token batch / Task (mean)",
            )


@dataclass(frozen=True, eq=False)
class ProjectOut(Op):
    """Remove the component along ``direction`` (normalized): ``x - (x.d)d``."""

    site: Site
    direction: torch.Tensor
    space: str | None = None

    def __post_init__(self) -> None:
        d = _check_tensor("direction", self.direction)
        if float(d.norm()) == 0.0:
            raise InterventionError(
                "ProjectOut direction has zero norm", fix="pass a non-zero direction"
            )
        object.__setattr__(self, "direction", d)
        _check_space(self.space)

    def vectors(self) -> dict[str, torch.Tensor]:
        return {"direction": self.direction}

    def space_hint(self) -> torch.Tensor | None:
        return self.direction

    def function(self, vecs: dict[str, torch.Tensor]) -> Fn:
        d = vecs["direction"] / vecs["direction"].norm()
        return lambda x, _src: x - (x @ d)[..., None] * d


@dataclass(frozen=True, eq=False)
class Scale(Op):
    """Multiply the site's value by ``factor``."""

    site: Site
    factor: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "factor", _check_number("factor", self.factor))

    def affine(self, vecs: dict[str, torch.Tensor]) -> tuple[float, torch.Tensor | None] | None:
        return self.factor, None

    def function(self, vecs: dict[str, torch.Tensor]) -> Fn:
        f = self.factor
        return lambda x, _src: x * f


@dataclass(frozen=True, eq=False)
class Patch(Op):
    """Set the site's value from another run: ``source`` is a ``Cache`` from ``engine.run``
    (captured at this site's node) or a tensor ``[batch, pos, width]`` of the site's activation."""

    site: Site
    source: Any
    source_kind: ClassVar[str | None] = "patch"

    def source_data(self) -> Any:
        return self.source

    def function(self, vecs: dict[str, torch.Tensor]) -> Fn:
        return _from_source


def _from_source(x: torch.Tensor, src: torch.Tensor | None) -> torch.Tensor:
    assert src is not None, "the engine prepares the source of ops with a source_kind"
    return src.expand_as(x).to(x.dtype)


Intervention = Add | Ablate | ProjectOut | Scale | Patch
INTERVENTION_TYPES = (Add, Ablate, ProjectOut, Scale, Patch)
