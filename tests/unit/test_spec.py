"""Spec files: validation errors point at the key and line and suggest the nearest valid one;
resolution fills every default; every shipped spec and every example in docs/specs.md loads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import circuitsteer as cs
from circuitsteer.spec import KINDS, load_spec, load_spec_text

ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
model: ioi-circuit
task: {name: ioi, n: 16, seed: 3}
circuit: ioi-circuit/ioi
vectors:
  v: {recipe: mean_difference, site: a2.h1, positions: END}
  r: {recipe: random_like, of: v, seed: 1}
analyses:
  - name: g
    kind: grid
    sites: [a0.h1, m2]
    operations:
      - {op: ablate, modes: [zero]}
      - {op: add, vectors: [v, r], coefs: [1, 2]}
  - {name: heads, kind: head_ablation}
"""


def _problems(text: str) -> list[dict]:
    with pytest.raises(cs.SpecError) as e:
        load_spec_text(text, source="s.yaml")
    return e.value.problems  # type: ignore[attr-defined]


def test_resolved_spec_fills_every_default():
    spec = load_spec_text(GOOD, name="good")
    d = spec.to_dict()
    assert d["name"] == "good" and d["seed"] == 0 and d["metrics"] == ["logit_diff"]
    g, h = d["analyses"]
    assert g["positions"] == ["all"] and g["shard_size"] == 128 and g["metric"] == ["logit_diff"]
    assert h["modes"] == ["resample"] and h["layers"] is None and h["heads_per_shard"] == 8
    assert d["report"] == {"title": None, "out": None}
    # resolving the resolved spec changes nothing (spec.yaml of a run round-trips)
    again = cs.spec.spec_from_dict(d)
    assert again.to_dict() == d and again.digest == spec.digest


def test_digest_changes_with_content_not_description():
    a = load_spec_text(GOOD, name="x")
    b = load_spec_text(GOOD.replace("n: 16", "n: 17"), name="x")
    c = load_spec_text("description: hello\n" + GOOD, name="x")
    assert a.digest != b.digest and a.digest == c.digest


@pytest.mark.parametrize(
    "edit, path, line, hint",
    [
        (("sites: [a0.h1, m2]", "sitez: [a0.h1, m2]"), ("analyses", 0, "sitez"), 10, "'sites'"),
        (("kind: grid", "kind: gird"), ("analyses", 0, "kind"), 9, "'grid'"),
        (
            ("modes: [zero]", "modes: [zeroo]"),
            ("analyses", 0, "operations", 0, "modes", 0),
            12,
            "'zero'",
        ),  # fmt: skip
        (("{op: ablate", "{op: ablat"), ("analyses", 0, "operations", 0, "op"), 12, "'ablate'"),
        (
            ("vectors: [v, r]", "vectors: [v, rr]"),
            ("analyses", 0, "operations", 1, "vectors", 1),
            13,
            "'r'",
        ),  # fmt: skip
        (("seed: 3}", "sed: 3}"), ("task", "sed"), 2, "'seed'"),
        (
            ("circuit: ioi-circuit/ioi", "circuit: ioi-circuit/iio"),
            ("circuit",),
            3,
            "'ioi-circuit/ioi'",
        ),  # fmt: skip
        (("model: ioi-circuit", "model: ioi-circut"), ("model",), 1, "'ioi-circuit'"),
        (("site: a2.h1", "site: a9.h1"), ("vectors", "v", "site"), 5, "0..3"),
        (("of: v,", "of: w,"), ("vectors", "r", "of"), 6, "v, r"),
        (
            ("n: 16,", "n: 16, options: {splitt: heldout},"),
            ("task", "options", "splitt"),
            2,
            "'split'",
        ),  # fmt: skip
    ],
)
def test_errors_name_key_line_and_nearest(edit, path, line, hint):
    assert edit[0] in GOOD
    probs = _problems(GOOD.replace(edit[0], edit[1], 1))
    assert len(probs) == 1, probs
    p = probs[0]
    assert p["path"] == path and p["line"] == line and hint in (p["fix"] or ""), p


def test_message_lists_every_problem_with_file_and_line():
    text = GOOD.replace("sites:", "sitez:").replace("kind: head_ablation", "kind: head_ablations")
    with pytest.raises(cs.SpecError) as e:
        load_spec_text(text, source="analyses/x.yaml")
    msg = str(e.value)
    assert (
        "analyses/x.yaml:10: analyses[0].sitez: unknown key 'sitez' (did you mean 'sites'?)" in msg
    )
    assert "analyses/x.yaml:14: analyses[1].kind: unknown kind 'head_ablations' (did you mean 'head_ablation'?)" in msg  # fmt: skip
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("model: ioi-circuit\nanalyses: []\n", "analyses"),
        ("model: ioi-circuit\n", "missing required key 'analyses'"),
        (
            "analyses:\n  - {name: a, kind: discovery, method: eap}\n",
            "missing required key 'model'",
        ),
        ("model: ioi-circuit\nanalyses:\n  - {name: a}\n", "missing key 'kind'"),
        (
            "model: ioi-circuit\nanalyses:\n  - {name: a, kind: discovery, method: eap, metric: prob_diff}\n",
            "one metric",
        ),  # fmt: skip
        (
            "model: ioi-circuit\nanalyses:\n  - {name: a, kind: faithfulness}\n",
            "needs the spec's circuit",
        ),  # fmt: skip
        (
            "model: ioi-circuit\nanalyses:\n  - {name: a, kind: head_ablation}\n  - {name: a, kind: head_ablation}\n",
            "duplicate analysis name",
        ),  # fmt: skip
        ("model: ioi-circuit\nmodel: toy-ioi\nanalyses: []\n", "duplicate key 'model'"),
        ("model: [unclosed\n", "not valid YAML"),
        ("- a\n- b\n", "a mapping"),
        (
            "model: ioi-circuit\nvectors:\n  v: {recipe: mean_difference}\nanalyses:\n  - {name: a, kind: head_ablation}\n",
            "needs a 'site'",
        ),  # fmt: skip
        (
            "model: ioi-circuit\nvectors:\n  v: {file: nope.safetensors}\nanalyses:\n  - {name: a, kind: head_ablation}\n",
            "no such file",
        ),  # fmt: skip
        (
            "model: ioi-circuit\nanalyses:\n  - {name: a, kind: head_ablation, layers: [7]}\n",
            "layer 7 outside",
        ),  # fmt: skip
        (
            "model: ioi-circuit\nanalyses:\n  - {name: a, kind: pca_study, sites: [resid_pre.x]}\n",
            "bad node",
        ),  # fmt: skip
    ],
)
def test_invalid_specs(text, needle):
    with pytest.raises(cs.SpecError) as e:
        load_spec_text(text, source="s.yaml")
    assert needle in str(e.value)


def test_load_spec_missing_file(tmp_path):
    with pytest.raises(cs.SpecError, match="no spec file"):
        load_spec(tmp_path / "nope.yaml")


def test_name_defaults_to_file_stem(tmp_path):
    p = tmp_path / "my_study.yaml"
    p.write_text(GOOD)
    assert load_spec(p).name == "my_study"
    p.write_text("name: other\n" + GOOD)
    assert load_spec(p).name == "other"


def test_report_section_is_kept_with_extra_keys():
    spec = load_spec_text(GOOD + "report: {title: T, out: reports/x, figures: [heatmap]}\n")
    assert spec.report == {"title": "T", "out": "reports/x", "figures": ["heatmap"]}


@pytest.mark.parametrize("path", sorted((ROOT / "analyses").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_specs_load(path):
    spec = load_spec(path)
    assert spec.analyses and spec.name


def _doc_examples() -> list[str]:
    text = (ROOT / "docs" / "specs.md").read_text()
    return re.findall(r"```yaml\n(.*?)```", text, flags=re.S)


def test_docs_have_an_example_per_kind_and_each_loads():
    examples = _doc_examples()
    seen: set[str] = set()
    for text in examples:
        if text.startswith("# invalid"):
            with pytest.raises(cs.SpecError):
                load_spec_text(text, source="docs/specs.md")
            continue
        if text.startswith("# example only"):
            continue
        spec = load_spec_text(text, source="docs/specs.md")
        seen |= {a.kind for a in spec.analyses}
    assert seen == set(KINDS), set(KINDS) - seen
