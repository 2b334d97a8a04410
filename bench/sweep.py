"""The scale sweep (issue #13): how the cascade's cost grows with one dimension at a time. The C
engine (build/bench_engine) and the batched PyTorch cascade (train/bench_batched.py, variant
`default`) run on the same generated bundle, catalogue and requests, at the same thread count and
batch size; each row says where the C engine's time goes and the achieved GFLOP/s of its GEMMs
against OpenBLAS's SGEMM rate (build/bench_sgemm) at the same shapes, measured in the same run.

    /usr/bin/python3 bench/sweep.py [--dims history,sections,keywords,products,width,catalog]
        [--quick] [--batch 32] [--threads 1] [--seconds 3] [--rounds 1]
        [--values DIM=V1,V2,...] [--budget-min M] [--out build/bench/sweep] [--cache build/sweep]
        [--build build]

Around a base configuration (d_model 256, 4 heads, 4 encoder + 2 decoder layers, d_ff 4 d_model,
d_retrieval 128, histories of 64 events, 3 sections of 4 keywords and 8 products, 100k products
and 30k keywords, 256 requests), one dimension varies at a time:

    history    16, 32, 64, 128, 256 events per request (max_events the same)
    sections   1, 2, 4, 8, 16
    keywords   2, 4, 8, 16 keywords per section
    products   4, 16, 64 products per section
    width      d_model 64, 128, 256, 512 (d_ff 4 d_model)
    catalog    10k/3k, 100k/30k, 1M/300k products/keywords

The catalogue's vocabulary and themes grow with its keywords (words = max(300, keywords / 10),
themes = max(64, keywords / 15): 30k words and 20k themes at 300k keywords, the issue's production
size). `--quick` is a tiny version of all of it (seconds; tests/bench/test_sweep.py), `--values`
replaces a dimension's values (catalog values as PRODUCTS:KEYWORDS), `--budget-min` starts no
row after that many minutes (the rows left are reported as skipped).

Bundles come from train/bundle_scale.py (random weights: the storefronts mean nothing, the costs
are real) and are cached under CACHE/<key>/, the key naming the generator's arguments and a hash
of them and of train/bundle_scale.py, so a rerun skips the generation. The page shape (sections,
keywords and products per section) is part of the requests only: its requests files are the
base's with those three fields rewritten, byte for byte what the generator writes for them (its
events are drawn before and independently of them; the test checks it), so these dimensions share
one bundle.

Per row: bench_engine --batches B (requests/s, batch p50, the time per phase, the GEMM FLOPs per
phase counted at every SGEMM call), then bench_sgemm at the row's GEMM shapes, then
train.bench_batched --variants default --batches B --threads T, run by `sweep.py --torch-phases`,
which also times the batched cascade's phases as it runs (torch_phases below);
OPENBLAS_NUM_THREADS and OMP_NUM_THREADS are T for all three. Rows that measure the same
configuration (the base is in every dimension) are measured once.

FLOPs (a multiply-add counts 2), per batch of B requests. n_i = min(events_i, max_events) + 1 is
the encoder rows of request i (the context token first, no padding: the C engine's ragged rows),
N = sum n_i, C = d_model, F = d_ff, Q = n_queries, R = d_retrieval, Le and Ld the encoder and
decoder layers; a GEMM of M rows, K inputs and N outputs is 2 M N K:

    encoder GEMMs = 2 N C (Le (4C + 2F) + 2C)          per layer: qkv 3C, proj C, fc1 F, fc2 C
                                                        (from F); the Query-Former's K/V 2C
                  + 2 B Q C (2C + 2F + 2 Ld C)          Query-Former q, proj C each, fc1 F, fc2
                                                        C; each decoder layer's memory K/V 2C
                  + 2 B C R                             the user vector
    decoder GEMMs = rows x Ld x 2 C (6C + 2F)           per decoded beam row and layer: qkv 3C,
                                                        self proj C, cross q C, cross proj C,
                                                        fc1 F, fc2 C

where rows is the beam rows the decoder ran for the batch (both stages, every step), read off
bench_engine's count of the decoder's SGEMM FLOPs (its count of the encoder's must equal the
formula above: the test checks it). Not GEMMs in the C engine, so not counted: the encoder's
self-attention (4 C sum n_i^2 per layer, reported apart as enc_attn_gflop), the time projection of
the event embedding, the beam step's child logits and retrieval's dot products.

Achieved GFLOP/s: encoder GEMM FLOPs / the encoder phase's time (ms_encode: featurisation,
embedding, encoder, Query-Former, user vector and the memory's K/V; about share_encode x the
batch's time), decoder GEMM FLOPs / the decoder steps' time (ms_decode, without the beam step).
Both phases do more than GEMMs, so these are lower bounds of the GEMMs' own rate. The SGEMM
reference of a phase is OpenBLAS at that phase's shapes: sum of FLOPs / sum (FLOPs of shape s /
SGEMM rate at s), the rate its GEMMs would have run back to back; the decoder's shapes take M =
the mean beam rows per step (rows / steps). SGEMM at 1024^3 is measured once per run, for
reference (not a peak: with one thread the encoder's shapes can run faster).

Writes OUT/results.jsonl (one line per dimension and value, written as it goes), OUT/run.json
(the run's parameters and machine), OUT/tables.md and OUT/sweep-DIM.png per dimension, and prints
the markdown tables last.
"""
import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = "/usr/bin/python3"
GENERATOR = os.path.join(ROOT, "train", "bundle_scale.py")
N_QUERIES = 4  # train.model.Config's default, which bundle_scale keeps

BASE = dict(d_model=256, heads=4, enc_layers=4, dec_layers=2, d_retrieval=128, history=64,
            products=100000, keywords=30000, kw_per_product=2, requests=256, seed=13,
            sections=3, kw_per_section=4, products_per_section=8)
VALUES = dict(history=[16, 32, 64, 128, 256], sections=[1, 2, 4, 8, 16], keywords=[2, 4, 8, 16],
              products=[4, 16, 64], width=[64, 128, 256, 512],
              catalog=[(10000, 3000), (100000, 30000), (1000000, 300000)])  # the costliest last
QUICK_BASE = dict(d_model=32, heads=2, enc_layers=1, dec_layers=1, d_retrieval=16, history=8,
                  products=1000, keywords=300, kw_per_product=2, requests=16, seed=13,
                  sections=2, kw_per_section=2, products_per_section=4)
QUICK_VALUES = dict(history=[4, 8], sections=[1, 2], keywords=[2, 4], products=[4, 8],
                    catalog=[(1000, 300), (2000, 600)], width=[16, 32])
DIMS = list(VALUES)
PAGE = ("sections", "kw_per_section", "products_per_section")  # in the requests only
PHASES = ("encode", "decode", "beam", "retrieve")  # bench_engine's share_* and ms_*
LABEL = dict(history="history", sections="sections", keywords="keywords/section",
             products="products/section", catalog="products/keywords", width="d_model")


def with_value(base, dim, v):
    """The base configuration with one dimension set to v."""
    c = dict(base)
    if dim == "history":
        c["history"] = v
    elif dim == "sections":
        c["sections"] = v
    elif dim == "keywords":
        c["kw_per_section"] = v
    elif dim == "products":
        c["products_per_section"] = v
    elif dim == "catalog":
        c["products"], c["keywords"] = v
    elif dim == "width":
        c["d_model"] = v
    return c


def value_label(dim, v):
    if dim == "catalog":
        return "%s/%s" % (short(v[0]), short(v[1]))
    return str(v)


def short(n):
    for div, suf in ((10 ** 6, "M"), (10 ** 3, "k")):
        if n >= div and n % (div // 10) == 0:
            return ("%g" % (n / div)) + suf
    return str(n)


def generator_args(c):
    """train.bundle_scale's arguments for configuration c (the page shape: the base's, rewritten
    in the requests afterwards)."""
    kw = c["keywords"]
    return ["--d-model", c["d_model"], "--heads", c["heads"], "--enc-layers", c["enc_layers"],
            "--dec-layers", c["dec_layers"], "--d-ff", 4 * c["d_model"],
            "--d-retrieval", c["d_retrieval"], "--max-events", c["history"],
            "--words", max(300, kw // 10), "--keywords", kw, "--themes", max(64, kw // 15),
            "--products", c["products"], "--kw-per-product", c["kw_per_product"],
            "--requests", c["requests"], "--history", c["history"], "--seed", c["seed"]]


def cache_key(args):
    h = hashlib.sha1(json.dumps([str(a) for a in args]).encode())
    with open(GENERATOR, "rb") as f:
        h.update(f.read())
    a = dict(zip(args[::2], args[1::2]))
    return "d%s-L%sx%s-h%s-p%s-k%s-%s" % (a["--d-model"], a["--enc-layers"], a["--dec-layers"],
                                          a["--history"], short(a["--products"]),
                                          short(a["--keywords"]), h.hexdigest()[:10])


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def ensure_bundle(cache, c, base_page):
    """CACHE/<key>/{bundle,catalog,requests.jsonl} for configuration c, generated unless a
    finished copy is there (its args.json written last). -> (dir, seconds spent generating)."""
    page = ["--sections", base_page[0], "--kw-per-section", base_page[1],
            "--products-per-section", base_page[2]]
    args = generator_args(c)
    d = os.path.join(cache, cache_key(args + page))
    marker = os.path.join(d, "args.json")
    if os.path.exists(marker):
        return d, 0.0
    if os.path.exists(d):
        shutil.rmtree(d)  # an interrupted generation
    os.makedirs(d)
    cmd = [PY, "-m", "train.bundle_scale", "--out", d] + [str(a) for a in args + page]
    log("sweep: generating %s" % os.path.basename(d))
    t0 = time.time()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError("bundle_scale failed (%s):\n%s" % (" ".join(cmd), p.stderr[-3000:]))
    with open(marker, "w") as f:
        json.dump({"args": [str(a) for a in args], "page": [str(a) for a in page]}, f)
    return d, time.time() - t0


def requests_for(d, page, base_page):
    """The requests file of bundle dir d with page shape `page` (sections, keywords and products
    per section): the generated one, or a copy with those three fields rewritten."""
    src = os.path.join(d, "requests.jsonl")
    if tuple(page) == tuple(base_page):
        return src
    dst = os.path.join(d, "requests-s%d-k%d-p%d.jsonl" % tuple(page))
    if not os.path.exists(dst):
        tmp = dst + ".tmp"
        with open(src) as fi, open(tmp, "w") as fo:
            for line in fi:
                r = json.loads(line)
                r["sections"], r["keywords_per_section"], r["products_per_section"] = page
                fo.write(json.dumps(r, separators=(",", ":")) + "\n")
        os.replace(tmp, dst)
    return dst


def run_json(cmd, env, what):
    """Runs cmd; -> its stdout's JSON lines (a failure raises with its stderr)."""
    p = subprocess.run([str(x) for x in cmd], cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError("%s failed (rc %d): %s" % (what, p.returncode, p.stderr[-3000:]))
    return [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")]


def sgemm(build, shapes, env, seconds):
    """{(m, n, k): GFLOP/s} from bench_sgemm at the given shapes."""
    shapes = sorted(set(shapes))
    out = run_json([os.path.join(build, "bench_sgemm"), "--shapes",
                    ",".join("%dx%dx%d" % s for s in shapes), "--seconds", seconds], env,
                   "bench_sgemm")
    return {(r["m"], r["n"], r["k"]): r["gflops"] for r in out}


def enc_gemms(c, B, n_rows):
    """The encoder's GEMMs for a batch of B requests with n_rows encoder rows in all:
    [(M, N, K, calls)] (the formula of the module docstring, term by term)."""
    C, F, R, Q = c["d_model"], 4 * c["d_model"], c["d_retrieval"], N_QUERIES
    Le, Ld, M = c["enc_layers"], c["dec_layers"], B * Q
    return [(n_rows, 3 * C, C, Le), (n_rows, C, C, Le), (n_rows, F, C, Le), (n_rows, C, F, Le),
            (n_rows, 2 * C, C, 1), (M, C, C, 2), (M, F, C, 1), (M, C, F, 1), (B, R, C, 1),
            (M, 2 * C, C, Ld)]


def dec_gemms(c, rows):
    """The decoder's GEMMs of one step over `rows` beam rows: [(M, N, K, calls)]."""
    C, F, Ld = c["d_model"], 4 * c["d_model"], c["dec_layers"]
    return [(rows, 3 * C, C, Ld), (rows, C, C, 3 * Ld), (rows, F, C, Ld), (rows, C, F, Ld)]


def flop(gemms):
    return sum(2.0 * m * n * k * calls for m, n, k, calls in gemms)


def sgemm_rate(gemms, rates):
    """The rate of these GEMMs run back to back at OpenBLAS's measured rates."""
    t = sum(2.0 * m * n * k * calls / rates[(m, n, k)] for m, n, k, calls in gemms)
    return flop(gemms) / t if t > 0 else None


def encoder_rows(requests, max_events):
    """Mean encoder rows per request and mean squared rows (for the attention FLOPs)."""
    n = []
    with open(requests) as f:
        for line in f:
            n.append(min(len(json.loads(line)["events"]), max_events) + 1)
    return sum(n) / len(n), sum(x * x for x in n) / len(n)


def torch_phases(argv):
    """`sweep.py --torch-phases ARGS`: train.bench_batched's main(ARGS), the batched cascade's
    phases timed as it runs (perf_counter around its methods; a CPU runs them synchronously),
    then one more JSON line: {"torch_seconds": {phase: seconds}} over every batch of the run,
    its warm-up included. decode: the decoder forwards (DecoderStep, prefix_forward); beam: the
    rest of beam_search (children, logits over the trie, selection, bookkeeping); retrieve:
    assemble (retrieval, filters, ranking, per request); encode: the rest of storefronts
    (validation, featurisation, encoder, Query-Former, user vectors, memory K/V)."""
    sys.path.insert(0, ROOT)
    from train import bench_batched, cascade_batched as cb
    t = dict(total=0.0, beam_search=0.0, decoder=0.0, assemble=0.0)

    def timed(fn, key):
        def run(*args, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                t[key] += time.perf_counter() - t0
        return run

    cls, init = cb.BatchedCascade, cb.BatchedCascade.__init__

    def init_timed(self, *args, **kw):
        init(self, *args, **kw)
        self.decoder = timed(self.decoder, "decoder")

    cls.__init__ = init_timed
    cls.storefronts = timed(cls.storefronts, "total")
    cls.beam_search = timed(cls.beam_search, "beam_search")
    cls.assemble = timed(cls.assemble, "assemble")
    cb.prefix_forward = timed(cb.prefix_forward, "decoder")
    rc = bench_batched.main(argv)
    print(json.dumps({"torch_seconds": {
        "encode": t["total"] - t["beam_search"] - t["assemble"], "decode": t["decoder"],
        "beam": t["beam_search"] - t["decoder"], "retrieve": t["assemble"]}}), flush=True)
    return rc


def measure(a, c, d, reqs, env):
    """One configuration: C engine, SGEMM at its shapes, batched PyTorch. -> the row's numbers."""
    B, T = a.batch, a.threads
    bundle, catalog = os.path.join(d, "bundle"), os.path.join(d, "catalog")
    cr = run_json([os.path.join(a.build, "bench_engine"), "--bundle", bundle, "--catalog", catalog,
                   "--requests", reqs, "--batches", B, "--seconds", a.seconds], env,
                  "bench_engine")[0]
    n1, n2 = encoder_rows(reqs, c["history"])
    C = c["d_model"]
    n_rows = int(round(B * n1))
    enc = enc_gemms(c, B, n_rows)
    enc_flop = flop(enc)
    row_flop = flop(dec_gemms(c, 1))  # decoder GEMM FLOPs per beam row
    rows = cr["gemm_gflop_decode"] * 1e9 / row_flop
    steps = cr["steps_per_batch"]
    m_dec = max(1, int(round(rows / steps))) if steps > 0 else 1
    dec = dec_gemms(c, m_dec)
    rates = sgemm(a.build, [g[:3] for g in enc + dec], env, a.sgemm_seconds)
    out = run_json([PY, os.path.join(ROOT, "bench", "sweep.py"), "--torch-phases", "--bundle",
                    bundle, "--catalog", catalog, "--requests", reqs, "--batches", B,
                    "--seconds", a.seconds, "--rounds", a.rounds, "--threads", T, "--variants",
                    "default"], env, "bench_batched")
    tr = next(r for r in out if r.get("engine") == "pytorch-batched")
    ts = next(r["torch_seconds"] for r in out if "torch_seconds" in r)
    c_rps, t_rps = cr["requests_per_s"], tr["requests_per_s"]
    shares = {k: cr["share_" + k] for k in PHASES}
    ms = {k: cr["ms_" + k] for k in PHASES}
    return {
        "c_requests_per_s": c_rps, "torch_requests_per_s": t_rps, "c_over_torch": c_rps / t_rps,
        "c_requests_per_cpu_s": cr["requests_per_cpu_s"],
        "torch_requests_per_cpu_s": tr["requests_per_cpu_s"],
        "c_over_torch_cpu": cr["requests_per_cpu_s"] / tr["requests_per_cpu_s"],
        "c_batch_ms_p50": cr["batch_ms_p50"], "c_batch_ms_p99": cr["batch_ms_p99"],
        "torch_batch_ms_p50": tr["batch_ms_p50"], "torch_batch_ms_p99": tr["batch_ms_p99"],
        "c_batches": cr["batches"], "torch_batches": tr["batches"],
        "shares": shares, "ms": ms,
        "torch_shares": {k: ts[k] / sum(ts.values()) for k in PHASES},
        "torch_ms": {k: ts[k] / sum(ts.values()) * 1e3 * B / t_rps for k in PHASES},
        "steps_per_batch": steps, "arena_mib": cr["arena_mib"],
        "enc_rows_per_batch": B * n1,
        "enc_gflop": enc_flop * 1e-9, "enc_gflop_counted": cr["gemm_gflop_encode"],
        "enc_attn_gflop": 4.0 * C * c["enc_layers"] * B * n2 * 1e-9,
        "dec_gflop_counted": cr["gemm_gflop_decode"], "dec_rows_per_batch": rows,
        "dec_rows_per_step": rows / steps if steps > 0 else None,
        "enc_gflops": enc_flop * 1e-9 / (ms["encode"] * 1e-3) if ms["encode"] > 0 else None,
        "dec_gflops": (cr["gemm_gflop_decode"] / (ms["decode"] * 1e-3)
                       if ms["decode"] > 0 else None),
        "sgemm_enc_gflops": sgemm_rate(enc, rates), "sgemm_dec_gflops": sgemm_rate(dec, rates),
        "sgemm_shapes": [{"m": m, "n": n, "k": k, "gflops": g} for (m, n, k), g in
                         sorted(rates.items())],
        "blas_threads": tr.get("blas_threads"),
    }


# ---- output -----------------------------------------------------------------------------------
def fmt(x, spec="%.1f"):
    return "-" if x is None else spec % x


def pct(x):
    return "-" if x is None else "%.0f%%" % (100 * x)


def table(dim, rows):
    """The markdown table of one dimension's rows."""
    out = ["### %s (%s)" % (dim, LABEL[dim]), "",
           "| %s | C req/s | PyTorch req/s | C / PyTorch | per CPU s | C batch ms | encode "
           "| decode steps | beam step | retrieve+rank | PyTorch enc/dec/beam/page | dec rows/step "
           "| enc GFLOP/s (SGEMM) | dec GFLOP/s (SGEMM) |" % LABEL[dim],
           "|" + " ---: |" * 14]
    for r in rows:
        if "error" in r:
            out.append("| %s | %s |" % (r["label"], r["error"].splitlines()[0][:100]))
            continue
        s, ts = r["shares"], r["torch_shares"]
        cells = [r["label"], fmt(r["c_requests_per_s"]), fmt(r["torch_requests_per_s"]),
                 "%.2fx" % r["c_over_torch"], "%.2fx" % r["c_over_torch_cpu"],
                 fmt(r["c_batch_ms_p50"], "%.2f")]
        cells += [pct(s[k]) for k in PHASES]
        cells += ["/".join("%.0f" % (100 * ts[k]) for k in PHASES) + "%",
                  fmt(r["dec_rows_per_step"]),
                  "%s (%s)" % (fmt(r["enc_gflops"]), fmt(r["sgemm_enc_gflops"])),
                  "%s (%s)" % (fmt(r["dec_gflops"]), fmt(r["sgemm_dec_gflops"]))]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot(dim, rows, path):
    """sweep-DIM.png: requests/s of both engines, their time per batch by phase, the C
    engine's GEMM GFLOP/s against OpenBLAS's."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in rows if "error" not in r]
    x = list(range(len(rows)))
    labels = [r["label"] for r in rows]
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.5))
    ax[0].plot(x, [r["c_requests_per_s"] for r in rows], "o-", label="C engine")
    ax[0].plot(x, [r["torch_requests_per_s"] for r in rows], "s--", label="batched PyTorch")
    ax[0].set_yscale("log")
    ax[0].set_ylabel("requests/s")
    ax[0].set_title("throughput")
    names = dict(encode="encoder", decode="decoder steps", beam="beam step",
                 retrieve="retrieval + ranking")
    for side, key, hatch in ((-0.2, "ms", None), (0.2, "torch_ms", "//")):
        bottom = [0.0] * len(rows)
        for i, k in enumerate(PHASES):
            v = [r[key][k] for r in rows]
            ax[1].bar([p + side for p in x], v, width=0.38, bottom=bottom, color="C%d" % i,
                      hatch=hatch, edgecolor="white" if hatch else None,
                      label=names[k] if hatch is None else None)
            bottom = [b + y for b, y in zip(bottom, v)]
    ax[1].bar([0], [0], color="white", edgecolor="grey", hatch="//", label="(hatched: PyTorch)")
    ax[1].set_ylabel("ms per batch")
    ax[1].set_title("time per batch by phase: C engine, batched PyTorch")
    for key, style, color, name in (
            ("enc_gflops", "o-", "C0", "encoder"),
            ("sgemm_enc_gflops", "o:", "C0", "SGEMM @ encoder shapes"),
            ("dec_gflops", "s-", "C1", "decoder steps"),
            ("sgemm_dec_gflops", "s:", "C1", "SGEMM @ decoder shapes")):
        ax[2].plot(x, [r[key] for r in rows], style, color=color, label=name)
    ax[2].set_ylabel("GFLOP/s")
    ax[2].set_title("C engine GEMMs against OpenBLAS")
    for a in ax:
        a.set_xticks(x)
        a.set_xticklabels(labels)
        a.set_xlabel(LABEL[dim])
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle("scale sweep: %s (batch %d, %d thread(s))" % (dim, rows[0]["batch"],
                                                              rows[0]["threads"])
                 if rows else dim)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def parse_values(specs, values):
    for spec in specs:
        dim, _, vals = spec.partition("=")
        if dim not in values or not vals:
            raise SystemExit("sweep: --values wants DIM=V1,V2 with DIM in %s" % ", ".join(DIMS))
        if dim == "catalog":
            values[dim] = [tuple(int(y) for y in v.split(":")) for v in vals.split(",")]
            if any(len(v) != 2 for v in values[dim]):
                raise SystemExit("sweep: catalog values are PRODUCTS:KEYWORDS")
        else:
            values[dim] = [int(v) for v in vals.split(",")]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--torch-phases"]:
        return torch_phases(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--dims", default=",".join(DIMS), help="comma-separated, from: " +
                    ", ".join(DIMS))
    ap.add_argument("--quick", action="store_true", help="the tiny sweep (tests)")
    ap.add_argument("--values", action="append", default=[], metavar="DIM=V1,V2",
                    help="replace a dimension's values (catalog: PRODUCTS:KEYWORDS,...)")
    ap.add_argument("--batch", type=int, help="batch size of both engines (32; quick 8)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, help="per engine and row (3; quick 0.3)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="bench_batched's turns (each one untimed batch, then its share of "
                         "--seconds)")
    ap.add_argument("--sgemm-seconds", type=float, help="per SGEMM shape (0.15; quick 0.02)")
    ap.add_argument("--budget-min", type=float,
                    help="start no row after this many minutes (the rest: skipped, so noted)")
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "bench", "sweep"))
    ap.add_argument("--cache", default=os.path.join(ROOT, "build", "sweep"))
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    a = ap.parse_args(argv)
    q = a.quick
    a.batch = a.batch or (8 if q else 32)
    a.seconds = a.seconds if a.seconds is not None else (0.3 if q else 3.0)
    a.sgemm_seconds = a.sgemm_seconds or (0.02 if q else 0.15)
    dims = [x for x in a.dims.split(",") if x]
    bad = [x for x in dims if x not in VALUES]
    if bad or not dims:
        ap.error("unknown dimension(s) %s; known: %s" % (", ".join(bad) or "(none)",
                                                          ", ".join(DIMS)))
    base = dict(QUICK_BASE if q else BASE)
    values = {k: list(v) for k, v in (QUICK_VALUES if q else VALUES).items()}
    parse_values(a.values, values)
    for exe in ("bench_engine", "bench_sgemm"):
        if not os.access(os.path.join(a.build, exe), os.X_OK):
            ap.error("%s/%s is missing: cmake --build %s" % (a.build, exe, a.build))
    os.makedirs(a.out, exist_ok=True)
    os.makedirs(a.cache, exist_ok=True)
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    base_page = tuple(base[k] for k in PAGE)
    t_start = time.time()
    sq = sgemm(a.build, [(1024, 1024, 1024)], env, 5 * a.sgemm_seconds)[(1024, 1024, 1024)]
    run = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join([PY, "bench/sweep.py"] + list(argv)),
           "host": platform.node(), "cpus": os.cpu_count(), "machine": platform.machine(),
           "batch": a.batch, "threads": a.threads, "seconds": a.seconds, "rounds": a.rounds,
           "quick": q, "base": base, "dims": dims, "values": {d: values[d] for d in dims},
           "sgemm_1024_gflops": sq, "loadavg_start": os.getloadavg()}
    res_path = os.path.join(a.out, "results.jsonl")
    open(res_path, "w").close()
    done = {}  # configuration -> its measurement (the base is in every dimension)
    by_dim = {}
    for dim in dims:
        for v in values[dim]:
            c = with_value(base, dim, v)
            row = {"dim": dim, "value": list(v) if isinstance(v, tuple) else v,
                   "label": value_label(dim, v), "config": c, "batch": a.batch,
                   "threads": a.threads, "sgemm_1024_gflops": sq}
            t0 = time.time()
            ck = json.dumps(c, sort_keys=True)
            try:
                if ck in done:
                    row.update(done[ck], same_as_earlier_row=True)
                elif a.budget_min and t0 - t_start > 60 * a.budget_min:
                    raise RuntimeError("skipped: the %g-minute budget was spent" % a.budget_min)
                else:
                    d, gen_s = ensure_bundle(a.cache, c, base_page)
                    reqs = requests_for(d, tuple(c[k] for k in PAGE), base_page)
                    done[ck] = dict(key=os.path.basename(d), generate_s=round(gen_s, 1),
                                    requests=os.path.relpath(reqs, ROOT))
                    done[ck].update(measure(a, c, d, reqs, env))
                    row.update(done[ck])
            except RuntimeError as e:
                row["error"] = str(e)
                log("sweep: %s=%s: %s" % (dim, row["label"], e))
            row["row_s"] = round(time.time() - t0, 1)
            by_dim.setdefault(dim, []).append(row)
            with open(res_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            if "error" not in row:
                log("sweep: %s=%s: C %.1f req/s, PyTorch %.1f req/s (%.0f s, %.0f s so far)" % (
                    dim, row["label"], row["c_requests_per_s"], row["torch_requests_per_s"],
                    row["row_s"], time.time() - t_start))
    run["elapsed_s"] = round(time.time() - t_start, 1)
    run["loadavg_end"] = os.getloadavg()
    with open(os.path.join(a.out, "run.json"), "w") as f:
        json.dump(run, f, indent=1)
    tables = []
    for dim in dims:
        plot(dim, by_dim[dim], os.path.join(a.out, "sweep-%s.png" % dim))
        tables.append(table(dim, by_dim[dim]))
    text = ("## Scale sweep, %s\n\n`%s`\n\nbatch %d, %d thread(s), %s, %d CPUs, load average "
            "%.2f at the start and %.2f at the end (1 min); OpenBLAS SGEMM at 1024^3: %.1f "
            "GFLOP/s; %.0f s in all. Shares: of the C engine's timed phases; GFLOP/s: achieved "
            "by the C engine's GEMMs (SGEMM: OpenBLAS at the same shapes).\n\n"
            % (run["started"], run["command"], a.batch, a.threads, run["host"], run["cpus"],
               run["loadavg_start"][0], run["loadavg_end"][0], sq, run["elapsed_s"])
            ) + "\n\n".join(tables) + "\n"
    with open(os.path.join(a.out, "tables.md"), "w") as f:
        f.write(text)
    print(text)
    return 1 if any("error" in r for rs in by_dim.values() for r in rs) else 0


if __name__ == "__main__":
    sys.exit(main())
