import numpy as np
import pytest

from train.cascade import Cascade
from train.tune import score, tune


def test_tune_reports_progress(tiny_world):
    """train.tune is not silent: shoppers decoded every 100 (and at the end), every grid point
    scored, each line with the elapsed time."""
    shop, tables, catalog, model, _ = tiny_world
    c = Cascade(model, tables, catalog)
    lines, best = [], []
    grid = {"again": (0.0, 1.0), "cooc": (0.0,), "popularity": (0.0, 0.5)}
    shapes = ({"sections": 2, "keywords": 2, "products": 3},)
    tune(c, shop, catalog, log=best.append, shapes=shapes, rankings=("score", "round-robin"),
         grid=grid, progress=lines.append)
    n_valid = sum(1 for s in shop["shoppers"] if s["split"] == "valid")
    decoded = [x for x in lines if "decoded valid shoppers" in x]
    assert decoded and decoded[-1].strip().startswith(
        "decoded valid shoppers (2 sections x 2 keywords) %d/%d, " % (n_valid, n_valid))
    scored = [x for x in lines if "grid points scored" in x]
    assert len(scored) == 2 * 4 and "grid points scored 8/8, " in scored[-1]
    assert all(" s" in x for x in decoded + scored) and best, "elapsed seconds; best points logged"


def test_tuning_ranks_only_seen_products_when_asked():
    """A time split's tuning ranks only products seen before the cut-off: an unseen product on
    the page neither counts as a hit nor takes a place in the top k."""
    idx = np.array([0, 1, 2], dtype=np.int64)
    arrs = (idx, np.array([3.0, 2.0, 1.0], np.float32), np.zeros(3, np.float32),
            np.zeros(3, np.float32), np.zeros(3, np.float32))
    ranker = {"again": 0.0, "cooc": 0.0, "popularity": 0.0}
    collected = [([arrs], 0), ([arrs], 2)]
    assert score(collected, ranker, 3, "score", 3, k=2) == (0.5, 0.5)
    seen = np.array([False, True, True])
    rec, nd = score(collected, ranker, 3, "score", 3, k=2, seen=seen)
    # product 0 is unseen: user 1 misses, product 2 moves up to rank 1 for user 2
    assert rec == 0.5 and nd == pytest.approx(0.5 / np.log2(3))


def test_ablations_are_the_best_of_the_grid_with_those_weights_at_zero(tiny_world):
    """--ablations: one decoding, and each ablation is what tuning over the grid with the held
    weights fixed at 0 would choose (page shape and ranking re-chosen too)."""
    shop, tables, catalog, model, _ = tiny_world
    c = Cascade(model, tables, catalog)
    grid = {"again": (0.0, 1.0), "cooc": (0.0, 4.0), "popularity": (0.0, 0.5)}
    shapes = ({"sections": 2, "keywords": 2, "products": 3},
              {"sections": 1, "keywords": 2, "products": 5})
    rankings = ("score", "round-robin")
    full = tune(c, shop, catalog, shapes=shapes, rankings=rankings, grid=grid,
                ablations={"no-cooc": ("cooc",), "head-only": ("again", "cooc", "popularity")})
    assert full[:4] == tune(c, shop, catalog, shapes=shapes, rankings=rankings, grid=grid)
    for name, held in (("no-cooc", ("cooc",)), ("head-only", ("again", "cooc", "popularity"))):
        g = {k: ((0.0,) if k in held else v) for k, v in grid.items()}
        r, sf, m, _ = tune(c, shop, catalog, shapes=shapes, rankings=rankings, grid=g)
        assert full[4][name] == (r, sf, m)
        assert all(full[4][name][0][w] == 0 for w in held)
    assert full[4]["head-only"][2] <= full[4]["no-cooc"][2] <= full[2]
    with pytest.raises(ValueError, match="no 0"):
        tune(c, shop, catalog, shapes=shapes, rankings=rankings,
             grid=dict(grid, cooc=(4.0,)), ablations={"no-cooc": ("cooc",)})
