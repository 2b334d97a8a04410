/* The backend table (kernels/backend.h): opening by name, completeness, memory operations, and
 * every op of kernels/ops.h through the table against the CPU reference functions, on each
 * backend this binary has: the CPU always; "cuda:0" where the build has CUDA and a device answers
 * (a real card, or the CUDA emulator in the *_emu build of this test). The decode ops go through
 * the table in tests/test_decode_ops.c, the whole cascade in tests/test_device_parity.c.
 * Floats on a device agree to ~1e-5 relative (sums in another order); on the CPU exactly. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"

static uint64_t rng_state = 1;

static float frand(float lo, float hi) {
  rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
  return lo + (hi - lo) * (float)((rng_state >> 40) / 16777216.0);
}

static float *rand_floats(size_t n, float lo, float hi) {
  float *p = malloc(n * sizeof *p + 1);
  cr_assert_not_null(p);
  for (size_t i = 0; i < n; i++)
    p[i] = frand(lo, hi);
  return p;
}

/* The backends to run: "cpu" and, when it opens, "cuda:0" (else the reason, for the skip). */
static int open_backends(vt_backend **bes, char *why, size_t whylen) {
  char err[256];
  int n = 0;
  cr_assert_eq(vt_backend_open(&bes[n], "cpu", err, sizeof err), 0, "%s", err);
  n++;
  why[0] = 0;
  if (vt_backend_open(&bes[n], "cuda:0", err, sizeof err) == 0)
    n++;
  else
    snprintf(why, whylen, "%s", err);
  return n;
}

Test(backend, opens_by_name_and_refuses_what_is_not_one) {
  vt_backend *be = NULL;
  char err[256];
  cr_assert_eq(vt_backend_open(&be, "cpu", err, sizeof err), 0);
  cr_assert_str_eq(be->name, "cpu");
  cr_assert(be->host_memory);
  vt_backend_close(be);
  cr_assert_eq(vt_backend_open(&be, "tpu:0", err, sizeof err), VT_BACKEND_EUNKNOWN);
  cr_assert_null(be);
  cr_assert(strstr(err, "'tpu:0' is not a backend"), "%s", err);
  cr_assert_eq(vt_backend_open(&be, "cuda:x", err, sizeof err), VT_BACKEND_EUNKNOWN);
  cr_assert(strstr(err, "cuda:N"), "%s", err);
  cr_assert_eq(vt_backend_open(&be, NULL, err, sizeof err), VT_BACKEND_EUNKNOWN);
  /* a device that does not exist: refused with the reason (no CUDA, or how many there are) */
  cr_assert_eq(vt_backend_open(&be, "cuda:999", err, sizeof err), VT_BACKEND_ENOCUDA);
  cr_assert_null(be);
  cr_assert(strstr(err, "cuda:999"), "%s", err);
  char why[256];
  const int n = vt_backend_cuda_devices(why, sizeof why);
  cr_assert_geq(n, 0);
  if (n == 0)
    cr_assert_neq(why[0], 0, "no device, and no reason given");
}

Test(backend, every_table_is_complete) {
  vt_backend *bes[2];
  char why[256];
  const int nb = open_backends(bes, why, sizeof why);
  for (int k = 0; k < nb; k++) {
    vt_backend *be = bes[k];
    const void *fns[] = {
        (void *)be->alloc,           (void *)be->free,
        (void *)be->host_alloc,      (void *)be->host_free,
        (void *)be->upload,          (void *)be->download,
        (void *)be->zero,            (void *)be->copy,
        (void *)be->sync,            (void *)be->error,
        (void *)be->close,           (void *)be->broadcast,
        (void *)be->event_embed,     (void *)be->layernorm,
        (void *)be->residual_layernorm, (void *)be->rmsnorm,
        (void *)be->add,             (void *)be->matmul,
        (void *)be->attention,       (void *)be->cross_attention,
        (void *)be->repeat_rows,     (void *)be->mean_rows,
        (void *)be->beam_feed,       (void *)be->kv_append,
        (void *)be->dec_self_attention, (void *)be->dec_cross_attention,
        (void *)be->beam_select,
        (void *)be->beam_advance,    (void *)be->themes_to_keywords,
        (void *)be->page_scratch,    (void *)be->page_assemble};
    for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++)
      cr_assert_not_null(fns[i], "%s: entry %zu missing", be->name, i);
    /* graphs: all four or none */
    const int g = !!be->capture_begin + !!be->capture_end + !!be->replay + !!be->graph_free;
    cr_assert(g == 0 || g == 4, "%s: graph entries half there", be->name);
    vt_backend_close(be);
  }
}

/* Memory: upload, copy, zero, download round-trip bytes where the backend computes. */
Test(backend, memory_operations_round_trip) {
  vt_backend *bes[2];
  char why[256];
  const int nb = open_backends(bes, why, sizeof why);
  for (int k = 0; k < nb; k++) {
    vt_backend *be = bes[k];
    unsigned char src[300], dst[300];
    for (int i = 0; i < 300; i++)
      src[i] = (unsigned char)(i * 7 + 3);
    unsigned char *h = be->host_alloc(be, sizeof src);
    cr_assert_not_null(h);
    memcpy(h, src, sizeof src);
    void *a = be->alloc(be, 300), *b = be->alloc(be, 300);
    cr_assert(a && b);
    cr_assert_eq(be->upload(be, a, h, 300), 0, "%s", be->error(be));
    cr_assert_eq(be->copy(be, b, a, 300), 0, "%s", be->error(be));
    cr_assert_eq(be->zero(be, (char *)b + 100, 50), 0, "%s", be->error(be));
    cr_assert_eq(be->download(be, dst, b, 300), 0, "%s", be->error(be));
    for (int i = 0; i < 300; i++)
      cr_assert_eq(dst[i], i >= 100 && i < 150 ? 0 : src[i], "%s: byte %d", be->name, i);
    cr_assert_eq(be->sync(be), 0);
    be->free(be, a);
    be->free(be, b);
    be->host_free(be, h);
    vt_backend_close(be);
  }
}

/* Device copies of host arrays for one op call, and the comparison after it. */
typedef struct call {
  vt_backend *be;
  void *bufs[32];
  int n;
} call;

static void *in(call *c, const void *h, size_t bytes) {
  void *d = c->be->alloc(c->be, bytes);
  cr_assert_not_null(d);
  cr_assert_eq(c->be->upload(c->be, d, h, bytes), 0, "%s", c->be->error(c->be));
  cr_assert_eq(c->be->sync(c->be), 0);
  c->bufs[c->n++] = d;
  return d;
}

static float *out_f(call *c, size_t n) {
  float *nan = malloc(n * sizeof *nan + 1);
  for (size_t i = 0; i < n; i++)
    nan[i] = NAN;
  float *d = in(c, nan, n * sizeof *nan);
  free(nan);
  return d;
}

static void expect_close(call *c, const float *d, const float *want, size_t n, const char *op) {
  float *got = malloc(n * sizeof *got + 1);
  cr_assert_eq(c->be->download(c->be, got, d, n * sizeof *got), 0, "%s: %s", op,
               c->be->error(c->be));
  const double tol = c->be->host_memory ? 0.0 : 2e-5;
  for (size_t i = 0; i < n; i++)
    cr_assert(fabs((double)got[i] - want[i]) <= tol * (1.0 + fabs(want[i])),
              "%s on %s [%zu]: got %.9g, want %.9g", op, c->be->name, i, got[i], want[i]);
  free(got);
}

static void done(call *c) {
  for (int i = 0; i < c->n; i++)
    c->be->free(c->be, c->bufs[i]);
  c->n = 0;
}

#define OK(x) cr_assert_eq((x), 0, "%s: %s", #x, c.be->error(c.be))

/* Every op of kernels/ops.h through be's table against the reference functions. */
static void ops_match_the_reference(vt_backend *be) {
  const int N = 7, C = 24, NH = 3, F = 40, B = 3;
  const int32_t off[4] = {0, 1, 4, 7}, qoff[4] = {0, 2, 2, 5}, kvoff[4] = {0, 3, 3, 7};
  const int64_t ts[7] = {100, 90, 5000, 5001, 1, 2, 1 << 20};
  rng_state = 42;
  float *x = rand_floats((size_t)N * C, -2, 2), *y = rand_floats((size_t)N * C, -1, 1),
        *w = rand_floats(C, 0.5f, 1.5f), *b = rand_floats(C, -0.5f, 0.5f),
        *W = rand_floats((size_t)F * C, -0.3f, 0.3f), *bf = rand_floats(F, -0.1f, 0.1f),
        *qkv = rand_floats((size_t)N * 3 * C, -1, 1), *bias = rand_floats(NH * 129, -1, 1),
        *kv = rand_floats((size_t)N * 2 * C, -1, 1);
  float *want = malloc((size_t)N * F * sizeof *want), *want2 = malloc((size_t)N * C * 4);
  call c = {.be = be};
  float *dx = in(&c, x, (size_t)N * C * 4), *dy = in(&c, y, (size_t)N * C * 4),
        *dw = in(&c, w, C * 4), *db = in(&c, b, C * 4), *dW = in(&c, W, (size_t)F * C * 4),
        *dbf = in(&c, bf, F * 4), *dqkv = in(&c, qkv, (size_t)N * 3 * C * 4),
        *dbias = in(&c, bias, NH * 129 * 4), *dkv = in(&c, kv, (size_t)N * 2 * C * 4);
  int32_t *doff = in(&c, off, sizeof off), *dqoff = in(&c, qoff, sizeof qoff),
          *dkvoff = in(&c, kvoff, sizeof kvoff);
  int64_t *dts = in(&c, ts, sizeof ts);
  float *o = out_f(&c, (size_t)N * F), *o2 = out_f(&c, (size_t)N * C);

  vt_layernorm(want, x, w, b, N, C);
  OK(c.be->layernorm(c.be, o, dx, dw, db, N, C));
  expect_close(&c, o, want, (size_t)N * C, "layernorm");

  memcpy(want2, x, (size_t)N * C * 4);
  vt_residual_layernorm(want2, want, y, w, b, N, C);
  float *dres = in(&c, x, (size_t)N * C * 4);
  OK(c.be->residual_layernorm(c.be, dres, o2, dy, dw, db, N, C));
  expect_close(&c, o2, want, (size_t)N * C, "residual_layernorm (out)");
  expect_close(&c, dres, want2, (size_t)N * C, "residual_layernorm (resid)");

  vt_rmsnorm(want, x, w, N, C);
  OK(c.be->rmsnorm(c.be, o, dx, dw, N, C));
  expect_close(&c, o, want, (size_t)N * C, "rmsnorm");

  memcpy(want, x, (size_t)N * C * 4);
  vt_add(want, y, N * C);
  float *dacc = in(&c, x, (size_t)N * C * 4);
  OK(c.be->add(c.be, dacc, dy, N * C));
  expect_close(&c, dacc, want, (size_t)N * C, "add");

  vt_matmul(want, x, W, bf, N, C, F, VT_ACT_GELU);
  OK(c.be->matmul(c.be, o, dx, dW, dbf, N, C, F, VT_ACT_GELU));
  expect_close(&c, o, want, (size_t)N * F, "matmul");

  vt_attention(want, qkv, ts, off, bias, B, C, NH);
  OK(c.be->attention(c.be, o, dqkv, dts, doff, dbias, B, C, NH));
  expect_close(&c, o, want, (size_t)N * C, "attention");

  vt_cross_attention(want, x, kv, qoff, kvoff, B, C, NH);
  OK(c.be->cross_attention(c.be, o, dx, dkv, dqoff, dkvoff, B, C, NH));
  expect_close(&c, o, want, 5 * (size_t)C, "cross_attention");

  vt_repeat_rows(want, x, 2, 3, C);
  OK(c.be->repeat_rows(c.be, o, dx, 2, 3, C));
  expect_close(&c, o, want, 6 * (size_t)C, "repeat_rows");

  vt_mean_rows(want, x, 3, 2, C);
  OK(c.be->mean_rows(c.be, o, dx, 3, 2, C));
  expect_close(&c, o, want, 3 * (size_t)C, "mean_rows");
  done(&c);
  free(x), free(y), free(w), free(b), free(W), free(bf), free(qkv), free(bias), free(kv);
  free(want), free(want2);
}

Test(backend, cpu_ops_match_the_reference) {
  vt_backend *be;
  char err[256];
  cr_assert_eq(vt_backend_open(&be, "cpu", err, sizeof err), 0, "%s", err);
  ops_match_the_reference(be);
  vt_backend_close(be);
}

Test(backend, cuda_ops_match_the_reference) {
  vt_backend *be;
  char err[256];
  if (vt_backend_open(&be, "cuda:0", err, sizeof err))
    cr_skip_test("no CUDA backend here: %s", err);
  ops_match_the_reference(be);
  vt_backend_close(be);
}
