"""The Ray backend: shards run on Ray actors, each loading the model once (one model load per
worker), results sent back to the driver, which writes each shard as it arrives.

Ray is optional (``pip install 'circuitsteer[ray]'``); without it :func:`require` raises
:class:`~circuitsteer.errors.BackendUnavailableError` saying how to install it. With no
``address`` a local Ray instance is started (and shut down after the run); an address joins a
cluster (``"auto"``, ``"ray://host:10001"``). A Ray instance already started in this process
(``ray.init(...)``) is used as it is.

Example:
    >>> from circuitsteer.runner.ray import require
    >>> import sys
    >>> saved, sys.modules["ray"] = sys.modules.get("ray"), None   # simulate: Ray not installed
    >>> try:
    ...     require()
    ... except Exception as e:
    ...     print(type(e).__name__, "|", e.fix)
    BackendUnavailableError | pip install 'circuitsteer[ray]' (or pip install 'ray>=2.9')
    >>> if saved is None: del sys.modules["ray"]
    ... else: sys.modules["ray"] = saved
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from circuitsteer.errors import BackendUnavailableError


def require() -> Any:
    """The ``ray`` module, or :class:`BackendUnavailableError` with the install command."""
    try:
        import ray
    except ImportError:
        raise BackendUnavailableError(
            "the Ray backend needs Ray, which is not installed",
            fix="pip install 'circuitsteer[ray]' (or pip install 'ray>=2.9')",
        ) from None
    return ray


class _Worker:
    """A Ray actor: loads the spec once, then runs shards."""

    def __init__(self, spec: Any, bases: tuple[str, ...], cwd: str) -> None:
        os.environ.setdefault("CIRCUITSTEER_QUIET", "1")
        if os.path.isdir(cwd):
            os.chdir(cwd)  # relative paths in the spec mean what they meant to the driver
        from circuitsteer.runner._context import build_context

        self.ctx = build_context(spec, bases)

    def info(self) -> dict[str, Any]:
        return {"model_hash": self.ctx.model_hash, "load_s": self.ctx.load_s, "pid": os.getpid()}

    def run(
        self, index: int, analysis: str, payload: dict[str, Any]
    ) -> tuple[int, pd.DataFrame, float]:
        from circuitsteer.runner import _kinds

        t0 = time.perf_counter()
        df = _kinds.run(self.ctx, self.ctx.spec.analysis(analysis), payload)
        return index, df, time.perf_counter() - t0


def run_ray(
    spec: Any,
    bases: tuple[str, ...],
    shards: Sequence[Any],
    on_result: Callable[[int, pd.DataFrame, float], None],
    advance: Callable[[int], None],
    address: str | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Run ``shards`` on Ray actors; returns the workers' info (model hash, load times)."""
    ray = require()
    if not shards:
        return {}
    started = False
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)  # fmt: skip
        except ConnectionError as e:
            raise BackendUnavailableError(
                f"cannot reach the Ray cluster at {address!r}: {e}",
                fix="start it (ray start --head) or pass the right --address",
            ) from None
        started = True
    actors: list[Any] = []
    try:
        cpus = int(ray.available_resources().get("CPU", 1)) or 1
        n = max(1, min(len(shards), workers or cpus))
        actor = ray.remote(num_cpus=1)(_Worker)
        actors = [actor.remote(spec, bases, os.getcwd()) for _ in range(n)]
        infos = _get(ray, [a.info.remote() for a in actors])
        todo = list(shards)
        running: dict[Any, Any] = {}
        for a in actors:
            if todo:
                s = todo.pop(0)
                running[a.run.remote(s.index, s.analysis, s.payload)] = a
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                a = running.pop(ref)
                index, df, seconds = _get(ray, ref)
                on_result(index, df, seconds)
                advance(1)
                if todo:
                    s = todo.pop(0)
                    running[a.run.remote(s.index, s.analysis, s.payload)] = a
        return {"workers": infos}
    finally:
        for a in actors:
            ray.kill(a)
        if started:
            ray.shutdown()


def _get(ray: Any, refs: Any) -> Any:
    """``ray.get``, re-raising a worker's typed circuitsteer error as itself (exit code 2)."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as e:
        from circuitsteer.errors import CircuitSteerError

        cause = getattr(e, "cause", None)
        if isinstance(cause, CircuitSteerError):
            raise cause from None
        raise
