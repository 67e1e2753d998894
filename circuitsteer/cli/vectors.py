"""``circuitsteer vectors extract``: a steering vector at a site, saved as safetensors + JSON
sidecar (``SteeringVector.save``), by the recipes the specs use."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from circuitsteer.cli._app import app, console, friendly

vectors_app = typer.Typer(help="Steering vectors: extract and save.", no_args_is_help=True)
app.add_typer(vectors_app, name="vectors")


class Recipe(StrEnum):
    mean_difference = "mean-difference"
    contrast = "contrast"
    pca = "pca"
    random_like = "random-like"


@vectors_app.command("extract")
@friendly
def extract(
    site: Annotated[str, typer.Argument(help="where the vector lives: resid_pre.2, a1.h2, m3 ...")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="path stem: writes .safetensors + .json")
    ],
    model: Annotated[str, typer.Option(help="zoo name, local HF folder or hub id")] = "ioi-circuit",
    recipe: Annotated[Recipe, typer.Option(help="how the vector is made")] = Recipe.mean_difference,
    n: Annotated[int, typer.Option(help="IOI prompts (mean-difference, pca)")] = 200,
    seed: Annotated[int, typer.Option(help="task seed, and the random-like control's seed")] = 0,
    positions: Annotated[
        str, typer.Option(help="named position (END, IO, S1, S2) or 'all'")
    ] = "END",
    a: Annotated[str | None, typer.Option(help="contrast: the prompt to steer towards")] = None,
    b: Annotated[str | None, typer.Option(help="contrast: the prompt to steer away from")] = None,
    component: Annotated[int, typer.Option(help="pca: which principal component")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bars")] = False,
) -> None:
    """Extract a steering vector and save it. Examples:

    ``circuitsteer vectors extract resid_pre.2 -o v_ioi`` (IOI clean minus ABC-corrupted at END)

    ``circuitsteer vectors extract resid_pre.1 --recipe contrast --a " Love" --b " Hate" -o v``

    ``circuitsteer vectors extract resid_post.1 --recipe pca --component 0 -o pc0``

    ``circuitsteer vectors extract resid_pre.2 --recipe random-like -o control`` (a seeded
    random direction with the mean-difference vector's norm)"""
    import circuitsteer as cs

    if recipe is Recipe.contrast and (a is None or b is None):
        raise cs.VectorError(
            "the contrast recipe needs two prompts", fix='pass --a "..." --b "..."'
        )
    if not out.parent.exists():
        raise cs.CircuitSteerError(
            f"folder {out.parent} does not exist", fix="create it or pass another --out"
        )
    progress = False if quiet else None
    m = cs.load_model(model)
    pos = "all" if positions == "all" else positions
    v = cs.vectors
    if recipe is Recipe.contrast:
        assert a is not None and b is not None  # checked above, before the model loads
        vec = v.contrast_pair(m, site, a, b, average=True)
    elif recipe is Recipe.pca:
        task = cs.tasks.ioi(m, n=n, seed=seed)
        p = v.pca(m, site, task.clean, n_components=component + 1, positions="all",
                  progress=progress)  # fmt: skip
        vec = p.vector(component)
    else:
        task = cs.tasks.ioi(m, n=n, seed=seed)
        vec = v.mean_difference(m, site, task, positions=pos, progress=progress)
        if recipe is Recipe.random_like:
            vec = v.random_like(vec, seed=seed)
    path = vec.save(out)
    table = Table(title=f"{recipe.value} vector at {vec.site} on {m.name}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("shape", str(tuple(vec.vector.shape)))
    table.add_row("norm", f"{vec.norm:.4g}")
    table.add_row("method", str(vec.method))
    console.print(table)
    console.print(f"wrote {path} (+ sidecar .json)", highlight=False)
