"""Sites for steering vectors: capture names (:func:`circuitsteer.nodes.parse_capture`), their
widths in a model, how each maps to an :class:`~circuitsteer.interventions.Add`, and the model
reference recorded in a vector's provenance.

| site | activation | width | ``Add`` space |
|---|---|---|---|
| ``resid_pre.L`` / ``resid_mid.L`` / ``resid_post.L`` / ``input`` | residual stream | d_model | - |
| ``aL.hH`` | the head's own ``z`` (before W_O; where ITI adds) | d_head | ``z`` |
| ``aL.hH:result`` | the head's output in the residual, ``z W_O`` | d_model | ``resid`` |
| ``aL.hH<q>`` (``<k>``, ``<v>``) | the residual the head reads through that channel | d_model | channel site |
| ``mL`` | MLP output | d_model | ``out`` |
| ``mL:neurons`` / ``mL.nI`` | MLP neurons / one neuron | d_mlp / 1 | ``neurons`` / - |

``mL:in`` and ``logits:in`` can be collected (PCA, means) but not added to: add at the residual
site they read instead. Attention patterns (``aL.hH:pattern``) are not vectors of a site.

Example:
    >>> import circuitsteer as cs
    >>> m = cs.random_gpt2(n_layers=2, n_heads=4, d_model=32)
    >>> site_width(m, "a1.h3"), site_width(m, "a1.h3:result"), site_width(m, "m0:neurons")
    (8, 32, 128)
    >>> add_target("a1.h3:result")
    ('a1.h3', None, 'resid')
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from circuitsteer.nodes import CHANNELS, parse_capture, validate_node
from circuitsteer.vectors.errors import VectorError, VectorMismatchError


def canonical(site: str) -> str:
    """The canonical capture name of ``site`` (``NodeNameError`` if malformed)."""
    c = parse_capture(site)
    if c.point == "pattern":
        raise VectorError(
            f"{site!r} is an attention pattern, not a vector at a site",
            fix="use the head's z ('a1.h3'), its output ('a1.h3:result') or a residual site",
        )
    return c.name


def site_width(model: Any, site: str) -> int:
    """Width of the activation at ``site`` in ``model`` (checked against the model's shape)."""
    c = parse_capture(canonical(site))
    s = model.shape
    if c.node.kind != "logits":
        validate_node(c.node, s)  # ShapeMismatchError for layers/heads/neurons it lacks
    if c.point == "neurons":
        return s.d_mlp
    if c.point == "out":
        return {"head": s.d_head, "neuron": 1}.get(c.node.kind, s.d_model)
    return s.d_model  # result, q/k/v, in


def add_target(site: str) -> tuple[str, str | None, str | None]:
    """``(node, channel, space)`` for ``Site(node, channel=channel)`` and ``Add(space=space)``."""
    c = parse_capture(canonical(site))
    node, point = c.node, c.point
    if point in CHANNELS:
        return node.name, point, None
    if point == "in" or node.kind == "logits":
        raise VectorError(
            f"cannot add a vector at {site!r}: it is an input that is not a site of its own",
            fix="add at the residual site it reads (e.g. 'resid_mid.L' for 'mL:in') instead",
        )
    space = {
        ("head", "out"): "z",
        ("head", "result"): "resid",
        ("mlp", "out"): "out",
        ("mlp", "neurons"): "neurons",
    }.get((node.kind, point))
    return node.name, None, space


def model_ref(model: Any) -> dict[str, Any]:
    """What a vector records about its model: the name and the shape."""
    return {"name": str(getattr(model, "name", type(model).__name__)), "shape": asdict(model.shape)}


def check_model(ref: dict[str, Any] | None, model: Any, what: str) -> None:
    """Raise :class:`VectorMismatchError` when ``model`` is not the model ``ref`` describes."""
    if ref is None:
        return
    have = model_ref(model)
    if have["shape"] != ref.get("shape"):
        raise VectorMismatchError(
            f"{what} was extracted from {ref.get('name')!r} ({_describe(ref.get('shape'))}) "
            f"but is applied to {have['name']!r} ({_describe(have['shape'])})",
            fix="extract the vector from the model you steer",
        )
    if have["name"] != ref.get("name"):
        raise VectorMismatchError(
            f"{what} was extracted from {ref.get('name')!r} but is applied to {have['name']!r} "
            "(same shape, different model)",
            fix="extract the vector from the model you steer, or pass check_model=False "
            "if the two are the same weights under another name",
        )


def _describe(shape: dict[str, Any] | None) -> str:
    if not shape:
        return "unknown shape"
    return (
        f"{shape['n_layers']} layers x {shape['n_heads']} heads, d_model {shape['d_model']}, "
        f"d_mlp {shape['d_mlp']}"
    )
