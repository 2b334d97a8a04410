"""Paired bootstrap confidence intervals of the difference between two systems evaluated on the
same users (train.beauty_eval's and train.evaluate's tables).

Per metric, every user has a value for each system (Recall@K: 1 if the target is in the top K;
NDCG@K: 1 / log2(rank + 2) for a hit at 0-based rank); the users are resampled with replacement
(the same resample for both systems: paired) `resamples` times with a fixed seed, and the 2.5th and
97.5th percentiles of the resampled mean differences are the 95% interval (percentile bootstrap).
"""
import numpy as np

RESAMPLES, SEED = 1000, 0


def per_user(ranks, metric):
    """Per-user values of "recall@K" or "ndcg@K" from 0-based ranks (a miss: any rank >= K)."""
    name, k = metric.split("@")
    k = int(k)
    r = np.asarray(ranks, dtype=np.float64)
    if name == "recall":
        return (r < k).astype(np.float64)
    if name == "ndcg":
        return np.where(r < k, 1.0 / np.log2(np.minimum(r, k) + 2), 0.0)
    raise ValueError("unknown metric %r" % metric)


def paired_bootstrap(system, baseline, resamples=RESAMPLES, seed=SEED):
    """-> {"diff": mean(system - baseline), "ci95": [low, high], "resamples", "seed"}."""
    a, b = np.asarray(system, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError("paired bootstrap needs two equally long, non-empty per-user vectors "
                         "(got %s and %s)" % (a.shape, b.shape))
    d = a - b
    n = len(d)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 4_000_000 // n)  # bounded memory: chunk x n indices at a time
    for s in range(0, resamples, chunk):
        m = min(chunk, resamples - s)
        means[s:s + m] = d[rng.integers(0, n, size=(m, n))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"diff": float(d.mean()), "ci95": [float(low), float(high)], "resamples": resamples,
            "seed": seed}


def against_best(systems, baselines, metrics, resamples=RESAMPLES, seed=SEED):
    """systems, baselines: name -> {metric: per-user values}, every vector over the same users in
    the same order. Per metric the best baseline is the one with the highest mean on it (ties: the
    first name in sorted order); -> {system: {metric: {"baseline", "system", "baseline_value",
    "diff", "relative", "ci95", ...}}}."""
    out = {}
    if not baselines:
        return out
    for metric in metrics:
        best = max(sorted(baselines), key=lambda b: float(np.mean(baselines[b][metric])))
        bv = float(np.mean(baselines[best][metric]))
        for name, vals in systems.items():
            r = paired_bootstrap(vals[metric], baselines[best][metric], resamples, seed)
            r.update({"baseline": best, "baseline_value": bv,
                      "system_value": float(np.mean(vals[metric])),
                      "relative": r["diff"] / bv if bv > 0 else None})
            out.setdefault(name, {})[metric] = r
    return out


def format_rows(comparison):
    """Markdown rows: system, metric, best baseline, difference [95% interval], relative."""
    rows = ["| system | metric | best baseline | system | baseline | difference [95% interval] "
            "| relative |", "| --- | --- | --- | ---: | ---: | --- | ---: |"]
    for name, per in comparison.items():
        for metric, r in per.items():
            rel = "-" if r["relative"] is None else "%+.1f%%" % (100 * r["relative"])
            rows.append("| %s | %s | %s | %.4f | %.4f | %+.4f [%+.4f, %+.4f] | %s |" % (
                name, metric, r["baseline"], r["system_value"], r["baseline_value"], r["diff"],
                r["ci95"][0], r["ci95"][1], rel))
    return rows
