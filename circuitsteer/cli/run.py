"""``circuitsteer run SPEC``: run an analysis spec into ``runs/<id>/`` (locally or on Ray), then
make its report (``cs.report.render_report``) unless ``--no-report``."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from circuitsteer.cli._app import app, console, friendly


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
    report_out: Annotated[
        Path | None,
        typer.Option(
            help="where the report goes (default: the spec's report.out, else runs/<id>/report)"
        ),
    ] = None,  # fmt: skip
) -> None:
    """Run every analysis of SPEC, shard by shard, into runs/<id>/ (spec.yaml, meta.json,
    shards/, results.parquet); a killed run continues with --resume <id>.

    Example: ``circuitsteer run analyses/ablation_vs_addition.yaml``

    Example: ``circuitsteer run analyses/grid_500.yaml --backend ray --quiet``"""
    import circuitsteer as cs

    if address is not None and backend is not Backend.ray:
        raise cs.SpecError("--address is for the Ray backend", fix="add --backend ray")
    run_dir = cs.runner.run_spec(spec, backend=backend.value, runs_dir=runs_dir, resume=resume,
                                 quiet=quiet, address=address, workers=workers)  # fmt: skip
    console.print(f"run: {run_dir}", highlight=False)
    if no_report:
        return
    if report_out is not None:
        report_out.parent.mkdir(parents=True, exist_ok=True)
    out = cs.report.render_report(run_dir, out=report_out)
    if out is not None:
        console.print(f"report: {out}", highlight=False)
