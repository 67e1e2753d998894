"""Steering vectors on the bundled zoo models (issue 11's demonstration; docs/vectors.md quotes
these numbers).

A sentiment mean-difference vector (positive minus negative contrast prompts of
``cs.tasks.sentiment``) added at every position of neutral prompts (``cs.tasks.neutral``) raises
the probability of the positive adjectives at the prompts' last position by a clear margin; a
random vector of the same norm (isotropic, or drawn from the activations' own covariance) moves
it far less, and the negated vector raises the negative adjectives instead. Per-head probes
(ITI) read sentiment above chance, and at chance when the labels are shuffled.

Print the tables of docs/vectors.md with:
    OMP_NUM_THREADS=1 .venv/bin/python tests/integration/test_vectors_demo.py
"""

from __future__ import annotations

from functools import cache

import pandas as pd
import pytest
import torch

import circuitsteer as cs

V = cs.vectors
SEEDS = range(5)
# (model, site, positions the vector is taken at, coefficient): the settings docs/vectors.md reports
DEMOS = [("toy-ioi", "resid_pre.2", "END", 4.0), ("ioi-circuit", "resid_pre.1", "SENT", 4.0)]


@cache
def _model(name: str):
    return cs.load_model(name)


@cache
def demo(name: str, site: str, positions: str, coef: float, n: int = 200) -> pd.DataFrame:
    """One row per intervention on 100 neutral prompts: p(positive adjectives) and
    p(negative adjectives) at END (each summed over the task's 8 adjectives, mean over prompts)
    and the neutral text's next-token loss."""
    model = _model(name)
    task = cs.tasks.sentiment(model, n=n, seed=0)  # clean: positive, corrupted: negative
    neutral = cs.tasks.neutral(model, n=100, seed=1)
    positive = task.candidates[task.correct_mask[0]]
    negative = task.candidates[~task.correct_mask[0]]
    rows = []

    def measure(label: str, ivs: list, norm: float = 0.0) -> dict:
        logits, _ = cs.engine.run(model, neutral, ivs)
        p = logits[torch.arange(len(neutral)), neutral.positions["END"]].softmax(-1)
        row = {
            "model": name,
            "intervention": label,
            "site": site,
            "coef": coef,
            "norm": norm,
            "p_positive": float(p[:, positive].sum(-1).mean()),
            "p_negative": float(p[:, negative].sum(-1).mean()),
            "neutral_loss": float(cs.metrics.loss(logits, neutral.clean, neutral.lengths).mean()),
        }
        rows.append(row)
        return row

    v = V.mean_difference(model, site, task, positions=positions)
    moments = V.activation_moments(model, site, neutral)
    measure("none", [])
    measure("mean_difference", [v.intervention(coef, model=model)], v.norm)
    measure("-mean_difference", [v.intervention(-coef, model=model)], v.norm)
    for s in SEEDS:
        r = V.random_like(v, seed=s)
        measure(f"random_like seed {s}", [r.intervention(coef, model=model)], r.norm)
    for s in SEEDS:
        r = V.random_from_covariance(moments, like=v, seed=s)
        measure(f"random_from_covariance seed {s}", [r.intervention(coef, model=model)], r.norm)
    probes = V.probe_heads(model, task, positions=positions, seed=0)
    iti = probes.interventions(k=8, alpha=5.0)  # norm: of all 8 added z-vectors together
    measure("ITI top-8 heads, alpha 5", iti, 5.0 * sum(iv.vector.norm() ** 2 for iv in iti) ** 0.5)
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Random controls as mean and max over seeds."""
    kind = df.intervention.str.replace(r" seed \d+", "", regex=True)
    g = df.assign(intervention=kind).groupby("intervention", sort=False)
    out = g[["norm", "p_positive"]].mean()
    out["p_positive_max"] = g.p_positive.max()
    out[["p_negative", "neutral_loss"]] = g[["p_negative", "neutral_loss"]].mean()
    return out.reset_index()


@pytest.mark.parametrize(("name", "site", "positions", "coef"), DEMOS)
def test_sentiment_vector_beats_a_matched_random_vector(name, site, positions, coef):
    df = demo(name, site, positions, coef).set_index("intervention")
    base = df.loc["none", "p_positive"]
    gain = df.loc["mean_difference", "p_positive"] - base
    rand = df[df.index.str.startswith("random_like")]
    cov = df[df.index.str.startswith("random_from_covariance")]
    assert rand.norm.to_numpy() == pytest.approx(df.loc["mean_difference", "norm"], rel=1e-5)
    assert cov.norm.to_numpy() == pytest.approx(df.loc["mean_difference", "norm"], rel=1e-5)
    assert base < 1e-3 and gain > 0.1, df  # a clear margin, from (almost) nothing
    assert gain > 10 * (rand.p_positive.max() - base), df
    assert gain > 10 * (cov.p_positive.max() - base), df
    # the vector steers sentiment, not just "adjectives": negative words stay where they were
    assert df.loc["mean_difference", "p_negative"] < 0.02


def test_negated_vector_steers_the_other_way():
    name, site, positions, coef = DEMOS[0]
    df = demo(name, site, positions, coef).set_index("intervention")
    assert df.loc["-mean_difference", "p_negative"] > 0.2
    assert df.loc["-mean_difference", "p_positive"] < 0.01


@pytest.mark.parametrize("name", ["toy-ioi", "ioi-circuit"])
def test_head_probes_read_sentiment_above_chance_and_shuffled_labels_at_chance(name):
    model = _model(name)
    task = cs.tasks.sentiment(model, n=200, seed=0)
    probes = V.probe_heads(model, task, positions="END", seed=0)
    t = probes.table
    assert (t.n_val == 120).all()  # 60 held-out contrast pairs, both sides
    assert t.val_accuracy.max() == 1.0 and (t.val_accuracy >= 0.95).sum() >= 4, t
    shuffled = V.probe_heads(model, task, positions="END", seed=0, shuffle_labels=True).table
    assert abs(shuffled.val_accuracy.mean() - 0.5) < 0.05, shuffled
    assert shuffled.val_accuracy.max() < 0.7, shuffled
    # ITI in one call: alpha * sigma * direction at the top heads
    ivs = probes.interventions(k=4, alpha=3.0)
    assert [iv.site.node for iv in ivs] == probes.top(4)
    assert all(iv.coef == 3.0 and iv.space == "z" for iv in ivs)


def sweep(name: str, site: str, positions: str, coefs=(1.0, 2.0, 4.0, 8.0)) -> pd.DataFrame:
    """p(positive) for the mean difference and the isotropic random control (mean and max over
    seeds) against the coefficient, with ||coef * v|| / mean ||x|| at the site on the neutral
    prompts (how much of the residual the addition is)."""
    model = _model(name)
    task = cs.tasks.sentiment(model, n=200, seed=0)
    neutral = cs.tasks.neutral(model, n=100, seed=1)
    positive = task.candidates[task.correct_mask[0]]
    x_norm = float(V.activations(model, neutral, site).norm(dim=-1).mean())
    v = V.mean_difference(model, site, task, positions=positions)

    def p_pos(vec, c):
        logits, _ = cs.engine.run(model, neutral, [vec.intervention(c)])
        p = logits[torch.arange(len(neutral)), neutral.positions["END"]].softmax(-1)
        return float(p[:, positive].sum(-1).mean())

    rows = []
    for c in coefs:
        rand = [p_pos(V.random_like(v, seed=s), c) for s in SEEDS]
        rows.append({
            "coef": c, "norm_ratio": c * v.norm / x_norm, "p_positive": p_pos(v, c),
            "random_mean": sum(rand) / len(rand), "random_max": max(rand),
        })  # fmt: skip
    return pd.DataFrame(rows)


def markdown(df: pd.DataFrame) -> str:
    """A Markdown table (pandas' to_markdown needs tabulate, which is not a dependency)."""
    cells = [[f"{x:.3g}" if isinstance(x, float) else str(x) for x in r] for r in df.itertuples(index=False)]  # fmt: skip
    head = "| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns)
    return "\n".join([head, *("| " + " | ".join(c) + " |" for c in cells)])


if __name__ == "__main__":
    for d in DEMOS:
        print(f"\n{d[0]}: mean difference at {d[1]} (taken at {d[2]}), coef {d[3]}\n")
        print(markdown(summary(demo(*d))))
        print(f"\ncoefficient sweep, {d[0]} at {d[1]}\n")
        print(markdown(sweep(*d[:3])))
