import io

from train.evaluate import Scores, compare, print_table


def _scores(hits):
    s = Scores()
    for h in hits:
        s.add([7] if h else [8], 7, False, 0, 1)
    return s


def test_synthetic_table_gives_the_paired_interval_against_the_best_baseline():
    n = 400
    pop = _scores([i % 10 == 0 for i in range(n)])  # 10%
    cooc = _scores([i % 5 == 0 for i in range(n)])  # 20%: the best baseline
    same = _scores([i % 5 == 0 for i in range(n)])  # the same hits as cooc
    better = _scores([i % 5 == 0 or i % 5 == 1 for i in range(n)])  # 40%
    systems = {"popularity": ("baseline", None), "cooccurrence": ("baseline", None),
               "cascade-a": (object(), True), "cascade-b": (object(), True)}
    out = compare({"popularity": pop, "cooccurrence": cooc, "cascade-a": same,
                   "cascade-b": better}, systems)
    assert set(out) == {"cascade-a", "cascade-b"}
    a, b = out["cascade-a"]["recall@10"], out["cascade-b"]["recall@10"]
    assert a["baseline"] == b["baseline"] == "cooccurrence"
    assert a["diff"] == 0.0 and a["ci95"][0] <= 0 <= a["ci95"][1]
    assert abs(b["diff"] - 0.2) < 1e-12 and b["ci95"][0] > 0.1
    assert out["cascade-b"]["ndcg@10"]["ci95"][0] > 0
    result = {"systems": {k: dict(v.summary(), vs_best_baseline=out.get(k))
                          for k, v in (("cascade-b", better),)}}
    f = io.StringIO()
    print_table(result, f)
    assert "| cascade-b | recall@10 | cooccurrence | 0.4000 | 0.2000 | +0.2000 [" in f.getvalue()
