"""``run_spec``: validate a spec, plan its shards, create (or resume) ``runs/<id>/``, run the
pending shards on a backend, write each shard atomically as it finishes, then the results.

Run ids are ``<spec name>-<UTC yyyymmdd-HHMMSS>-<first 8 hex digits of the resolved spec's
sha256>`` (``-2``, ``-3`` ... appended if that folder exists). ``resume=RUN_ID`` continues
``runs/<RUN_ID>``: the spec must resolve to the same digest and the same shard plan; shards
already written are not recomputed (nor rewritten).

Example:
    >>> from circuitsteer.runner._run import Shard
    >>> Shard(0, "heads", {"nodes": ["a0.h0"]}).to_dict()
    {'index': 0, 'analysis': 'heads', 'payload': {'nodes': ['a0.h0']}}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from circuitsteer.errors import RunError, SpecError
from circuitsteer.runner import _kinds
from circuitsteer.runner._store import RunDir, command_line, now, versions
from circuitsteer.spec import Spec, load_spec

BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class Shard:
    """One unit of work: shard ``index`` of the run, part ``payload`` of entry ``analysis``."""

    index: int
    analysis: str
    payload: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "analysis": self.analysis, "payload": self.payload}


def _spec_and_bases(spec_or_path: Any) -> tuple[Spec, tuple[str, ...]]:
    if isinstance(spec_or_path, Spec):
        return spec_or_path, (os.getcwd(),)
    p = Path(spec_or_path)
    spec = load_spec(p)
    return spec, (os.getcwd(), str(p.resolve().parent))


def plan_shards(spec: Spec, shape: Any, circuit: Any) -> list[Shard]:
    """Every shard of the spec, numbered in the order of ``analyses:`` then of each plan."""
    out: list[Shard] = []
    for a in spec.analyses:
        for payload in _kinds.plan(a, circuit, shape):
            out.append(Shard(len(out), a.name, payload))
    return out


def _plan_digest(shards: list[Shard]) -> str:
    text = json.dumps([s.to_dict() for s in shards], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _shape_and_circuit(spec: Spec, bases: tuple[str, ...]) -> tuple[Any, Any]:
    """The model's shape and the circuit without loading weights where the name is known."""
    import circuitsteer as cs
    from circuitsteer.models import known_shape
    from circuitsteer.runner._context import build_context, resolve_path

    shape = known_shape(spec.model)
    if shape is None:
        ctx = build_context(spec, bases)
        return ctx.model.shape, ctx.circuit
    circuit = cs.load_circuit(resolve_path(spec.circuit, bases), model=shape) if spec.circuit else None  # fmt: skip
    return shape, circuit


def run_spec(
    spec_or_path: Any,
    backend: str = "local",
    runs_dir: str | Path = "runs",
    resume: str | None = None,
    quiet: bool = False,
    address: str | None = None,
    workers: int | None = None,
    only_kinds: Sequence[str] | None = None,
) -> Path:
    """Run a spec (a path or a :class:`~circuitsteer.spec.Spec`) and return its run folder.

    ``backend``: ``"local"`` (this process) or ``"ray"`` (Ray actors; ``address`` of a cluster,
    default a local instance; ``workers`` actors, default one per CPU). ``only_kinds``: run only
    the entries of these kinds (the run's spec.yaml then lists only those). ``resume``: a run id
    under ``runs_dir`` (or a run folder) to continue. ``quiet``: no progress bar.
    Invalid input raises :class:`SpecError` / :class:`RunError` before any folder is created.
    """
    t_start = time.perf_counter()
    if backend not in BACKENDS:
        raise SpecError(f"unknown backend {backend!r}", fix="use --backend local or --backend ray")
    spec, bases = _spec_and_bases(spec_or_path)
    if only_kinds is not None:
        kept = tuple(a for a in spec.analyses if a.kind in set(only_kinds))
        if not kept:
            raise SpecError(f"the spec has no analysis of kind {', '.join(only_kinds)}",
                            fix=f"its kinds: {', '.join(sorted({a.kind for a in spec.analyses}))}")  # fmt: skip
        spec = dataclasses.replace(spec, analyses=kept)
    if backend == "ray":
        from circuitsteer.runner import ray as ray_backend

        ray_backend.require()  # before any work: fail fast when Ray is missing
    ctx = None
    if backend == "local":
        from circuitsteer.runner._context import build_context

        ctx = build_context(spec, bases)
        shape, circuit = ctx.model.shape, ctx.circuit
    else:
        shape, circuit = _shape_and_circuit(spec, bases)
    shards = plan_shards(spec, shape, circuit)
    plan_digest = _plan_digest(shards)

    if resume is not None:
        rd = RunDir.find(runs_dir, resume)
        meta = rd.read_meta()
        if meta.get("spec_digest") != spec.digest:
            raise RunError(f"run {rd.path.name} was started with a different spec (digest {str(meta.get('spec_digest'))[:8]}, this spec {spec.digest[:8]})",  # fmt: skip
                           fix="resume with the spec the run was started with (its spec.yaml), or start a new run without --resume")  # fmt: skip
        if meta.get("plan_digest") != plan_digest:
            raise RunError(f"run {rd.path.name} has a different shard plan", fix="start a new run")  # fmt: skip
        rd.clean_temporaries()
        meta["resumed"] = [*meta.get("resumed", []), {"at": now(), "backend": backend}]
    else:
        rd = RunDir.create(runs_dir, spec.name, spec.digest)
        rd.write_spec(spec.to_dict())
        meta = {
            "run_id": rd.path.name, "spec_name": spec.name, "spec_digest": spec.digest,
            "plan_digest": plan_digest, "created": now(), "command": command_line(),
            "backend": backend, "status": "running", "seed": spec.seed,
            "task_seed": spec.task.seed, "model": {"name": spec.model, "hash": None},
            "versions": versions(), "n_shards": len(shards),
            "shards": {}, "timings": {},
        }  # fmt: skip
    if ctx is not None:
        meta["model"]["hash"] = ctx.model_hash
        meta["timings"]["load_s"] = round(ctx.load_s, 3)
    rd.write_meta(meta)

    done = rd.done()
    pending = [s for s in shards if s.index not in done]

    def on_result(index: int, df: pd.DataFrame, seconds: float) -> None:
        rd.write_shard(index, df)
        meta["shards"][f"{index:05d}"] = {"analysis": shards[index].analysis, "rows": len(df),
                                          "seconds": round(seconds, 3), "backend": backend}  # fmt: skip
        rd.write_meta(meta)

    from rich.progress import (  # fmt: skip
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn()]  # fmt: skip
    t_run = time.perf_counter()
    with Progress(*columns, disable=quiet, transient=False) as bar:
        job = bar.add_task(f"{rd.path.name} ({backend})", total=len(shards), completed=len(shards) - len(pending))  # fmt: skip

        def advance(k: int) -> None:
            bar.advance(job, k)

        if backend == "local":
            from circuitsteer.runner.local import run_local

            run_local(ctx, pending, on_result, advance)
        else:
            from circuitsteer.runner.ray import run_ray

            info = run_ray(spec, bases, pending, on_result, advance, address=address, workers=workers)  # fmt: skip
            hashes = {w["model_hash"] for w in info.get("workers", [])}
            if hashes:
                meta["model"]["hash"] = sorted(hashes)[0] if len(hashes) == 1 else sorted(hashes)
                meta["timings"]["worker_load_s"] = [round(w["load_s"], 3) for w in info["workers"]]

    missing = [s.index for s in shards if not rd.shard_path(s.index).exists()]
    if missing:
        raise RunError(f"shards {missing[:5]} were not written", fix=f"resume with --resume {rd.path.name}")  # fmt: skip
    t_res = time.perf_counter()
    df = rd.write_results(len(shards))
    meta["timings"]["shards_s"] = round(t_res - t_run, 3)
    meta["timings"]["results_s"] = round(time.perf_counter() - t_res, 3)
    meta["timings"]["total_s"] = round(time.perf_counter() - t_start, 3)
    meta["rows"] = len(df)
    meta["status"] = "complete"
    meta["finished"] = now()
    rd.write_meta(meta)
    return rd.path
