"""Reports of runs: ``report.html`` (self-contained: figures embedded, no script, no network)
and ``report.md`` with the same content, every figure as PNG and SVG and every table as CSV.

A report has a summary written from the measured numbers, the model and circuit, the spec, one
section per analysis entry (headline numbers with 95% intervals, figures, tables) and the run's
provenance. See docs/reports.md for what each section shows and how intervals are computed.

Example:
    >>> import circuitsteer as cs
    >>> out = cs.report.render_report("runs/ioi-demo")            # doctest: +SKIP
    >>> (out / "report.html").exists()                            # doctest: +SKIP
    True
    >>> run = cs.report.load_run("runs/ioi-demo")                 # doctest: +SKIP

On the command line: ``circuitsteer report runs/ioi-demo [--out DIR]``.
"""

from circuitsteer.report._run import Run as Run
from circuitsteer.report._run import load_run as load_run
from circuitsteer.report.render import md_escape as md_escape
from circuitsteer.report.render import render_report as render_report

__all__ = ["Run", "load_run", "md_escape", "render_report"]
