"""``circuitsteer report RUN_DIR [--out DIR]``: render a run's report (HTML + Markdown)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from circuitsteer.cli._app import app, console, friendly


@app.command("report")
@friendly
def report(
    run_dir: Annotated[
        Path, typer.Argument(help="a run folder written by `circuitsteer run` (runs/<id>)")
    ],  # fmt: skip
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="output folder (default: RUN_DIR/report)")
    ] = None,  # fmt: skip
) -> None:
    """Render report.html (self-contained) and report.md, with every figure as PNG and SVG and
    every table as CSV, and print where they are.

    Example: ``circuitsteer report runs/20260101-ioi --out reports/ioi``"""
    import circuitsteer as cs

    dest = cs.report.render_report(run_dir, out)
    console.print(f"report: {dest / 'report.html'}", highlight=False)
    console.print(f"        {dest / 'report.md'}", highlight=False)
