"""Writes the committed seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/) from the
fixture that `make test` builds (build/fixture, or --fixture): a few real inputs per target and the
hostile cases of issue #12 (tests/server/test_hostile.py), so that every fuzz run starts past the
first checks. Rerun it when a file format changes:

    /usr/bin/python3 tests/fuzz/make_seeds.py --fixture build/fixture
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def key(field, wt):
    return varint(field << 3 | wt)


def f_bytes(field, b):
    return key(field, 2) + varint(len(b)) + b


def f_varint(field, v):
    return key(field, 0) + varint(v)


ACTIONS = {"view": 1, "search": 2, "cart": 3, "purchase": 4}


def wire(d):
    """A RecommendRequest's bytes (proto/vitrine/v1/storefront.proto field numbers), by hand so
    that odd values (NUL, bad UTF-8) pass through as they are."""
    enc = lambda s: s if isinstance(s, bytes) else s.encode()  # noqa: E731
    out = f_varint(2, d["now"]) if d.get("now") else b""
    out += f_bytes(3, enc(d["region"])) if d.get("region") else b""
    out += f_bytes(4, enc(d["shopper_id"])) if d.get("shopper_id") else b""
    for e in d.get("events", []):
        ev = f_varint(2, ACTIONS.get(e["action"], 1)) + f_varint(3, e["ts"])
        if e.get("item"):
            ev = f_bytes(1, enc(e["item"])) + ev
        if e.get("query"):
            ev += f_bytes(4, enc(e["query"]))
        out += f_bytes(1, ev)
    for k, f in (("sections", 5), ("keywords_per_section", 6), ("products_per_section", 7)):
        if d.get(k):
            out += f_varint(f, d[k])
    for x in d.get("exclude", []):
        out += f_bytes(8, enc(x))
    return out


def check_fields():
    """The field numbers above against the .proto (so a change there is noticed here)."""
    text = open(os.path.join(ROOT, "proto/vitrine/v1/storefront.proto")).read()
    for name, num in (("events", 1), ("now", 2), ("region", 3), ("shopper_id", 4),
                      ("sections", 5), ("keywords_per_section", 6), ("products_per_section", 7),
                      ("exclude", 8)):
        if f" {name} = {num};" not in text:
            sys.exit(f"make_seeds: storefront.proto's {name} is not field {num}: update wire()")


def safetensors(tensors, meta=None):
    header, off, data = {}, 0, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        data += raw
    if meta:
        header["__metadata__"] = meta
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixture", default=os.path.join(ROOT, "build/fixture"))
    a = ap.parse_args()
    check_fields()
    out = os.path.join(HERE, "corpus")
    for t in ("request", "wire", "safetensors", "bundle", "catalog", "rules"):
        shutil.rmtree(os.path.join(out, t), ignore_errors=True)
        os.makedirs(os.path.join(out, t))

    def put(target, name, data):
        with open(os.path.join(out, target, name), "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode())

    tmp = tempfile.mkdtemp()
    try:
        p = os.path.join(tmp, "r.jsonl")
        subprocess.run([sys.executable, "-m", "train.requests", "--shop",
                        os.path.join(a.fixture, "shop.json"), "--out", p, "--n", "6",
                        "--sections", "2", "--keywords", "3", "--products", "4"], cwd=ROOT,
                       check=True, capture_output=True)
        reqs = [json.loads(ln) for ln in open(p)]
    finally:
        shutil.rmtree(tmp)
    base = reqs[0]
    hostile = {
        "nul_region": dict(base, region="sg\u0000evil"),
        "nul_item": dict(base, events=[dict(base["events"][0], item="p00001\u0000junk")]),
        "no_now": {k: v for k, v in base.items() if k != "now"},
        "ts_2p53": dict(base, events=[dict(base["events"][0], ts=2**53 + 1)]),
        "empty": {},
        "query": dict(base, events=[{"action": "search", "ts": base["now"] - 5,
                                     "query": "scented\u001fscarf \u00a0wool"}]),
        "dup_key": None,
    }
    for i, r in enumerate(reqs):
        put("request", f"ok-{i}.json", json.dumps(r))
        put("wire", f"ok-{i}.pb", wire(r))
    for name, r in hostile.items():
        if r is None:
            put("request", "dup_key.json", '{"now": 5, "now": 6, "region": "sg"}')
            continue
        put("request", f"{name}.json", json.dumps(r))
        put("wire", f"{name}.pb", wire(r))
    put("request", "bad_utf8.json",
        json.dumps(dict(base, shopper_id="XBADX")).encode().replace(b"XBADX", b"\xed\xa0\x80"))
    bad = dict(base, events=[dict(base["events"][0], item=b"\xed\xa0\x80")])
    put("wire", "bad_utf8.pb", wire(bad))
    put("wire", "group.pb", wire(base) + key(10, 3) + f_varint(1, 7) + key(10, 4))
    put("wire", "field_2p29.pb", wire(base) + f_varint(2**29, 1))
    put("wire", "garbage.pb", b"\xff\xff\xff")

    f32 = lambda *v: struct.pack(f"<{len(v)}f", *v)  # noqa: E731
    put("safetensors", "two.safetensors",
        safetensors({"a": ("F32", [2, 2], f32(1, 2, 3, 4)), "b": ("I32", [3], struct.pack("<3i", 1, 2, 3))},
                    {"format": "pt"}))
    put("safetensors", "empty_shape.safetensors", safetensors({"s": ("F32", [], f32(1))}))
    put("safetensors", "bf16.safetensors", safetensors({"h": ("BF16", [4], b"\x00" * 8),
                                                        "i": ("I64", [1], b"\x01" + b"\x00" * 7)}))
    h = (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
         b'"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}')
    put("safetensors", "overlap.safetensors", struct.pack("<Q", len(h)) + h + b"\x00" * 4)

    bundle = os.path.join(a.fixture, "bundle")
    for i, name in enumerate(("manifest.json", "vocab.txt", "keywords.tsv", "themes.tsv")):
        put("bundle", name, bytes([i]) + open(os.path.join(bundle, name), "rb").read())
    cat = os.path.join(a.fixture, "catalog")
    for i, name in enumerate(("manifest.json", "products.tsv", "embeddings.safetensors")):
        put("catalog", name, bytes([i]) + open(os.path.join(cat, name), "rb").read())

    # the catalogue's rules.txt (docs/RULES.md): a valid file, CRLF and comments, refusals
    rules_seeds = {
        "example.txt": "# merchandising\nversion 2026-11-27.1\n"
                       "season sg 06-01..08-31 winter\nseason sg 12-01..02-29 summer\n"
                       "deny term alpine\ndeny keyword kids shorts\ndeny product p00017\n"
                       "unavailable product p00042 region=au,sg\n"
                       "unavailable product p00043 season=summer\n",
        "crlf_comments.txt": "  # c\r\n\r\nversion v1 # x\r\ndeny theme Fresh Kitchen Picks\r\n"
                             "deny product p00001",
        "bad_region.txt": "season mars 01-01..02-01 winter\n",
        "overlap.txt": "season au 12-01..01-31 winter\nseason au 01-31..02-10 summer\n",
        "every_theme.txt": "deny term finds\ndeny theme bold gaming edit\n"
                           "deny theme fresh kitchen picks\ndeny theme rainy baking staples\n"
                           "deny theme zesty kids essentials\n",
        "not_yet.txt": "unavailable keyword kids shorts region=eu\n"
                       "allow-only section 1 theme fresh kitchen picks\n",
    }
    for name, text in rules_seeds.items():
        put("rules", name, text)
    for t in sorted(os.listdir(out)):
        print(t, len(os.listdir(os.path.join(out, t))), "seeds")


if __name__ == "__main__":
    main()
