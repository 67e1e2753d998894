"""Names of circuit nodes in other tools: TransformerLens hook points (the bridge, TL patching,
ACDC's files) and, deprecated, GPT-2's Hugging Face module paths (the engine's architecture
adapters own module paths now: ``model.arch.path(role, layer)``).

:mod:`circuitsteer.nodes` re-exports these names (``cs.nodes.tl_hook`` ...).

Example:
    >>> tl_hook("a9.h9")
    ('blocks.9.attn.hook_z', 9)
    >>> tl_hook("a9.h9", "q")
    ('blocks.9.hook_q_input', 9)
    >>> node_from_tl_hook("blocks.9.hook_q_input", 9, n_layers=12)
    (Node(kind='head', layer=9, head=9, index=None, resid=None), 'q')
"""

from __future__ import annotations

import re

from circuitsteer.errors import NodeNameError
from circuitsteer.nodes import CHANNELS, Node, parse_node

__all__ = ["HF_EMBED", "HF_FINAL_LN", "hf_module", "node_from_tl_hook", "tl_hook"]


def tl_hook(
    node: str | Node, point: str = "out", n_layers: int | None = None
) -> tuple[str, int | None]:
    """TransformerLens hook name and head/neuron index for a node.

    ``point``: ``"out"`` (a head's ``hook_z`` in d_head; ``"result"`` for its d_model output),
    ``"in"`` (MLP input, logits input) or a channel ``"q"``/``"k"``/``"v"`` (head input).
    """
    n = node if isinstance(node, Node) else parse_node(node)
    L = n.layer
    if n.kind == "input":
        return "blocks.0.hook_resid_pre", None
    if n.kind == "logits":
        if n_layers is None:
            raise NodeNameError(
                "the logits' hook point needs the model's layer count", fix="pass n_layers"
            )
        return f"blocks.{n_layers - 1}.hook_resid_post", None
    if n.kind == "resid":
        return f"blocks.{L}.hook_{n.resid}", None
    if n.kind == "neuron":
        return f"blocks.{L}.mlp.hook_post", n.index
    if n.kind == "mlp":
        return (f"blocks.{L}.hook_mlp_in" if point == "in" else f"blocks.{L}.hook_mlp_out"), None
    if point in CHANNELS:
        return f"blocks.{L}.hook_{point}_input", n.head
    if point == "result":
        return f"blocks.{L}.attn.hook_result", n.head
    return f"blocks.{L}.attn.hook_z", n.head


_TL_HOOK = re.compile(
    r"blocks\.(\d+)\.(?:(attn\.hook_result|attn\.hook_z)|hook_(q|k|v)_input|hook_(mlp_in|mlp_out)|hook_(resid_pre|resid_mid|resid_post))"
)


def node_from_tl_hook(hook: str, index: int | None, n_layers: int) -> tuple[Node, str | None]:
    """Inverse of :func:`tl_hook` for ACDC-style graphs: returns (node, channel-or-None).

    ``blocks.0.hook_resid_pre`` is ``input`` and ``blocks.{last}.hook_resid_post`` is ``logits``.
    """
    m = _TL_HOOK.fullmatch(hook)
    if not m:
        raise NodeNameError(
            f"unknown TransformerLens hook {hook!r}",
            fix="use hook_result/hook_z, hook_{q,k,v}_input, hook_mlp_in/out or hook_resid_*",
        )
    L = int(m[1])
    if m[2] or m[3]:
        if index is None:
            raise NodeNameError(
                f"hook {hook!r} needs a head index", fix="give the head index, e.g. [:, :, 3]"
            )
        return Node(kind="head", layer=L, head=int(index)), m[3]
    if m[4]:
        return Node(kind="mlp", layer=L), None
    if m[5] == "resid_pre" and L == 0:
        return Node(kind="input"), None
    if m[5] == "resid_post" and L == n_layers - 1:
        return Node(kind="logits"), None
    raise NodeNameError(
        f"hook {hook!r} is not a circuit node",
        fix="only blocks.0.hook_resid_pre (input) and the last hook_resid_post (logits) are nodes",
    )


# Hugging Face module paths are the architecture adapters' business (circuitsteer.engine.arch);
# these GPT-2 names stay for existing callers. Prefer ``model.arch.path(role, layer)``.

HF_EMBED = ("transformer.wte", "transformer.wpe")
HF_FINAL_LN = "transformer.ln_f"


def hf_module(layer: int, role: str) -> str:
    """Deprecated: the GPT-2 module path of ``role`` in block ``layer``; use
    ``model.arch.path(role, layer)``, which knows every supported architecture."""
    from circuitsteer.engine.arch import gpt2

    return gpt2.module_path(role, layer)
