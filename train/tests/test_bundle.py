import json
import os
import struct

import numpy as np
import pytest
import torch

from train.bundle import (BundleError, check_weights, export_bundle, export_catalog, load_bundle,
                          load_catalog, read_safetensors, write_safetensors)


@pytest.fixture
def exported(tiny_world, tmp_path):
    shop, tables, catalog, model, examples = tiny_world
    b, c = str(tmp_path / "bundle"), str(tmp_path / "catalog")
    m = export_bundle(b, model, tables, {"note": "test"})
    export_catalog(c, catalog, tables, model, m["model_version"], "test-1")
    return b, c, m


def test_round_trip_is_exact(tiny_world, exported):
    shop, tables, catalog, model, _ = tiny_world
    b, c, m = exported
    model2, tables2, m2 = load_bundle(b)
    s1, s2 = model.state_dict(), model2.state_dict()
    assert set(s1) == set(s2)
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k
    assert tables2.vocab.itos == tables.vocab.itos
    assert tables2.theme_texts == tables.theme_texts
    assert tables2.keyword_texts == tables.keyword_texts
    assert tables2.keyword_trie.token == tables.keyword_trie.token
    cat2, _ = load_catalog(c, tables2, model2.cfg, m2["model_version"])
    assert cat2.ids == catalog.ids and cat2.keywords == catalog.keywords
    assert cat2.regions == catalog.regions and cat2.seasons == catalog.seasons
    assert np.array_equal(cat2.codes, catalog.codes)
    assert cat2.popularity == catalog.popularity and cat2.related == catalog.related
    assert any(catalog.related) and any(catalog.popularity)
    with torch.no_grad():
        want = model.product_vectors(torch.from_numpy(catalog.codes)).numpy()
    assert np.array_equal(cat2.embeddings, want)
    with open(os.path.join(b, "manifest.json")) as f:
        man = json.load(f)
    assert man["format_version"] == 1 and man["special_tokens"]["eos"] == 3
    assert set(man["files"]) == {"model.safetensors", "vocab.txt", "themes.tsv", "keywords.tsv"}


def test_refuses_nan_and_bad_shapes(tiny_world, tmp_path):
    shop, tables, catalog, model, _ = tiny_world
    import copy
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad.ln_enc.weight[3] = float("nan")
    with pytest.raises(ValueError, match="ln_enc.weight has NaN"):
        export_bundle(str(tmp_path / "b1"), bad, tables)
    bad = copy.deepcopy(model)
    bad.queries = torch.nn.Parameter(torch.zeros(model.cfg.n_queries + 1, model.cfg.d_model))
    with pytest.raises(ValueError, match="queries has shape"):
        check_weights(bad)
    assert not os.path.exists(tmp_path / "b1")


def test_never_overwrites_without_force(tiny_world, exported):
    shop, tables, catalog, model, _ = tiny_world
    b, c, m = exported
    with pytest.raises(FileExistsError, match="--force"):
        export_bundle(b, model, tables)
    export_bundle(b, model, tables, force=True)
    load_bundle(b)


def _flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        x = f.read(1)
        f.seek(offset)
        f.write(bytes([x[0] ^ 0xFF]))


def test_corrupt_truncated_and_mismatched_files_are_refused(tiny_world, exported, tmp_path):
    shop, tables, catalog, model, _ = tiny_world
    b, c, m = exported
    st = os.path.join(b, "model.safetensors")
    _flip_byte(st, os.path.getsize(st) - 5)
    with pytest.raises(BundleError, match="model.safetensors: sha256"):
        load_bundle(b)
    _flip_byte(st, os.path.getsize(st) - 5)  # restore
    load_bundle(b)
    with open(st, "r+b") as f:
        f.truncate(os.path.getsize(st) - 100)
    with pytest.raises(BundleError, match="model.safetensors: .*truncated"):
        load_bundle(b)
    # a catalogue made for another bundle's keyword table
    b2 = str(tmp_path / "other")
    other = type(tables)(tables.vocab, tables.theme_texts, list(reversed(tables.keyword_texts)),
                         tables.regions)
    import copy
    retrained = copy.deepcopy(model)
    with torch.no_grad():
        retrained.prod_proj.bias += 0.5
    m2 = export_bundle(b2, retrained, other)
    assert m2["model_version"] != m["model_version"]
    _, tables_other, _ = load_bundle(b2)
    with pytest.raises(BundleError, match="catalog/manifest.json: keywords_sha256"):
        load_catalog(c, tables_other, model.cfg)
    with pytest.raises(BundleError, match="made by model"):
        load_catalog(c, tables, model.cfg, m2["model_version"])
    # a manifest whose config disagrees with the weights
    man = os.path.join(b2, "manifest.json")
    with open(man) as f:
        d = json.load(f)
    d["config"]["d_ff"] += 1
    with open(man, "w") as f:
        json.dump(d, f)
    with pytest.raises(BundleError, match="model.safetensors: tensor .* has shape"):
        load_bundle(b2)
    # a products.tsv line that names an unknown region (sha256 updated so the parser sees it)
    p = os.path.join(c, "products.tsv")
    with open(p) as f:
        rows = f.read().split("\n")
    fields = rows[2].split("\t")
    fields[3] = "atlantis"
    rows[2] = "\t".join(fields)
    with open(p, "w") as f:
        f.write("\n".join(rows))
    man = os.path.join(c, "manifest.json")
    with open(man) as f:
        d = json.load(f)
    from train.bundle import sha256_file
    d["files"]["products.tsv"] = {"sha256": sha256_file(p), "bytes": os.path.getsize(p)}
    with open(man, "w") as f:
        json.dump(d, f)
    with pytest.raises(BundleError, match=r"products.tsv:3: 'atlantis'"):
        load_catalog(c, tables, model.cfg)


def test_safetensors_layout_and_dtypes(tmp_path):
    p = str(tmp_path / "t.safetensors")
    tensors = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.arange(4, dtype=np.int64),
               "h": np.array([1.5, -2.0], dtype=np.float16), "e": np.zeros((0, 3), np.float32)}
    write_safetensors(p, tensors, {"k": "v"})
    raw = open(p, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0
    header = json.loads(raw[8:8 + n])
    assert header["__metadata__"] == {"k": "v"}
    assert header["a"]["data_offsets"][0] == 0, "tensors are laid out in name order"
    got, meta = read_safetensors(p)
    assert meta == {"k": "v"}
    assert np.array_equal(got["b"], tensors["b"]) and got["a"].dtype == np.int64
    assert got["h"].tolist() == [1.5, -2.0] and got["e"].shape == (0, 3)
    # BF16: the top half of a float32
    bf = (np.array([1.0, -3.5], dtype=np.float32).view(np.uint32) >> 16).astype("<u2")
    h = json.dumps({"x": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}).encode()
    with open(p, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + bf.tobytes())
    assert read_safetensors(p)[0]["x"].tolist() == [1.0, -3.5]
    for bad, msg in ((b"\x05\x00", "truncated"),
                     (struct.pack("<Q", 1000) + b"{}", "exceeds the file"),
                     (struct.pack("<Q", 2) + b"{]", "not valid JSON")):
        with open(p, "wb") as f:
            f.write(bad)
        with pytest.raises(BundleError, match=msg):
            read_safetensors(p)
