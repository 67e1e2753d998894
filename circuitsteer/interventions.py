"""The engine's vocabulary: where (``Site``) and what (``Add``, ``Ablate``, ``ProjectOut``,
``Scale``, ``Patch``). Frozen dataclasses: plain data, validated on construction where that needs
no model, and against the model when the engine compiles them.

Example:
    >>> import torch
    >>> s = Site("a9.h9", positions="END")
    >>> iv = Add(s, torch.ones(64), coef=2.0)
    >>> iv.site.node, iv.coef
    ('a9.h9', 2.0)
    >>> Ablate(Site("m3", positions=[4, 5]), mode="zero").mode
    'zero'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from circuitsteer.errors import InterventionError, NodeNameError
from circuitsteer.nodes import CHANNELS, parse_node

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


@dataclass(frozen=True)
class Site:
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
        ch = f"<{self.channel}>" if self.channel else ""
        to = f" ->[{', '.join(self.to)}]" if self.to else ""
        return f"{self.node}{ch}@{self.positions}{to}"


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
    return t.detach()


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


@dataclass(frozen=True)
class Add:
    """Add ``coef * vector`` at the site.

    ``space``: for heads ``"z"`` (d_head, before W_O: where ITI adds) or ``"resid"`` (d_model, on
    the head's output); for MLPs ``"out"`` (d_model) or ``"neurons"`` (d_mlp). ``None`` infers it
    from the vector's length.
    """

    site: Site
    vector: torch.Tensor
    coef: float = 1.0
    space: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "vector", _check_tensor("vector", self.vector))
        object.__setattr__(self, "coef", _check_number("coef", self.coef))
        _check_space(self.space)


@dataclass(frozen=True)
class Ablate:
    """Replace the site's value: ``zero``; ``mean`` over ``reference`` (a token tensor or a Task;
    per named position when the site's positions are named, else per position index);
    ``resample``: the value from ``reference`` (the corrupted input), matched example by example."""

    site: Site
    mode: str = "zero"
    reference: Any = field(default=None, compare=False)

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


@dataclass(frozen=True)
class ProjectOut:
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


@dataclass(frozen=True)
class Scale:
    """Multiply the site's value by ``factor``."""

    site: Site
    factor: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "factor", _check_number("factor", self.factor))


@dataclass(frozen=True)
class Patch:
    """Set the site's value from another run: ``source`` is a ``Cache`` from ``engine.run``
    (captured at this site's node) or a tensor ``[batch, pos, width]`` of the site's activation."""

    site: Site
    source: Any = field(compare=False)


Intervention = Add | Ablate | ProjectOut | Scale | Patch
INTERVENTION_TYPES = (Add, Ablate, ProjectOut, Scale, Patch)
