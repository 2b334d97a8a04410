/* Every op of kernels/ops_cuda.h timed on the device at the shapes the student (and teacher)
 * model runs for a batch of requests, against the card's own reference rates.
 *
 *   bench_cuda_kernels [--require-gpu] [--json FILE] [--reps N] [--warmup N] [--cold]
 *                      [--batches 64,512] [--teacher-batches 64] [--sgemm-n 8192]
 *                      [--copy-mib 256]
 *
 * Without CUDA in the build, or when no device answers, it prints one line
 * "bench_cuda_kernels: SKIP (reason)" and exits 0; with --require-gpu it exits 1 instead.
 *
 * Reference rates, measured first on the same device:
 *   copy   device-to-device cudaMemcpyAsync of --copy-mib MiB (vt_cuda_memcpy_d2d); GB/s counts
 *          the bytes read plus the bytes written (2 x size), as every op's byte count below does;
 *   SGEMM  vt_matmul_cuda at N = IN = OUT = --sgemm-n, no bias, no activation: the project's own
 *          cuBLAS FP32 GEMM (CUBLAS_DEFAULT_MATH, no TF32), 2 N^3 flops a call.
 * Each op row gives its median time per call, the bytes it must move at least and the flops it
 * does (formulas at each bench_* function), and from them GB/s and TFLOP/s, also as a share of
 * the copy rate and of the SGEMM rate. A row marked "xG" is G calls, one per beam-search group
 * or request, as the engine issues them; its time, bytes and flops are those of all G calls.
 *
 * Timing: CUDA events on the default stream (cudaEventElapsedTime), never host clocks. A sample
 * is `inner` back-to-back calls between two events (inner chosen so a sample lasts >= 20 us; the
 * events resolve ~0.5 us), divided by inner; a row's time is the median of --reps samples, after
 * one untimed call and --warmup host-timed calls. Small kernels finish faster than the host can
 * enqueue them (a launch costs the host a few microseconds), so a device left idle between calls
 * would time the host, not the kernel: before each chunk of samples (<= 1 ms of host enqueueing)
 * the stream gets a "head start" of device-to-device copies lasting 2x the chunk's expected
 * enqueue time, and an event after the head start is queried once the chunk is enqueued. If it
 * has not completed, every call of the chunk was queued before the device reached it: the
 * samples measure the device alone ("gated" in the JSON; the table marks a row with any ungated
 * sample with '~'). The head start evicts the L2 cache only at the start of a chunk: the samples
 * are warm-cache (inputs and weights L2-resident when they fit, as in a running engine), so GB/s
 * above the copy rate means L2 bandwidth. --cold copies max(2x L2, 32 MiB) before every sample
 * (and times one call per sample) for numbers from DRAM.
 *
 * Inputs are random but valid, as tests/test_cuda_ops.c builds them: indices in range, ragged
 * offsets (1 context token + 5..35 events per request, mean ~21 rows), a CSR keyword trie of as
 * many phrases as the Amazon Beauty bundle has keywords (its root with a few hundred children,
 * deeper nodes with one or two), KV-pool slots a random permutation.
 */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/decode.h"
#include "kernels/ops.h"
#include "kernels/ops_cuda.h"

#ifdef VITRINE_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

#define MAX_LIST 8 /* batch sizes per model */

typedef struct opts {
  int require_gpu, cold, reps, warmup, sgemm_n, copy_mib;
  int student_b[MAX_LIST], n_student_b; /* --batches: the student's batch sizes */
  int teacher_b[MAX_LIST], n_teacher_b; /* --teacher-batches */
  const char *json;
} opts;

static void usage(FILE *f) {
  fprintf(f, "usage: bench_cuda_kernels [--require-gpu] [--json FILE] [--reps N] [--warmup N] "
             "[--cold]\n"
             "                          [--batches 64,512] [--teacher-batches 64] "
             "[--sgemm-n 8192] [--copy-mib 256]\n");
}

/* "64,512" -> {64, 512}; "" or "0" -> none. 0 on success. */
static int parse_list(const char *s, int *out, int *n) {
  *n = 0;
  if (strcmp(s, "") == 0 || strcmp(s, "0") == 0) {
    return 0;
  }
  while (*s) {
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || v < 1 || v > 65536 || *n == MAX_LIST || (*end != ',' && *end != '\0')) {
      return -1;
    }
    out[(*n)++] = (int)v;
    s = *end == ',' ? end + 1 : end;
  }
  return 0;
}

static int parse_int(const char *s, int lo, int hi, int *out) {
  char *end;
  long v = strtol(s, &end, 10);
  if (end == s || *end != '\0' || v < lo || v > hi) {
    return -1;
  }
  *out = (int)v;
  return 0;
}

/* 0 to run, 1 for --help, -1 on a bad command line */
static int parse_opts(opts *o, int argc, char **argv) {
  *o = (opts){.reps = 100, .warmup = 10, .sgemm_n = 8192, .copy_mib = 256};
  o->student_b[0] = 64, o->student_b[1] = 512, o->n_student_b = 2;
  o->teacher_b[0] = 64, o->n_teacher_b = 1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      return 1;
    } else if (!strcmp(a, "--require-gpu")) {
      o->require_gpu = 1;
      continue;
    } else if (!strcmp(a, "--cold")) {
      o->cold = 1;
      continue;
    }
    const char *v = i + 1 < argc ? argv[++i] : "";
    int bad = 0;
    if (!strcmp(a, "--json")) {
      o->json = v;
      bad = *v == '\0';
    } else if (!strcmp(a, "--reps")) {
      bad = parse_int(v, 1, 10000, &o->reps);
    } else if (!strcmp(a, "--warmup")) {
      bad = parse_int(v, 1, 10000, &o->warmup);
    } else if (!strcmp(a, "--sgemm-n")) {
      bad = parse_int(v, 256, 32768, &o->sgemm_n);
    } else if (!strcmp(a, "--copy-mib")) {
      bad = parse_int(v, 16, 16384, &o->copy_mib);
    } else if (!strcmp(a, "--batches")) {
      bad = parse_list(v, o->student_b, &o->n_student_b);
    } else if (!strcmp(a, "--teacher-batches")) {
      bad = parse_list(v, o->teacher_b, &o->n_teacher_b);
    } else {
      fprintf(stderr, "bench_cuda_kernels: unknown option '%s'\n", a);
      return -1;
    }
    if (bad) {
      fprintf(stderr, "bench_cuda_kernels: bad value for %s: '%s'\n", a, v);
      return -1;
    }
  }
  return 0;
}

/* The one line a machine without a usable GPU gets: exit 0, or 1 under --require-gpu. */
static int skip(const opts *o, const char *why) {
  if (o->require_gpu) {
    fprintf(stderr, "bench_cuda_kernels: FAIL (%s; --require-gpu)\n", why);
    return 1;
  }
  printf("bench_cuda_kernels: SKIP (%s)\n", why);
  return 0;
}

#ifdef VITRINE_HAVE_CUDA

/* ---- the model's shapes ------------------------------------------------------------------- */

typedef struct model {
  const char *name;
  int C, NH, F, NQ; /* d_model, heads, d_ff, Query-Former queries (train/train.py) */
} model;

static const model STUDENT = {"student", 64, 4, 256, 4};
static const model TEACHER = {"teacher", 128, 4, 512, 8};

/* Shared by both models: train/model.py's Config and the Amazon Beauty bundle (docs/BEAUTY.md) */
#define N_LEVELS 4        /* L code levels */
#define CODEBOOK 256      /* K: a code table has K + 2 rows (unknown, none) */
#define N_ACTIONS 5       /* view, search, cart, purchase, context */
#define N_REGIONS 4
#define VOCAB 800         /* V: keyword and query words */
#define MAX_QUERY 8       /* MQ */
#define T2V 8             /* P */
#define D_RETRIEVAL 64    /* R */
#define MAX_DEC_LEN 16    /* maxT */
#define BEAM_WIDTH 8      /* theme and keyword beams */
#define DEC_POS 6         /* T: the decoder position timed (keywords end around 4..8) */
#define N_PRODUCTS 12101  /* the Amazon Beauty catalogue */
#define N_PHRASES 1386    /* its keywords */
#define TOPK_K 10         /* products kept per ranking (Recall@10's list; pages keep fewer) */
#define TOK_EOS 3         /* the terminator: its child node carries the phrase id */
#define FIRST_WORD 5      /* ids below are special tokens */

/* ---- utilities ---------------------------------------------------------------------------- */

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "bench_cuda_kernels: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  exit(1);
}

#define CK(call)                                                                                \
  do {                                                                                          \
    int rc_ = (call);                                                                           \
    if (rc_ < 0) {                                                                              \
      die("%s returned %d: %s", #call, rc_, vt_cuda_last_error());                              \
    }                                                                                           \
  } while (0)

#define CU(call)                                                                                \
  do {                                                                                          \
    cudaError_t e_ = (call);                                                                    \
    if (e_ != cudaSuccess) {                                                                    \
      die("%s: %s (%s)", #call, cudaGetErrorString(e_), cudaGetErrorName(e_));                 \
    }                                                                                           \
  } while (0)

static void *xmalloc(size_t bytes) {
  void *p = malloc(bytes > 0 ? bytes : 1);
  if (p == NULL) {
    die("out of host memory (%zu bytes)", bytes);
  }
  return p;
}

static void *xcalloc(size_t n, size_t size) {
  void *p = calloc(n > 0 ? n : 1, size);
  if (p == NULL) {
    die("out of host memory (%zu x %zu bytes)", n, size);
  }
  return p;
}

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e6 + (double)t.tv_nsec * 1e-3;
}

/* xorshift64*, as tests/test_cuda_ops.c: the same inputs on every machine */
static uint64_t rng_state;

static void rng_seed(uint64_t s) { rng_state = s * 0x9E3779B97F4A7C15ull + 1; }

static uint32_t rng_u32(void) {
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return (uint32_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 32);
}

static float rng_uniform(float lo, float hi) {
  return lo + (hi - lo) * (float)((double)rng_u32() / 4294967296.0);
}

static int rng_int(int n) { return (int)(rng_u32() % (uint32_t)n); }

/* Device buffers of the running case, freed by dev_free_all. */
#define MAX_DEV 64
static void *dev_bufs[MAX_DEV];
static int n_dev;

static void *dev_alloc(size_t bytes) {
  if (n_dev == MAX_DEV) {
    die("too many device buffers in one case");
  }
  void *d = vt_cuda_malloc(bytes > 0 ? bytes : 1);
  if (d == NULL) {
    die("vt_cuda_malloc(%zu): %s", bytes, vt_cuda_last_error());
  }
  dev_bufs[n_dev++] = d;
  return d;
}

static void dev_free_all(void) {
  for (int i = 0; i < n_dev; i++) {
    vt_cuda_free(dev_bufs[i]);
  }
  n_dev = 0;
}

/* A device copy of h (bytes). */
static void *dev_copy(const void *h, size_t bytes) {
  void *d = dev_alloc(bytes);
  CK(vt_cuda_memcpy_h2d(d, h, bytes));
  return d;
}

/* n uniform floats in [lo, hi) on the device. */
static float *dev_rand(size_t n, float lo, float hi) {
  float *h = xmalloc(n * sizeof(float));
  for (size_t i = 0; i < n; i++) {
    h[i] = rng_uniform(lo, hi);
  }
  float *d = dev_copy(h, n * sizeof(float));
  free(h);
  return d;
}

/* The number of distinct values of v[0 .. n-1] in [lo, range): rows of a table a gather reads. */
static int n_distinct(const int32_t *v, size_t n, int lo, int range) {
  unsigned char *seen = xcalloc((size_t)range, 1);
  int d = 0;
  for (size_t i = 0; i < n; i++) {
    if (v[i] >= lo && v[i] < range && !seen[v[i]]) {
      seen[v[i]] = 1;
      d++;
    }
  }
  free(seen);
  return d;
}

/* ---- results ------------------------------------------------------------------------------ */

typedef struct row {
  char op[32], shape[112];
  double us, us_p10, us_p90; /* per timed call: median and spread of the samples */
  double host_us;            /* the host's cost of enqueueing one call (CLOCK_MONOTONIC) */
  double bytes, flops;       /* per timed call, at least */
  int samples, gated, inner;
} row;

typedef struct bench {
  opts o;
  char device[256];
  int cc_major, cc_minor, sms;
  size_t l2_bytes, mem_bytes;
  void *big_a, *big_b; /* the copy buffers, copy_mib MiB each */
  size_t big_bytes;
  size_t flush_bytes;  /* one head-start / L2-flush copy: max(2x L2, 32 MiB) */
  double flush_us;     /* its device time */
  double enqueue_us;   /* the host's cost of an event record (or a copy's enqueueing) */
  double copy_gbps, sgemm_tflops;
  int trie_phrases, trie_nodes, trie_root_fanout; /* the beam step's input, for the report */
  double trie_inner_fanout;
  cudaEvent_t *ev; /* 2 per sample: start, stop */
  cudaEvent_t ev_p0, ev_p1, ev_head;
  row *rows;
  int n_rows, cap_rows;
} bench;

/* ---- timing ------------------------------------------------------------------------------- */

#define SAMPLE_US 20.0     /* a warm sample's target device time */
#define MAX_INNER 256      /* calls per sample */
#define CHUNK_HOST_US 1000 /* host enqueue time per chunk: well under the launch queue's depth */
#define MAX_HEAD 2000      /* head-start copies */

enum { PH_FIRST, PH_HOST, PH_PILOT, PH_SAMPLES, PH_DONE };

/* The state of one row's measurement; drive it with
 *     timing t = timing_start(bn, reps);
 *     while (timing_next(&t)) { one call's launches }
 * timing_next decides what happens between calls (sync, events, head starts, flushes). */
typedef struct timing {
  bench *bn;
  int reps, phase, k, pilot, inner, sample, chunk_start, chunk_end, gated;
  double t0, host_us;
  float *us; /* (reps,) per-call device time of each sample */
} timing;

static float elapsed_us(cudaEvent_t a, cudaEvent_t b) {
  float ms = 0.0f;
  CU(cudaEventElapsedTime(&ms, a, b));
  return 1e3f * ms;
}

static void flush_copy(bench *bn) {
  CK(vt_cuda_memcpy_d2d(bn->big_b, bn->big_a, bn->flush_bytes, NULL));
}

/* Device work that outlasts `host_us` of enqueueing twice over (copies between the big
 * buffers), so the device is still busy with it when the host has enqueued what follows. */
static void head_start(bench *bn, double host_us) {
  int n = (int)ceil((2.0 * host_us + 50.0) / bn->flush_us);
  n = n < 1 ? 1 : n > MAX_HEAD ? MAX_HEAD : n;
  for (int i = 0; i < n; i++) {
    flush_copy(bn);
  }
}

static timing timing_start(bench *bn, int reps) {
  timing t = {.bn = bn, .reps = reps, .phase = PH_FIRST};
  t.us = xmalloc((size_t)reps * sizeof(float));
  return t;
}

static void sample_begin(timing *t) {
  bench *bn = t->bn;
  if (t->sample == t->chunk_end) {
    // a sample's host time: its calls, two event records and, when cold, a flush copy
    const double per_sample = t->inner * t->host_us + (2 + bn->o.cold) * bn->enqueue_us;
    int n = (int)(CHUNK_HOST_US / per_sample);
    n = n < 1 ? 1 : n;
    t->chunk_start = t->sample;
    t->chunk_end = t->sample + n < t->reps ? t->sample + n : t->reps;
    head_start(bn, (t->chunk_end - t->chunk_start) * per_sample + bn->enqueue_us);
    CU(cudaEventRecord(bn->ev_head, 0));
  }
  if (bn->o.cold) {
    flush_copy(bn);
  }
  CU(cudaEventRecord(bn->ev[2 * t->sample], 0));
}

/* Once a chunk is enqueued: was the device still in its head start? */
static void chunk_check(timing *t) {
  cudaError_t e = cudaEventQuery(t->bn->ev_head);
  if (e == cudaErrorNotReady) {
    (void)cudaGetLastError(); // not an error: keep it from reaching the next op's launch check
    t->gated += t->chunk_end - t->chunk_start;
  } else if (e != cudaSuccess) {
    die("cudaEventQuery: %s", cudaGetErrorString(e));
  }
}

static int cmp_float(const void *a, const void *b) {
  const float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}

static int timing_next(timing *t) {
  bench *bn = t->bn;
  switch (t->phase) {
  case PH_FIRST: // one untimed call: module loading, the cuBLAS handle, clocks waking up
    if (t->k++ == 0) {
      return 1;
    }
    CK(vt_cuda_sync(NULL));
    t->phase = PH_HOST;
    t->k = 0;
    t->t0 = now_us();
    /* fall through */
  case PH_HOST: // warm-up calls, timed on the host: what enqueueing one call costs
    if (t->k++ < bn->o.warmup) {
      return 1;
    }
    t->host_us = (now_us() - t->t0) / bn->o.warmup;
    t->host_us = t->host_us > 0.1 ? t->host_us : 0.1;
    CK(vt_cuda_sync(NULL));
    t->pilot = t->host_us >= 100.0 ? 1 : 10;
    head_start(bn, t->pilot * t->host_us);
    CU(cudaEventRecord(bn->ev_p0, 0));
    t->phase = PH_PILOT;
    t->k = 0;
    /* fall through */
  case PH_PILOT: // a first device time, to choose the calls per sample
    if (t->k++ < t->pilot) {
      return 1;
    }
    CU(cudaEventRecord(bn->ev_p1, 0));
    CK(vt_cuda_sync(NULL));
    if (bn->o.cold) {
      t->inner = 1;
    } else {
      const double est = elapsed_us(bn->ev_p0, bn->ev_p1) / t->pilot;
      const double want = ceil(SAMPLE_US / (est > 0.01 ? est : 0.01));
      t->inner = want < 1 ? 1 : want > MAX_INNER ? MAX_INNER : (int)want;
    }
    t->phase = PH_SAMPLES;
    t->sample = t->chunk_start = t->chunk_end = 0;
    sample_begin(t);
    t->k = 1;
    return 1;
  case PH_SAMPLES:
    if (t->k++ < t->inner) {
      return 1;
    }
    CU(cudaEventRecord(bn->ev[2 * t->sample + 1], 0));
    t->sample++;
    if (t->sample == t->chunk_end) {
      chunk_check(t);
    }
    if (t->sample < t->reps) {
      sample_begin(t);
      t->k = 1;
      return 1;
    }
    CK(vt_cuda_sync(NULL));
    for (int i = 0; i < t->reps; i++) {
      t->us[i] = elapsed_us(bn->ev[2 * i], bn->ev[2 * i + 1]) / (float)t->inner;
    }
    qsort(t->us, (size_t)t->reps, sizeof(float), cmp_float);
    t->phase = PH_DONE;
    return 0;
  default:
    return 0;
  }
}

/* Records a finished measurement as a row and frees the timing. */
static void add_row(bench *bn, timing *t, const char *op, const char *shape, double bytes,
                    double flops) {
  if (bn->n_rows == bn->cap_rows) {
    bn->cap_rows = bn->cap_rows ? 2 * bn->cap_rows : 64;
    bn->rows = realloc(bn->rows, (size_t)bn->cap_rows * sizeof(row));
    if (bn->rows == NULL) {
      die("out of host memory");
    }
  }
  row *r = &bn->rows[bn->n_rows++];
  memset(r, 0, sizeof *r);
  snprintf(r->op, sizeof r->op, "%s", op);
  snprintf(r->shape, sizeof r->shape, "%s", shape);
  const int n = t->reps;
  r->us = n % 2 ? t->us[n / 2] : 0.5 * (t->us[n / 2 - 1] + t->us[n / 2]);
  r->us_p10 = t->us[n / 10];
  r->us_p90 = t->us[(n * 9) / 10 < n ? (n * 9) / 10 : n - 1];
  r->host_us = t->host_us;
  r->bytes = bytes;
  r->flops = flops;
  r->samples = n;
  r->gated = t->gated;
  r->inner = t->inner;
  free(t->us);
  t->us = NULL;
  fprintf(stderr, "  %-22s %-58s %10.2f us%s\n", op, shape, r->us,
          r->gated < r->samples ? "  (not all samples gated)" : "");
}

/* ---- reference rates ---------------------------------------------------------------------- */

static void bench_references(bench *bn) {
  // the head-start copy's own time (copies this long keep the device busy: no gating needed)
  flush_copy(bn);
  CK(vt_cuda_sync(NULL));
  CU(cudaEventRecord(bn->ev_p0, 0));
  for (int i = 0; i < 5; i++) {
    flush_copy(bn);
  }
  CU(cudaEventRecord(bn->ev_p1, 0));
  CK(vt_cuda_sync(NULL));
  bn->flush_us = elapsed_us(bn->ev_p0, bn->ev_p1) / 5.0;
  bn->flush_us = bn->flush_us > 1.0 ? bn->flush_us : 1.0;

  // copy: reads and writes big_bytes each
  char shape[112];
  timing t = timing_start(bn, bn->o.reps < 20 ? bn->o.reps : 20);
  while (timing_next(&t)) {
    CK(vt_cuda_memcpy_d2d(bn->big_b, bn->big_a, bn->big_bytes, NULL));
  }
  snprintf(shape, sizeof shape, "reference: device to device, %d MiB", bn->o.copy_mib);
  add_row(bn, &t, "copy", shape, 2.0 * (double)bn->big_bytes, 0.0);
  bn->copy_gbps = bn->rows[bn->n_rows - 1].bytes / bn->rows[bn->n_rows - 1].us * 1e-3;

  // SGEMM: out (N, N) = inp (N, N) W^T (N, N); reads 2 N^2 floats, writes N^2; 2 N^3 flops
  const int N = bn->o.sgemm_n;
  const size_t nn = (size_t)N * N;
  float *h = xmalloc(nn * sizeof(float));
  for (size_t i = 0; i < nn; i++) {
    h[i] = rng_uniform(-1.0f, 1.0f);
  }
  float *A = dev_copy(h, nn * sizeof(float)), *W = dev_copy(h, nn * sizeof(float));
  float *out = dev_alloc(nn * sizeof(float));
  free(h);
  t = timing_start(bn, bn->o.reps < 20 ? bn->o.reps : 20);
  while (timing_next(&t)) {
    CK(vt_matmul_cuda(out, A, W, NULL, N, N, N, VT_ACT_NONE, NULL));
  }
  snprintf(shape, sizeof shape, "reference: SGEMM FP32 %d x %d x %d (vt_matmul_cuda)", N, N, N);
  add_row(bn, &t, "matmul", shape, 3.0 * (double)nn * 4, 2.0 * (double)N * N * N);
  bn->sgemm_tflops = bn->rows[bn->n_rows - 1].flops / bn->rows[bn->n_rows - 1].us * 1e-6;
  dev_free_all();
}

/* ---- a batch of requests ------------------------------------------------------------------ */

typedef struct batch {
  const model *m;
  int B, N;     /* requests; event rows (context tokens included) */
  int32_t *off; /* (B+1,) ragged offsets */
  char tag[32]; /* "student b64" */
} batch;

static void batch_make(batch *bt, const model *m, int B) {
  bt->m = m;
  bt->B = B;
  bt->off = xmalloc((size_t)(B + 1) * sizeof(int32_t));
  bt->off[0] = 0;
  for (int b = 0; b < B; b++) {
    bt->off[b + 1] = bt->off[b] + 1 + 5 + rng_int(31); // the context token + 5..35 events
  }
  bt->N = bt->off[B];
  snprintf(bt->tag, sizeof bt->tag, "%s b%d", m->name, B);
}

/* ---- the ops -------------------------------------------------------------------------------
 * Bytes: every input element read once and every output element written once (in-place
 * operands both), gathered table rows once per distinct row: what a kernel with perfect reuse
 * must move. Flops: an FMA is 2, exp / log / sin / erf / rsqrt 1; comparisons and indexing 0. */

/* vt_event_embed_cuda, N rows.
 * bytes = 4 N (L + 1 + MQ + 1 + 6 + 1 + C)  (codes, action, qtok, x, cal, region; out)
 *       + 4 C (distinct code rows of each level + distinct actions + distinct query tokens
 *              + distinct regions)
 *       + 4 (2P + C (P + 6) + 3C)          (t2v_w, t2v_b; time_w; time_b, ln_w, ln_b)
 * flops = sum_n [C (L + 1 + q_n + 1 + r_n) + 2C (P + 6) + C + 3P + 8C]
 *         (the embedding sums, q_n query tokens and their mean, r_n the region row; the time
 *         projection and its bias; Time2Vec; LayerNorm) */
static void bench_event_embed(bench *bn, const batch *bt) {
  const int N = bt->N, C = bt->m->C, L = N_LEVELS, MQ = MAX_QUERY, P = T2V, TF = P + VT_N_CAL;
  int32_t *codes = xmalloc((size_t)N * L * 4), *action = xmalloc((size_t)N * 4);
  int32_t *qtok = xcalloc((size_t)N * MQ, 4), *region = xmalloc((size_t)N * 4);
  float *x = xmalloc((size_t)N * 4), *cal = xmalloc((size_t)N * VT_N_CAL * 4);
  double flops = 0.0;
  for (int b = 0; b < bt->B; b++) {
    for (int n = bt->off[b]; n < bt->off[b + 1]; n++) {
      const int ctx = n == bt->off[b]; // row 0 of a request: the context token
      for (int l = 0; l < L; l++) {
        codes[(size_t)n * L + l] = ctx ? CODEBOOK + 1 : rng_int(CODEBOOK + 2);
      }
      action[n] = ctx ? N_ACTIONS - 1 : rng_int(N_ACTIONS - 1);
      int q = 0;
      if (!ctx && rng_int(4) == 0) { // a search: 1..4 query words
        q = 1 + rng_int(4);
        for (int j = 0; j < q; j++) {
          qtok[(size_t)n * MQ + j] = FIRST_WORD + rng_int(VOCAB - FIRST_WORD);
        }
      }
      region[n] = ctx ? rng_int(N_REGIONS) : -1;
      x[n] = ctx ? 0.0f : log1pf(rng_uniform(0.0f, 3.2e7f));
      for (int k = 0; k < VT_N_CAL; k++) {
        cal[(size_t)n * VT_N_CAL + k] = rng_uniform(-1.0f, 1.0f);
      }
      flops += (double)C * (L + 1 + q + 1 + ctx) + 2.0 * C * TF + C + 3.0 * P + 8.0 * C;
    }
  }
  int rows = n_distinct(action, (size_t)N, 0, N_ACTIONS) +
             n_distinct(qtok, (size_t)N * MQ, 1, VOCAB) /* 0 is padding, never read */ +
             n_distinct(region, (size_t)N, 0, N_REGIONS);
  int32_t *lev = xmalloc((size_t)N * 4);
  const float *tabs[VT_CUDA_MAX_LEVELS];
  for (int l = 0; l < L; l++) {
    for (int n = 0; n < N; n++) {
      lev[n] = codes[(size_t)n * L + l];
    }
    rows += n_distinct(lev, (size_t)N, 0, CODEBOOK + 2);
    tabs[l] = dev_rand((size_t)(CODEBOOK + 2) * C, -1.0f, 1.0f);
  }
  free(lev);
  const double bytes = 4.0 * N * (L + 1 + MQ + 1 + VT_N_CAL + 1 + C) + 4.0 * C * rows +
                       4.0 * (2 * P + (double)C * TF + 3 * C);
  int32_t *dcodes = dev_copy(codes, (size_t)N * L * 4), *daction = dev_copy(action, (size_t)N * 4);
  int32_t *dqtok = dev_copy(qtok, (size_t)N * MQ * 4), *dregion = dev_copy(region, (size_t)N * 4);
  float *dx = dev_copy(x, (size_t)N * 4), *dcal = dev_copy(cal, (size_t)N * VT_N_CAL * 4);
  float *action_emb = dev_rand((size_t)N_ACTIONS * C, -1.0f, 1.0f);
  float *region_emb = dev_rand((size_t)N_REGIONS * C, -1.0f, 1.0f);
  float *tok_emb = dev_rand((size_t)VOCAB * C, -1.0f, 1.0f);
  float *t2v_w = dev_rand(P, -1.0f, 1.0f), *t2v_b = dev_rand(P, -1.0f, 1.0f);
  float *time_w = dev_rand((size_t)C * TF, -0.5f, 0.5f), *time_b = dev_rand(C, -1.0f, 1.0f);
  float *ln_w = dev_rand(C, 0.5f, 1.5f), *ln_b = dev_rand(C, -0.5f, 0.5f);
  float *out = dev_alloc((size_t)N * C * 4);
  free(codes), free(action), free(qtok), free(region), free(x), free(cal);
  timing t = timing_start(bn, bn->o.reps);
  while (timing_next(&t)) {
    CK(vt_event_embed_cuda(out, dcodes, daction, dqtok, dx, dcal, dregion, tabs, action_emb,
                           region_emb, tok_emb, t2v_w, t2v_b, time_w, time_b, ln_w, ln_b, N, C, L,
                           MQ, P, NULL));
  }
  char shape[112];
  snprintf(shape, sizeof shape, "%s: N %d, C %d, L %d x K %d, MQ %d, P %d", bt->tag, N, C, L,
           CODEBOOK, MQ, P);
  add_row(bn, &t, "event_embed", shape, bytes, flops);
  dev_free_all();
}

/* vt_layernorm_cuda:          bytes = 4 (2 N C + 2 C), flops = 8 N C
 *   (mean: 1 add; variance: a subtract and an FMA; normalise: subtract, multiply, FMA)
 * vt_residual_layernorm_cuda: bytes = 4 (4 N C + 2 C) (resid read and written, add, out),
 *   flops = 9 N C
 * vt_rmsnorm_cuda:            bytes = 4 (2 N C + C), flops = 4 N C (square-sum FMA, 2 scalings)
 * vt_add_cuda:                bytes = 4 (3 n), flops = n */
static void bench_norms(bench *bn, const char *tag, const char *role, int N, int C, int norms,
                        int rms, int add) {
  const size_t n = (size_t)N * C;
  float *inp = dev_rand(n, -2.0f, 2.0f), *a = dev_rand(n, -1.0f, 1.0f);
  float *w = dev_rand(C, 0.5f, 1.5f), *b = dev_rand(C, -0.5f, 0.5f), *out = dev_alloc(n * 4);
  char shape[112];
  snprintf(shape, sizeof shape, "%s %s: N %d, C %d", tag, role, N, C);
  timing t;
  if (norms) {
    t = timing_start(bn, bn->o.reps);
    while (timing_next(&t)) {
      CK(vt_layernorm_cuda(out, inp, w, b, N, C, NULL));
    }
    add_row(bn, &t, "layernorm", shape, 4.0 * (2.0 * n + 2 * C), 8.0 * n);
    t = timing_start(bn, bn->o.reps);
    while (timing_next(&t)) { // resid (inp) grows by `a` per call: harmless for timing
      CK(vt_residual_layernorm_cuda(inp, out, a, w, b, N, C, NULL));
    }
    add_row(bn, &t, "residual_layernorm", shape, 4.0 * (4.0 * n + 2 * C), 9.0 * n);
  }
  if (rms) {
    t = timing_start(bn, bn->o.reps);
    while (timing_next(&t)) {
      CK(vt_rmsnorm_cuda(out, inp, w, N, C, NULL));
    }
    add_row(bn, &t, "rmsnorm", shape, 4.0 * (2.0 * n + C), 4.0 * n);
  }
  if (add) {
    snprintf(shape, sizeof shape, "%s %s: n %zu (N %d x C %d)", tag, role, n, N, C);
    t = timing_start(bn, bn->o.reps);
    while (timing_next(&t)) {
      CK(vt_add_cuda(out, a, (int)n, NULL));
    }
    add_row(bn, &t, "add", shape, 4.0 * 3.0 * n, (double)n);
  }
  dev_free_all();
}

/* vt_matmul_cuda: bytes = 4 (N IN + OUT IN + OUT [bias] + N OUT),
 * flops = 2 N IN OUT + N OUT [bias] + 5 N OUT [GELU: x/sqrt2, erf, 1 +, x 0.5, x x] */
static void bench_matmul(bench *bn, const char *tag, const char *role, int N, int IN, int OUT,
                         enum vt_act act) {
  float *inp = dev_rand((size_t)N * IN, -1.0f, 1.0f);
  float *W = dev_rand((size_t)OUT * IN, -0.2f, 0.2f), *b = dev_rand(OUT, -0.5f, 0.5f);
  float *out = dev_alloc((size_t)N * OUT * 4);
  timing t = timing_start(bn, bn->o.reps);
  while (timing_next(&t)) {
    CK(vt_matmul_cuda(out, inp, W, b, N, IN, OUT, act, NULL));
  }
  char shape[112];
  snprintf(shape, sizeof shape, "%s %s: N %d, IN %d, OUT %d, bias%s", tag, role, N, IN, OUT,
           act == VT_ACT_GELU ? ", GELU" : "");
  const double no = (double)N * OUT;
  add_row(bn, &t, "matmul", shape,
          4.0 * ((double)N * IN + (double)OUT * IN + OUT + no),
          2.0 * no * IN + no + (act == VT_ACT_GELU ? 5.0 * no : 0.0));
  dev_free_all();
}

/* vt_attention_cuda over the batch's ragged sequences (len_b rows each, N in all):
 * bytes = 4 (3 N C + N C + NH 129 + B + 1) + 8 N      (qkv, out, bias, off; ts)
 * flops = sum_b len_b^2 (4 C + 6 NH)                  (q.k and p v: 2 FMAs per element of a
 *   head, over C = NH HS; per pair and head: the bias add, the online softmax's max, exp,
 *   rescale and sum, the time bucket's log) */
static void bench_attention(bench *bn, const batch *bt) {
  const int N = bt->N, C = bt->m->C, NH = bt->m->NH, B = bt->B;
  float *qkv = dev_rand((size_t)N * 3 * C, -1.0f, 1.0f);
  float *bias = dev_rand((size_t)NH * VT_N_TIME_BUCKETS, -1.0f, 1.0f);
  int64_t *ts = xmalloc((size_t)N * 8);
  double pairs = 0.0;
  for (int b = 0; b < B; b++) {
    const int64_t now = 1741590960;
    ts[bt->off[b]] = now; // the context token: the request's time
    for (int n = bt->off[b] + 1; n < bt->off[b + 1]; n++) {
      ts[n] = now - (int64_t)rng_int(1 << 25); // up to a year back
    }
    const double len = bt->off[b + 1] - bt->off[b];
    pairs += len * len;
  }
  int64_t *dts = dev_copy(ts, (size_t)N * 8);
  int32_t *doff = dev_copy(bt->off, (size_t)(B + 1) * 4);
  float *out = dev_alloc((size_t)N * C * 4);
  free(ts);
  timing t = timing_start(bn, bn->o.reps);
  while (timing_next(&t)) {
    CK(vt_attention_cuda(out, qkv, dts, doff, bias, B, C, NH, NULL));
  }
  char shape[112];
  snprintf(shape, sizeof shape, "%s: B %d, N %d, C %d, NH %d, time bias", bt->tag, B, N, C, NH);
  add_row(bn, &t, "attention", shape,
          4.0 * (4.0 * N * C + NH * VT_N_TIME_BUCKETS + B + 1) + 8.0 * N,
          pairs * (4.0 * C + 6.0 * NH));
  dev_free_all();
}

/* vt_cross_attention_cuda, B groups of qlen query rows attending to kvlen_b key/value rows
 * (Nq and Nkv rows in all):
 * bytes = 4 (Nq C + 2 Nkv C + Nq C + 2 (B + 1))   (q, kv, out, qoff and kvoff)
 * flops = sum_b qlen kvlen_b (4 C + 5 NH) */
static void bench_cross_attention(bench *bn, const char *tag, const char *role, const model *m,
                                  int B, int qlen, const int32_t *kvoff) {
  const int C = m->C, NH = m->NH, Nq = B * qlen, Nkv = kvoff[B];
  int32_t *qoff = xmalloc((size_t)(B + 1) * 4);
  double pairs = 0.0;
  for (int b = 0; b <= B; b++) {
    qoff[b] = b * qlen;
    if (b < B) {
      pairs += (double)qlen * (kvoff[b + 1] - kvoff[b]);
    }
  }
  float *q = dev_rand((size_t)Nq * C, -1.0f, 1.0f), *kv = dev_rand((size_t)Nkv * 2 * C, -1, 1);
  int32_t *dqoff = dev_copy(qoff, (size_t)(B + 1) * 4);
  int32_t *dkvoff = dev_copy(kvoff, (size_t)(B + 1) * 4);
  float *out = dev_alloc((size_t)Nq * C * 4);
  free(qoff);
  timing t = timing_start(bn, bn->o.reps);
  while (timing_next(&t)) {
    CK(vt_cross_attention_cuda(out, q, kv, dqoff, dkvoff, B, C, NH, NULL));
  }
  char shape[112];
  snprintf(shape, sizeof shape, "%s %s: B %d, Nq %d, Nkv %d, C %d, NH %d", tag, role, B, Nq,
           Nkv, C, NH);
  add_row(bn, &t, "cross_attention", shape,
          4.0 * (2.0 * Nq * C + 2.0 * Nkv * C + 2.0 * (B + 1)), pairs * (4.0 * C + 5.0 * NH));
  dev_free_all();
}

/* vt_dec_self_attention_cuda, one new position T for each of nrows beam rows through the KV pool:
 * bytes = 4 (nrows C + nrows (T+1) + 2 nrows (T+1) C + nrows C)   (q, slots, k and v, out)
 * flops = nrows (T + 1) (4 C + 5 NH) */
static void bench_decoder_attention(bench *bn, const char *tag, const model *m, int nrows) {
  const int C = m->C, NH = m->NH, T = DEC_POS, maxT = MAX_DEC_LEN;
  const int S = nrows * maxT; // the pool: every row's positions
  int32_t *perm = xmalloc((size_t)S * 4), *pos = xmalloc((size_t)nrows * 4);
  for (int i = 0; i < S; i++) {
    perm[i] = i;
  }
  for (int i = S - 1; i > 0; i--) { // beams' slots interleave in the pool, as after reordering
    const int j = rng_int(i + 1);
    const int32_t v = perm[i];
    perm[i] = perm[j];
    perm[j] = v;
  }
  for (int r = 0; r < nrows; r++) {
    pos[r] = T;
  }
  float *q = dev_rand((size_t)nrows * C, -1.0f, 1.0f);
  float *kp = dev_rand((size_t)S * C, -1.0f, 1.0f), *vp = dev_rand((size_t)S * C, -1.0f, 1.0f);
  vt_beam_rows rows = {0};
  rows.slots = dev_copy(perm, (size_t)S * 4);
  rows.pos = dev_copy(pos, (size_t)nrows * 4);
  rows.mem = rows.pos;
  rows.n = dev_copy(&nrows, 4);
  float *out = dev_alloc((size_t)nrows * C * 4);
  free(perm), free(pos);
  timing t = timing_start(bn, bn->o.reps);
  while (timing_next(&t)) {
    CK(vt_dec_self_attention_cuda(out, q, kp, vp, rows, nrows, maxT, C, NH, NULL));
  }
  char shape[112];
  snprintf(shape, sizeof shape, "%s: nrows %d, T %d, maxT %d, C %d, NH %d", tag, nrows, T, maxT,
           C, NH);
  const double keys = (double)nrows * (T + 1);
  add_row(bn, &t, "dec_self_attention", shape, 4.0 * (2.0 * nrows * C + keys + 2.0 * keys * C),
          keys * (4.0 * C + 5.0 * NH));
  dev_free_all();
}

/* ---- the keyword trie --------------------------------------------------------------------- */

typedef struct trie {
  int n_nodes, n_entries;
  int32_t *indptr, *token, *child, *phrase; /* CSR, as engine/bundle.h's vt_trie */
  int32_t *inner;                           /* non-root nodes with children */
  int n_phrases, n_inner, root_fanout;
} trie;

#define PHRASE_MAX 4 /* up to 3 words and the terminator */

static int cmp_phrase(const void *a, const void *b) {
  const int32_t *x = a, *y = b;
  for (int i = 0; i < PHRASE_MAX; i++) {
    if (x[i] != y[i]) {
      return (x[i] > y[i]) - (x[i] < y[i]);
    }
    if (x[i] == TOK_EOS) {
      return 0;
    }
  }
  return 0;
}

/* N_PHRASES distinct keyword phrases of 1..3 words, first words drawn with a heavy head (a few
 * hundred distinct: the root's fan-out), each ended by TOK_EOS; built breadth first, each node's
 * children in ascending token order, the terminator's child carrying the phrase id. */
static void trie_make(trie *tr) {
  const int np = N_PHRASES;
  int32_t(*ph)[PHRASE_MAX] = xmalloc((size_t)np * sizeof *ph);
  for (int p = 0; p < np; p++) {
    int dup = 1;
    while (dup) { // draw until the phrase is new
      const int words = 1 + rng_int(3);
      for (int i = 0; i < PHRASE_MAX; i++) {
        const float u = rng_uniform(0.0f, 1.0f);
        const int w = FIRST_WORD + (int)((VOCAB - FIRST_WORD) * (i == 0 ? u * u * u : u));
        ph[p][i] = i < words ? w : i == words ? TOK_EOS : -1;
      }
      dup = 0;
      for (int q = 0; q < p && !dup; q++) {
        dup = cmp_phrase(ph[q], ph[p]) == 0;
      }
    }
  }
  qsort(ph, (size_t)np, sizeof *ph, cmp_phrase);
  tr->n_phrases = np;
  const int cap = 1 + PHRASE_MAX * np;
  int32_t *lo = xmalloc((size_t)cap * 4), *hi = xmalloc((size_t)cap * 4);
  int32_t *depth = xmalloc((size_t)cap * 4);
  tr->indptr = xmalloc((size_t)(cap + 1) * 4);
  tr->token = xmalloc((size_t)cap * 4);
  tr->child = xmalloc((size_t)cap * 4);
  tr->phrase = xmalloc((size_t)cap * 4);
  tr->inner = xmalloc((size_t)cap * 4);
  tr->n_nodes = 1, tr->n_entries = 0, tr->n_inner = 0;
  lo[0] = 0, hi[0] = np, depth[0] = 0, tr->phrase[0] = -1;
  for (int u = 0; u < tr->n_nodes; u++) { // breadth first: node u's children get the next ids
    tr->indptr[u] = tr->n_entries;
    if (tr->phrase[u] >= 0) {
      continue; // a terminator's node: a finished phrase, no children
    }
    for (int a = lo[u]; a < hi[u];) {
      const int32_t tok = ph[a][depth[u]];
      int b = a + 1;
      while (b < hi[u] && ph[b][depth[u]] == tok) {
        b++;
      }
      const int v = tr->n_nodes++;
      lo[v] = a, hi[v] = b, depth[v] = depth[u] + 1;
      tr->phrase[v] = tok == TOK_EOS ? a : -1; // the phrase id: its rank in sorted order
      tr->token[tr->n_entries] = tok;
      tr->child[tr->n_entries] = v;
      tr->n_entries++;
      a = b;
    }
    if (u > 0) {
      tr->inner[tr->n_inner++] = u;
    }
  }
  tr->indptr[tr->n_nodes] = tr->n_entries;
  tr->root_fanout = tr->indptr[1] - tr->indptr[0];
  free(ph), free(lo), free(hi), free(depth);
}

static void trie_free(trie *tr) {
  free(tr->indptr), free(tr->token), free(tr->child), free(tr->phrase), free(tr->inner);
}

/* vt_beam_select_cuda: the beam step of G searches in one segmented launch set (offsets, sparse
 * logits, per-search selection), nb beam rows each; E_g candidates (the children of the search's
 * rows), U_g distinct candidate tokens, w_g = min(width, E_g) selected:
 * bytes = sum_g 4 (nb C + 2 nb + 2 nb + 2 E_g + U_g C + 6 w_g + 1)
 *   (h; node, score; indptr pairs; token, child; tok_emb rows; phrase of the picks, outputs x5;
 *   count)
 * flops = sum_g E_g (2 C + 4) + nb   (the sparse logits; max-subtract, exp, sum, add the beam
 *   score; one log per beam) */
static void bench_beam_step(bench *bn, const char *tag, const model *m, const trie *tr, int G,
                            int nb) {
  const int C = m->C, W = BEAM_WIDTH, cap = G * nb;
  int32_t *node = xmalloc((size_t)cap * 4);
  float *score = xmalloc((size_t)cap * 4);
  int32_t *toks = xmalloc((size_t)nb * VOCAB * 4); // a node's children have distinct tokens
  int32_t *width = xmalloc((size_t)G * 4), *row0 = xmalloc((size_t)G * 4);
  int32_t *nrows = xmalloc((size_t)G * 4), *zeros = xcalloc((size_t)G, 4);
  double bytes = 0.0, flops = 0.0, cand = 0.0;
  for (int g = 0; g < G; g++) {
    int E = 0;
    for (int b = 0; b < nb; b++) {
      const int nd = nb == 1 ? 0 : tr->inner[rng_int(tr->n_inner)]; // one beam: the first step
      node[g * nb + b] = nd;
      score[g * nb + b] = -0.5f * (float)b - rng_uniform(0.0f, 0.5f);
      for (int e = tr->indptr[nd]; e < tr->indptr[nd + 1]; e++) {
        toks[E++] = tr->token[e];
      }
    }
    const int U = n_distinct(toks, (size_t)E, 0, VOCAB), w = E < W ? E : W;
    bytes += 4.0 * ((double)nb * C + 4.0 * nb + 2.0 * E + (double)U * C + 6.0 * w + 1);
    flops += E * (2.0 * C + 4.0) + nb;
    cand += E;
    width[g] = W, row0[g] = g * nb, nrows[g] = nb;
  }
  free(toks);
  vt_beam_rows rows = {0};
  rows.node = dev_copy(node, (size_t)cap * 4);
  rows.score = dev_copy(score, (size_t)cap * 4);
  rows.n = dev_copy(&cap, 4);
  vt_beam_groups g = {0};
  g.width = dev_copy(width, (size_t)G * 4);
  g.row0 = dev_copy(row0, (size_t)G * 4);
  g.n_rows = dev_copy(nrows, (size_t)G * 4);
  g.state = g.pos = g.n_best = g.n_fin = dev_copy(zeros, (size_t)G * 4);
  g.fin_score = dev_alloc(4);
  g.fin_phrase = g.fin_len = dev_alloc(4);
  g.fin_cap = 1;
  const vt_trie_csr t_dev = {dev_copy(tr->indptr, (size_t)(tr->n_nodes + 1) * 4),
                             dev_copy(tr->token, (size_t)tr->n_entries * 4),
                             dev_copy(tr->child, (size_t)tr->n_entries * 4),
                             dev_copy(tr->phrase, (size_t)tr->n_nodes * 4)};
  vt_beam_picks picks = {dev_alloc((size_t)G * W * 4), dev_alloc((size_t)G * W * 4),
                         dev_alloc((size_t)G * W * 4), dev_alloc((size_t)G * W * 4),
                         dev_alloc((size_t)G * W * 4), dev_alloc((size_t)G * 4)};
  float *h = dev_rand((size_t)cap * C, -1.0f, 1.0f);
  float *tok_emb = dev_rand((size_t)VOCAB * C, -0.5f, 0.5f);
  void *scratch = dev_alloc(vt_beam_select_scratch(cap, (int)cand));
  timing t = timing_start(bn, bn->o.reps);
  while (timing_next(&t)) {
    CK(vt_beam_select_cuda(picks, h, rows, g, G, cap, W, tok_emb, t_dev, C, scratch, NULL));
  }
  char shape[112];
  snprintf(shape, sizeof shape, "%s %s: %d searches, %d row%s each, width %d, %.0f cand/search, "
           "C %d", tag, nb == 1 ? "first step" : "later step", G, nb, nb == 1 ? "" : "s", W,
           cand / G, C);
  add_row(bn, &t, "beam_select", shape, bytes, flops);
  free(node), free(score), free(width), free(row0), free(nrows), free(zeros);
  dev_free_all();
}

/* ---- retrieval ---------------------------------------------------------------------------- */

/* vt_retrieval_scores_cuda, G calls (one user vector each) over all n products:
 * bytes = G 4 (R + n + n R + n)   (u, idx, the product rows, out); flops = G 2 n R */
static void bench_retrieval_scores(bench *bn, const char *tag, int G) {
  const int n = N_PRODUCTS, R = D_RETRIEVAL;
  int32_t *idx = xmalloc((size_t)n * 4);
  for (int i = 0; i < n; i++) {
    idx[i] = i;
  }
  for (int i = n - 1; i > 0; i--) { // candidates in no particular order
    const int j = rng_int(i + 1);
    const int32_t v = idx[i];
    idx[i] = idx[j];
    idx[j] = v;
  }
  float *emb = dev_rand((size_t)n * R, -1.0f, 1.0f), *u = dev_rand((size_t)G * R, -1.0f, 1.0f);
  int32_t *didx = dev_copy(idx, (size_t)n * 4);
  float *out = dev_alloc((size_t)G * n * 4);
  free(idx);
  timing t = timing_start(bn, bn->o.reps);
  while (timing_next(&t)) {
    for (int g = 0; g < G; g++) {
      CK(vt_retrieval_scores_cuda(out + (size_t)g * n, u + (size_t)g * R, emb, didx, n, R, NULL));
    }
  }
  char shape[112];
  snprintf(shape, sizeof shape, "%s: x%d users, n %d products, R %d", tag, G, n, R);
  add_row(bn, &t, "retrieval_scores", shape, G * 4.0 * (R + 2.0 * n + (double)n * R),
          G * 2.0 * n * R);
  dev_free_all();
}

/* vt_topk_cuda, G calls of n (score, id) pairs, k kept:
 * bytes = G 4 (2 n + 2 k); flops = 0 (comparisons only) */
static void bench_topk(bench *bn, const char *tag, int G, int k) {
  const int n = N_PRODUCTS;
  int32_t *id = xmalloc((size_t)n * 4);
  for (int i = 0; i < n; i++) {
    id[i] = i;
  }
  float *score = dev_rand((size_t)G * n, -10.0f, 10.0f);
  int32_t *did = dev_copy(id, (size_t)n * 4), *scratch = dev_alloc((size_t)n * 4);
  int32_t *oid = dev_alloc((size_t)G * k * 4);
  float *osc = dev_alloc((size_t)G * k * 4);
  free(id);
  timing t = timing_start(bn, bn->o.reps);
  while (timing_next(&t)) {
    for (int g = 0; g < G; g++) { // one stream: the calls may share the scratch
      CK(vt_topk_cuda(oid + (size_t)g * k, osc + (size_t)g * k, score + (size_t)g * n, did, n, k,
                      scratch, NULL));
    }
  }
  char shape[112];
  snprintf(shape, sizeof shape, "%s: x%d rankings, n %d, k %d", tag, G, n, k);
  add_row(bn, &t, "topk", shape, G * 4.0 * (2.0 * n + 2.0 * k), 0.0);
  dev_free_all();
}

/* ---- one model at one batch size: the engine's ops in the engine's order ------------------ */

static void bench_batch(bench *bn, const model *m, int B, const trie *tr) {
  batch bt;
  batch_make(&bt, m, B);
  const int C = m->C, F = m->F, N = bt.N, M = B * m->NQ, rows = B * BEAM_WIDTH;
  fprintf(stderr, "%s: %d requests, %d event rows, %d memory rows, %d beam rows\n", bt.tag, B, N,
          M, rows);
  // encoder (engine/engine.c encode): per layer LN, QKV, attention, proj, residual LN, FFN, add
  bench_event_embed(bn, &bt);
  bench_norms(bn, bt.tag, "enc", N, C, 1, 0, 1);
  bench_matmul(bn, bt.tag, "enc.qkv", N, C, 3 * C, VT_ACT_NONE);
  bench_attention(bn, &bt);
  bench_matmul(bn, bt.tag, "enc.proj", N, C, C, VT_ACT_NONE);
  bench_matmul(bn, bt.tag, "enc.fc1", N, C, F, VT_ACT_GELU);
  bench_matmul(bn, bt.tag, "enc.fc2", N, F, C, VT_ACT_NONE);
  // Query-Former: NQ queries per request over its events
  bench_norms(bn, bt.tag, "qf", M, C, 0, 1, 0);
  bench_matmul(bn, bt.tag, "qf.kv", N, C, 2 * C, VT_ACT_NONE);
  bench_cross_attention(bn, bt.tag, "qf", m, B, m->NQ, bt.off);
  bench_matmul(bn, bt.tag, "user", B, C, D_RETRIEVAL, VT_ACT_NONE);
  // decoder step: width beams per request, cross-attending to its NQ memory rows
  bench_norms(bn, bt.tag, "dec", rows, C, 1, 0, 0);
  bench_matmul(bn, bt.tag, "dec.qkv", rows, C, 3 * C, VT_ACT_NONE);
  bench_decoder_attention(bn, bt.tag, m, rows);
  bench_matmul(bn, bt.tag, "dec.proj", rows, C, C, VT_ACT_NONE);
  int32_t *moff = xmalloc((size_t)(B + 1) * 4);
  for (int b = 0; b <= B; b++) {
    moff[b] = b * m->NQ;
  }
  bench_cross_attention(bn, bt.tag, "dec", m, B, BEAM_WIDTH, moff);
  free(moff);
  bench_matmul(bn, bt.tag, "dec.fc1", rows, C, F, VT_ACT_GELU);
  bench_matmul(bn, bt.tag, "dec.fc2", rows, F, C, VT_ACT_NONE);
  // beam search: one call per group (request or section)
  bench_beam_step(bn, bt.tag, m, tr, B, 1);
  bench_beam_step(bn, bt.tag, m, tr, B, BEAM_WIDTH);
  // retrieval: one user vector against the whole catalogue, and its top k
  bench_retrieval_scores(bn, bt.tag, 1);
  bench_retrieval_scores(bn, bt.tag, B);
  bench_topk(bn, bt.tag, 1, TOPK_K);
  bench_topk(bn, bt.tag, B, TOPK_K);
  free(bt.off);
}

/* ---- output ------------------------------------------------------------------------------- */

static double row_gbps(const row *r) { return r->bytes / r->us * 1e-3; }
static double row_tflops(const row *r) { return r->flops / r->us * 1e-6; }

static void print_table(const bench *bn) {
  printf("| op | shape | µs | GB/s | %% of copy | TFLOP/s | %% of SGEMM |\n");
  printf("| --- | --- | ---: | ---: | ---: | ---: | ---: |\n");
  for (int i = 0; i < bn->n_rows; i++) {
    const row *r = &bn->rows[i];
    printf("| %s | %s | %.2f%s | %.1f | %.1f%% |", r->op, r->shape, r->us,
           r->gated < r->samples ? "~" : "", row_gbps(r), 100.0 * row_gbps(r) / bn->copy_gbps);
    if (r->flops > 0.0) {
      printf(" %.4f | %.2f%% |\n", row_tflops(r), 100.0 * row_tflops(r) / bn->sgemm_tflops);
    } else {
      printf(" – | – |\n");
    }
  }
}

static int write_json(const bench *bn, FILE *f) {
  fprintf(f, "{\n  \"bench\": \"bench_cuda_kernels\",\n");
  fprintf(f, "  \"device\": \"%s\", \"compute_capability\": \"%d.%d\", \"sms\": %d, "
             "\"l2_bytes\": %zu, \"memory_bytes\": %zu,\n",
          bn->device, bn->cc_major, bn->cc_minor, bn->sms, bn->l2_bytes, bn->mem_bytes);
  fprintf(f, "  \"timing\": \"cudaEvent; median of %d samples of `inner` back-to-back calls, "
             "after 1 + %d warm-up calls; %s\",\n",
          bn->o.reps, bn->o.warmup,
          bn->o.cold ? "L2 flushed before every sample (cold)" : "warm L2");
  fprintf(f, "  \"cold\": %s, \"reps\": %d, \"warmup\": %d,\n", bn->o.cold ? "true" : "false",
          bn->o.reps, bn->o.warmup);
  fprintf(f, "  \"copy_gbps\": %.3f, \"copy_bytes\": %zu, \"sgemm_tflops\": %.4f, "
             "\"sgemm_n\": %d,\n",
          bn->copy_gbps, bn->big_bytes, bn->sgemm_tflops, bn->o.sgemm_n);
  fprintf(f, "  \"inputs\": {\"events_per_request\": [5, 35], \"beam_width\": %d, "
             "\"decoder_position\": %d, \"max_dec_len\": %d, \"vocab\": %d, "
             "\"trie_phrases\": %d, \"trie_nodes\": %d, \"trie_root_fanout\": %d, "
             "\"trie_inner_fanout\": %.2f, \"products\": %d, \"d_retrieval\": %d, "
             "\"topk\": %d},\n",
          BEAM_WIDTH, DEC_POS, MAX_DEC_LEN, VOCAB, bn->trie_phrases, bn->trie_nodes,
          bn->trie_root_fanout, bn->trie_inner_fanout, N_PRODUCTS, D_RETRIEVAL, TOPK_K);
  fprintf(f, "  \"rows\": [\n");
  for (int i = 0; i < bn->n_rows; i++) {
    const row *r = &bn->rows[i];
    fprintf(f, "    {\"op\": \"%s\", \"shape\": \"%s\", \"us\": %.3f, \"us_p10\": %.3f, "
               "\"us_p90\": %.3f, \"host_us\": %.3f, \"bytes\": %.0f, \"flops\": %.0f, "
               "\"gbps\": %.3f, \"pct_copy\": %.2f, \"tflops\": %.5f, \"pct_sgemm\": %.3f, "
               "\"samples\": %d, \"gated\": %d, \"inner\": %d}%s\n",
            r->op, r->shape, r->us, r->us_p10, r->us_p90, r->host_us, r->bytes, r->flops,
            row_gbps(r), 100.0 * row_gbps(r) / bn->copy_gbps, row_tflops(r),
            100.0 * row_tflops(r) / bn->sgemm_tflops, r->samples, r->gated, r->inner,
            i + 1 < bn->n_rows ? "," : "");
  }
  fprintf(f, "  ]\n}\n");
  return ferror(f) ? -1 : 0;
}

static int run(const opts *o) {
  bench bn = {.o = *o};
  FILE *json = NULL;
  if (o->json != NULL && (json = fopen(o->json, "w")) == NULL) {
    die("%s: cannot open for writing", o->json);
  }
  int dev = 0;
  struct cudaDeviceProp prop;
  CU(cudaGetDevice(&dev));
  CU(cudaGetDeviceProperties(&prop, dev));
  snprintf(bn.device, sizeof bn.device, "%s", prop.name);
  for (char *p = bn.device; *p; p++) {
    *p = *p == '"' || *p == '\\' ? '_' : *p; // the name goes into JSON as is
  }
  bn.cc_major = prop.major, bn.cc_minor = prop.minor, bn.sms = prop.multiProcessorCount;
  bn.l2_bytes = (size_t)prop.l2CacheSize;
  bn.mem_bytes = prop.totalGlobalMem;
  bn.big_bytes = (size_t)o->copy_mib << 20;
  bn.flush_bytes = 2 * bn.l2_bytes > ((size_t)32 << 20) ? 2 * bn.l2_bytes : (size_t)32 << 20;
  bn.flush_bytes = bn.flush_bytes < bn.big_bytes ? bn.flush_bytes : bn.big_bytes;
  if ((bn.big_a = vt_cuda_malloc(bn.big_bytes)) == NULL ||
      (bn.big_b = vt_cuda_malloc(bn.big_bytes)) == NULL) {
    die("vt_cuda_malloc(%zu): %s", bn.big_bytes, vt_cuda_last_error());
  }
  // contents do not matter to a copy, but give it defined bytes
  unsigned char *z = xcalloc(1 << 20, 1);
  for (size_t at = 0; at < bn.big_bytes; at += (size_t)1 << 20) {
    CK(vt_cuda_memcpy_h2d((char *)bn.big_a + at, z, (size_t)1 << 20));
  }
  free(z);
  bn.ev = xmalloc((size_t)2 * o->reps * sizeof(cudaEvent_t));
  for (int i = 0; i < 2 * o->reps; i++) {
    CU(cudaEventCreate(&bn.ev[i]));
  }
  CU(cudaEventCreate(&bn.ev_p0));
  CU(cudaEventCreate(&bn.ev_p1));
  CU(cudaEventCreate(&bn.ev_head));
  const double t0 = now_us();
  for (int i = 0; i < 100; i++) {
    CU(cudaEventRecord(bn.ev_p0, 0));
  }
  const double record_us = (now_us() - t0) / 100;
  bn.enqueue_us = record_us > 1.0 ? record_us : 1.0;
  CK(vt_cuda_sync(NULL));
  fprintf(stderr, "bench_cuda_kernels: %s (sm %d.%d, %d SMs, L2 %zu MiB), %s L2\n", bn.device,
          bn.cc_major, bn.cc_minor, bn.sms, bn.l2_bytes >> 20, o->cold ? "cold" : "warm");

  rng_seed(2024);
  bench_references(&bn);
  trie tr;
  trie_make(&tr);
  bn.trie_phrases = tr.n_phrases, bn.trie_nodes = tr.n_nodes, bn.trie_root_fanout = tr.root_fanout;
  bn.trie_inner_fanout = (double)(tr.n_entries - tr.root_fanout) / (tr.n_inner ? tr.n_inner : 1);
  for (int i = 0; i < o->n_student_b; i++) {
    bench_batch(&bn, &STUDENT, o->student_b[i], &tr);
  }
  for (int i = 0; i < o->n_teacher_b; i++) {
    bench_batch(&bn, &TEACHER, o->teacher_b[i], &tr);
  }
  trie_free(&tr);

  int ungated = 0;
  for (int i = 0; i < bn.n_rows; i++) {
    ungated += bn.rows[i].gated < bn.rows[i].samples;
  }
  printf("bench_cuda_kernels: %s (sm %d.%d, %d SMs, L2 %zu MiB)\n", bn.device, bn.cc_major,
         bn.cc_minor, bn.sms, bn.l2_bytes >> 20);
  printf("reference: copy %.0f GB/s (device to device, %d MiB, read + write); SGEMM %.2f TFLOP/s "
         "(vt_matmul_cuda FP32, %d^3)\n",
         bn.copy_gbps, o->copy_mib, bn.sgemm_tflops, o->sgemm_n);
  printf("inputs: 1 context token + 5..35 events per request; decoder rows = %d beams per "
         "request at position %d; keyword trie of %d phrases over %d words (%d nodes, root "
         "fan-out %d, %.1f children per inner node); %d products of %d-d, top %d\n",
         BEAM_WIDTH, DEC_POS, bn.trie_phrases, VOCAB, bn.trie_nodes, bn.trie_root_fanout,
         bn.trie_inner_fanout, N_PRODUCTS, D_RETRIEVAL, TOPK_K);
  printf("timing: cudaEvent, median of %d samples per row (each sample back-to-back calls, the "
         "device never idle between them), %s L2; µs per call (xG rows: per G calls); "
         "bytes and flops are the least each op must move and does\n",
         o->reps, o->cold ? "cold" : "warm");
  if (ungated > 0) {
    printf("~: %d row(s) with samples the device may have waited on the host for (head start "
           "exhausted)\n",
           ungated);
  }
  printf("\n");
  print_table(&bn);
  int rc = 0;
  if (json != NULL) {
    if (write_json(&bn, json) != 0 || fclose(json) != 0) {
      fprintf(stderr, "bench_cuda_kernels: %s: write failed\n", o->json);
      rc = 1;
    }
  }
  for (int i = 0; i < 2 * o->reps; i++) {
    (void)cudaEventDestroy(bn.ev[i]);
  }
  (void)cudaEventDestroy(bn.ev_p0);
  (void)cudaEventDestroy(bn.ev_p1);
  (void)cudaEventDestroy(bn.ev_head);
  free(bn.ev);
  free(bn.rows);
  vt_cuda_free(bn.big_a);
  vt_cuda_free(bn.big_b);
  return rc;
}

#endif /* VITRINE_HAVE_CUDA */

int main(int argc, char **argv) {
  opts o;
  const int p = parse_opts(&o, argc, argv);
  if (p != 0) {
    usage(p > 0 ? stdout : stderr);
    return p > 0 ? 0 : 2;
  }
#ifndef VITRINE_HAVE_CUDA
  return skip(&o, "built without CUDA (VITRINE_CUDA=OFF or no nvcc)");
#else
  if (vt_cuda_device_count() == 0) {
    char why[600];
    snprintf(why, sizeof why, "no CUDA device: %s", vt_cuda_last_error());
    return skip(&o, why);
  }
  return run(&o);
#endif
}
