import gzip
import math
import os

import numpy as np
import pytest

from train import beauty

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "amazon-beauty")


def write_data(d, items, rows):
    with gzip.open(os.path.join(d, "items.csv.gz"), "wt") as f:
        f.write("item_idx,asin,title,attributes\n")
        for i, (asin, title, attrs) in enumerate(items, 1):
            f.write('%d,%s,"%s",%s\n' % (i, asin, title, attrs))
    with gzip.open(os.path.join(d, "interactions.csv.gz"), "wt") as f:
        f.write("user_idx,user_id,item_idx,asin,timestamp\n")
        for u, i, ts in rows:
            f.write("%d,U%d,%d,%s,%d\n" % (u, u, i, items[i - 1][0], ts))


@pytest.fixture
def tiny(tmp_path):
    items = [("A1", "OPI Red", "OPI|Makeup|Nails|Nail Polish"),
             ("A2", "Brush &amp; Co", "Tools & Accessories|Makeup Brushes & Tools"),
             ("A3", "L&#39;Oreal Gel", "L&#39;Oreal Paris|Hair Care|Styling Products"),
             ("A4", "Plain", "Unknown|Skin Care|Face")]
    rows = [(1, 1, 10), (1, 2, 10), (1, 3, 20), (1, 4, 30),
            (2, 2, 5), (2, 1, 6), (2, 3, 7)]
    write_data(str(tmp_path), items, rows)
    return str(tmp_path)


def test_load_parses_brands_categories_and_entities(tiny):
    items, seqs = beauty.load(tiny)
    assert items[0]["brand"] == "OPI" and items[0]["categories"] == ["Makeup", "Nails", "Nail Polish"]
    assert items[1]["brand"] is None and items[1]["title"] == "Brush & Co"
    assert items[2]["brand"] == "L'Oreal Paris"
    assert items[3]["brand"] is None, "'Unknown' is no brand"
    assert seqs == [[(0, 10), (1, 10), (2, 20), (3, 30)], [(1, 5), (0, 6), (2, 7)]]


def test_leave_one_out_split_is_exact(tiny):
    _, seqs = beauty.load(tiny)
    train, valid, test = beauty.split(seqs)
    assert train == [[0, 1], [1]]
    assert valid == [([0, 1], 2), ([1], 0)]
    assert test == [([0, 1, 2], 3), ([1, 0], 2)]


def test_keywords_from_attributes(tiny):
    items, _ = beauty.load(tiny)
    phrases, item_kw = beauty.keyword_phrases(items, min_items=1)
    assert "nail polish" in phrases and "opi nail polish" in phrases and "opi" in phrases
    assert "l oreal paris styling products" in phrases
    assert {phrases[k] for k in item_kw[3]} == {"skin care", "face"}
    phrases2, _ = beauty.keyword_phrases(items, min_items=2)
    assert phrases2 == [], "no phrase is shared by 2+ of these items"


def test_ranking_ties_and_metrics():
    s = np.array([1.0, 3.0, 3.0, 0.5])
    assert beauty.rank_of(s, 1) == 0 and beauty.rank_of(s, 2) == 1, "ties: lower index first"
    assert beauty.rank_of(s, 3) == 3
    m = beauty.metrics([0, 4, 9, 10])
    assert m["recall@5"] == 0.5 and m["recall@10"] == 0.75
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(6) + 1 / math.log2(11)) / 4)


def test_cooccurrence_window_and_direction():
    c = beauty.cooccurrence([[0, 1, 2]], 3, window=1, direction="forward")
    assert c[0, 1] == 1 and c[1, 2] == 1 and c[0, 2] == 0 and c[1, 0] == 0
    c = beauty.cooccurrence([[0, 1, 2]], 3, window=2, direction="both")
    assert c[0, 2] == 1 and c[2, 0] == 1 and c[1, 0] == 1


def test_absent_data_is_skipped_cleanly(tmp_path, capsys):
    assert beauty.main(["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 0
    assert "absent; skipping" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.isdir(DATA), reason="shared/data/amazon-beauty is absent")
def test_real_data_matches_its_readme():
    items, seqs = beauty.load(DATA)
    assert len(items) == 12101 and len(seqs) == 22363
    assert sum(len(s) for s in seqs) == 198502
    assert min(len(s) for s in seqs) >= 5, "5-core"


def test_rank_with_tiebreak():
    s = np.array([2.0, 1.0, 1.0, 1.0, 0.0])
    pop = np.array([0.0, 5.0, 9.0, 5.0, 100.0])
    assert beauty.rank_of(s, 2, pop) == 1
    assert beauty.rank_of(s, 1, pop) == 2 and beauty.rank_of(s, 3, pop) == 3
    assert beauty.rank_of(s, 4, pop) == 4


def test_sasrec_learns_a_deterministic_sequence():
    """On sequences where item i is always followed by item i + 1, a few epochs of SASRec rank the
    next item first far more often than chance (and padding never makes NaN)."""
    import torch
    from train import sasrec
    torch.manual_seed(0)
    n = 30
    rng = np.random.default_rng(0)
    seqs = []
    for _ in range(300):
        start = int(rng.integers(0, n - 8))
        seqs.append(list(range(start, start + int(rng.integers(4, 8)))))
    train_seqs = [s[:-2] for s in seqs]
    valid = [(s[:-2], s[-2]) for s in seqs]
    model = sasrec.SASRec(n, d=32, blocks=1, heads=2, maxlen=10, dropout=0.0)
    before = sasrec.evaluate(model, valid, n)
    best, _ = sasrec.train(model, train_seqs, valid, n, epochs=8, batch=32, lr=5e-3)
    assert best["recall@5"] > 0.8 > before["recall@5"] + 0.3
    seq, lens = sasrec.pad_right([[1, 2], [3]], 10)
    assert seq.tolist() == [[2, 3], [4, 0]] and lens.tolist() == [2, 1]
    assert torch.isfinite(model(seq)).all()


def _shops(tiny_dir):
    items, seqs = beauty.load(tiny_dir)
    phrases, item_kw = beauty.keyword_phrases(items, min_items=1)
    train, _, _ = beauty.split(seqs)
    themes, kw_theme = beauty.mine_themes(train, item_kw, phrases, n_themes=2)
    return items, seqs, phrases, beauty.build_shops(items, seqs, phrases, item_kw, themes,
                                                    kw_theme, related_window=2)


def test_shops_follow_the_protocol(tiny):
    """The validation shop holds each user out at the second-to-last item, the test shop at the
    last; no training record contains either target; catalogue statistics count i_1..i_{n-2} for
    validation and i_1..i_{n-1} for the test, each once."""
    from train import shop as shop_mod
    from train.data import interaction_stats
    items, seqs, phrases, (vshop, tshop) = _shops(tiny)
    for shop, split, cut in ((vshop, "valid", 2), (tshop, "eval", 1)):
        held = [s for s in shop["shoppers"] if s["split"] == split]
        trains = [s for s in shop["shoppers"] if s["split"] == "train"]
        assert len(held) == len(trains) == len(seqs)
        for s, t, seq in zip(held, trains, seqs):
            hist, now, last = shop_mod.holdout(s)
            assert last["purchase"] == seq[-cut][0]
            assert [e["item"] for e in hist] == [i for i, _ in seq[:-cut]]
            assert now == seq[-cut][1] - 1
            assert [e["item"] for e in t["events"]] == [i for i, _ in seq[:-2]]
        pop, related = interaction_stats(shop)
        want = [0] * len(items)
        for seq in seqs:
            for i, _ in seq[:-cut]:
                want[i] += 1
        assert pop == want
    # user 1 bought A1 A2 A3 A4 and user 2 A2 A1 A3: in the test shop A3 follows A2 (window 2);
    # in the validation shop A3 is both users' validation target, so nothing leads to it
    _, rel_v = interaction_stats(vshop)
    _, rel_t = interaction_stats(tshop)
    assert 2 in [b for b, _ in rel_t[1]]
    assert all(2 not in [b for b, _ in r] for r in rel_v)
    # every product's first keyword is its leaf category (the keyword a purchase teaches)
    nail = phrases.index("nail polish")
    assert tshop["products"][0]["keywords"][0] == nail


def test_storefront_ranking_and_hits(tiny):
    """The page comes first in its page ranking, the rest by popularity; hits and keyword
    coverage are read from the storefront."""
    from train.beauty_eval import Scorer
    _, _, phrases, (_, tshop) = _shops(tiny)
    sc = Scorer(tshop)
    pop_order = sc.pop_order
    kw = tshop["products"][3]["keywords"][0]
    sf = {"sections": [{"theme": {"id": tshop["products"][3]["theme"]},
                        "keywords": [{"id": kw}],
                        "products": [{"id": "A2", "score": 1.0}, {"id": "A3", "score": 3.0}]}]}
    m = sc.score([sf], [2], "score")  # A3 (index 2) has the best score: rank 0
    assert m["recall@5"] == 1.0 and m["ndcg@5"] == 1.0 and m["storefront_hit"] == 1.0
    m = sc.score([sf], [1], "score")  # A2 second
    assert m["ndcg@5"] == pytest.approx(1 / math.log2(3))
    m = sc.score([sf], [3], "score")  # A4: not on the page, but its keyword was generated
    rest = [i for i in pop_order if i not in (1, 2)]
    assert sc.rank([2, 1], 3) == 2 + rest.index(3)
    assert m["storefront_hit"] == 0.0 and m["keyword_coverage"] == 1.0 and m["theme_hit"] == 1.0
    assert m["recall@10"] == float(2 + rest.index(3) < 10)


def test_requests_now_is_the_previous_event_not_the_targets_day(tiny):
    """Leave-one-out requests carry the previous event's time: the target's day (user 1's last
    item is on day 30, the one before on day 20) must not reach the request."""
    from train.beauty_eval import test_cases
    from train.tune import holdout
    _, seqs, _, (vshop, tshop) = _shops(tiny)
    assert tshop["params"]["request_now"] == "previous_event"
    reqs, targets = test_cases(tshop, {"sections": 2, "keywords": 2, "products": 3})
    assert targets == [3, 2]
    assert [r["now"] for r in reqs] == [20, 6]
    for s, seq in zip([x for x in vshop["shoppers"] if x["split"] == "valid"], seqs):
        hist, now, last = holdout(vshop, s)
        assert now == seq[-3][1] and now == hist[-1]["ts"] and last["purchase"] == seq[-2][0]


def test_related_items_follow_the_tuned_direction(tiny):
    """The co-occurrence baseline's direction reaches the catalogue's related items: "both" also
    relates an item to those bought just before it; the shops carry the tuned window and
    direction."""
    from train.data import interaction_stats
    shop = {"params": {"related_window": 1, "related_top": 5}, "products": [{}, {}, {}],
            "shoppers": [{"split": "train",
                          "events": [{"action": 3, "item": i} for i in (0, 1, 2)]}]}
    _, fwd = interaction_stats(shop)
    assert [[b for b, _ in r] for r in fwd] == [[1], [2], []]
    shop["params"]["related_direction"] = "both"
    _, both = interaction_stats(shop)
    assert [[b for b, _ in r] for r in both] == [[1], [0, 2], [1]]
    assert dict(both[1]) == {0: 0.5, 2: 0.5}
    shop["params"]["related_direction"] = "sideways"
    with pytest.raises(ValueError, match="related_direction"):
        interaction_stats(shop)
    items, seqs = beauty.load(tiny)
    phrases, item_kw = beauty.keyword_phrases(items, min_items=1)
    res, train, shops = beauty.loo_protocol(seqs, items, phrases, item_kw, lambda m: None)
    themes, kw_theme = beauty.mine_themes(train, item_kw, phrases, n_themes=2)
    for shop in shops(themes, kw_theme):
        p = res["systems"]["cooccurrence"]["params"]
        assert shop["params"]["related_window"] == p["window"]
        assert shop["params"]["related_direction"] == p["direction"]
    assert len(res["test_users"]) == len(res["systems"]["cooccurrence"]["test_ranks"]) == 2


def test_time_split_is_strictly_before_the_cutoff(tiny):
    """Training and statistics before the cut-off, each shopper's first item on or after it as the
    target, validation from a second, earlier cut-off; shoppers without a history are counted."""
    _, seqs = beauty.load(tiny)
    ts = beauty.time_split(seqs, cutoff=20, valid_cutoff=7)
    assert ts["test"] == [(0, [(0, 10), (1, 10)], (2, 20))]
    assert ts["valid"] == [(1, [(1, 5), (0, 6)], (2, 7))]
    assert ts["train_valid"] == [(1, [(1, 5), (0, 6)])]
    assert ts["train_test"] == [(0, [(0, 10), (1, 10)]), (1, [(1, 5), (0, 6), (2, 7)])]
    assert ts["new_users_valid"] == 1 and ts["new_users_test"] == 0
    with pytest.raises(ValueError, match="before the cut-off"):
        beauty.time_split(seqs, cutoff=7, valid_cutoff=20)
    # 7 interactions by time: days 5 6 7 10 10 20 30; the one at the 70% quantile (index 4): day 10
    assert beauty.quantile_cutoff(seqs, 0.3) == 10
    assert beauty.quantile_cutoff(seqs, 0.5, before=20) == 7
    assert beauty.parse_day("2014-05-13") == 1399939200
    with pytest.raises(ValueError, match="not a date"):
        beauty.parse_day("13/05/2014")


def test_time_split_cold_start_targets_are_misses(tiny):
    """A target never seen before the cut-off (A4, first bought on day 30) is a miss for every
    system and counted apart; the shops hold only what came before each cut-off."""
    from train.beauty_eval import Scorer, test_cases
    from train.data import interaction_stats
    items, seqs = beauty.load(tiny)
    phrases, item_kw = beauty.keyword_phrases(items, min_items=1)
    res, train_v, shops = beauty.time_protocol(seqs, items, phrases, item_kw, 30, 20,
                                               lambda m: None)
    assert res["split"]["cold_test_targets"] == 1 and res["test_cold"] == [True]
    assert res["systems"]["popularity"]["test_ranks"] == [beauty.MISS]
    assert res["systems"]["cooccurrence"]["test_ranks"] == [beauty.MISS]
    assert res["systems"]["cooccurrence"]["test"]["recall@10"] == 0.0
    themes, kw_theme = beauty.mine_themes(train_v, item_kw, phrases, n_themes=2)
    vshop, tshop = shops(themes, kw_theme)
    assert tshop["params"]["protocol"] == "time" and tshop["params"]["cutoff"] == 30
    assert vshop["params"]["cutoff"] == 20
    pop, _ = interaction_stats(tshop)
    assert pop == [2, 2, 2, 0], "statistics: every interaction before day 30, each once"
    pop, _ = interaction_stats(vshop)
    assert pop == [2, 2, 1, 0], "validation statistics: before day 20"
    reqs, targets = test_cases(tshop, {"sections": 1, "keywords": 1, "products": 4})
    assert targets == [3] and reqs[0]["now"] == 29, "now: the last second before the cut-off"
    assert max(e["ts"] for e in reqs[0]["events"]) < 30
    sc = Scorer(tshop)
    assert sorted(sc.pop_order) == [0, 1, 2], "only items seen before the cut-off are ranked"
    sf = {"sections": [{"theme": {"id": 0}, "keywords": [],
                        "products": [{"id": "A4", "score": 5.0}, {"id": "A3", "score": 1.0}]}]}
    m = sc.score([sf], [3], "score")
    assert m["recall@10"] == 0.0 and m["storefront_hit"] == 1.0
    assert m["cold_targets"] == 1 and m["cold_target_on_page"] == 1.0
    assert m["cold_products_per_page"] == 1.0
    ranks = []
    m = sc.score([sf], [2], "score", ranks)
    assert ranks == [0] and m["recall@5"] == 1.0, "a cold product on the page takes no rank"


def test_evaluation_table_gets_paired_intervals_per_metric():
    """beauty_eval's bootstrap: per metric, the served system against the best baseline with
    per-user ranks, users matched by id (baselines.json may list them in another order)."""
    from train.beauty_eval import bootstrap
    b = {"test_users": ["u2", "u1", "u3"],
         "systems": {"cooccurrence": {"test_ranks": [beauty.MISS, 0, 3]},
                     "popularity": {"test_ranks": [beauty.MISS, beauty.MISS, 8]}}}
    res = {"baselines": {"cooccurrence": {}, "popularity": {},
                         "SASRec (ours)": {"recall@5": 0.9, "ndcg@5": 0.9, "recall@10": 0.9,
                                           "ndcg@10": 0.9}}}
    bootstrap(res, {"student": [0, 0, 7]}, b, ["u1", "u2", "u3"], 200, 0, lambda m: None)
    r = res["bootstrap"]["systems"]["student"]
    # by user u1 u2 u3: co-occurrence ranks 0, miss, 3; the student 0, 0, 7
    assert r["recall@5"]["baseline"] == "cooccurrence"
    assert r["recall@5"]["diff"] == pytest.approx(0.0)
    assert r["recall@10"]["diff"] == pytest.approx(1 / 3)
    assert r["recall@10"]["baseline_value"] == pytest.approx(2 / 3)
    assert r["recall@10"]["ci95"][0] >= 0
    assert "SASRec (ours)" in res["bootstrap"]["note"], "a stronger row without per-user ranks"
    with pytest.raises(ValueError, match="u4"):
        bootstrap({}, {"student": [0]}, b, ["u4"], 10, 0, lambda m: None)
