"""Importers and exporters for circuit definitions from other tools.

* ACDC edge dictionaries: :func:`from_acdc`, :func:`read_acdc`, :func:`to_acdc`, :func:`to_acdc_rows`
* EAP-IG graph JSON: :func:`from_eap_ig`, :func:`read_eap_ig`, :func:`to_eap_ig`, :func:`write_eap_ig`
* auto-circuit edge names: :func:`from_auto_circuit`, :func:`to_auto_circuit`
* plain head lists (``"9.9, 10.0"``): :func:`from_heads`, :func:`to_heads`, :func:`parse_heads`

Pickled input is refused with ``UntrustedPickleError`` unless ``trusted=True``.

Example:
    >>> from circuitsteer.circuit.formats import from_heads, to_auto_circuit
    >>> to_auto_circuit(from_heads("1.2").expand_edges())[:2]
    ['Resid Start->A1.2.Q', 'Resid Start->A1.2.K']
"""

from circuitsteer.circuit.formats.acdc import from_acdc as from_acdc
from circuitsteer.circuit.formats.acdc import parse_torch_index as parse_torch_index
from circuitsteer.circuit.formats.acdc import read_acdc as read_acdc
from circuitsteer.circuit.formats.acdc import to_acdc as to_acdc
from circuitsteer.circuit.formats.acdc import to_acdc_rows as to_acdc_rows
from circuitsteer.circuit.formats.auto_circuit import auto_circuit_name as auto_circuit_name
from circuitsteer.circuit.formats.auto_circuit import from_auto_circuit as from_auto_circuit
from circuitsteer.circuit.formats.auto_circuit import (
    parse_auto_circuit_edge as parse_auto_circuit_edge,
)
from circuitsteer.circuit.formats.auto_circuit import to_auto_circuit as to_auto_circuit
from circuitsteer.circuit.formats.eap_ig import from_eap_ig as from_eap_ig
from circuitsteer.circuit.formats.eap_ig import read_eap_ig as read_eap_ig
from circuitsteer.circuit.formats.eap_ig import to_eap_ig as to_eap_ig
from circuitsteer.circuit.formats.eap_ig import write_eap_ig as write_eap_ig
from circuitsteer.circuit.formats.heads import from_heads as from_heads
from circuitsteer.circuit.formats.heads import parse_heads as parse_heads
from circuitsteer.circuit.formats.heads import to_heads as to_heads

__all__ = [
    "auto_circuit_name",
    "from_acdc",
    "from_auto_circuit",
    "from_eap_ig",
    "from_heads",
    "parse_auto_circuit_edge",
    "parse_heads",
    "parse_torch_index",
    "read_acdc",
    "read_eap_ig",
    "to_acdc",
    "to_acdc_rows",
    "to_auto_circuit",
    "to_eap_ig",
    "to_heads",
    "write_eap_ig",
]
