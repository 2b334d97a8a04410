"""A production-sized bundle and catalogue for benchmarks (`make bundle-scale`, issue #13): random
weights and synthetic tables at the sizes given by flags, in the formats of docs/BUNDLE.md, so
that every tool (`vitrine info/recommend/batch/serve`, vitrine-bench) runs on them. Nothing here
is trained: the storefronts mean nothing, the costs are real.

    /usr/bin/python3 -m train.bundle_scale --out build/scale --d-model 512 --heads 8 \
        --enc-layers 4 --dec-layers 2 --keywords 300000 --themes 20000 --products 1000000

writes OUT/bundle, OUT/catalog and OUT/requests.jsonl (--requests requests, each with a history
of --history events). The defaults are the issue's production size; `make test` builds a tiny
one (train/tests/test_bundle_scale.py).
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from . import bundle as B
from .data import Tables
from .model import Config, Model
from .shop import REGIONS
from .vocab import Vocab

ACTION_NAMES = ("view", "search", "cart", "purchase")


def _word(i):
    """A pronounceable, unique word for index i (letters only)."""
    cons, vow = "bcdfghjklmnprstvz", "aeiou"
    s = ""
    i += 1
    while i:
        i, r = divmod(i, len(cons) * len(vow))
        s += cons[r % len(cons)] + vow[r // len(cons)]
    return s


def phrases(n, words, lo, hi, rng, taken=()):
    """n distinct phrases of lo..hi words drawn from `words` with a Zipf-like skew."""
    w = np.asarray(words)
    p = 1.0 / np.arange(1, len(w) + 1) ** 0.8
    p /= p.sum()
    out, seen = [], set(taken)
    while len(out) < n:
        m = n - len(out)
        lens = rng.integers(lo, hi + 1, size=m * 2)
        draws = rng.choice(len(w), size=(m * 2, hi), p=p)
        for k, row in zip(lens, draws):
            ph = " ".join(w[row[:k]])
            if ph not in seen:
                seen.add(ph)
                out.append(ph)
                if len(out) == n:
                    break
    return out


def write_catalog(out_dir, a, model, model_version, tables, rng):
    """products.tsv, embeddings.safetensors and the manifest, streamed in chunks (1M products
    do not fit Python lists comfortably)."""
    tmp = B._prepare(out_dir, True)
    P, K, L = a.products, a.keywords, model.cfg.code_levels
    R = model.cfg.d_retrieval
    names = [r["name"] for r in tables.regions]
    seasons = B.SEASON_NAMES
    emb = np.empty((P, R), dtype=np.float32)
    chunk = 65536
    # each keyword gets at least one product, the rest at random: ~a.kw_per_product per product
    with open(os.path.join(tmp, "products.tsv"), "w", encoding="utf-8", newline="\n") as f:
        f.write(B.PRODUCTS_HEADER + "\n")
        for s in range(0, P, chunk):
            e = min(P, s + chunk)
            n = e - s
            codes = rng.integers(0, model.cfg.codebook, size=(n, L))
            with torch.no_grad():
                emb[s:e] = model.product_vectors(torch.from_numpy(codes)).numpy()
            nkw = rng.integers(1, 2 * a.kw_per_product, size=n)
            kws = rng.integers(0, K, size=(n, 2 * a.kw_per_product))
            first = (np.arange(s, e) % K)  # every keyword has a product
            regs = rng.random((n, len(names))) < 0.8
            seas = rng.random((n, 4)) < 0.6
            pop = rng.zipf(1.6, size=n) - 1
            rel_n = rng.integers(0, 6, size=n)
            rel = rng.integers(0, P, size=(n, 5))
            stock = rng.integers(-2, 50, size=n)
            lines = []
            for i in range(n):
                g = s + i
                kw = sorted({int(first[i]), *map(int, kws[i, :nkw[i] - 1])})
                rg = [names[r] for r in range(len(names)) if regs[i, r]] or [names[g % len(names)]]
                se = [seasons[x] for x in range(4) if seas[i, x]] or [seasons[g % 4]]
                k = int(rel_n[i])
                wts = rng.dirichlet(np.ones(k)) * 0.9 if k else []
                lines.append("\t".join([
                    str(g), "p%07d" % g, str(int(stock[i])), ",".join(rg), ",".join(se),
                    ",".join(map(str, kw)), ",".join(map(str, codes[i])), str(int(min(pop[i], 10**6))),
                    ",".join("%d:%.9g" % (int(b), float(np.float32(w)))
                             for b, w in zip(rel[i, :k], wts)),
                    "product %d" % g]))
            f.write("\n".join(lines) + "\n")
    if not np.isfinite(emb).all():
        raise ValueError("product embeddings have NaN or Inf values")
    B.write_safetensors(os.path.join(tmp, "embeddings.safetensors"), {"product_embeddings": emb},
                        {"format": B.CATALOG_FORMAT, "model_version": model_version})
    files = {f: {"sha256": B.sha256_file(os.path.join(tmp, f)),
                 "bytes": os.path.getsize(os.path.join(tmp, f))} for f in B.CATALOG_FILES}
    manifest = {
        "format": B.CATALOG_FORMAT, "format_version": B.FORMAT_VERSION,
        "catalog_version": "scale-%dp-%dk" % (P, K), "model_version": model_version,
        "n_products": P, "d_retrieval": R, "code_levels": L, "codebook": model.cfg.codebook,
        "n_keywords": K, "keywords_sha256": B.keywords_sha256(tables), "regions": names,
        "files": files}
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    B._commit(tmp, out_dir)
    return manifest


def write_requests(path, a, tables, rng, now=1767225600):
    """Requests with histories of a.history events: views, carts and purchases of random
    products, searches of keyword words."""
    kw_words = [w for w in tables.vocab.itos[5:]]
    with open(path, "w") as f:
        for r in range(a.requests):
            ev = []
            t = now - 86400 * 30
            for i in range(a.history):
                t += int(rng.integers(10, 86400 * 30 // max(1, a.history)))
                act = ACTION_NAMES[int(rng.choice(4, p=[0.6, 0.25, 0.1, 0.05]))]
                e = {"action": act, "ts": min(t, now - 1)}
                if act == "search":
                    e["query"] = " ".join(rng.choice(kw_words, size=int(rng.integers(1, 4))))
                else:
                    e["item"] = "p%07d" % int(rng.integers(0, a.products))
                ev.append(e)
            req = {"now": now, "region": tables.regions[r % len(tables.regions)]["name"],
                   "shopper_id": "s%06d" % r, "events": ev, "sections": a.sections,
                   "keywords_per_section": a.kw_per_section,
                   "products_per_section": a.products_per_section, "exclude": []}
            f.write(json.dumps(req, separators=(",", ":")) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--out", required=True, help="writes OUT/bundle, OUT/catalog, OUT/requests.jsonl")
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--enc-layers", type=int, default=4)
    ap.add_argument("--dec-layers", type=int, default=2)
    ap.add_argument("--d-ff", type=int, default=0, help="default 4 x d_model")
    ap.add_argument("--d-retrieval", type=int, default=128)
    ap.add_argument("--max-events", type=int, default=256, help="the history the model reads")
    ap.add_argument("--words", type=int, default=30000, help="vocabulary words")
    ap.add_argument("--keywords", type=int, default=300000)
    ap.add_argument("--themes", type=int, default=20000)
    ap.add_argument("--products", type=int, default=1000000)
    ap.add_argument("--kw-per-product", type=int, default=2, help="keywords per product, mean")
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--history", type=int, default=64, help="events per request")
    ap.add_argument("--sections", type=int, default=3)
    ap.add_argument("--kw-per-section", type=int, default=4)
    ap.add_argument("--products-per-section", type=int, default=8)
    ap.add_argument("--seed", type=int, default=13)
    a = ap.parse_args(argv)
    if a.d_model % a.heads:
        ap.error("--d-model must be a multiple of --heads")
    if a.keywords + a.themes > 50 * a.words:
        ap.error("--words too few for that many distinct phrases")
    rng = np.random.default_rng(a.seed)
    torch.manual_seed(a.seed)
    t0 = time.time()
    words = sorted({_word(i) for i in range(a.words)})
    themes = phrases(a.themes, words, 2, 3, rng)
    kws = phrases(a.keywords, words, 1, 4, rng, taken=themes)
    regions = [{"name": n, "season_offset": o, "fixed_season": f} for n, o, f in REGIONS]
    tables = Tables(Vocab.from_phrases(themes + kws), themes, kws, regions)
    cfg = Config(vocab_size=len(tables.vocab), n_regions=len(regions), d_model=a.d_model,
                 n_heads=a.heads, n_enc_layers=a.enc_layers, n_dec_layers=a.dec_layers,
                 d_ff=a.d_ff or 4 * a.d_model, d_retrieval=a.d_retrieval, max_events=a.max_events)
    model = Model(cfg).eval()
    print("tables: %d words, %d themes, %d keywords (%.1f s)" %
          (len(tables.vocab), len(themes), len(kws), time.time() - t0), file=sys.stderr)
    m = B.export_bundle(os.path.join(a.out, "bundle"), model, tables, force=True, name="scale",
                        metrics={"note": "random weights: for benchmarks only"})
    print("bundle: %s, %.1f M parameters (%.1f s)" %
          (m["model_version"], sum(p.numel() for p in model.parameters()) / 1e6,
           time.time() - t0), file=sys.stderr)
    c = write_catalog(os.path.join(a.out, "catalog"), a, model, m["model_version"], tables, rng)
    print("catalog: %d products (%.1f s)" % (c["n_products"], time.time() - t0), file=sys.stderr)
    write_requests(os.path.join(a.out, "requests.jsonl"), a, tables, rng)
    print("requests: %d x %d events -> %s (%.1f s)" %
          (a.requests, a.history, os.path.join(a.out, "requests.jsonl"), time.time() - t0),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
