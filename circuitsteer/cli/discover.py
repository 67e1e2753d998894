"""``circuitsteer discover``: find a circuit with ACDC, EAP, EAP-IG or exact patching, from flags
or from a spec's discovery analyses, and save it in the shipped circuit format."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from circuitsteer.cli._app import app, console, friendly


class Method(StrEnum):
    acdc = "acdc"
    eap = "eap"
    eap_ig = "eap-ig"
    exact = "exact"


class Selection(StrEnum):
    greedy = "greedy"
    top_n = "top-n"
    threshold = "threshold"


class Task(StrEnum):
    ioi = "ioi"
    greater_than = "greater_than"


def _task(cs, model, task: Task, n: int, seed: int):  # noqa: ANN001, ANN202 - cs is the package
    if task is Task.ioi:
        return cs.tasks.ioi(model, n=n, seed=seed)
    return cs.tasks.greater_than(model, n=n, seed=seed)


@app.command()
@friendly
def discover(
    model: Annotated[str, typer.Option(help="zoo name, local HF folder or hub id")] = "ioi-circuit",
    method: Annotated[Method, typer.Option(help="discovery method")] = Method.acdc,
    task: Annotated[
        Task, typer.Option(help="task whose clean/corrupted prompts drive it")
    ] = Task.ioi,
    n: Annotated[int, typer.Option(help="prompts")] = 96,
    seed: Annotated[int, typer.Option(help="task seed")] = 0,
    metric: Annotated[
        str, typer.Option(help="'kl' (to the clean model) or 'logit_diff' (negated)")
    ] = "kl",
    ablation: Annotated[str, typer.Option(help="resample, mean or zero")] = "resample",
    tau: Annotated[float, typer.Option("--tau", help="ACDC's threshold")] = 0.01,
    steps: Annotated[int, typer.Option(help="EAP-IG's interpolation steps")] = 5,
    select: Annotated[
        Selection, typer.Option(help="how EAP / EAP-IG / exact scores become a circuit")
    ] = Selection.greedy,
    edges: Annotated[
        int, typer.Option(help="edges to keep (greedy, top-n); threshold: see --min-score")
    ] = 200,
    min_score: Annotated[float, typer.Option(help="--select threshold: the least |score|")] = 0.0,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="circuit JSON to write (shipped format)")
    ] = None,
    scores: Annotated[
        Path | None, typer.Option(help="also write every edge's score (.csv or .parquet)")
    ] = None,
    spec: Annotated[
        Path | None, typer.Option(help="run a spec's discovery analyses instead of the flags")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bars")] = False,
) -> None:
    """Find a circuit and save it. Examples:

    ``circuitsteer discover --method acdc --tau 0.015 --metric logit_diff -o acdc.json``

    ``circuitsteer discover --method eap-ig --steps 5 --select greedy --edges 189 -o ig.json``

    ``circuitsteer discover --spec analyses/discovery.yaml`` (a spec's discovery entries)"""
    import os

    import circuitsteer as cs

    if quiet:
        os.environ["CIRCUITSTEER_QUIET"] = "1"
    if spec is not None:
        _from_spec(spec, quiet)
        return
    for path in (out, scores):  # bad output paths fail before minutes of work
        if path is not None and not path.parent.exists():
            raise cs.CircuitSteerError(
                f"folder {path.parent} does not exist", fix="create it or pass another path"
            )
    if scores is not None and scores.suffix not in (".csv", ".parquet"):
        raise cs.CircuitSteerError(
            f"--scores {scores}: unknown table format", fix="end the name in .csv or .parquet"
        )
    m = cs.load_model(model)
    t = _task(cs, m, task, n, seed)
    d = cs.discovery
    if method is Method.acdc:
        found = d.acdc(m, t, threshold=tau, metric=metric, ablation=ablation, progress=not quiet)
        circuit = d.kept(found, name="acdc")
    else:
        if method is Method.eap:
            found = d.eap(m, t, metric=metric, ablation=ablation)
        elif method is Method.eap_ig:
            found = d.eap_ig(m, t, steps=steps, metric=metric, ablation=ablation)
        else:
            found = d.exact_patching(m, t, metric=metric, ablation=ablation)
        if select is Selection.greedy:
            circuit = d.greedy(found, edges, name=method.value)
        elif select is Selection.top_n:
            circuit = d.top_n(found, edges, name=method.value)
        else:
            circuit = d.threshold(found, min_score, name=method.value)
    n_total = len(found.frame)
    table = Table(title=f"{method.value} on {m.name}: {task.value}, {n} prompts, seed {seed}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("edges kept", f"{len(circuit.edge_keys())} of {n_total}")
    table.add_row("metric / ablation", f"{metric} / {ablation}")
    for key, value in found.meta.get("timings", {}).items():
        table.add_row(key.replace("_s", " (s)"), f"{value}")
    console.print(table)
    if out is not None:
        circuit.save(out)
        console.print(f"wrote {out}", highlight=False)
    if scores is not None:
        frame = found.frame
        frame.to_csv(scores, index=False) if scores.suffix == ".csv" else frame.to_parquet(scores)
        console.print(f"wrote {scores}", highlight=False)


def _from_spec(path: Path, quiet: bool) -> None:
    """Run only the spec's discovery analyses, as ``circuitsteer run`` would."""
    import circuitsteer as cs

    run_dir = cs.runner.run_spec(path, quiet=quiet, only_kinds=("discovery",))
    console.print(f"run written to {run_dir}", highlight=False)
