from train import shop as shop_mod
from train.calendar import civil_from_days, day_of_year, season_of


def test_same_seed_same_shop_other_seed_other_shop():
    a = shop_mod.generate(seed=5, n_themes=5, n_products=60, n_shoppers=30, n_eval=5, n_valid=5)
    b = shop_mod.generate(seed=5, n_themes=5, n_products=60, n_shoppers=30, n_eval=5, n_valid=5)
    c = shop_mod.generate(seed=6, n_themes=5, n_products=60, n_shoppers=30, n_eval=5, n_valid=5)
    assert a == b
    assert a["shoppers"] != c["shoppers"]


def test_shop_structure(tiny_shop):
    s = tiny_shop
    kw_of_theme = {t["id"]: set(t["keywords"]) for t in s["themes"]}
    for p in s["products"]:
        assert set(p["keywords"]) <= kw_of_theme[p["theme"]]
        assert p["regions"] and p["seasons"]
    for sh in s["shoppers"]:
        ts = [e["ts"] for e in sh["events"]]
        assert ts == sorted(ts), "events are in time order"
        last = sh["sessions"][-1]
        assert last["purchase"] is not None, "the held-out session ends in a purchase"
        assert sh["events"][-1]["action"] == 3 and sh["events"][-1]["item"] == last["purchase"]
        hist, now, _ = shop_mod.holdout(sh)
        assert all(e["ts"] <= now for e in hist)
        for e in sh["events"]:
            assert (e["item"] is None) == (e["action"] == 1)  # searches carry a query, no item
    assert any(sh["drifted"] for sh in s["shoppers"])
    assert any(not sh["drifted"] for sh in s["shoppers"])
    assert {sh["split"] for sh in s["shoppers"]} == {"train", "valid", "eval"}


def test_calendar_matches_python_datetime():
    import datetime
    for days in (0, 59, 365, 10957, 11016, 19000, 20088, 20454, 40000):
        d = datetime.date(1970, 1, 1) + datetime.timedelta(days=days)
        assert civil_from_days(days) == (d.year, d.month, d.day)
        assert day_of_year(days * 86400 + 5) == d.timetuple().tm_yday - 1


def test_seasons_by_hemisphere_and_tropics():
    jan, jul = 1736000000, 1751500000  # 2025-01-04, 2025-07-02
    assert season_of(jan, 0, -1) == 0 and season_of(jul, 0, -1) == 2
    assert season_of(jan, 2, -1) == 2 and season_of(jul, 2, -1) == 0
    assert season_of(jan, 0, 2) == 2 == season_of(jul, 0, 2)
