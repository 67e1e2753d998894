"""The errors :mod:`circuitsteer.vectors` raises (both refine the project's typed errors).

Example:
    >>> from circuitsteer.errors import ShapeMismatchError
    >>> issubclass(VectorMismatchError, ShapeMismatchError), issubclass(VectorError, ValueError)
    (True, True)
"""

from __future__ import annotations

from circuitsteer.errors import CircuitSteerError, ShapeMismatchError


class VectorError(CircuitSteerError, ValueError):
    """Arguments a vector extraction cannot use: empty data, an unknown method, a pad that is not
    one token, a site with no vector space (an attention pattern), datasets that do not pair up,
    a vector file that is not a circuitsteer vector or whose bytes do not match its sidecar."""


class VectorMismatchError(ShapeMismatchError):
    """A steering vector applied where it does not belong: a site of another width, another
    model (name or shape), or two vectors of different sites/models combined."""
