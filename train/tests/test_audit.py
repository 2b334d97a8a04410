"""The audit's metrics (train/audit.py) on tiny inputs with known answers, and the reference's
calibration (train/cascade.py Calibration) against the hand-worked page of
tests/test_decode_ops.c calibration_by_hand."""
import math

import numpy as np
import pytest

from train import audit
from train.cascade import Calibration


def test_gini_equal_and_concentrated():
    assert audit.gini([3, 3, 3, 3]) == pytest.approx(0.0)
    assert audit.gini([0, 0, 0, 5]) == pytest.approx(3 / 4)  # one of n takes all: (n - 1) / n
    assert audit.gini([0] * 999 + [1]) == pytest.approx(0.999)
    assert audit.gini([0, 0]) == 0.0
    # 1, 2, 3: sum (2i - n - 1) x_i / (n sum) = (-2 + 0 + 6) / 18
    assert audit.gini([3, 1, 2]) == pytest.approx(4 / 18)


def test_coverage_and_exposure():
    lists = [[0, 1], [1, 2], [1]]
    assert audit.coverage(lists, 10) == pytest.approx(0.3)
    assert list(audit.exposure(lists, 4)) == [1, 3, 1, 0]


def test_top_share():
    inter = np.array([1] * 99 + [901])  # the top 1% (one product) has 90.1% of interactions
    e = np.zeros(100)
    e[99], e[0] = 1, 3
    assert audit.top_share(e, inter) == pytest.approx((0.25, 0.901))
    # ties on interactions: the lower index is the top one
    assert audit.top_share(np.array([1.0, 0, 0]), np.array([2, 2, 1]), frac=0.3) == \
        pytest.approx((1.0, 0.4))


def test_kl_steck():
    p = {"a": 0.5, "b": 0.5}
    assert audit.kl(p, dict(p)) == pytest.approx(0.0)
    # q misses b: q~_b = alpha p_b
    want = 0.5 * math.log(0.5 / (0.99 * 1.0 + 0.005)) + 0.5 * math.log(0.5 / 0.005)
    assert audit.kl(p, {"a": 1.0}) == pytest.approx(want)
    assert audit.kl({"a": 1.0}, {"a": 0.5, "b": 0.5}) == pytest.approx(-math.log(0.5 * 0.99 + 0.01))
    assert audit.distribution([1, 1, 2, 3]) == {1: 0.5, 2: 0.25, 3: 0.25}


def test_terciles():
    seg = audit.terciles([1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert seg.count(seg[0]) == 3 and seg.count(seg[-1]) == 3 and seg[4] == "mid"
    assert seg[0].startswith("low") and seg[-1].startswith("high")


def test_audit_lists_segments():
    users = [{"hist": [0, 0], "segments": {"region": "eu"}},
             {"hist": [1], "segments": {"region": "us"}},
             {"hist": [], "segments": {"region": "us"}}]
    cats = {"cat": [0, 1, 1]}
    lists = [[0], [2], [1]]  # user 0 calibrated, user 1 too (1 and 2 share category 1)
    out = audit.audit_lists(lists, users, 3, np.array([5, 1, 1]), cats)
    assert out["kl"]["cat"]["all"] == {"mean": pytest.approx(0.0), "users": 2}  # no history: out
    assert out["kl"]["cat"]["segments"]["region"]["us"]["users"] == 1
    assert out["coverage"] == 1.0
    lists = [[1], [2], [1]]  # user 0 sees only the other category
    out = audit.audit_lists(lists, users, 3, np.array([5, 1, 1]), cats)
    assert out["kl"]["cat"]["segments"]["region"]["eu"]["mean"] == pytest.approx(math.log(100))


def _calib_pick(strength, hist_cats):
    """The hand-worked page: products 0..5 scored 6..1, categories 1 1 1 0 0 0, three picked."""
    scored = [(-s, p, 0, float(s)) for p, s in enumerate([6, 5, 4, 3, 2, 1])]
    cat = [1, 1, 1, 0, 0, 0]
    return [c[1] for c in Calibration(hist_cats).pick(scored, 3, np.float32(strength),
                                                      lambda p: cat[p])]


def test_reference_calibration_by_hand():
    assert _calib_pick(0.0, [0]) == [0, 1, 2]
    assert _calib_pick(1.0, [0]) == [3, 4, 5]
    assert _calib_pick(0.5, [0]) == [3, 0, 1]
    c = Calibration([0, 0, 1])  # a calibrated page's KL is lower than a one-category one's
    c.page, c.n_page = [2, 1] + [0] * 254, 3
    kl = c.table()
    assert kl[0] < kl[1] and kl[2] == pytest.approx(kl[3])  # 2, 3: outside p, the same


def test_bundle_reader_refuses_bad_calibration(tmp_path):
    from train.bundle import BundleError, _check_calibration
    cfg = type("Cfg", (), {"codebook": 64})()
    for ok in (0, 0.0, 0.5, 1):
        _check_calibration({"ranker": {"calibration": ok}}, cfg, "m.json")
    _check_calibration({}, cfg, "m.json")
    for bad in (1.5, -0.1, "0.5", True):
        with pytest.raises(BundleError, match="m.json: ranker.calibration must be in 0..1"):
            _check_calibration({"ranker": {"calibration": bad}}, cfg, "m.json")
    big = type("Cfg", (), {"codebook": 512})()
    _check_calibration({"ranker": {"calibration": 0}}, big, "m.json")
    with pytest.raises(BundleError, match="at most 256"):
        _check_calibration({"ranker": {"calibration": 0.5}}, big, "m.json")
