"""The report of a real run (the example run: every analysis kind on the zoo model
ioi-circuit, written by calling the analysis functions): files, self-containedness, and
numbers that match results.parquet in the CSVs, the Markdown and the HTML tables and the
summary."""

from __future__ import annotations

import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from circuitsteer.report._example import cached_example
from circuitsteer.report.stats import fmt


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    return cached_example(tmp_path_factory.getbasetemp() / "report-example")


@pytest.fixture(scope="module")
def results(example) -> pd.DataFrame:
    return pd.read_parquet(example / "results.parquet")


def rows(results: pd.DataFrame, analysis: str) -> pd.DataFrame:
    return results[results["analysis"] == analysis]


def csv(example: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(example / "report" / "tables" / f"{name}.csv")


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) or (math.isnan(a) and math.isnan(b))


# ---- files ----------------------------------------------------------------------------------


def test_every_figure_as_png_and_svg_every_table_as_csv(example):
    out = example / "report"
    pngs = {p.stem for p in (out / "figures").glob("*.png")}
    svgs = {p.stem for p in (out / "figures").glob("*.svg")}
    assert pngs == svgs and len(pngs) >= 15
    for p in (out / "figures").glob("*.svg"):
        assert p.read_text()[:200].lstrip().startswith("<?xml")
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    for stem in pngs:
        assert f"figures/{stem}.png" in md and f"figures/{stem}.svg" in html
    assert html.count('<img src="data:image/png;base64,') == len(pngs)
    tables = {p.stem for p in (out / "tables").glob("*.csv")}
    assert len(tables) >= 15
    for t in tables:
        assert f"tables/{t}.csv" in md and f'data-csv="tables/{t}.csv"' in html


def test_html_is_self_contained(example):
    html = (example / "report" / "report.html").read_text()
    assert "<script" not in html and "<link" not in html and "@import" not in html
    for url in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert url.startswith(("data:image/png;base64,", "#")), url
    assert "default-src 'none'" in html  # the CSP forbids anything the page might try to load


def test_a_section_per_analysis_with_headlines(example, results):
    md = (example / "report" / "report.md").read_text()
    for name in results["analysis"].unique():
        assert re.search(rf"^## {re.escape(name)} \(", md, flags=re.M), name
    assert md.count("**Headline numbers**") == results["analysis"].nunique()
    for heading in ("## Summary", "## Model and circuit", "## Spec", "## Provenance and method",
                    "### How the intervals are computed", "### Run metadata"):  # fmt: skip
        assert heading in md
    assert "model.hash" in md and "versions.torch" in md  # meta.json, flattened


# ---- numbers: CSV tables against the Parquet aggregates -------------------------------------


def test_head_table_matches_parquet(example, results):
    t = csv(example, "heads-heads")
    r = rows(results, "heads")
    assert len(t) == r["node"].nunique() == 32
    agg = r.groupby(["node", "mode", "metric"])[
        ["effect", "effect_lo", "effect_hi", "value"]
    ].mean()
    for rec in t.to_dict("records"):
        want = agg.loc[(rec["node"], rec["mode"], rec["metric"])]
        for col in ("effect", "effect_lo", "effect_hi", "value"):
            assert close(rec[col], want[col]), (rec["node"], col)
    assert t["effect"].abs().is_monotonic_decreasing


def test_comparison_table_matches_parquet(example, results):
    wide = csv(example, "ablation-vs-addition-effects")
    r = rows(results, "ablation-vs-addition")
    for rec in wide.to_dict("records"):
        sub = r[(r["node"] == rec["node"]) & (r["metric"] == rec["metric"])]
        for mode in ("zero", "mean", "resample"):
            want = sub[(sub["operation"] == "ablate") & (sub["mode"] == mode)]["effect"].mean()
            assert close(rec[mode], want)
        for vec in ("mean_diff", "random"):
            for c in (1, 4):
                want = sub[(sub["vector"] == vec) & (sub["coef"] == c)]["effect"].mean()
                assert close(rec[f"{vec} c={c}"], want)


def test_sweep_table_and_break_point_match_parquet(example, results):
    import circuitsteer as cs

    for vec in ("mean_diff", "random"):
        t = csv(example, f"sweep-{vec.replace('_', '-')}-coefs")
        r = rows(results, "sweep")
        r = r[(r["vector"] == vec) & (r["level"] == "coef")]
        for rec in t.to_dict("records"):
            for data, metric in (("task", "logit_diff"), ("neutral", "kl"), ("neutral", "loss")):
                want = r[(r["data"] == data) & (r["metric"] == metric) & (r["coef"] == rec["coef"])]
                assert close(rec[f"{data} {metric}"], want["value"].mean())
    sweep = rows(results, "sweep")
    bp = cs.analysis.break_point(sweep[sweep["vector"] == "mean_diff"], kl_threshold=1.0)
    c = float(bp[bp["side"] == 1.0]["coef"].iloc[0])
    t = csv(example, "sweep-mean-diff-coefs")
    assert t.loc[t["coef"] >= c, "broken"].all() and not t.loc[(t["coef"] < c) & (t["coef"] >= 0), "broken"].any()  # fmt: skip
    md = (example / "report" / "report.md").read_text()
    assert (
        f"\\[mean\\_diff\\] Adding the vector at resid\\_pre.2 breaks the model at c = {c:g}" in md
    )


def test_faithfulness_and_curve_match_parquet(example, results):
    t = csv(example, "faithfulness-ratios")
    r = rows(results, "faithfulness")
    ratios = r[r["operation"] == "faithfulness"].set_index("mode")
    assert sorted(t["mode"]) == ["mean", "resample", "zero"]
    for rec in t.to_dict("records"):
        for col in ("value", "value_lo", "value_hi", "normalized", "circuit_value"):
            assert close(rec[col], ratios.loc[rec["mode"], col])
        assert rec["ci"] == "bootstrap"
    areas = csv(example, "faithfulness-areas")
    curve = r[r["operation"] == "faithfulness_curve"]
    assert close(areas["cpr"].iloc[0], curve[curve["metric"] == "cpr"]["value"].iloc[0])
    assert close(areas["cmd"].iloc[0], curve[curve["metric"] == "cmd"]["value"].iloc[0])
    pts = csv(example, "faithfulness-curve")
    want = curve[curve["metric"] == "faithfulness"].sort_values("fraction")["value"].to_numpy()
    assert all(close(a, b) for a, b in zip(pts.sort_values("fraction")["value"], want, strict=True))


def test_other_tables_match_parquet(example, results):
    pca = csv(example, "pca-effects")
    r = rows(results, "pca")
    pc0 = pca.set_index("direction").loc["pc0"]
    for c in (-8, -2, 2, 8):
        want = r[(r["vector"] == "pc0") & (r["coef"] == c) & (r["metric"] == "logit_diff")]
        assert close(pc0[f"c={c}"], want["effect"].mean())
    var = csv(example, "pca-variance")
    assert close(var["explained_variance_ratio"].iloc[0],
                 r[r["component"] == 0]["explained_variance_ratio"].mean())  # fmt: skip
    edges = csv(example, "eap-edges")
    e = rows(results, "eap").set_index("node")["value"]
    assert len(edges) == len(e) == 1519
    assert all(close(s, e[name]) for name, s in zip(edges["edge"], edges["score"], strict=True))
    assert edges["score"].abs().is_monotonic_decreasing
    grid = csv(example, "grid-variants").set_index("variant")
    g = rows(results, "grid").set_index("variant")
    for v in g.index:
        assert close(grid.loc[v, "effect"], g.loc[v, "effect"])
    dla = csv(example, "induction-head-effects-dla_delta").set_index("node")
    d = rows(results, "induction-head-effects")
    d = d[(d["metric"] == "dla_delta")].set_index(["node", "part"])["value"]
    for node in dla.index:
        for part in ("total", "through_circuit", "rest"):
            assert close(dla.loc[node, part], d.loc[(node, part)])


# ---- numbers: what the reader sees (Markdown and HTML tables, summary) ---------------------


def _md_tables(md: str) -> dict[str, list[list[str]]]:
    """Tables of report.md that name their CSV, as rows of cell texts (header first)."""
    lines, out, i = md.splitlines(), {}, 0
    split = re.compile(r"(?<!\\)\|")
    while i < len(lines) - 1:
        if lines[i].startswith("| ") and lines[i + 1].startswith("|---"):
            block = [lines[i]] + [x for x in lines[i + 2 :] if True]
            body = []
            for x in block:
                if not x.startswith("|"):
                    break
                body.append([c.strip() for c in split.split(x)[1:-1]])
            rest = [x for x in lines[i + 2 + len(body) - 1 :] if x.strip()]
            m = re.search(r"tables/([\w.-]+)\.csv", rest[0]) if rest else None
            if m:
                out[m.group(1)] = body
            i += len(body) + 1
        else:
            i += 1
    return out


class _HTMLTables(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[str]]] = {}
        self.current: str | None = None
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "data-csv" in a:
            self.current = Path(a["data-csv"] or "").stem
            self.tables[self.current] = []
        elif self.current and tag == "tr":
            self.tables[self.current].append([])
        elif self.current and tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if tag == "table":
            self.current = None
        elif self.current and tag in ("td", "th") and self.cell is not None:
            self.tables[self.current][-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def _unescape_md(s: str) -> str:
    s = re.sub(r"\\(.)", r"\1", s)
    return s.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _same(shown: str, value) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return shown == ""
    if isinstance(value, (bool, str)):
        return shown == str(value)
    if isinstance(value, int):
        return shown == str(value)
    x = float(shown)
    return abs(x - value) <= max(5e-4, 5e-4 * abs(value)) and shown == fmt(value)


@pytest.mark.parametrize("fmt_name", ["md", "html"])
def test_shown_tables_are_the_csv_numbers(example, fmt_name):
    out = example / "report"
    if fmt_name == "md":
        tables = {k: [[_unescape_md(c) for c in r] for r in v]
                  for k, v in _md_tables((out / "report.md").read_text()).items()}  # fmt: skip
    else:
        p = _HTMLTables()
        p.feed((out / "report.html").read_text())
        tables = p.tables
    csvs = {p.stem for p in (out / "tables").glob("*.csv")}
    assert set(tables) == csvs
    checked = 0
    for name, shown in tables.items():
        data = pd.read_csv(out / "tables" / f"{name}.csv", keep_default_na=True)
        header, body = shown[0], shown[1:]
        assert header == [str(c) for c in data.columns], name
        assert 0 < len(body) <= len(data)
        for r, rec in zip(body, data.head(len(body)).itertuples(index=False), strict=True):
            for cell, value in zip(r, rec, strict=True):
                v = value.item() if hasattr(value, "item") else value
                assert _same(cell, v), (name, cell, v)
                checked += 1
    assert checked > 500


def test_summary_is_written_from_the_numbers(example, results):
    md = (example / "report" / "report.md").read_text()
    summary = md.split("## Summary")[1].split("## Contents")[0]
    heads = rows(results, "heads")
    top = heads.loc[heads["effect"].abs().idxmax()]
    want = (f"Ablating {top['node']} (resample) changes logit\\_diff by {fmt(top['effect'])} "
            f"\\[95% CI {fmt(top['effect_lo'])}, {fmt(top['effect_hi'])}; bootstrap, n = 24\\]")  # fmt: skip
    assert want in summary
    f = rows(results, "faithfulness")
    zero = f[(f["operation"] == "faithfulness") & (f["mode"] == "zero")].iloc[0]
    assert (
        f"node zero: {fmt(zero['value'])} \\[{fmt(zero['value_lo'])}, {fmt(zero['value_hi'])}\\]"
        in summary
    )
    assert summary.count("\n- ") == 1 + results["analysis"].nunique()


# ---- the command ----------------------------------------------------------------------------


def test_cli_report_prints_where_the_report_is(example, tmp_path):
    from circuitsteer.cli import app

    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["report", str(example), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert str(out / "report.html") in res.output.replace("\n", "")
    assert (out / "report.md").is_file()
    bad = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert bad.exit_code == 2 and "not a run directory" in " ".join(bad.output.split())
