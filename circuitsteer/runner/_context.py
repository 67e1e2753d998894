"""What every shard of a spec reads, built once per process (one model load per worker): the
model, the task, the circuit, the steering vectors, the model's hash, and cached clean metrics.

Example:
    >>> from circuitsteer.runner._context import resolve_path
    >>> resolve_path("no/such/file.json", bases=()) == "no/such/file.json"
    True
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from circuitsteer.spec import Spec

_CACHE: dict[tuple[str, tuple[str, ...]], Context] = {}


def resolve_path(p: str, bases: tuple[str, ...]) -> str:
    """``p`` as given if it exists, else under the first of ``bases`` where it exists."""
    if Path(p).exists():
        return p
    for b in bases:
        if (Path(b) / p).exists():
            return str(Path(b) / p)
    return p


def model_hash(model: Any) -> str:
    """sha256 over the model's parameters and buffers (names, dtypes, shapes, bytes), each
    shared tensor once, in name order."""
    h = hashlib.sha256()
    seen: set[int] = set()
    state = model.hf.state_dict(keep_vars=False)
    for name in sorted(state):
        t = state[name]
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class Context:
    """A spec's loaded inputs (see the module docstring)."""

    spec: Spec
    model: Any
    task: Any
    circuit: Any
    vectors: dict[str, Any]
    model_hash: str
    load_s: float
    cache: dict[Any, Any] = field(default_factory=dict)

    def circuit_named(self, name: str) -> Any:
        import circuitsteer as cs

        key = ("circuit", name)
        if key not in self.cache:
            self.cache[key] = cs.load_circuit(resolve_path(name, self.bases))
        return self.cache[key]

    bases: tuple[str, ...] = ()


def build_context(spec: Spec, bases: tuple[str, ...] = ()) -> Context:
    """Load the spec's model, task, circuit and vectors (cached per process by spec digest)."""
    key = (spec.digest, bases)
    if key in _CACHE:
        return _CACHE[key]
    import circuitsteer as cs

    t0 = time.perf_counter()
    model = cs.load_model(spec.model)
    t = spec.task
    task = getattr(cs.tasks, t.name)(model, n=t.n, seed=t.seed, **t.options)
    circuit = cs.load_circuit(resolve_path(spec.circuit, bases), model=model) if spec.circuit else None  # fmt: skip
    vectors: dict[str, Any] = {}
    pending = dict(spec.vectors)
    while pending:  # random_like refers to another vector: resolve in dependency order
        for name, v in list(pending.items()):
            if v.recipe == "random_like" and v.of in pending:
                continue
            if v.file is not None:
                vectors[name] = cs.vectors.load(resolve_path(v.file, bases))
            elif v.recipe == "mean_difference":
                assert v.site is not None
                vectors[name] = cs.vectors.mean_difference(model, v.site, task, positions=v.positions, progress=False)  # fmt: skip
            elif v.recipe == "pca":
                assert v.site is not None
                pcs = cs.vectors.pca(model, v.site, task, n_components=v.component + 1,
                                     positions=v.positions, progress=False)  # fmt: skip
                vectors[name] = pcs.vector(v.component, scale=v.scale)
            else:
                vectors[name] = cs.vectors.random_like(vectors[str(v.of)], seed=v.seed)
            del pending[name]
    ctx = Context(spec, model, task, circuit, vectors, model_hash(model),
                  time.perf_counter() - t0, bases=bases)  # fmt: skip
    _CACHE.clear()  # one spec's model per process
    _CACHE[key] = ctx
    return ctx
