"""``circuitsteer run SPEC``: run an analysis spec into ``runs/<id>/`` (locally or on Ray), then
make its report when ``circuitsteer.report`` is installed."""

from __future__ import annotations

import importlib
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from circuitsteer.cli._app import BAD_INPUT, _state, app, console, err_console, friendly


class Backend(StrEnum):
    local = "local"
    ray = "ray"


@app.command("run")
@friendly
def run(
    spec: Annotated[
        Path, typer.Argument(help="a YAML spec, e.g. analyses/ablation_vs_addition.yaml")
    ],
    backend: Annotated[
        Backend, typer.Option(help="where shards run: this process or Ray")
    ] = Backend.local,  # fmt: skip
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: a local Ray)")
    ] = None,  # fmt: skip
    resume: Annotated[
        str | None, typer.Option(help="continue runs/RUN_ID instead of starting a new run")
    ] = None,  # fmt: skip
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    runs_dir: Annotated[Path, typer.Option(help="folder holding the runs")] = Path("runs"),
    workers: Annotated[int | None, typer.Option(help="Ray actors (default: one per CPU)")] = None,
    no_report: Annotated[
        bool, typer.Option("--no-report", help="do not render the report")
    ] = False,  # fmt: skip
) -> None:
    """Run every analysis of SPEC, shard by shard, into runs/<id>/ (spec.yaml, meta.json,
    shards/, results.parquet); a killed run continues with --resume <id>.

    Example: ``circuitsteer run analyses/ablation_vs_addition.yaml``"""
    import circuitsteer as cs

    if address is not None and backend is not Backend.ray:
        raise cs.SpecError("--address is for the Ray backend", fix="add --backend ray")
    try:
        run_dir = cs.runner.run_spec(spec, backend=backend.value, runs_dir=runs_dir, resume=resume,
                                     quiet=quiet, address=address, workers=workers)  # fmt: skip
    except cs.CircuitSteerError as e:
        if _state["debug"]:
            raise
        # printed here, escaped: the install hint "circuitsteer[ray]" is not rich markup
        err_console.print(f"[bold red]error:[/] {escape(e.message)}", highlight=False)
        if e.fix:
            err_console.print(f"[bold]fix:[/] {escape(e.fix)}", highlight=False)
        raise typer.Exit(BAD_INPUT) from None
    console.print(f"run: {run_dir}", highlight=False)
    if no_report:
        return
    try:
        report = importlib.import_module("circuitsteer.report")
    except ImportError:
        if not quiet:
            err_console.print("(no circuitsteer.report module: report skipped)", highlight=False)
        return
    out = report.render_report(run_dir)
    if out is not None:
        console.print(f"report: {out}", highlight=False)
