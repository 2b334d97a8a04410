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
