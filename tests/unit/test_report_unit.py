"""The report without model files: escaping, intervals, reading runs, atomic writing, fallbacks
(synthetic run directories written here)."""

from __future__ import annotations

import json
import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pandas as pd
import pytest
import yaml

import circuitsteer as cs
from circuitsteer.report import render, render_report
from circuitsteer.report.render import md_code, md_escape, md_fence
from circuitsteer.report.stats import fmt, row_interval, t_interval, t_quantile

XSS = "<script>alert(1)</script>"
EVIL = f"evil {XSS} | *bold* _x_ `tick` [link](http://example.com)"


def write_run(path: Path, rows: pd.DataFrame, spec: dict | None = None, meta: dict | None = None) -> Path:  # fmt: skip
    path.mkdir(parents=True, exist_ok=True)
    spec = spec or {"name": "synthetic", "model": "ioi-circuit", "task": {"name": "ioi", "n": 8},
                    "circuit": None, "analyses": []}  # fmt: skip
    (path / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    if meta is not None:
        (path / "meta.json").write_text(json.dumps(meta))
    rows.to_parquet(path / "results.parquet", index=False)
    return path


def grid_rows(label: str = "zero a1.h3", n: int = 8) -> pd.DataFrame:
    return pd.DataFrame({
        "analysis": "grid", "kind": "grid", "model": "ioi-circuit", "task": "ioi", "seed": 0,
        "node": ["a1.h3", "a3.h6"], "operation": "ablate", "mode": "zero", "coef": float("nan"),
        "positions": "all", "metric": "logit_diff", "value": [3.5, 1.5], "variant": [label, "zero a3.h6"],
        "clean": 4.0, "effect": [-0.5, -2.5], "effect_lo": [-0.9, -3.0], "effect_hi": [-0.1, -2.0],
        "effect_std": [0.5, 0.7], "n": n,
    })  # fmt: skip


# ---- escaping -------------------------------------------------------------------------


def test_md_escape_neutralises_html_and_markdown():
    s = md_escape(EVIL)
    assert "<" not in s and ">" not in s and "&lt;script&gt;" in s
    assert "\\|" in s and "\\*bold\\*" in s and "\\_x\\_" in s and "\\`tick\\`" in s
    assert "\\[link\\]" in s
    assert re.search(r"(?<!\\)[|*_`\[\]]", s) is None  # every special character escaped
    assert md_escape("a\nb") == "a b"  # user text cannot start a new block
    assert md_escape("# heading") == "\\# heading" and md_escape("-1.5") == "-1.5"


def test_md_code_and_fence_survive_backticks_and_pipes():
    assert md_code("a|b") == "`a\\|b`"
    assert md_code("x``y") == "``` x``y ```"
    fenced = md_fence("```\nbody")
    assert fenced.startswith("````") and fenced.endswith("````")


def test_html_template_autoescapes_and_md_environment_escapes_by_default():
    html, md = render._environments()
    assert html.from_string("{{ x }}").render(x=XSS) == "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert md.from_string("{{ x }}").render(x="a|b*") == "a\\|b\\*"
    assert md.from_string("{{ x | code }}").render(x="a|b") == "`a\\|b`"


# ---- numbers ----------------------------------------------------------------------------


@pytest.mark.parametrize("df,expected", [(1, 12.706), (2, 4.303), (3, 3.182), (5, 2.571),
                                          (10, 2.228), (23, 2.069), (100, 1.984)])  # fmt: skip
def test_t_quantile_matches_the_table(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=2e-3)


def test_intervals_say_how_they_were_computed():
    one = grid_rows().iloc[[0]]
    iv = row_interval(one)
    assert (iv.value, iv.lo, iv.hi, iv.method, iv.n) == (-0.5, -0.9, -0.1, "bootstrap", 8)
    no_ci = one.drop(columns=["effect_lo", "effect_hi"])
    t = row_interval(no_ci)
    assert t.method == "t" and t.lo == pytest.approx(-0.5 - 2.365 * 0.5 / 8**0.5, abs=1e-3)
    several = t_interval([1.0, 2.0, 3.0, 4.0])
    assert several.method == "t" and several.value == 2.5 and several.n == 4
    assert fmt(float("inf")) == "n/a" and fmt(2.0) == "2.000"


# ---- reading runs -----------------------------------------------------------------------


def test_not_a_run_is_a_report_error(tmp_path):
    with pytest.raises(cs.ReportError, match="no such folder"):
        render_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(cs.ReportError, match="spec.yaml or results.parquet"):
        render_report(tmp_path / "empty")
    run = write_run(tmp_path / "nocols", grid_rows().drop(columns=["kind"]))
    with pytest.raises(cs.ReportError, match="kind"):
        render_report(run)
    bad = write_run(tmp_path / "badyaml", grid_rows())
    (bad / "spec.yaml").write_text("name: [unclosed")
    with pytest.raises(cs.ReportError, match="YAML"):
        render_report(bad)


def test_report_of_a_synthetic_run(tmp_path):
    spec = {"name": "s", "model": "ioi-circuit", "task": {"name": "ioi", "n": 8, "seed": 0},
            "circuit": None, "analyses": [{"name": "grid", "kind": "grid"}]}  # fmt: skip
    run = write_run(tmp_path / "run", grid_rows(), spec, {"seed": 0, "versions": {"torch": "x"}})
    out = render_report(run)
    assert out == run / "report"
    names = sorted(p.name for p in out.iterdir())
    assert names == [".circuitsteer-report", "figures", "report.html", "report.md", "tables"]
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["grid-bars.png", "grid-bars.svg"]
    csv = pd.read_csv(out / "tables" / "grid-variants.csv")
    assert csv["effect"].tolist() == [-2.5, -0.5] and csv["ci"].tolist() == ["bootstrap"] * 2
    md = (out / "report.md").read_text()
    assert "zero a3.h6 moves logit\\_diff most: effect -2.500 [95% CI -3.000, -2.000; bootstrap]" in md.replace("\\[", "[").replace("\\]", "]")  # fmt: skip
    assert "versions.torch" in md.replace("\\", "")  # provenance, flattened


def test_user_text_is_escaped_in_both_formats(tmp_path):
    spec = {"name": EVIL, "model": "ioi-circuit", "task": {"name": "ioi", "n": 8, "prompt": EVIL},
            "circuit": None, "analyses": [{"name": f"grid {XSS} | *", "kind": "grid", "note": EVIL}],
            "report": {"title": f"Title {XSS} *x* | y"}}  # fmt: skip
    rows = grid_rows(label=EVIL).assign(analysis=f"grid {XSS} | *")
    out = render_report(write_run(tmp_path / "run", rows, spec))
    html = (out / "report.html").read_text()
    assert XSS not in html and "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    md = (out / "report.md").read_text()
    # outside fenced code blocks (the spec's YAML) no raw HTML and no unescaped | or * from user text
    prose = re.sub(r"^(`{3,})yaml\n.*?^\1$", "", md, flags=re.S | re.M)
    assert "<script" not in prose and "&lt;script&gt;alert(1)&lt;/script&gt;" in prose
    assert "evil &lt;script&gt;alert(1)&lt;/script&gt; \\| \\*bold\\* \\_x\\_" in prose
    assert "Title &lt;script&gt;alert(1)&lt;/script&gt; \\*x\\* \\| y" in prose
    # a table row with the label keeps its column count (the | is escaped)
    lines = prose.splitlines()
    row = next(line for line in lines if line.startswith("| evil"))
    header = next(line for line in lines if line.startswith("| variant |"))
    bars = re.compile(r"(?<!\\)\|")
    assert len(bars.findall(row)) == len(bars.findall(header))
    # the fenced spec holds the text verbatim, inside a fence it cannot close
    fence = re.search(r"^(`{3,})yaml\n(.*?)^\1$", md, flags=re.S | re.M)
    assert fence and XSS in fence.group(2)


def test_unknown_kinds_and_unreadable_rows_fall_back_to_a_table(tmp_path):
    rows = pd.concat([
        grid_rows().assign(analysis="mystery", kind="brand_new_kind"),
        pd.DataFrame({"analysis": ["sweep"], "kind": ["coefficient_sweep"], "node": ["x"],
                      "metric": ["kl"], "value": [1.0]}),
    ], ignore_index=True)  # fmt: skip
    spec = {"name": "s", "model": "nope", "analyses": [{"name": "mystery", "kind": "brand_new_kind"},
            {"name": "sweep", "kind": "coefficient_sweep"}, {"name": "absent", "kind": "grid"}]}  # fmt: skip
    out = render_report(write_run(tmp_path / "run", rows, spec))
    md = (out / "report.md").read_text()
    assert "No dedicated section for kind 'brand\\_new\\_kind'" in md
    assert "could not be built from these rows" in md  # sweep without level/coef columns
    assert "No rows: the analysis did not run" in md
    assert (out / "tables" / "mystery-rows.csv").is_file()


def test_failure_leaves_no_half_report_and_keeps_the_old_one(tmp_path, monkeypatch):
    run = write_run(tmp_path / "run", grid_rows(), {"name": "s", "analyses": [{"name": "grid", "kind": "grid"}]})  # fmt: skip
    out = render_report(run)
    before = (out / "report.html").read_text()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(render, "_environments", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        render_report(run)
    assert (out / "report.html").read_text() == before
    assert sorted(p.name for p in run.iterdir()) == ["report", "results.parquet", "spec.yaml"]
    with pytest.raises(RuntimeError):
        render_report(run, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_never_overwrites_a_folder_that_is_not_a_report(tmp_path):
    run = write_run(tmp_path / "run", grid_rows(), {"name": "s", "analyses": []})
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(cs.ReportError, match="not a circuitsteer report"):
        render_report(run, precious)
    assert (precious / "thesis.tex").read_text() == "years of work"
    out = render_report(run, tmp_path / "elsewhere")
    assert (out / "report.md").is_file() and render_report(run, out) == out


def test_templates_ship_as_package_data():
    root = Path(cs.__file__).parent
    conf = tomllib.loads((root.parent / "pyproject.toml").read_text())
    patterns = conf["tool"]["setuptools"]["package-data"]["circuitsteer"]
    templates = sorted((root / "report" / "templates").iterdir())
    assert {t.name for t in templates} >= {"report.html.j2", "report.md.j2"}
    for t in templates:
        rel = t.relative_to(root).as_posix()
        assert any(fnmatch(rel, p) for p in patterns), f"{rel} is not package data"


def test_repeated_rows_are_pooled_with_a_t_interval(tmp_path):
    # two seeds of the same grid: the table shows the mean over the seeds and a t-interval
    a = grid_rows().assign(seed=0)
    b = grid_rows().assign(seed=1, effect=[-0.7, -2.3], value=[3.3, 1.7])
    spec = {"name": "s", "analyses": [{"name": "grid", "kind": "grid"}]}
    out = render_report(write_run(tmp_path / "run", pd.concat([a, b]), spec))
    t = pd.read_csv(out / "tables" / "grid-variants.csv").set_index("variant")
    assert t.loc["zero a1.h3", "effect"] == pytest.approx(-0.6)
    assert t.loc["zero a1.h3", "value"] == pytest.approx(3.4)
    assert t.loc["zero a1.h3", "ci"] == "t" and t.loc["zero a1.h3", "rows"] == 2
    half = 12.706 * 0.1 * 2**0.5 / 2**0.5  # t(0.975, 1) * sd / sqrt(2), sd = 0.1 * sqrt(2)
    assert t.loc["zero a1.h3", "effect_hi"] - t.loc["zero a1.h3", "effect"] == pytest.approx(half, rel=1e-3)  # fmt: skip


def test_compare_headline_is_the_correlation_over_nodes():
    """The compare section's first headline: Pearson r over nodes of each addition's effect
    against the ablation's, the best mean-difference addition beside its random control."""
    import numpy as np
    import pandas as pd

    from circuitsteer.report.sections.effects import _tracking

    abl = np.array([-2.0, -1.0, 0.5, 1.5, -0.3])
    md = 0.5 * abl + np.array([0.1, -0.2, 0.05, 0.0, 0.3])
    rnd = np.array([0.2, -0.1, 0.3, -0.4, 0.0])
    pts = pd.DataFrame({
        "node": [f"a{i}.h0" for i in range(5)] * 2,
        "ablation": np.concatenate([abl, abl]),
        "effect": np.concatenate([md, rnd]),
        "addition": ["mean_diff c=4"] * 5 + ["random c=4"] * 5,
    })  # fmt: skip
    h = _tracking(pts, "resample")
    assert h is not None
    r_md, r_rnd = np.corrcoef(abl, md)[0, 1], np.corrcoef(abl, rnd)[0, 1]
    assert f"r = {r_md:.3f}" in h.text and f"random c=4: r = {r_rnd:.3f}" in h.text
    assert h.text.startswith("Across 5 nodes, the effects of adding mean_diff c=4")
    assert _tracking(pts.iloc[:2], "resample") is None  # fewer than 3 nodes: no r
