"""``circuitsteer circuits list | show | draw``: the shipped circuits and circuit files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from circuitsteer.cli._app import app, console, friendly

circuits_app = typer.Typer(help="Circuits: shipped ones by name, or JSON files by path.",
                           no_args_is_help=True)  # fmt: skip
app.add_typer(circuits_app, name="circuits")


@circuits_app.command("list")
@friendly
def list_circuits() -> None:
    """List the shipped circuits. Example: ``circuitsteer circuits list``"""
    import circuitsteer as cs

    table = Table("name", "model", "nodes", "edges")
    for name in cs.shipped_circuits():
        c = cs.load_circuit(name)
        table.add_row(name, str(c.model), str(len(c.nodes)), str(len(c.edge_keys())))
    console.print(table)


@circuits_app.command("show")
@friendly
def show(
    name: str = typer.Argument(..., help="a shipped name (gpt2-small/ioi) or a JSON path"),
) -> None:
    """A circuit's model, size, classes and metadata. Example:
    ``circuitsteer circuits show gpt2-small/ioi``"""
    import circuitsteer as cs

    c = cs.load_circuit(name)
    console.print(f"[bold]{c.name}[/] for {c.model}: {len(c.nodes)} nodes, "
                  f"{len(c.edge_keys())} edges", highlight=False)  # fmt: skip
    table = Table("class", "nodes")
    for cls, nodes in sorted(c.classes.items()):
        table.add_row(cls, ", ".join(nodes))
    console.print(table)
    for key, value in sorted(c.metadata.items()):
        text = str(value)
        console.print(f"{key}: {text[:200]}{'...' if len(text) > 200 else ''}", highlight=False)


@circuits_app.command("draw")
@friendly
def draw(
    name: Annotated[str, typer.Argument(help="a shipped name (gpt2-small/ioi) or a JSON path")],
    out: Annotated[Path, typer.Option("--out", "-o", help="image path (.png, .svg or .pdf)")],
) -> None:
    """Draw a circuit layered by depth, coloured by class. Example:
    ``circuitsteer circuits draw gpt2-small/ioi --out ioi.png``"""
    import circuitsteer as cs

    cs.load_circuit(name).draw(out)
    console.print(f"wrote {out}", highlight=False)
