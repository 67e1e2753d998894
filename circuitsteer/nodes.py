"""The one grammar of names: nodes, edges, channels, receivers and capture points; the edge
rule and depth. (TransformerLens hook points: :mod:`circuitsteer.hook_names`, re-exported here.)

Names (docs/design.md): ``input``, ``a{L}.h{H}`` (attention head), ``m{L}`` (MLP), ``m{L}.n{i}``
(MLP neuron), ``logits``, and residual sites ``resid_pre.{L}``, ``resid_mid.{L}``,
``resid_post.{L}``. Edges: ``src->dst``, with ``<q>``, ``<k>`` or ``<v>`` when ``dst`` is a head.
Receivers (``Site(to=...)``): ``a9.h9``, ``a9.h9<q>``, ``m5``, ``logits``. Capture points:
a node (a head gives its ``z``), ``a9.h9<q>`` (the q input), ``a9.h9:result``,
``a9.h9:pattern``, ``m3:in``, ``m3:neurons``, ``logits:in``.

No other module splits or formats these strings. Which sites exist and which edges are allowed
depend on the architecture only through :class:`ModelShape` (``parallel_residual``: no
``resid_mid``, and the MLP reads the layer's input, so heads do not feed their own layer's MLP).
Hugging Face module paths live in the engine's architecture adapters (``engine/arch``).

Example:
    >>> n = parse_node("a9.h9")
    >>> (n.kind, n.layer, n.head, n.name)
    ('head', 9, 9, 'a9.h9')
    >>> e = parse_edge("a5.h5->a7.h3<k>")
    >>> (e.src.name, e.dst.name, e.channel, e.name)
    ('a5.h5', 'a7.h3', 'k', 'a5.h5->a7.h3<k>')
    >>> c = parse_capture("a1.h2:pattern")
    >>> (c.node.name, c.point, c.name)
    ('a1.h2', 'pattern', 'a1.h2:pattern')
    >>> parse_receiver("a9.h9<q>")
    (Node(kind='head', layer=9, head=9, index=None, resid=None), 'q')
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from circuitsteer.errors import NodeNameError, ShapeMismatchError

NodeKind = Literal["input", "head", "mlp", "neuron", "resid", "logits"]
Channel = Literal["q", "k", "v"]
CHANNELS: tuple[Channel, ...] = ("q", "k", "v")
RESID_KINDS = ("resid_pre", "resid_mid", "resid_post")
# the kinds an edge of the edge graph runs from and to (neurons and residual sites are sites, not
# edge ends)
SENDER_KINDS = ("input", "head", "mlp")
RECEIVER_KINDS = ("head", "mlp", "logits")

_NAME_HELP = (
    "use 'input', 'logits', 'a{L}.h{H}' (head), 'm{L}' (MLP), 'm{L}.n{i}' (neuron), "
    "'resid_pre.{L}', 'resid_mid.{L}' or 'resid_post.{L}', e.g. 'a9.h9' or 'm3'"
)
_HEAD = re.compile(r"a(\d+)\.h(\d+)")
_MLP = re.compile(r"m(\d+)")
_NEURON = re.compile(r"m(\d+)\.n(\d+)")
_RESID = re.compile(r"(resid_pre|resid_mid|resid_post)\.(\d+)")
_EDGE = re.compile(r"(?P<src>[^<>\s]+?)\s*->\s*(?P<dst>[^<>\s]+?)(?:<(?P<ch>[^<>]*)>)?")


@dataclass(frozen=True, slots=True)
class ModelShape:
    """The shape facts names are validated against.

    >>> ModelShape(n_layers=12, n_heads=12, d_model=768, d_head=64, d_mlp=3072, d_vocab=50257).n_layers
    12
    """

    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int = 1024
    n_kv_heads: int | None = None  # grouped-query attention: KV heads (None: one per query head)
    parallel_residual: bool = False  # attention and MLP both read the layer's input (GPT-NeoX)

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (``n_heads`` without grouped-query attention)."""
        return self.n_kv_heads or self.n_heads

    @property
    def grouped_kv(self) -> bool:
        """True when several query heads share one key/value head."""
        return self.kv_heads != self.n_heads

    def kv_head(self, head: int) -> int:
        """The key/value head query head ``head`` reads."""
        return head // (self.n_heads // self.kv_heads)

    def describe(self) -> str:
        extra = f", {self.kv_heads} KV heads" if self.grouped_kv else ""
        extra += ", parallel residual" if self.parallel_residual else ""
        return (
            f"{self.n_layers} layers x {self.n_heads} heads, d_model {self.d_model}, "
            f"d_mlp {self.d_mlp}{extra}"
        )


@dataclass(frozen=True, slots=True, order=True)
class Node:
    """A parsed node name. ``layer`` is None for input/logits; ``head``/``index`` when relevant."""

    kind: NodeKind
    layer: int | None = None
    head: int | None = None
    index: int | None = None  # neuron index for kind == "neuron"
    resid: str | None = None  # resid_pre / resid_mid / resid_post for kind == "resid"

    @property
    def name(self) -> str:
        if self.kind in ("input", "logits"):
            return self.kind
        if self.kind == "head":
            return f"a{self.layer}.h{self.head}"
        if self.kind == "mlp":
            return f"m{self.layer}"
        if self.kind == "neuron":
            return f"m{self.layer}.n{self.index}"
        return f"{self.resid}.{self.layer}"

    def __str__(self) -> str:
        return self.name

    def depth(self, n_layers: int | None = None) -> float:
        """Position in the forward order of a sequential-residual model: input 0, heads of layer
        L at 2L+1, MLP L at 2L+2, residual sites between them, logits last. Edges must point to a
        strictly larger depth. :func:`depth` gives the depth in a model of a given shape (a
        parallel residual puts MLP L at its heads' depth)."""
        if self.kind == "input":
            return 0.0
        if self.kind == "logits":
            return float("inf") if n_layers is None else 2.0 * n_layers + 1
        assert self.layer is not None
        if self.kind == "head":
            return 2.0 * self.layer + 1
        if self.kind in ("mlp", "neuron"):
            return 2.0 * self.layer + 2
        offset = {"resid_pre": 0.5, "resid_mid": 1.5, "resid_post": 2.5}[self.resid or ""]
        return 2.0 * self.layer + offset


@dataclass(frozen=True, slots=True)
class Edge:
    """A parsed edge ``src->dst<channel>``."""

    src: Node
    dst: Node
    channel: Channel | None = None

    @property
    def name(self) -> str:
        suffix = f"<{self.channel}>" if self.channel else ""
        return f"{self.src.name}->{self.dst.name}{suffix}"

    def __str__(self) -> str:
        return self.name


def parse_node(name: str) -> Node:
    """Parse a node or residual-site name; raise ``NodeNameError`` if malformed."""
    if not isinstance(name, str):
        raise NodeNameError(
            f"node name must be a string, got {type(name).__name__} {name!r}", fix=_NAME_HELP
        )
    return _parse_node(name)


_MAX_INDEX = 10**6  # no model has more layers/heads/neurons; bounds depth() arithmetic


@lru_cache(maxsize=65536)
def _parse_node(name: str) -> Node:
    s = name.strip()
    if s in ("input", "logits"):
        return Node(kind=s)  # type: ignore[arg-type]
    node: Node | None = None
    if m := _HEAD.fullmatch(s):
        node = Node(kind="head", layer=int(m[1]), head=int(m[2]))
    elif m := _NEURON.fullmatch(s):
        node = Node(kind="neuron", layer=int(m[1]), index=int(m[2]))
    elif m := _MLP.fullmatch(s):
        node = Node(kind="mlp", layer=int(m[1]))
    elif m := _RESID.fullmatch(s):
        node = Node(kind="resid", layer=int(m[2]), resid=m[1])
    if node is None:
        raise NodeNameError(f"unknown node name {name!r}", fix=_NAME_HELP)
    if max(node.layer or 0, node.head or 0, node.index or 0) > _MAX_INDEX:
        raise NodeNameError(
            f"index in {name!r} is implausibly large",
            fix="use the model's layer/head/neuron indices",
        )
    return node


def parse_edge(name: str, shape: ModelShape | None = None) -> Edge:
    """Parse ``'src->dst'`` or ``'src->dst<q|k|v>'``; the channel is only allowed on head receivers.

    Edges must point forward in depth (``a7.h3->a5.h5`` is refused); with a ``shape`` the
    architecture's edge rule applies (a parallel residual refuses ``a3.h0->m3``).
    """
    if not isinstance(name, str):
        raise NodeNameError(
            f"edge name must be a string, got {type(name).__name__}", fix="write 'a5.h5->a7.h3<k>'"
        )
    m = _EDGE.fullmatch(name.strip())
    if not m:
        raise NodeNameError(
            f"malformed edge {name!r}",
            fix="write edges as 'src->dst', with '<q>', '<k>' or '<v>' when dst is a head, e.g. 'a5.h5->a7.h3<k>'",
        )
    return make_edge(parse_node(m["src"]), parse_node(m["dst"]), m["ch"], shape)


def make_edge(
    src: Node, dst: Node, channel: str | None = None, shape: ModelShape | None = None
) -> Edge:
    """Build a validated Edge from parsed nodes (the edge rule of ``shape``'s architecture when
    given, else the sequential-residual rule). Messages name the whole edge, channel included."""
    if channel is not None and channel not in CHANNELS:
        raise NodeNameError(
            f"unknown channel {channel!r} in edge {_label(src, dst, channel)}",
            fix="use <q>, <k> or <v>",
        )
    if channel is not None and dst.kind != "head":
        raise NodeNameError(
            f"channel {channel!r} on edge {_label(src, dst, channel)}, but {dst.name} is not a "
            "head (the channel does not fit the receiver)",
            fix="drop the channel: only heads read q, k and v",
        )
    if src.kind not in SENDER_KINDS or dst.kind not in RECEIVER_KINDS:
        raise NodeNameError(
            f"edge {_label(src, dst, channel)} does not run from a sender to a receiver (neurons "
            "and residual sites are not circuit nodes)",
            fix="edges run from 'input', heads or MLPs to heads, MLPs or 'logits'",
        )
    if not feeds(src, dst, shape):
        parallel = shape is not None and shape.parallel_residual
        raise NodeNameError(
            f"edge {_label(src, dst, channel)} points backwards (or sideways) in depth"
            + (
                " (with a parallel residual, heads do not feed their own layer's MLP)"
                if parallel
                else ""
            ),
            fix="a sender must come earlier in the forward pass than its receiver (heads of layer L "
            "feed MLP L, unless the residual is parallel, and everything in later layers)",
        )
    return Edge(src=src, dst=dst, channel=channel)  # type: ignore[arg-type]


def _label(src: Node, dst: Node, channel: str | None) -> str:
    """The edge's name for a message (also with a channel the grammar refuses)."""
    return f"{src.name}->{dst.name}" + (f"<{channel}>" if channel is not None else "")


def format_edge(src: str | Node, dst: str | Node, channel: str | None = None) -> str:
    """``format_edge('a5.h5', 'a7.h3', 'k') == 'a5.h5->a7.h3<k>'`` (validated)."""
    s = src if isinstance(src, Node) else parse_node(src)
    d = dst if isinstance(dst, Node) else parse_node(dst)
    return make_edge(s, d, channel).name


# ---------------------------------------------------------------------------------------------
# Depth and the edge rule, per architecture


def depth(node: Node, shape: ModelShape | None = None) -> float:
    """Position of ``node`` in the forward order of a model of ``shape``.

    Sequential residual (GPT-2, Llama): input 0, heads of layer L at 2L+1, MLP L at 2L+2,
    logits last. Parallel residual (GPT-NeoX/Pythia): MLP L reads the layer's input like the
    heads of L, so it sits at their depth 2L+1. Without ``shape``: the sequential rule.

    >>> depth(parse_node("m3")), depth(parse_node("m3"), ModelShape(4, 4, 8, 2, 8, 10, parallel_residual=True))
    (8.0, 7.0)
    """
    d = node.depth(shape.n_layers if shape is not None else None)
    if shape is not None and shape.parallel_residual and node.kind in ("mlp", "neuron"):
        d -= 1.0
    return d


def feeds(src: Node, dst: Node, shape: ModelShape | None = None) -> bool:
    """True when ``dst`` reads ``src``'s output (directly, through the residual stream)."""
    return depth(src, shape) < depth(dst, shape)


def is_edge(src: Node, dst: Node, shape: ModelShape | None = None) -> bool:
    """True when ``src->dst`` is an edge of the model's edge graph: a sender kind, a receiver
    kind, and ``src`` feeds ``dst`` (what :func:`make_edge` accepts, without raising).

    >>> is_edge(parse_node("a3.h0"), parse_node("m3")), is_edge(parse_node("m3"), parse_node("a3.h0"))
    (True, False)
    """
    return src.kind in SENDER_KINDS and dst.kind in RECEIVER_KINDS and feeds(src, dst, shape)


def validate_node(node: str | Node, shape: ModelShape) -> Node:
    """Parse (if needed) and check the node exists in a model of this shape."""
    n = node if isinstance(node, Node) else parse_node(node)
    if n.layer is not None and not 0 <= n.layer < shape.n_layers:
        raise ShapeMismatchError(
            f"{n.name}: layer {n.layer} is outside the model ({shape.describe()})",
            fix=f"use layers 0..{shape.n_layers - 1}",
        )
    if n.head is not None and not 0 <= n.head < shape.n_heads:
        raise ShapeMismatchError(
            f"{n.name}: head {n.head} is outside the model ({shape.describe()})",
            fix=f"use heads 0..{shape.n_heads - 1}",
        )
    if n.kind == "resid" and n.resid == "resid_mid" and shape.parallel_residual:
        raise ShapeMismatchError(
            f"{n.name} does not exist in a model with a parallel residual ({shape.describe()}): "
            "attention and MLP both read the layer's input",
            fix=f"use resid_pre.{n.layer} (what attention and MLP read) or resid_post.{n.layer}",
        )
    if n.index is not None and not 0 <= n.index < shape.d_mlp:
        raise ShapeMismatchError(
            f"{n.name}: neuron {n.index} is outside the model's MLP width {shape.d_mlp}",
            fix=f"use neurons 0..{shape.d_mlp - 1}",
        )
    return n


def head(layer: int, h: int) -> str:
    """``head(9, 9) == 'a9.h9'``."""
    return Node(kind="head", layer=layer, head=h).name


def mlp(layer: int) -> str:
    """``mlp(3) == 'm3'``."""
    return Node(kind="mlp", layer=layer).name


def neuron(layer: int, i: int) -> str:
    """``neuron(3, 5) == 'm3.n5'``."""
    return Node(kind="neuron", layer=layer, index=i).name


def resid(kind: str, layer: int) -> str:
    """``resid('resid_pre', 2) == 'resid_pre.2'``."""
    if kind not in RESID_KINDS:
        raise NodeNameError(f"unknown residual site {kind!r}", fix=f"use one of {RESID_KINDS}")
    return Node(kind="resid", layer=layer, resid=kind).name


def all_heads(shape: ModelShape) -> list[str]:
    return [head(layer, h) for layer in range(shape.n_layers) for h in range(shape.n_heads)]


def all_mlps(shape: ModelShape) -> list[str]:
    return [mlp(layer) for layer in range(shape.n_layers)]


def format_site(node: str | Node, channel: str | None = None) -> str:
    """A node with an optional channel: ``a9.h9<q>``, ``m5``."""
    n = node if isinstance(node, Node) else parse_node(node)
    return f"{n.name}<{channel}>" if channel else n.name


# ---------------------------------------------------------------------------------------------
# Receivers and capture points

_SITE = re.compile(r"(?P<node>[^<>:\s]+)(?:<(?P<ch>[^<>]*)>)?(?::(?P<point>[^<>:\s]*))?")
_RECEIVER_HELP = "name receivers as 'a9.h9' (q, k and v), 'a9.h9<q>', 'm5' or 'logits'"
CAPTURE_POINTS = ("out", "q", "k", "v", "result", "pattern", "in", "neurons")
_CAPTURE_HELP = (
    "capture a node ('a9.h9' gives z, 'm3' the MLP output, residual sites, 'input'), a head's "
    "'a9.h9<q>' input, 'a9.h9:result' or 'a9.h9:pattern', 'm3:in', 'm3:neurons', 'm3.n5', or "
    "'logits:in' (the final residual; the logits themselves are returned)"
)


@dataclass(frozen=True, slots=True)
class CapturePoint:
    """A parsed capture name: ``node`` and ``point``, one of ``out`` (the node's value: a head's
    z, an MLP's output, a residual site), ``q``/``k``/``v`` (a head's input through that
    channel), ``result`` (a head's d_model output), ``pattern`` (attention pattern), ``in`` (MLP
    or logits input), ``neurons`` (MLP neuron activations)."""

    node: Node
    point: str = "out"

    @property
    def name(self) -> str:
        if self.point in CHANNELS:
            return format_site(self.node, self.point)
        return self.node.name if self.point == "out" else f"{self.node.name}:{self.point}"

    def __str__(self) -> str:
        return self.name


def capture_name(node: str | Node, point: str = "out") -> str:
    """``capture_name('a9.h9', 'result') == 'a9.h9:result'``; ``capture_name('a9.h9', 'q')
    == 'a9.h9<q>'`` (validated)."""
    n = node if isinstance(node, Node) else parse_node(node)
    return _check_capture(CapturePoint(n, point), repr(point)).name


def _check_capture(c: CapturePoint, name: str) -> CapturePoint:
    kind, point = c.node.kind, c.point
    ok = (
        point == "out"
        and kind != "logits"
        or (kind == "head" and point in (*CHANNELS, "result", "pattern"))
        or (kind == "mlp" and point in ("in", "neurons"))
        or (kind == "logits" and point == "in")
    )
    if not ok:
        raise NodeNameError(f"bad capture name {name}", fix=_CAPTURE_HELP)
    return c


def parse_capture(name: str) -> CapturePoint:
    """Parse a capture name (see :class:`CapturePoint`); ``NodeNameError`` if malformed."""
    m = _SITE.fullmatch(name.strip()) if isinstance(name, str) else None
    if not m:
        raise NodeNameError(f"bad capture name {name!r}", fix=_CAPTURE_HELP)
    node = parse_node(m["node"])
    ch, point = m["ch"], m["point"]
    if ch is not None and (ch not in CHANNELS or point is not None):
        raise NodeNameError(f"bad capture name {name!r}", fix=_CAPTURE_HELP)
    if point == "":
        raise NodeNameError(f"bad capture name {name!r}", fix=_CAPTURE_HELP)
    return _check_capture(CapturePoint(node, ch or point or "out"), repr(name))


def parse_receiver(name: str) -> tuple[Node, Channel | None]:
    """Parse a receiver of an edge-restricted change: ``a9.h9`` (channel None: q, k and v),
    ``a9.h9<q>``, ``m5`` or ``logits``."""
    m = _SITE.fullmatch(name.strip()) if isinstance(name, str) else None
    if not m or m["point"] is not None:
        raise NodeNameError(f"malformed receiver {name!r}", fix=_RECEIVER_HELP)
    node = parse_node(m["node"])
    ch = m["ch"]
    if ch is not None and ch not in CHANNELS:
        raise NodeNameError(f"unknown channel in receiver {name!r}", fix="use <q>, <k> or <v>")
    if node.kind not in ("head", "mlp", "logits") or (ch is not None and node.kind != "head"):
        raise NodeNameError(f"receiver {name!r} is not a head, MLP or logits", fix=_RECEIVER_HELP)
    return node, ch  # type: ignore[return-value]


# TransformerLens hook points and the deprecated GPT-2 module paths live in hook_names, which
# builds on this module: resolved on first use, so neither import runs the other's half-way
_HOOK_NAMES = ("HF_EMBED", "HF_FINAL_LN", "hf_module", "node_from_tl_hook", "tl_hook")


def __getattr__(name: str):  # noqa: ANN202 - PEP 562 module attribute
    if name in _HOOK_NAMES:
        from circuitsteer import hook_names

        return getattr(hook_names, name)
    raise AttributeError(f"module 'circuitsteer.nodes' has no attribute {name!r}")
