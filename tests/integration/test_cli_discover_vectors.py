"""`circuitsteer discover` and `circuitsteer vectors extract` through typer's test runner: the
files they write hold what the library computes, and bad input exits 2 before any work."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import circuitsteer as cs
from circuitsteer.cli import app


@pytest.fixture(scope="module")
def toy():
    return cs.load_model("toy-ioi")


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_discover_eap_writes_the_librarys_circuit_and_scores(tmp_path, toy):
    out, scores = tmp_path / "eap.json", tmp_path / "eap.csv"
    res = invoke("discover", "--model", "toy-ioi", "--method", "eap", "--n", "16", "--edges",
                 "40", "--out", str(out), "--scores", str(scores), "--quiet")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "edges kept" in res.output and f"wrote {out}" in res.output.replace("\n", "")
    task = cs.tasks.ioi(toy, n=16, seed=0)
    want_scores = cs.discovery.eap(toy, task, metric="kl")
    want = cs.discovery.greedy(want_scores, 40)
    got = cs.load_circuit(out)
    assert got.edge_keys() == want.edge_keys() and 0 < len(got.edge_keys()) <= 40
    frame = pd.read_csv(scores)
    assert len(frame) == len(want_scores.frame)
    assert (frame["score"].to_numpy() - want_scores.frame["score"].to_numpy()).max() < 1e-9


def test_discover_acdc_keeps_what_the_library_keeps(tmp_path, toy):
    out = tmp_path / "acdc.json"
    res = invoke("discover", "--model", "toy-ioi", "--n", "8", "--tau", "0.05", "--out",
                 str(out), "--quiet")  # fmt: skip
    assert res.exit_code == 0, res.output
    task = cs.tasks.ioi(toy, n=8, seed=0)
    want = cs.discovery.kept(cs.discovery.acdc(toy, task, threshold=0.05, progress=False))
    assert cs.load_circuit(out).edge_keys() == want.edge_keys()


def test_vectors_extract_saves_the_mean_difference(tmp_path, toy):
    stem = tmp_path / "v"
    res = invoke("vectors", "extract", "resid_pre.2", "--model", "toy-ioi", "--n", "24",
                 "--out", str(stem), "--quiet")  # fmt: skip
    assert res.exit_code == 0, res.output
    got = cs.vectors.SteeringVector.load(stem)
    task = cs.tasks.ioi(toy, n=24, seed=0)
    want = cs.vectors.mean_difference(toy, "resid_pre.2", task, positions="END", progress=False)
    assert torch.equal(got.vector, want.vector) and got.site == want.site
    res = invoke("vectors", "extract", "resid_pre.2", "--model", "toy-ioi", "--n", "24",
                 "--recipe", "random-like", "--out", str(tmp_path / "r"), "--quiet")  # fmt: skip
    assert res.exit_code == 0, res.output
    control = cs.vectors.SteeringVector.load(tmp_path / "r")
    assert abs(control.norm - want.norm) < 1e-4 and not torch.allclose(control.vector, want.vector)


def test_bad_input_exits_2_with_a_fix_and_writes_nothing(tmp_path):
    cases = [
        ("discover", "--model", "toy-ioi", "--scores", str(tmp_path / "no" / "s.csv")),
        ("discover", "--model", "toy-ioi", "--scores", str(tmp_path / "s.txt")),
        ("discover", "--model", "no-such-model", "--n", "4"),
        ("vectors", "extract", "resid_pre.1", "--recipe", "contrast", "-o", str(tmp_path / "c")),
        ("vectors", "extract", "resid_pre.99", "--model", "toy-ioi", "-o", str(tmp_path / "v")),
    ]
    for args in cases:
        res = invoke(*args)
        assert res.exit_code == 2, (args, res.output)
        assert "error:" in res.output and "fix:" in res.output and "Traceback" not in res.output
    assert list(tmp_path.iterdir()) == []


def test_help_shows_an_example():
    for cmd in (["discover"], ["vectors", "extract"]):
        res = invoke(*cmd, "--help")
        assert res.exit_code == 0 and "Example" in res.output, (cmd, res.output)


def test_discover_from_a_spec_runs_only_its_discovery_entries(tmp_path, monkeypatch):
    spec = tmp_path / "d.yaml"
    spec.write_text(
        "name: d\nmodel: toy-ioi\ntask: {name: ioi, n: 8}\nanalyses:\n"
        "  - {name: eap, kind: discovery, method: eap}\n"
        "  - {name: heads, kind: head_ablation}\n"
    )
    monkeypatch.chdir(tmp_path)  # runs/ goes under the test's folder
    res = invoke("discover", "--spec", str(spec), "--quiet")
    assert res.exit_code == 0, res.output
    (run,) = (tmp_path / "runs").iterdir()
    rows = pd.read_parquet(run / "results.parquet")
    n_edges = len(cs.full_edge_graph(cs.load_model("toy-ioi").shape).edge_keys())
    assert set(rows["analysis"]) == {"eap"} and len(rows) == n_edges
    spec.write_text("name: d\nmodel: toy-ioi\nanalyses:\n  - {name: heads, kind: head_ablation}\n")
    res = invoke("discover", "--spec", str(spec), "--quiet")
    assert res.exit_code == 2 and "discovery" in res.output, res.output
