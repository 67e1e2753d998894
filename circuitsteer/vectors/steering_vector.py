"""``SteeringVector``: a tensor, the site it belongs to, and where it came from.

A vector is 1-D (``[width]``: added at any positions) or 2-D (``[n_pos, width]``: one row per
position, added front-aligned to the first ``n_pos`` positions of a prompt, as ActAdd does).
Its provenance (model name and shape, method, data, positions, seed, and any arithmetic done
since) travels with it and is written next to it on disk:

* ``save(path)`` writes ``path.safetensors`` (the tensor, exactly) and ``path.json`` (the
  provenance, the dtype, the shape and a sha256 of the tensor's bytes); ``load(path)`` checks
  them against each other. No pickle anywhere.
* ``v + w``, ``v - w``, ``c * v``, ``v / c``, ``-v``, ``sum([...])``, ``v.normalize()``: sums
  need the same site, model and shape (else :class:`VectorMismatchError`); scaling keeps the
  provenance and appends the step to ``history``.
* ``v.intervention(coef, positions)`` is the :class:`~circuitsteer.interventions.Add` that adds
  ``coef * v`` at the vector's site (in the right space: a head's ``z`` or its output, MLP output
  or neurons); with ``model=`` it first checks that the vector fits that model and site.

Example:
    >>> import torch
    >>> v = SteeringVector(torch.tensor([3.0, 4.0]), site="resid_pre.1", method="manual")
    >>> (2 * v).vector.tolist(), round(v.normalize().norm, 6)
    ([6.0, 8.0], 1.0)
    >>> iv = v.intervention(coef=5.0, positions="END")
    >>> iv.site.node, iv.site.positions, iv.coef
    ('resid_pre.1', 'END', 5.0)
    >>> (2 * v).history
    ({'op': 'scale', 'factor': 2.0},)
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from circuitsteer.interventions import Add, PositionSpec, Site
from circuitsteer.vectors._site import add_target, canonical, site_width
from circuitsteer.vectors._site import check_model as _check_model_ref
from circuitsteer.vectors.errors import VectorError, VectorMismatchError

SCHEMA = "circuitsteer.vector/1"


def _json_checked(name: str, value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise VectorError(
            f"SteeringVector {name} {value!r} is not JSON-serializable ({e})",
            fix="describe data and positions with strings, numbers, lists and dicts",
        ) from e
    return value


@dataclass(frozen=True, eq=False)
class SteeringVector:
    """A steering direction at a site, with its provenance.

    Fields:
        vector: ``[width]`` or ``[n_pos, width]`` (per position, front-aligned).
        site: capture name (``resid_pre.2``, ``a1.h3`` (z), ``a1.h3:result``, ``m2``,
            ``m2:neurons``, ...; see :mod:`circuitsteer.vectors._site`).
        model: ``{"name", "shape"}`` of the model it came from (None: unknown; never checked).
        method: how it was made (``mean_difference``, ``contrast_pair``, ``pca``, ``probe``,
            ``mass_mean``, ``random``, ``random_covariance``, ``sum``, ``manual``).
        data, positions, seed: what it was made from (JSON-serializable).
        meta: extra facts (counts, explained variance, accuracy ...), JSON-serializable.
        history: scalings and normalizations applied since (``{"op": ..., ...}`` steps).
    """

    vector: torch.Tensor
    site: str
    model: dict[str, Any] | None = None
    method: str = "manual"
    data: Any = None
    positions: Any = None
    seed: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    history: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        v = self.vector
        if not isinstance(v, torch.Tensor):
            raise VectorError(
                f"vector must be a torch tensor, got {type(v).__name__}",
                fix="pass torch.tensor(...)",
            )
        if v.dim() not in (1, 2) or v.shape[-1] == 0 or not v.is_floating_point():
            raise VectorError(
                f"vector must be a float tensor [width] or [n_pos, width], got {v.dtype} {tuple(v.shape)}",
                fix="pass one vector, or one row per position",
            )
        if not bool(torch.isfinite(v).all()):
            raise VectorError(
                "vector has non-finite entries", fix="check how the vector was computed"
            )
        object.__setattr__(self, "vector", v.detach())
        object.__setattr__(self, "site", canonical(self.site))
        object.__setattr__(self, "history", tuple(self.history))
        for name in ("model", "data", "positions", "meta", "history"):
            _json_checked(name, getattr(self, name))

    # -- facts --------------------------------------------------------------------------------
    @property
    def width(self) -> int:
        return int(self.vector.shape[-1])

    @property
    def per_position(self) -> bool:
        """True for a ``[n_pos, width]`` vector (one row per position)."""
        return self.vector.dim() == 2

    @property
    def norm(self) -> float:
        """Euclidean norm (Frobenius over all rows for a per-position vector)."""
        return float(self.vector.double().norm())

    @property
    def provenance(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "model": self.model,
            "method": self.method,
            "data": self.data,
            "positions": self.positions,
            "seed": self.seed,
            "meta": self.meta,
            "history": list(self.history),
        }

    def cosine(self, other: SteeringVector | torch.Tensor) -> float:
        """Cosine similarity with another vector of the same shape (flattened)."""
        o = other.vector if isinstance(other, SteeringVector) else other
        a, b = self.vector.double().flatten(), o.detach().double().flatten().to(self.vector.device)
        return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))

    def __repr__(self) -> str:
        model = self.model["name"] if self.model else None
        shape = "x".join(map(str, self.vector.shape))
        return (
            f"SteeringVector(site={self.site!r}, shape={shape}, method={self.method!r}, "
            f"model={model!r}, norm={self.norm:.4g})"
        )

    # -- arithmetic ---------------------------------------------------------------------------
    def _scaled(self, factor: float, step: dict[str, Any]) -> SteeringVector:
        v = (self.vector.double() * factor).to(self.vector.dtype)
        return replace(self, vector=v, history=(*self.history, step))

    def scale(self, factor: float) -> SteeringVector:
        """``factor * self`` (provenance kept; the step is recorded in ``history``)."""
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real):
            raise VectorError(
                f"can only scale by a real number, got {type(factor).__name__}",
                fix="multiply by a float",
            )
        f = float(factor)
        if not math.isfinite(f):
            raise VectorError(f"scale factor {f} is not finite", fix="pass a finite factor")
        return self._scaled(f, {"op": "scale", "factor": f})

    def normalize(self) -> SteeringVector:
        """Unit norm (a per-position vector: unit Frobenius norm over all its rows)."""
        n = self.norm
        if n == 0.0:
            raise VectorError("cannot normalize a zero vector", fix="check the vector's data")
        return self._scaled(1.0 / n, {"op": "normalize", "from_norm": n})

    def __mul__(self, factor: float) -> SteeringVector:
        if not isinstance(factor, numbers.Real) or isinstance(factor, bool):
            return NotImplemented
        return self.scale(factor)

    __rmul__ = __mul__

    def __truediv__(self, factor: float) -> SteeringVector:
        if not isinstance(factor, numbers.Real) or isinstance(factor, bool) or factor == 0:
            raise VectorError(f"cannot divide by {factor!r}", fix="divide by a non-zero number")
        return self.scale(1.0 / float(factor))

    def __neg__(self) -> SteeringVector:
        return self.scale(-1.0)

    def __add__(self, other: Any) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        return self._combine(other, 1.0)

    def __radd__(self, other: Any) -> SteeringVector:
        if isinstance(other, numbers.Number) and other == 0:  # sum([...]) starts from 0
            return self
        return NotImplemented

    def __sub__(self, other: Any) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        return self._combine(other, -1.0)

    def _combine(self, other: SteeringVector, sign: float) -> SteeringVector:
        if other.site != self.site:
            raise VectorMismatchError(
                f"cannot combine vectors of sites {self.site!r} and {other.site!r}",
                fix="add vectors of the same site only",
            )
        if other.vector.shape != self.vector.shape:
            raise VectorMismatchError(
                f"cannot combine vectors of shapes {tuple(self.vector.shape)} and {tuple(other.vector.shape)}",
                fix="average per-position vectors first, or use vectors of one width",
            )
        mine, theirs = self.model, other.model
        if mine is not None and theirs is not None and _model_key(mine) != _model_key(theirs):
            raise VectorMismatchError(
                f"cannot combine vectors of models {mine['name']!r} and {theirs['name']!r}",
                fix="combine vectors extracted from the same model",
            )
        terms = [t.provenance for t in (self, other)]
        seeds = {t.seed for t in (self, other)} - {None}
        return SteeringVector(
            self.vector + sign * other.vector.to(self.vector),
            site=self.site,
            model=self.model if self.model is not None else other.model,
            method="sum",
            data={"terms": terms, "signs": [1.0, sign]},
            positions=self.positions if self.positions == other.positions else None,
            seed=seeds.pop() if len(seeds) == 1 else None,
        )

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> SteeringVector:
        return replace(self, vector=self.vector.to(device=device, dtype=dtype))

    # -- applying -----------------------------------------------------------------------------
    def check(self, model: Any, site: str | None = None, check_model: bool = True) -> None:
        """Raise :class:`VectorMismatchError` unless this vector fits ``model`` at ``site``
        (default: its own site): same width, and (``check_model``) the model it came from."""
        site = canonical(site or self.site)
        if check_model:
            _check_model_ref(self.model, model, f"the vector at {self.site}")
        width = site_width(model, site)
        if width != self.width:
            raise VectorMismatchError(
                f"a vector of width {self.width} (from {self.site}) does not fit {site} of "
                f"{getattr(model, 'name', 'the model')}, which has width {width}",
                fix="apply it at a site of the same kind (a d_head vector at a head's z, a "
                "d_model vector at a residual site, a head's ':result', q/k/v input or an MLP "
                "output), or extract a vector at that site",
            )

    def intervention(
        self,
        coef: float = 1.0,
        positions: PositionSpec | Sequence[int | str] = "all",
        model: Any = None,
        site: str | None = None,
        check_model: bool = True,
    ) -> Add:
        """The ``Add`` of ``coef * vector`` at ``site`` (default: the vector's own) and
        ``positions``. With ``model``, the vector is checked against it first
        (:class:`VectorMismatchError`). Per-position vectors use :meth:`interventions`."""
        if self.per_position:
            raise VectorError(
                f"this vector has one row per position ({tuple(self.vector.shape)})",
                fix="use .interventions(coef) (front-aligned Adds), or average it over positions",
            )
        site = canonical(site or self.site)
        if model is not None:
            self.check(model, site, check_model)
        node, channel, space = add_target(site)
        pos: Any = tuple(positions) if isinstance(positions, list) else positions
        return Add(Site(node, positions=pos, channel=channel), self.vector, coef, space)

    def interventions(
        self,
        coef: float = 1.0,
        positions: Sequence[int] | PositionSpec | None = None,
        offset: int = 0,
        model: Any = None,
        site: str | None = None,
        check_model: bool = True,
    ) -> list[Add]:
        """The ``Add``s that apply this vector: one at ``positions`` (default ``"all"``) for a
        1-D vector; for a per-position vector one per row, row ``i`` at position ``offset + i``
        (front-aligned, as ActAdd), or at ``positions[i]`` when a list of ints is given."""
        if not self.per_position:
            return [
                self.intervention(
                    coef, "all" if positions is None else positions, model, site, check_model
                )
            ]
        n = self.vector.shape[0]
        if positions is None:
            pos = [offset + i for i in range(n)]
        elif isinstance(positions, (list, tuple)) and len(positions) == n:
            pos = list(positions)
        else:
            raise VectorError(
                f"a per-position vector of {n} rows needs {n} positions, got {positions!r}",
                fix="pass one int per row, or offset= to shift the front alignment",
            )
        row = replace(self, vector=self.vector[0])
        if model is not None:
            row.check(model, site, check_model)
        out = []
        for i, p in enumerate(pos):
            out.append(replace(row, vector=self.vector[i]).intervention(coef, p, site=site))
        return out

    # -- files --------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``path.safetensors`` and the ``path.json`` sidecar; return the tensor's path."""
        from safetensors.torch import save_file

        stem = _stem(path)
        stem.parent.mkdir(parents=True, exist_ok=True)
        t = self.vector.detach().cpu().contiguous()
        tensor_path = stem.with_name(stem.name + ".safetensors")
        save_file({"vector": t}, str(tensor_path), metadata={"schema": SCHEMA})
        side = {
            "schema": SCHEMA,
            **self.provenance,
            "dtype": str(t.dtype).removeprefix("torch."),
            "shape": list(t.shape),
            "sha256": _digest(t),
        }
        stem.with_name(stem.name + ".json").write_text(json.dumps(side, indent=2) + "\n")
        return tensor_path

    @classmethod
    def load(cls, path: str | Path, device: Any = None) -> SteeringVector:
        """Read a vector written by :meth:`save` (bit-exact), checking the sidecar's dtype,
        shape and sha256 against the tensor (:class:`VectorError` on any difference)."""
        from safetensors.torch import load_file

        stem = _stem(path)
        tensor_path = stem.with_name(stem.name + ".safetensors")
        side_path = stem.with_name(stem.name + ".json")
        for p in (tensor_path, side_path):
            if not p.is_file():
                raise VectorError(
                    f"{p} not found", fix="pass the path given to SteeringVector.save (both files)"
                )
        try:
            side = json.loads(side_path.read_text())
        except json.JSONDecodeError as e:
            raise VectorError(f"{side_path} is not JSON ({e})", fix="re-save the vector") from e
        if not isinstance(side, dict) or side.get("schema") != SCHEMA:
            raise VectorError(
                f"{side_path} is not a circuitsteer vector sidecar (schema {SCHEMA!r})",
                fix="load files written by SteeringVector.save",
            )
        tensors = load_file(str(tensor_path))
        if set(tensors) != {"vector"}:
            raise VectorError(
                f"{tensor_path} holds {sorted(tensors)}, expected one tensor 'vector'",
                fix="load files written by SteeringVector.save",
            )
        t = tensors["vector"]
        found = {
            "dtype": str(t.dtype).removeprefix("torch."),
            "shape": list(t.shape),
            "sha256": _digest(t),
        }
        bad = {k: (side.get(k), v) for k, v in found.items() if side.get(k) != v}
        if bad:
            raise VectorError(
                f"{tensor_path} does not match its sidecar {side_path.name}: {bad}",
                fix="the files were changed or mixed up; re-save the vector",
            )
        return cls(
            t if device is None else t.to(device),
            site=side["site"],
            model=side.get("model"),
            method=side.get("method", "manual"),
            data=side.get("data"),
            positions=side.get("positions"),
            seed=side.get("seed"),
            meta=side.get("meta") or {},
            history=tuple(side.get("history") or ()),
        )


def _model_key(ref: dict[str, Any] | None) -> Any:
    return None if ref is None else (ref.get("name"), json.dumps(ref.get("shape"), sort_keys=True))


def _stem(path: str | Path) -> Path:
    p = Path(path)
    for suffix in (".safetensors", ".json"):
        if p.name.endswith(suffix):
            return p.with_name(p.name[: -len(suffix)])
    return p


def _digest(t: torch.Tensor) -> str:
    raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return hashlib.sha256(raw.numpy().tobytes()).hexdigest()


def save(vector: SteeringVector, path: str | Path) -> Path:
    """``vector.save(path)``."""
    return vector.save(path)


def load(path: str | Path, device: Any = None) -> SteeringVector:
    """``SteeringVector.load(path)``."""
    return SteeringVector.load(path, device)
