"""The importers and exporters under their public path (``circuitsteer.formats``); they live in
:mod:`circuitsteer.circuit.formats`.

Example:
    >>> from circuitsteer.formats import from_heads
    >>> from_heads("9.9, 10.0").heads
    ['a9.h9', 'a10.h0']
"""

from circuitsteer.circuit.formats import *  # noqa: F403
from circuitsteer.circuit.formats import __all__ as __all__
