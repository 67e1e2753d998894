"""The command line: `circuitsteer demo` runs on the bundled ioi-circuit model."""

from __future__ import annotations

from typer.testing import CliRunner

from circuitsteer.cli import app


def test_demo_runs_on_the_bundled_model():
    res = CliRunner().invoke(app, ["demo", "--n", "16"])
    assert res.exit_code == 0, res.output
    assert "IOI check on ioi-circuit" in res.output
    assert "resample-ablated" in res.output


def test_models_lists_the_zoo():
    res = CliRunner().invoke(app, ["models"])
    assert res.exit_code == 0 and "ioi-circuit" in res.output and "toy-ioi" in res.output
