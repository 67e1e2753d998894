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


def test_models_list_and_help_examples():
    res = CliRunner().invoke(app, ["models", "list"])
    assert res.exit_code == 0 and "ioi-circuit" in res.output
    commands = (["demo"], ["models", "list"], ["circuits", "list"], ["circuits", "show"],
                ["circuits", "draw"], ["run"], ["report"], ["discover"], ["vectors", "extract"])  # fmt: skip
    for cmd in commands:
        res = CliRunner().invoke(app, [*cmd, "--help"])
        assert res.exit_code == 0 and "Example" in res.output, (cmd, res.output)


def test_circuits_list_show_draw(tmp_path):
    res = CliRunner().invoke(app, ["circuits", "list"])
    assert res.exit_code == 0 and "gpt2-small/ioi" in res.output and "ioi-circuit/ioi" in res.output
    res = CliRunner().invoke(app, ["circuits", "show", "gpt2-small/ioi"])
    assert res.exit_code == 0, res.output
    assert "name mover" in res.output and "a9.h9" in res.output
    out = tmp_path / "ioi.png"
    res = CliRunner().invoke(app, ["circuits", "draw", "gpt2-small/ioi", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_typed_error_prints_message_and_fix_without_traceback():
    res = CliRunner().invoke(app, ["demo", "--model", "no-such-model", "--n", "4"])
    assert res.exit_code == 2
    assert "error:" in res.output and "fix:" in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) <= 8
    res = CliRunner().invoke(app, ["circuits", "show", "nope/none"])
    assert res.exit_code == 2 and "no circuit file" in res.output


def test_debug_shows_the_traceback():
    res = CliRunner().invoke(app, ["--debug", "demo", "--model", "no-such-model", "--n", "4"])
    assert res.exit_code != 0
    assert res.exception is not None and type(res.exception).__name__ == "ModelNotAvailableError"


def test_console_entry_point_exit_code(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "circuitsteer.cli", "circuits", "show", "nope/none"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "fix:" in proc.stderr and "Traceback" not in proc.stderr


def test_error_text_is_not_read_as_markup():
    """User text in a typed error ("[x]", "circuitsteer[ray]") prints as written."""
    res = CliRunner().invoke(app, ["circuits", "show", "[bold]nope/none"])
    assert res.exit_code == 2 and "[bold]nope/none" in res.output, res.output
