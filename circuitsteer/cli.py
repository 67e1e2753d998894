"""The ``circuitsteer`` command line (typer).

Example:
    $ circuitsteer demo                 # IOI check on the bundled toy-ioi model
    $ circuitsteer models               # list zoo models
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Circuit-targeted activation engineering."
)
console = Console()


@app.command()
def models() -> None:
    """List the zoo models that load offline."""
    from circuitsteer.models import _ZOO

    table = Table("name", "description")
    for name, entry in sorted(_ZOO.items()):
        table.add_row(name, entry.description)
    console.print(table)


@app.command()
def demo(
    model: str = typer.Option("toy-ioi", help="zoo name, local HF folder or hub id"),
    n: int = typer.Option(200, help="IOI examples"),
    seed: int = typer.Option(0),
) -> None:
    """Load the bundled model and print an IOI check: logit difference clean vs ABC-corrupted."""
    import time

    import torch

    import circuitsteer as cs

    t0 = time.perf_counter()
    m = cs.load_model(model)
    load_s = time.perf_counter() - t0
    task = cs.tasks.ioi(m, n=n, seed=seed)
    with torch.no_grad():
        clean = m(task.clean)
        corrupted = m(task.corrupted)
    ld_clean = cs.metrics.logit_diff(clean, task)
    ld_corr = cs.metrics.logit_diff(corrupted, task)
    acc = cs.metrics.accuracy(clean, task)
    table = Table(
        title=f"IOI check on {m.name} ({n} prompts, seed {seed}; loaded in {load_s:.1f}s)"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("logit diff (clean), mean", f"{ld_clean.mean():.3f}")
    table.add_row("accuracy (IO beats S)", f"{acc.float().mean():.3f}")
    table.add_row("logit diff (ABC corrupted), mean", f"{ld_corr.mean():.3f}")
    console.print(table)
    console.print("example:", repr(task.prompts[0]))


if __name__ == "__main__":
    app()
