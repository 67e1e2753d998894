"""``circuitsteer models [list]``: the zoo models that load offline."""

from __future__ import annotations

import typer
from rich.table import Table

from circuitsteer.cli._app import app, console, friendly

models_app = typer.Typer(help="Zoo models.", no_args_is_help=False)
app.add_typer(models_app, name="models")


def _list() -> None:
    import circuitsteer as cs

    table = Table("name", "description")
    for name, description in cs.zoo_descriptions().items():
        table.add_row(name, description)
    console.print(table)


@models_app.callback(invoke_without_command=True)
@friendly
def models(ctx: typer.Context) -> None:
    """List the zoo models (``circuitsteer models`` = ``circuitsteer models list``).

    Example: ``circuitsteer models list``
    """
    if ctx.invoked_subcommand is None:
        _list()


@models_app.command("list")
@friendly
def list_models() -> None:
    """List the zoo models that load offline. Example: ``circuitsteer models list``"""
    _list()
