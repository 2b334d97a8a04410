import json

import numpy as np

from train.bundle import export_bundle, export_catalog, read_safetensors
from train.golden import golden_requests, main as golden_main


def test_golden_file_covers_the_edge_cases_and_replays(tiny_world, tmp_path):
    shop, tables, catalog, model, _ = tiny_world
    b, c = str(tmp_path / "bundle"), str(tmp_path / "catalog")
    m = export_bundle(b, model, tables)
    export_catalog(c, catalog, tables, model, m["model_version"], "t")
    shop_path = tmp_path / "shop.json"
    shop_path.write_text(json.dumps(shop))
    out = str(tmp_path / "golden.safetensors")
    assert golden_main(["--shop", str(shop_path), "--bundle", b, "--catalog", c, "--out", out,
                        "--n", "24"]) == 0
    tensors, meta = read_safetensors(out)
    assert meta["format"] == "vitrine-golden" and meta["version"] == "1"
    assert meta["model_version"] == m["model_version"]
    reqs, fronts = json.loads(meta["requests"]), json.loads(meta["storefronts"])
    assert len(reqs) == len(fronts) == 24
    n_ev = [len(r["events"]) for r in reqs]
    assert 0 in n_ev and 1 in n_ev and model.cfg.max_events in n_ev
    assert any(n > model.cfg.max_events for n in n_ev), "over the maximum: oldest dropped"
    assert any(any(e.get("item", "").startswith(("no-such", "p99999")) for e in r["events"])
               for r in reqs), "unknown items"
    assert any(len(r["events"]) > 1 and len({e["ts"] for e in r["events"]}) == 1 for r in reqs)
    assert any(r["events"] and all(e["action"] == "search" for e in r["events"]) for r in reqs)
    assert any(any(e["ts"] > r["now"] for e in r["events"]) for r in reqs), "events after now"
    C, Q, V = model.cfg.d_model, model.cfg.n_queries, model.cfg.vocab_size
    for i, (r, f) in enumerate(zip(reqs, fronts)):
        n = min(len(r["events"]), model.cfg.max_events) + 1
        assert tensors["r%03d.event_emb" % i].shape == (n, C)
        for layer in range(model.cfg.n_enc_layers):
            assert tensors["r%03d.enc%d" % (i, layer)].shape == (n, C)
        assert tensors["r%03d.memory" % i].shape == (Q, C)
        assert tensors["r%03d.first_logits" % i].shape == (V,)
        assert np.isfinite(tensors["r%03d.first_logits" % i]).all()
        assert len(f["sections"]) == r["sections"]
        assert f["dropped_events"] == max(0, len(r["events"]) - model.cfg.max_events)
    # requests are reproducible from the seed
    assert golden_requests(shop, catalog, model.cfg.max_events, 24) == reqs
