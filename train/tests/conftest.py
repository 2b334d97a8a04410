"""Shared fixtures: a tiny shop and a tiny model trained for a few steps (seconds on a CPU)."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from train import shop as shop_mod  # noqa: E402
from train.data import Catalog, Tables, training_examples  # noqa: E402
from train.model import Config, Model  # noqa: E402

TINY = dict(d_model=32, n_heads=2, n_enc_layers=1, n_dec_layers=1, d_ff=64, n_queries=2,
            d_retrieval=16, max_events=24, codebook=32)


@pytest.fixture(scope="session")
def tiny_shop():
    return shop_mod.generate(seed=11, n_themes=6, kw_per_theme=4, n_products=120, n_shoppers=80,
                             n_eval=20, max_sessions=6, n_valid=10)


@pytest.fixture(scope="session")
def tiny_world(tiny_shop):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    tables = Tables.from_shop(tiny_shop)
    cfg = Config(vocab_size=len(tables.vocab), n_regions=len(tables.regions), **TINY)
    catalog = Catalog.from_shop(tiny_shop, cfg.code_levels, cfg.codebook)
    model = Model(cfg)
    model.eval()
    examples = training_examples(tiny_shop, tables, catalog, cfg)
    return tiny_shop, tables, catalog, model, examples
