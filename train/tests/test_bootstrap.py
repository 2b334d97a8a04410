import math

import numpy as np
import pytest

from train.bootstrap import against_best, format_rows, paired_bootstrap, per_user


def test_identical_systems_give_an_interval_around_zero():
    rng = np.random.default_rng(1)
    a = (rng.random(3000) < 0.1).astype(float)
    r = paired_bootstrap(a, a.copy())
    assert r["diff"] == 0.0 and r["ci95"] == [0.0, 0.0]
    # two systems of the same quality, different users hit: the interval contains 0
    b = (rng.random(3000) < 0.1).astype(float)
    r = paired_bootstrap(a, b)
    assert r["ci95"][0] < 0 < r["ci95"][1]
    assert r["ci95"][0] <= r["diff"] <= r["ci95"][1]


def test_a_clearly_better_system_excludes_zero_and_the_width_is_the_sampling_error():
    rng = np.random.default_rng(2)
    n = 4000
    base = (rng.random(n) < 0.10).astype(float)
    better = np.maximum(base, (rng.random(n) < 0.05).astype(float))  # base's hits and more
    r = paired_bootstrap(better, base, resamples=1000, seed=0)
    assert r["ci95"][0] > 0
    d = better - base
    se = d.std() / math.sqrt(n)
    width = r["ci95"][1] - r["ci95"][0]
    assert width == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert paired_bootstrap(better, base, seed=0) == r, "a fixed seed gives the same interval"
    worse = paired_bootstrap(base, better)
    assert worse["ci95"][1] < 0


def test_per_user_metrics_and_the_best_baseline_per_metric():
    ranks = [0, 3, 9, 10, 10 ** 9]
    assert list(per_user(ranks, "recall@10")) == [1, 1, 1, 0, 0]
    assert list(per_user(ranks, "recall@5")) == [1, 1, 0, 0, 0]
    assert per_user(ranks, "ndcg@10")[1] == pytest.approx(1 / math.log2(5))
    assert per_user(ranks, "ndcg@10")[3] == 0.0
    with pytest.raises(ValueError):
        per_user(ranks, "mrr@10")
    # baseline "a" is better on recall@10, "b" on ndcg@10: each metric is compared to its best
    a = {"recall@10": np.array([1.0, 1.0, 0.0, 0.0]), "ndcg@10": np.array([0.3, 0.3, 0.0, 0.0])}
    b = {"recall@10": np.array([1.0, 0.0, 0.0, 0.0]), "ndcg@10": np.array([1.0, 0.0, 0.0, 0.0])}
    s = {"recall@10": np.array([1.0, 1.0, 1.0, 0.0]), "ndcg@10": np.array([1.0, 1.0, 0.0, 0.0])}
    out = against_best({"sys": s}, {"a": a, "b": b}, ("recall@10", "ndcg@10"), resamples=200)
    assert out["sys"]["recall@10"]["baseline"] == "a"
    assert out["sys"]["recall@10"]["diff"] == pytest.approx(0.25)
    assert out["sys"]["recall@10"]["relative"] == pytest.approx(0.5)
    assert out["sys"]["ndcg@10"]["baseline"] == "b"
    assert out["sys"]["ndcg@10"]["diff"] == pytest.approx(0.25)
    rows = format_rows(out)
    assert len(rows) == 4 and "| sys | recall@10 | a | 0.7500 | 0.5000 | +0.2500 [" in rows[2]
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap([1.0, 0.0], [1.0])
