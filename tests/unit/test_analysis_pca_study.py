"""pca_study: the directions are circuitsteer.vectors' PCA components and matched controls, every
row equals a separate run of its Add, and the promoted tokens are the largest mean logit gains."""

from __future__ import annotations

import pytest
from analysis_models import strong_gpt2

import circuitsteer as cs
from circuitsteer.analysis import AnalysisError, pca_study
from circuitsteer.metrics import end_logits, logit_diff


@pytest.fixture(scope="module")
def study():
    model = strong_gpt2(seed=2)
    task = cs.tasks.ioi(model, n=10, seed=6)
    df = pca_study(model, task, "resid_pre.2", k=2, coefs=[1.0, 3.0], positions="END",
                   top_tokens=3, seed=4, progress=False)  # fmt: skip
    return model, task, df


def test_rows_and_controls(study):
    model, task, df = study
    ld = df[df.metric == "logit_diff"]
    assert len(ld) == 2 * 3 * 4 and set(df.metric) == {"logit_diff", "kl"}
    assert sorted(set(ld.coef)) == [-3.0, -1.0, 1.0, 3.0]
    for i in range(2):
        norms = ld[(ld.component == i) & (ld.coef == 3.0)].set_index("vector").vector_norm
        assert norms["random"] == pytest.approx(norms[f"pc{i}"], rel=1e-5)
        assert norms["covariance"] == pytest.approx(norms[f"pc{i}"], rel=1e-5)
    p = cs.vectors.pca(model, "resid_pre.2", task, n_components=2, progress=False)
    ratio = ld[ld.vector == "pc1"].explained_variance_ratio.iloc[0]
    assert ratio == pytest.approx(float(p.explained_variance_ratio[1]))


def test_values_and_top_tokens_equal_separate_runs(study):
    model, task, df = study
    p = cs.vectors.pca(model, "resid_pre.2", task, n_components=2, progress=False)
    v = p.vector(0, scale="std")
    clean, _ = cs.engine.run(model, task)
    for c in (-3.0, 1.0):
        lg, _ = cs.engine.run(model, task, [v.intervention(coef=c, positions="END", model=model)])
        row = df[(df.vector == "pc0") & (df.coef == c) & (df.metric == "logit_diff")].iloc[0]
        assert row.value == pytest.approx(float(logit_diff(lg, task).double().mean()), abs=1e-5)
        delta = (end_logits(lg, task) - end_logits(clean, task)).mean(0)
        ids = delta.topk(3).indices.tolist()
        names = [t.strip() or repr(t) for t in model.to_str_tokens(ids)]
        assert [t.split("|")[0] for t in row.top_tokens.split(" ")] == names
        assert float(row.top_tokens.split(" ")[0].split("|")[1]) == pytest.approx(float(delta.max()), rel=1e-2)  # fmt: skip
    rnd = cs.vectors.random_like(v, seed=4)
    lg, _ = cs.engine.run(model, task, [rnd.intervention(coef=3.0, positions="END", model=model)])
    row = df[(df.vector == "random") & (df.component == 0) & (df.coef == 3.0) & (df.metric == "logit_diff")]  # fmt: skip
    assert row.value.item() == pytest.approx(float(logit_diff(lg, task).double().mean()), abs=1e-5)


def test_errors(study):
    model, task, _ = study
    with pytest.raises(AnalysisError, match="scale"):
        pca_study(model, task, "resid_pre.1", scale="big")
    with pytest.raises(AnalysisError, match="controls"):
        pca_study(model, task, "resid_pre.1", controls=["shuffled"])
