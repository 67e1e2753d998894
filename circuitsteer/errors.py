"""Typed errors. Every user-facing error names the problem and the fix (docs/errors.md lists them).

Each class derives from ``CircuitSteerError`` and from the builtin it refines (``ValueError``,
``KeyError`` ...), so ``except ValueError`` in user code keeps working.

Example:
    >>> from circuitsteer.errors import NodeNameError
    >>> try:
    ...     raise NodeNameError("bad node 'a1h2'", fix="write heads as 'a{L}.h{H}', e.g. 'a1.h2'")
    ... except ValueError as e:
    ...     print(e)
    bad node 'a1h2'. Fix: write heads as 'a{L}.h{H}', e.g. 'a1.h2'
"""

from __future__ import annotations


class CircuitSteerError(Exception):
    """Base of every circuitsteer error. ``fix`` says what the user should do."""

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(f"{message}. Fix: {fix}" if fix else message)

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0] if self.args else ""


class ModelNotAvailableError(CircuitSteerError, OSError):
    """A model could not be loaded: unknown zoo name, missing local folder, or hub offline."""


class UnsupportedArchitectureError(CircuitSteerError, ValueError):
    """The model's architecture has no adapter (supported: GPT-2, GPT-NeoX/Pythia, Llama, Qwen2,
    Mistral); the message lists the supported ``model_type`` values."""


class NodeNameError(CircuitSteerError, ValueError):
    """A node, edge or site name is malformed."""


class ShapeMismatchError(CircuitSteerError, ValueError):
    """A name or object refers to a layer/head/neuron the model does not have, or sizes differ."""


class CircuitFormatError(CircuitSteerError, ValueError):
    """A circuit file or imported graph is invalid."""


class UntrustedPickleError(CircuitSteerError, ValueError):
    """A pickle was offered without ``trusted=True``."""


class TaskError(CircuitSteerError, ValueError):
    """A task generator got invalid arguments, or a tokenizer cannot express the task."""


class PositionError(CircuitSteerError, KeyError):
    """A named position the task does not define, or a position outside the sequence."""


class InterventionError(CircuitSteerError, ValueError):
    """An intervention is invalid: wrong vector size, non-finite values, conflicting sites,
    reference data of the wrong shape."""


class AnalysisError(CircuitSteerError, ValueError):
    """An analysis got arguments it cannot use: no heads, an unknown score kind or metric, a
    sequence longer than the model's context, a sender with no receiver downstream of it."""


class SpecError(CircuitSteerError, ValueError):
    """An analysis spec (YAML) is invalid: the message names the file, the offending key and its
    line, and the fix suggests the nearest valid key or value."""


class RunError(CircuitSteerError, ValueError):
    """A run directory cannot be created, resumed or read: an unknown run id, a resume whose spec
    differs from the one the run was started with, or a directory that is not a run."""


class BackendUnavailableError(CircuitSteerError, RuntimeError):
    """A run backend is not installed or not reachable (``--backend ray`` without Ray: install
    the extra with ``pip install 'circuitsteer[ray]'``; or a Ray address that does not answer)."""


class ReportError(CircuitSteerError, ValueError):
    """A report cannot be made: the folder is not a run (no results.parquet / spec), or the
    results lack the columns an analysis's section needs."""
