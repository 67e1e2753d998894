"""Node and edge names: parsing, round trips, validation against a shape, hook points."""

from __future__ import annotations

import pytest

from circuitsteer.errors import NodeNameError, ShapeMismatchError
from circuitsteer.nodes import (
    ModelShape,
    all_heads,
    format_edge,
    node_from_tl_hook,
    parse_edge,
    parse_node,
    tl_hook,
    validate_node,
)

GPT2_SMALL = ModelShape(n_layers=12, n_heads=12, d_model=768, d_head=64, d_mlp=3072, d_vocab=50257)


def every_name(shape: ModelShape) -> list[str]:
    names = ["input", "logits", *all_heads(shape)]
    for layer in range(shape.n_layers):
        names += [f"m{layer}", f"m{layer}.n0", f"m{layer}.n{shape.d_mlp - 1}"]
        names += [f"{k}.{layer}" for k in ("resid_pre", "resid_mid", "resid_post")]
    return names


def test_every_node_name_round_trips():
    names = every_name(GPT2_SMALL)
    assert len(names) == 2 + 144 + 12 * 6
    for name in names:
        node = validate_node(name, GPT2_SMALL)
        assert node.name == name
        assert parse_node(node.name) == node


def test_parsed_fields():
    n = parse_node("a10.h7")
    assert (n.kind, n.layer, n.head) == ("head", 10, 7)
    assert parse_node("m3.n17").index == 17
    assert parse_node("resid_mid.4").resid == "resid_mid"
    assert parse_node("m11").kind == "mlp"


@pytest.mark.parametrize(
    "bad", ["a1h2", "a1.h", "h1.a2", "mlp3", "m-1", "resid.3", "resid_pre", "", "a1.h2 x", "Input"]
)
def test_malformed_node_names_raise_typed_error(bad):
    with pytest.raises(NodeNameError) as e:
        parse_node(bad)
    assert "Fix:" in str(e.value) and repr(bad) in str(e.value)


def test_non_string_name():
    with pytest.raises(NodeNameError):
        parse_node(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["a12.h0", "a0.h12", "m12", "m0.n3072", "resid_post.12"])
def test_out_of_range_names_raise_shape_error(bad):
    with pytest.raises(ShapeMismatchError) as e:
        validate_node(bad, GPT2_SMALL)
    assert "outside the model" in str(e.value)


def test_shape_error_is_a_value_error():
    with pytest.raises(ValueError):
        validate_node("a0.h99", GPT2_SMALL)


def test_edges_round_trip_and_channels():
    for name in [
        "a5.h5->a7.h3<k>",
        "input->a0.h1<q>",
        "m3->a9.h9<v>",
        "a9.h9->logits",
        "input->m0",
        "a0.h0->m0",
    ]:
        assert parse_edge(name).name == name
    e = parse_edge("a5.h5 -> a7.h3<k>")
    assert (e.src.name, e.dst.name, e.channel) == ("a5.h5", "a7.h3", "k")
    assert format_edge("a5.h5", "a7.h3", "k") == "a5.h5->a7.h3<k>"


@pytest.mark.parametrize(
    "bad,msg",
    [
        ("a7.h3->a5.h5<q>", "backwards"),
        ("a5.h1->a5.h2<q>", "backwards"),
        ("m5->a5.h1<q>", "backwards"),
        ("a1.h1->m2<q>", "not a head"),
        ("a1.h1->a2.h2<x>", "unknown channel"),
        ("a1.h1->input", "not circuit nodes"),
        ("logits->a1.h1<q>", "not circuit nodes"),
        ("a1.h1 a2.h2", "malformed"),
    ],
)
def test_bad_edges(bad, msg):
    with pytest.raises(NodeNameError, match=msg):
        parse_edge(bad)


def test_heads_feed_their_own_layers_mlp():
    assert parse_edge("a3.h0->m3").dst.name == "m3"


def test_tl_hooks_round_trip():
    n_layers = 12
    for name in ["a9.h9", "a0.h1", "m3"]:
        hook, idx = tl_hook(name)
        node, ch = node_from_tl_hook(hook, idx, n_layers)
        assert node.name == name and ch is None
    for ch in "qkv":
        hook, idx = tl_hook("a7.h3", ch)
        assert hook == f"blocks.7.hook_{ch}_input" and idx == 3
        assert node_from_tl_hook(hook, idx, n_layers) == (parse_node("a7.h3"), ch)
    assert tl_hook("input") == ("blocks.0.hook_resid_pre", None)
    assert tl_hook("logits", n_layers=12) == ("blocks.11.hook_resid_post", None)
    assert node_from_tl_hook("blocks.11.hook_resid_post", None, 12)[0].name == "logits"
    assert tl_hook("m3.n7") == ("blocks.3.mlp.hook_post", 7)
    assert tl_hook("resid_mid.2") == ("blocks.2.hook_resid_mid", None)
    with pytest.raises(NodeNameError):
        node_from_tl_hook("blocks.3.hook_resid_pre", None, 12)
    with pytest.raises(NodeNameError):
        node_from_tl_hook("blocks.3.attn.hook_result", None, 12)
