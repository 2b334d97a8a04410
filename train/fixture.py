"""A small bundle, catalogue and golden file for the C engine's tests (seconds on a CPU).

    /usr/bin/python3 -m train.fixture --out build/fixture

Writes OUT/shop.json, OUT/bundle/, OUT/catalog/ and OUT/golden.safetensors, and OUT/learned/ (the
same model with a learned ranker: bundle/ and golden.safetensors; it shares OUT/catalog/). The
model has awkward
shapes on purpose (head size 12, FFN 80, 3 heads, 5 memory tokens, 2 encoder and 2 decoder layers)
and is trained for a few dozen steps so its weights are not near their initial values; the ranker
weights are all non-zero so every score feature is exercised; the learned ranker (one ReLU layer
of 6 units, seeded random weights scaled to each feature's spread) uses every one of its features.
"""
import argparse
import os
import sys

import numpy as np
import torch

from . import shop as shop_mod
from .bundle import export_bundle, export_catalog
from .cascade import RANKER_FEATURES
from .data import Catalog, Tables, training_examples
from .golden import main as golden_main
from .model import Config, Model
from .train import train_model

FIXTURE = dict(d_model=36, n_heads=3, n_enc_layers=2, n_dec_layers=2, d_ff=80, n_queries=5,
               d_retrieval=20, max_events=40, codebook=32)
RANKER = {"again": 1.5, "cooc": 6.0, "popularity": 0.3, "decay": 0.8}


def build(out, n_golden=200, steps=60):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    os.makedirs(out, exist_ok=True)
    shop = shop_mod.generate(seed=21, n_themes=10, kw_per_theme=5, n_products=300, n_shoppers=300,
                             n_eval=60, n_valid=10, max_sessions=8)
    shop_path = os.path.join(out, "shop.json")
    import json
    with open(shop_path, "w") as f:
        json.dump(shop, f)
    tables = Tables.from_shop(shop)
    cfg = Config(vocab_size=len(tables.vocab), n_regions=len(tables.regions), **FIXTURE)
    catalog = Catalog.from_shop(shop, cfg.code_levels, cfg.codebook)
    model = Model(cfg)
    examples = training_examples(shop, tables, catalog, cfg)
    train_model(model, examples, tables, torch.from_numpy(catalog.codes), epochs=100, batch=32,
                max_steps=steps)
    m = export_bundle(os.path.join(out, "bundle"), model, tables, {"fixture": True}, force=True,
                      name="fixture", ranker=RANKER)
    export_catalog(os.path.join(out, "catalog"), catalog, tables, model, m["model_version"],
                   "fixture-1", force=True)
    rc = golden_main(["--shop", shop_path, "--bundle", os.path.join(out, "bundle"),
                      "--catalog", os.path.join(out, "catalog"),
                      "--out", os.path.join(out, "golden.safetensors"), "--n", str(n_golden)])
    if rc:
        return rc
    export_bundle(os.path.join(out, "learned", "bundle"), model, tables, {"fixture": True},
                  force=True, name="fixture", ranker=learned_ranker())
    return golden_main(["--shop", shop_path, "--bundle", os.path.join(out, "learned", "bundle"),
                        "--catalog", os.path.join(out, "catalog"),
                        "--out", os.path.join(out, "learned", "golden.safetensors"),
                        "--n", str(n_golden)])


def learned_ranker(hidden=6, seed=5):
    """A learned ranker with seeded weights: unit j of the hidden layer weighs feature i by
    N(0, 1) / the feature's typical size, so no feature is negligible."""
    rng = np.random.default_rng(seed)
    scale = {"dot": 1.0, "again": 1.0, "cooc": 0.2, "cooc_sat": 0.5, "log_pop": 2.0,
             "in_history": 1.0, "recency": 0.5, "keyword_score": 2.0, "keyword_rank": 1.0,
             "theme_score": 2.0, "section": 1.0}
    w1 = rng.normal(size=(hidden, len(RANKER_FEATURES))) / [scale[f] for f in RANKER_FEATURES]
    f32 = lambda a: [float(np.float32(v)) for v in np.ravel(a)]  # noqa: E731
    return {"kind": "learned", "decay": 0.8, "features": list(RANKER_FEATURES),
            "cooc_half": 0.05, "hidden": hidden, "w1": [f32(r) for r in w1],
            "b1": f32(rng.normal(size=hidden)), "w2": f32(rng.normal(size=hidden)),
            "b2": 0.5}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=200, help="golden requests")
    a = ap.parse_args(argv)
    return build(a.out, a.n)


if __name__ == "__main__":
    sys.exit(main())
