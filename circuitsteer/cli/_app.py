"""The typer app, the ``--debug`` switch and how errors end a command (message, fix, exit code)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Circuit-targeted activation engineering.",
)
console = Console()
err_console = Console(stderr=True)
_state = {"debug": False}

BAD_INPUT, FAILURE = 2, 1


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="show the traceback of an error"),
) -> None:
    """Circuit-targeted activation engineering on transformer language models."""
    _state["debug"] = debug
    # Hugging Face's weight-loading bars and advisory warnings drown the command's own output;
    # set before transformers is first imported (the commands import it lazily)
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def friendly(fn: F) -> F:
    """Run a command; a typed error prints its message and fix and exits 2, any other error
    prints one line and exits 1 (``--debug``: the traceback instead)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import circuitsteer as cs

        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except cs.CircuitSteerError as e:
            if _state["debug"]:
                raise
            # user text is escaped: "circuitsteer[ray]" or a name like "[x]" is not rich markup
            err_console.print(f"[bold red]error:[/] {escape(e.message)}", highlight=False)
            if e.fix:
                err_console.print(f"[bold]fix:[/] {escape(e.fix)}", highlight=False)
            raise typer.Exit(BAD_INPUT) from None
        except Exception as e:  # noqa: BLE001 - the CLI's last line of defence
            if _state["debug"]:
                raise
            err_console.print(
                f"[bold red]failed:[/] {type(e).__name__}: {escape(str(e))}", highlight=False
            )
            err_console.print("run again with --debug for the traceback", highlight=False)
            raise typer.Exit(FAILURE) from None

    return wrapper  # type: ignore[return-value]


def main() -> None:
    """Console entry point."""
    sys.exit(app())
