"""Does a circuit fit a model, and is its graph still well formed after direct edits?

The node and edge rules are :mod:`circuitsteer.nodes`' (``validate_node``, ``is_edge``) and
:func:`circuitsteer.circuit._parts.circuit_edge`; this module only applies them to a whole
circuit and words the errors.

Example:
    >>> from circuitsteer.circuit import Circuit
    >>> from circuitsteer.models import known_shape
    >>> c = Circuit("c"); _ = c.add_node("m0")
    >>> fits(c, known_shape("attn-only-4l"), "attn-only-4l")
    Traceback (most recent call last):
    ...
    circuitsteer.errors.ShapeMismatchError: circuit 'c' uses m0, but attn-only-4l is attention-only. Fix: drop MLP nodes for attention-only models
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import networkx as nx

from circuitsteer import edge_graph as eg
from circuitsteer.circuit._parts import NO_CHANNEL, channel_of, circuit_edge, circuit_node
from circuitsteer.circuit._schema import format_error
from circuitsteer.errors import CircuitFormatError, NodeNameError, ShapeMismatchError
from circuitsteer.nodes import CHANNELS, ModelShape, is_edge, parse_node, validate_node

if TYPE_CHECKING:
    from circuitsteer.circuit._graph import Circuit


def fits(c: Circuit, shape: ModelShape, model: str | None) -> ModelShape:
    """``c.check_model`` against ``shape``, the shape of the model named ``model``: every node
    inside it, every edge in its edge graph."""
    other = model or "the model"
    mine = c.shape
    if mine is not None and (mine.n_layers, mine.n_heads) != (shape.n_layers, shape.n_heads):
        raise ShapeMismatchError(
            f"circuit {c.name!r} is for {c.model or 'a model'} ({mine.describe()}), "
            f"but {other} has {shape.describe()}",
            fix="load the circuit defined for this model, or rediscover one on it",
        )
    for n in c.graph:
        try:
            node = validate_node(n, shape)
        except ShapeMismatchError as e:
            if model is None:
                raise
            raise ShapeMismatchError(
                f"{e.message}, the shape of {model}",
                fix=f"{e.fix}, or use a circuit found on {model}",
            ) from None
        if node.kind == "mlp" and not eg.has_mlps(shape):
            raise ShapeMismatchError(
                f"circuit {c.name!r} uses {n}, but {other} is attention-only",
                fix="drop MLP nodes for attention-only models",
            )
    if shape.parallel_residual:
        for u, v in set(c.graph.edges()):
            if not is_edge(parse_node(u), parse_node(v), shape):
                raise ShapeMismatchError(
                    f"circuit {c.name!r} has edge {u}->{v}, but {other} has a parallel "
                    f"residual: {v} reads its layer's input, not that layer's heads",
                    fix="drop edges from a layer's heads to its own MLP for GPT-NeoX/Pythia models",
                )
    return shape


def validate(c: Circuit, shape: ModelShape | None = None) -> None:
    """Re-check the graph (after direct edits of ``circuit.graph``): node names and kinds,
    acyclicity, each edge and its key; and the model shape when known."""
    where = f"circuit {c.name!r}"
    for n, kind in c.graph.nodes(data="kind"):
        try:
            ok = circuit_node(n).kind == kind
        except NodeNameError as e:
            raise format_error(where, f"nodes[{n!r}]", e.message, e.fix or "") from None
        if not ok:
            raise format_error(
                where,
                f"nodes[{n!r}]",
                f"node attribute kind={kind!r} does not match its name",
                "add nodes with Circuit.add_node",
            )
    if not nx.is_directed_acyclic_graph(c.graph):
        cycle = " -> ".join(str(e[0]) for e in nx.find_cycle(c.graph))
        raise format_error(
            where,
            "edges",
            f"the edges form a cycle ({cycle})",
            "remove the edge that closes the cycle; circuits run forward through the model",
        )
    for u, v, k in c.graph.edges(keys=True):
        try:
            if k != NO_CHANNEL and k not in CHANNELS:
                raise CircuitFormatError(
                    f"key {k!r} is no channel", fix="key head edges 'q', 'k' or 'v'"
                )
            circuit_edge(u, v, channel_of(k))
        except (NodeNameError, CircuitFormatError) as e:
            raise format_error(where, f"edge {u}->{v}", e.message, e.fix or "") from None
    if shape or c.shape:
        check_in(c, shape or c.shape, where, c.model)


def check_in(c: Circuit, model_or_shape: Any, where: str, model: str | None = None) -> None:
    """``c.check_model`` with errors prefixed by ``where`` (``model`` names a bare shape's
    model); a circuit without a shape takes the model's."""
    shape = getattr(model_or_shape, "shape", model_or_shape)
    try:
        if isinstance(shape, ModelShape) and model is not None:
            got = fits(c, shape, model)
        else:
            got = c.check_model(model_or_shape)
    except ShapeMismatchError as e:
        raise ShapeMismatchError(f"{where}: {e.message}", fix=e.fix) from None
    if c.shape is None:
        c.shape = got
