"""The ``circuitsteer`` command line (typer).

Example:
    $ circuitsteer demo                          # IOI check on the bundled ioi-circuit model
    $ circuitsteer models list                   # zoo models that load offline
    $ circuitsteer discover --method eap-ig -o ig.json  # find a circuit, save it
    $ circuitsteer vectors extract resid_pre.2 -o v   # a steering vector, saved
    $ circuitsteer circuits show gpt2-small/ioi  # a shipped circuit's summary
    $ circuitsteer --debug circuits show nope    # a typed error with its traceback

Typed errors (:class:`circuitsteer.CircuitSteerError`) print as their message and fix, without a
traceback, and exit with status 2 (bad input); anything else exits with 1. ``--debug`` shows
the traceback. The commands use only the public API (``import circuitsteer as cs``).
"""

from __future__ import annotations

# registers the commands on ``app``
from circuitsteer.cli import circuits as circuits  # noqa: E402, I001
from circuitsteer.cli import demo as demo  # noqa: E402
from circuitsteer.cli import discover as discover  # noqa: E402
from circuitsteer.cli import models as models  # noqa: E402
from circuitsteer.cli import report as report  # noqa: E402
from circuitsteer.cli import run as run  # noqa: E402
from circuitsteer.cli import vectors as vectors  # noqa: E402
from circuitsteer.cli._app import app as app
from circuitsteer.cli._app import main as main

__all__ = ["app", "main"]
