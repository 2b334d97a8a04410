"""The bundle (model) and catalogue directories the server loads: writing, reading, validating.

The formats are specified in docs/BUNDLE.md. Every problem found while reading raises BundleError
with a message that starts with the offending file's path.
"""
import hashlib
import json
import math
import os
import shutil
import struct

import numpy as np
import torch

from .data import ACTIONS, LIMITS, Catalog, Tables
from .model import Config, Model
from .vocab import SPECIALS, Vocab

BUNDLE_FORMAT, CATALOG_FORMAT, FORMAT_VERSION = "vitrine-bundle", "vitrine-catalog", 1
BUNDLE_FILES = ("model.safetensors", "vocab.txt", "themes.tsv", "keywords.tsv")
CATALOG_FILES = ("products.tsv", "embeddings.safetensors")
SEASON_NAMES = ("winter", "spring", "summer", "autumn")
PRODUCTS_HEADER = "index\tid\tstock\tregions\tseasons\tkeywords\tcodes\tpopularity\trelated\ttitle"
_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
           "BF16": None}  # BF16 is widened to float32 on load
_NP_TO_ST = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
             np.dtype(np.int64): "I64", np.dtype(np.int32): "I32"}


class BundleError(Exception):
    pass


# ---- safetensors ------------------------------------------------------------------------------
def write_safetensors(path, tensors, metadata=None):
    """tensors: name -> numpy array. Data laid out in name order, header padded to 8 bytes."""
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        if a.dtype not in _NP_TO_ST:
            raise ValueError("%s: unsupported dtype %s" % (name, a.dtype))
        b = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _NP_TO_ST[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    """-> (dict name -> numpy array, metadata dict). Validates the layout strictly."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise BundleError("%s: cannot read (%s)" % (path, e.strerror))
    if len(raw) < 8:
        raise BundleError("%s: truncated (no safetensors header)" % path)
    (hlen,) = struct.unpack("<Q", raw[:8])
    if hlen > len(raw) - 8 or hlen > 100 * 1024 * 1024:
        raise BundleError("%s: header length %d exceeds the file" % (path, hlen))
    try:
        header = json.loads(raw[8:8 + hlen])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError("%s: header is not valid JSON (%s)" % (path, e))
    if not isinstance(header, dict):
        raise BundleError("%s: header is not a JSON object" % path)
    meta = header.pop("__metadata__", {}) or {}
    data = raw[8 + hlen:]
    out, spans = {}, []
    for name, info in header.items():
        try:
            dt, shape, (b, e) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise BundleError("%s: tensor %s has a malformed entry" % (path, name))
        if dt not in _DTYPES:
            raise BundleError("%s: tensor %s has unsupported dtype %s" % (path, name, dt))
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            raise BundleError("%s: tensor %s has a bad shape %s" % (path, name, shape))
        item = 2 if dt in ("F16", "BF16") else np.dtype(_DTYPES[dt]).itemsize
        n = math.prod(shape)
        if not (isinstance(b, int) and isinstance(e, int) and 0 <= b <= e <= len(data)):
            raise BundleError("%s: tensor %s data [%s, %s) lies outside the file (%d data bytes)"
                              " - truncated?" % (path, name, b, e, len(data)))
        if e - b != n * item:
            raise BundleError("%s: tensor %s has %d bytes for shape %s %s" %
                              (path, name, e - b, shape, dt))
        spans.append((b, e, name))
        buf = data[b:e]
        if dt == "BF16":
            u = np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16
            arr = u.view(np.float32)
        else:
            arr = np.frombuffer(buf, dtype=np.dtype(_DTYPES[dt]).newbyteorder("<"))
            arr = arr.astype(np.float32) if dt == "F16" else arr.astype(_DTYPES[dt])
        out[name] = arr.reshape(shape).copy()
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise BundleError("%s: tensors %s and %s overlap" % (path, n0, n1))
    return out, meta


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- export -------------------------------------------------------------------------------------
def check_weights(model):
    """Refuses NaN/Inf weights and shapes that do not match the model's config."""
    ref = Model(model.cfg).state_dict()
    state = model.state_dict()
    if set(ref) != set(state):
        raise ValueError("state dict tensors differ from the config's model: missing %s, extra %s"
                         % (sorted(set(ref) - set(state))[:3], sorted(set(state) - set(ref))[:3]))
    for name, t in state.items():
        if tuple(t.shape) != tuple(ref[name].shape):
            raise ValueError("tensor %s has shape %s, the config implies %s" %
                             (name, tuple(t.shape), tuple(ref[name].shape)))
        if not torch.isfinite(t).all():
            raise ValueError("tensor %s has NaN or Inf values" % name)


def _prepare(out_dir, force):
    if os.path.exists(out_dir) and os.listdir(out_dir) and not force:
        raise FileExistsError("%s exists; pass --force to overwrite it" % out_dir)
    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    return tmp


def _commit(tmp, out_dir):
    if os.path.exists(out_dir):
        old = out_dir.rstrip("/") + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        shutil.rmtree(old)
    else:
        os.rename(tmp, out_dir)


def _write_lines(path, lines):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")


def export_bundle(out_dir, model, tables, metrics=None, force=False, name="student",
                  decode=None, ranker=None):
    check_weights(model)
    tmp = _prepare(out_dir, force)
    state = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    write_safetensors(os.path.join(tmp, "model.safetensors"), state,
                      {"format": BUNDLE_FORMAT, "model": name})
    _write_lines(os.path.join(tmp, "vocab.txt"), tables.vocab.itos)
    _write_lines(os.path.join(tmp, "themes.tsv"),
                 ["%d\t%s" % (i, t) for i, t in enumerate(tables.theme_texts)])
    _write_lines(os.path.join(tmp, "keywords.tsv"),
                 ["%d\t%s" % (i, k) for i, k in enumerate(tables.keyword_texts)])
    files = {f: {"sha256": sha256_file(os.path.join(tmp, f)),
                 "bytes": os.path.getsize(os.path.join(tmp, f))} for f in BUNDLE_FILES}
    from .cascade import DEFAULT_RANKER, KEYWORD_BEAM, THEME_BEAM, learned_ranker
    ranker = dict(DEFAULT_RANKER, **(ranker or {}))
    if learned_ranker(ranker) is not None:  # refused here, not by the engine, when malformed
        ranker = {k: v for k, v in ranker.items() if k not in ("again", "cooc", "popularity")}
    manifest = {
        "format": BUNDLE_FORMAT, "format_version": FORMAT_VERSION,
        "model_version": "%s-%s" % (name, files["model.safetensors"]["sha256"][:12]),
        "config": model.cfg.to_dict(),
        "decode": decode or {"theme_beam": THEME_BEAM, "keyword_beam": KEYWORD_BEAM},
        "special_tokens": {s.strip("<>"): i for i, s in enumerate(SPECIALS)},
        "actions": list(ACTIONS), "regions": tables.regions, "limits": LIMITS,
        "ranker": ranker,
        "files": files, "metrics": metrics or {},
    }
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    _commit(tmp, out_dir)
    return manifest


def keywords_sha256(tables):
    """sha256 of keywords.tsv as the bundle writes it: a catalogue's keyword ids refer to it."""
    text = "".join("%d\t%s\n" % (i, k) for i, k in enumerate(tables.keyword_texts))
    return hashlib.sha256(text.encode()).hexdigest()


def export_catalog(out_dir, catalog, tables, model, model_version, version, force=False):
    with torch.no_grad():
        emb = model.product_vectors(torch.from_numpy(catalog.codes)).numpy().astype(np.float32)
    if not np.isfinite(emb).all():
        raise ValueError("product embeddings have NaN or Inf values")
    tmp = _prepare(out_dir, force)
    rows = [PRODUCTS_HEADER]
    for i, pid in enumerate(catalog.ids):
        rows.append("\t".join([
            str(i), pid, str(catalog.stock[i]),
            ",".join(tables.regions[r]["name"] for r in catalog.regions[i]),
            ",".join(SEASON_NAMES[s] for s in catalog.seasons[i]),
            ",".join(str(k) for k in catalog.keywords[i]),
            ",".join(str(int(c)) for c in catalog.codes[i]),
            str(catalog.popularity[i]),
            ",".join("%d:%.9g" % (b, w) for b, w in catalog.related[i]),
            catalog.titles[i].replace("\t", " ")]))
    _write_lines(os.path.join(tmp, "products.tsv"), rows)
    write_safetensors(os.path.join(tmp, "embeddings.safetensors"), {"product_embeddings": emb},
                      {"format": CATALOG_FORMAT, "model_version": model_version})
    files = {f: {"sha256": sha256_file(os.path.join(tmp, f)),
                 "bytes": os.path.getsize(os.path.join(tmp, f))} for f in CATALOG_FILES}
    manifest = {
        "format": CATALOG_FORMAT, "format_version": FORMAT_VERSION,
        "catalog_version": version, "model_version": model_version,
        "n_products": len(catalog.ids), "d_retrieval": model.cfg.d_retrieval,
        "code_levels": model.cfg.code_levels, "codebook": model.cfg.codebook,
        "n_keywords": len(tables.keyword_texts),
        "keywords_sha256": keywords_sha256(tables),
        "regions": [r["name"] for r in tables.regions], "files": files,
    }
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    _commit(tmp, out_dir)
    return manifest


# ---- load -----------------------------------------------------------------------------------
def _manifest(d, fmt):
    path = os.path.join(d, "manifest.json")
    try:
        with open(path) as f:
            m = json.load(f)
    except OSError as e:
        raise BundleError("%s: cannot read (%s)" % (path, e.strerror))
    except json.JSONDecodeError as e:
        raise BundleError("%s: not valid JSON (%s)" % (path, e))
    if not isinstance(m, dict) or m.get("format") != fmt:
        raise BundleError("%s: format is not %r" % (path, fmt))
    if m.get("format_version") != FORMAT_VERSION:
        raise BundleError("%s: format_version %r, this reader knows %d" %
                          (path, m.get("format_version"), FORMAT_VERSION))
    for f, info in (m.get("files") or {}).items():
        p = os.path.join(d, f)
        if not os.path.exists(p):
            raise BundleError("%s: missing (listed in the manifest)" % p)
        if os.path.getsize(p) != info.get("bytes"):
            raise BundleError("%s: %d bytes, the manifest says %s - truncated or replaced" %
                              (p, os.path.getsize(p), info.get("bytes")))
        if sha256_file(p) != info.get("sha256"):
            raise BundleError("%s: sha256 does not match the manifest - corrupt" % p)
    return m


def _lines(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().split("\n")[:-1]
    except (OSError, UnicodeDecodeError) as e:
        raise BundleError("%s: cannot read (%s)" % (path, e))


def _table(path):
    out = []
    for n, line in enumerate(_lines(path)):
        parts = line.split("\t")
        if len(parts) != 2 or parts[0] != str(n):
            raise BundleError("%s:%d: expected '%d<TAB>text'" % (path, n + 1, n))
        out.append(parts[1])
    return out


def _check_calibration(m, cfg, path):
    """ranker.calibration as engine/bundle.c's vt_bundle_check_calibration takes it."""
    from .cascade import CALIB_CATEGORIES
    cal = (m.get("ranker") or {}).get("calibration", 0.0)
    if isinstance(cal, bool) or not isinstance(cal, (int, float)) or not 0 <= cal <= 1:
        raise BundleError("%s: ranker.calibration must be in 0..1, not %r" % (path, cal))
    if cal > 0 and cfg.codebook > CALIB_CATEGORIES:
        raise BundleError("%s: ranker.calibration needs a codebook of at most %d entries, not %d"
                          % (path, CALIB_CATEGORIES, cfg.codebook))


def load_bundle(d):
    """-> (model, tables, manifest)."""
    m = _manifest(d, BUNDLE_FORMAT)
    for f in BUNDLE_FILES:
        if f not in m.get("files", {}):
            raise BundleError("%s: the manifest does not list %s" % (os.path.join(d, "manifest.json"), f))
    try:
        cfg = Config(**m["config"])
    except (KeyError, TypeError) as e:
        raise BundleError("%s: bad config (%s)" % (os.path.join(d, "manifest.json"), e))
    _check_calibration(m, cfg, os.path.join(d, "manifest.json"))
    itos = _lines(os.path.join(d, "vocab.txt"))
    if itos[:len(SPECIALS)] != list(SPECIALS):
        raise BundleError("%s: the first tokens must be %s" % (os.path.join(d, "vocab.txt"),
                                                               " ".join(SPECIALS)))
    vocab = Vocab(itos[len(SPECIALS):])
    if len(vocab) != cfg.vocab_size:
        raise BundleError("%s: %d tokens, the config says vocab_size %d" %
                          (os.path.join(d, "vocab.txt"), len(vocab), cfg.vocab_size))
    themes, kws = _table(os.path.join(d, "themes.tsv")), _table(os.path.join(d, "keywords.tsv"))
    for path, texts in (("themes.tsv", themes), ("keywords.tsv", kws)):
        for i, t in enumerate(texts):
            if not t or any(w not in vocab.stoi for w in t.split()):
                raise BundleError("%s:%d: phrase %r has words outside vocab.txt" %
                                  (os.path.join(d, path), i + 1, t))
    regions = m.get("regions")
    if not isinstance(regions, list) or len(regions) != cfg.n_regions:
        raise BundleError("%s: regions must list n_regions=%d entries" %
                          (os.path.join(d, "manifest.json"), cfg.n_regions))
    tables = Tables(vocab, themes, kws, regions)
    path = os.path.join(d, "model.safetensors")
    tensors, _ = read_safetensors(path)
    model = Model(cfg)
    ref = model.state_dict()
    missing = sorted(set(ref) - set(tensors))
    if missing:
        raise BundleError("%s: missing tensor %s" % (path, missing[0]))
    extra = sorted(set(tensors) - set(ref))
    if extra:
        raise BundleError("%s: unexpected tensor %s" % (path, extra[0]))
    state = {}
    for k, v in ref.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise BundleError("%s: tensor %s has shape %s, the config implies %s" %
                              (path, k, list(tensors[k].shape), list(v.shape)))
        if not np.isfinite(tensors[k]).all():
            raise BundleError("%s: tensor %s has NaN or Inf values" % (path, k))
        state[k] = torch.from_numpy(tensors[k].astype(np.float32))
    model.load_state_dict(state)
    model.eval()
    return model, tables, m


def load_catalog(d, tables, cfg, model_version=None):
    m = _manifest(d, CATALOG_FORMAT)
    mpath = os.path.join(d, "manifest.json")
    if m.get("regions") != [r["name"] for r in tables.regions]:
        raise BundleError("%s: regions %s do not match the bundle's" % (mpath, m.get("regions")))
    if m.get("n_keywords") != len(tables.keyword_texts):
        raise BundleError("%s: n_keywords %s, the bundle has %d keywords" %
                          (mpath, m.get("n_keywords"), len(tables.keyword_texts)))
    if m.get("keywords_sha256") != keywords_sha256(tables):
        raise BundleError("%s: keywords_sha256 does not match the bundle's keywords.tsv" % mpath)
    if model_version is not None and m.get("model_version") != model_version:
        raise BundleError("%s: embeddings were made by model %s, the bundle is %s" %
                          (mpath, m.get("model_version"), model_version))
    path = os.path.join(d, "products.tsv")
    rows = _lines(path)
    if not rows or rows[0] != PRODUCTS_HEADER:
        raise BundleError("%s: missing or wrong header line" % path)
    rname = {r["name"]: i for i, r in enumerate(tables.regions)}
    ids, titles, kws, regs, seas, stock, codes, pop, rel = [], [], [], [], [], [], [], [], []
    for n, line in enumerate(rows[1:]):
        ln = n + 2
        p = line.split("\t")
        try:
            if len(p) != 10 or p[0] != str(n):
                raise ValueError("expected 10 fields starting with index %d" % n)
            k = [int(x) for x in p[5].split(",") if x]
            c = [int(x) for x in p[6].split(",")]
            if any(x < 0 or x >= len(tables.keyword_texts) for x in k):
                raise ValueError("keyword id out of range")
            if len(c) != cfg.code_levels or any(x < 0 or x >= cfg.codebook for x in c):
                raise ValueError("codes must be %d ints in 0..%d" % (cfg.code_levels,
                                                                     cfg.codebook - 1))
            regs.append([rname[x] for x in p[3].split(",") if x])
            seas.append([SEASON_NAMES.index(x) for x in p[4].split(",") if x])
            stock.append(int(p[2]))
            pop.append(int(p[7]))
            if pop[-1] < 0:
                raise ValueError("popularity must be >= 0")
            r = []
            for pair in (x for x in p[8].split(",") if x):
                b, w = pair.split(":")
                r.append((int(b), float(np.float32(float(w)))))
                if not 0 <= r[-1][0] < len(rows) - 1 or not math.isfinite(r[-1][1]):
                    raise ValueError("related entry %r out of range" % pair)
            rel.append(r)
        except (ValueError, KeyError) as e:
            raise BundleError("%s:%d: %s" % (path, ln, e))
        ids.append(p[1])
        titles.append(p[9])
        kws.append(k)
        codes.append(c)
    if len(ids) != m.get("n_products"):
        raise BundleError("%s: %d products, the manifest says %s" % (path, len(ids),
                                                                    m.get("n_products")))
    epath = os.path.join(d, "embeddings.safetensors")
    t, _ = read_safetensors(epath)
    emb = t.get("product_embeddings")
    if emb is None or emb.shape != (len(ids), cfg.d_retrieval):
        raise BundleError("%s: product_embeddings must be (%d, %d)" % (epath, len(ids),
                                                                      cfg.d_retrieval))
    if not np.isfinite(emb).all():
        raise BundleError("%s: product_embeddings has NaN or Inf values" % epath)
    try:
        cat = Catalog(ids, titles, kws, regs, seas, stock, codes, len(tables.keyword_texts),
                      embeddings=emb.astype(np.float32), popularity=pop, related=rel)
    except ValueError as e:
        raise BundleError("%s: %s" % (path, e))
    return cat, m
