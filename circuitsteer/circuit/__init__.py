"""Circuits: the graph type, its JSON file format, importers/exporters, drawing, and masks.

Public surface (everything else in this package is internal):

* :class:`Circuit` (a ``networkx.MultiDiGraph`` of typed nodes and q/k/v edges),
  :class:`CircuitEdge`, :func:`full_edge_graph`;
* files: :func:`load_circuit`, :func:`loads_circuit`, :func:`dumps_circuit`,
  :func:`shipped_circuits`, :func:`resolve_circuit`, ``SCHEMA`` (docs/formats.md);
* wiring rules: :func:`wire`, :func:`wired_edges`, :func:`wiring_rules`;
* drawing: :func:`draw_circuit` (``Circuit.draw``);
* masks: ``Circuit.to_mask(model)`` / ``Circuit.from_mask(mask)``;
* :mod:`circuitsteer.circuit.formats`: ACDC, EAP-IG, auto-circuit and head lists.

Node and edge names, depth and the edge rule are :mod:`circuitsteer.nodes`'; a model's full
edge graph is :mod:`circuitsteer.edge_graph`.

Example:
    >>> from circuitsteer.circuit import load_circuit
    >>> ioi = load_circuit("gpt2-small/ioi")
    >>> len(ioi.heads), len(ioi.classes), ioi.graph.number_of_edges()
    (26, 7, 498)
"""

from circuitsteer.circuit import formats
from circuitsteer.circuit._draw import draw_circuit
from circuitsteer.circuit._files import (
    CIRCUIT_DIRS,
    load_circuit,
    loads_circuit,
    resolve_circuit,
    shipped_circuits,
)
from circuitsteer.circuit._graph import Circuit, full_edge_graph
from circuitsteer.circuit._io import dumps_circuit
from circuitsteer.circuit._parts import CIRCUIT_KINDS, CircuitEdge
from circuitsteer.circuit._schema import SCHEMA
from circuitsteer.circuit._wiring import wire, wired_edges, wiring_rules

__all__ = [
    "CIRCUIT_DIRS",
    "CIRCUIT_KINDS",
    "SCHEMA",
    "Circuit",
    "CircuitEdge",
    "draw_circuit",
    "dumps_circuit",
    "formats",
    "full_edge_graph",
    "load_circuit",
    "loads_circuit",
    "resolve_circuit",
    "shipped_circuits",
    "wire",
    "wired_edges",
    "wiring_rules",
]
