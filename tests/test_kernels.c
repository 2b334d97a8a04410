/* Tests of the CPU kernels (kernels/ops.h) against naive references written here.
 *
 * Each kernel is compared with a plain-loop reference: float math is recomputed in double (a full
 * materialised softmax matrix for attention, triple loops for the GEMM) and compared at ~1e-5
 * relative; ids, parents, tokens and orders are compared exactly. Inputs come from a fixed-seed
 * PRNG and use awkward shapes: single rows, lengths that are not multiples of 4/8/16, ragged
 * batches with a length-1 sequence, NH = 3 heads of HS = 12 (C = 36).
 * Every output buffer is allocated with guard bytes behind it (checked untouched afterwards) and
 * prefilled with a pattern (NaN for floats) so an element the kernel forgets to write fails.
 */
#include <cblas.h>
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/decode.h"
#include "kernels/ops.h"

/* ---- test utilities --------------------------------------------------------------------- */

static uint64_t rng_state;

static void rng_seed(uint64_t s) { rng_state = s * 0x9E3779B97F4A7C15ull + 1; }

/* xorshift64*: deterministic across platforms */
static uint32_t rng_u32(void) {
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return (uint32_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 32);
}

/* uniform in [lo, hi) */
static float rng_uniform(float lo, float hi) {
  return lo + (hi - lo) * (float)((double)rng_u32() / 4294967296.0);
}

/* uniform integer in [0, n) */
static int rng_int(int n) { return (int)(rng_u32() % (uint32_t)n); }

static float *rand_floats(size_t n, float lo, float hi) {
  float *p = malloc(n * sizeof(float));
  cr_assert_not_null(p);
  for (size_t i = 0; i < n; i++) {
    p[i] = rng_uniform(lo, hi);
  }
  return p;
}

#define GUARD 64
#define GUARD_BYTE 0xA5
#define FILL_FLOAT 0xFF /* 0xFFFFFFFF is a NaN: an unwritten float output cannot compare equal */
#define FILL_INT 0x7B   /* 0x7B7B7B7B: no plausible id, parent, token or phrase */

/* An output buffer of `bytes` prefilled with `fill`, followed by GUARD sentinel bytes. */
static void *galloc(size_t bytes, int fill) {
  unsigned char *p = malloc(bytes + GUARD);
  cr_assert_not_null(p);
  memset(p, fill, bytes);
  memset(p + bytes, GUARD_BYTE, GUARD);
  return p;
}

static float *gfloats(size_t n) { return galloc(n * sizeof(float), FILL_FLOAT); }
static int32_t *gints(size_t n) { return galloc(n * sizeof(int32_t), FILL_INT); }

static int guard_ok(const void *p, size_t bytes) {
  const unsigned char *g = (const unsigned char *)p + bytes;
  for (int i = 0; i < GUARD; i++) {
    if (g[i] != GUARD_BYTE) {
      return 0;
    }
  }
  return 1;
}

#define ASSERT_GUARD(p, n)                                                                      \
  cr_assert(guard_ok((p), (n) * sizeof(*(p))),                                                  \
            "guard bytes after " #p " (%zu elements) were overwritten", (size_t)(n))

/* |got - want| <= tol * (1 + |want|): relative for large values, absolute near 0. */
static int close_to(double got, double want, double tol) {
  return fabs(got - want) <= tol * (1.0 + fabs(want));
}

#define ASSERT_CLOSE(got, want, tol, what, i)                                                   \
  cr_assert(close_to((got), (want), (tol)), "%s[%d]: got %.9g, want %.9g (tol %g)", (what),   \
            (int)(i), (double)(got), (double)(want), (double)(tol))

/* ---- double-precision references -------------------------------------------------------- */

static void ref_layernorm(double *y, const double *x, const float *w, const float *b, int C) {
  double mean = 0.0, var = 0.0;
  for (int i = 0; i < C; i++) {
    mean += x[i];
  }
  mean /= C;
  for (int i = 0; i < C; i++) {
    var += (x[i] - mean) * (x[i] - mean);
  }
  var /= C;
  for (int i = 0; i < C; i++) {
    y[i] = (x[i] - mean) / sqrt(var + 1e-5) * w[i] + b[i];
  }
}

/* The bucket by the formula of train/model.py, |dt| taken in long double (no int64 overflow). */
static int ref_bucket(int64_t a, int64_t b) {
  long double d = fabsl((long double)a - (long double)b);
  if (d < 1.0L) {
    d = 1.0L;
  }
  double v = floor(log((double)d) / 0.301);
  return v < 0 ? 0 : v > 128 ? 128 : (int)v;
}

static double ref_gelu(double x) { return 0.5 * x * (1.0 + erf(x / sqrt(2.0))); }

/* softmax-weighted sum of values in double: y (HS,) = sum_j softmax(s)_j v_j, s (n,) */
static void ref_softmax_sum(double *y, const double *s, const float *const *v, int n, int HS) {
  double mx = -INFINITY, den = 0.0;
  for (int j = 0; j < n; j++) {
    mx = s[j] > mx ? s[j] : mx;
  }
  for (int d = 0; d < HS; d++) {
    y[d] = 0.0;
  }
  for (int j = 0; j < n; j++) {
    double p = exp(s[j] - mx);
    den += p;
    for (int d = 0; d < HS; d++) {
      y[d] += p * v[j][d];
    }
  }
  for (int d = 0; d < HS; d++) {
    y[d] = n > 0 ? y[d] / den : 0.0;
  }
}

static double ref_dot(const float *a, const float *b, int n) {
  double s = 0.0;
  for (int i = 0; i < n; i++) {
    s += (double)a[i] * b[i];
  }
  return s;
}

/* ---- time bucket ------------------------------------------------------------------------ */

Test(time_bucket, known_values) {
  // hand-computed: floor(ln(max(|dt|,1)) / 0.301), clamped to [0, 128]
  const struct {
    int64_t dt;
    int want;
  } cases[] = {
      {0, 0},      {1, 0},       {-1, 0},      {2, 2},     {-2, 2},        {3, 3},
      {10, 7},     {60, 13},     {3600, 27},   {86400, 37}, {31536000, 57}, {(int64_t)1e17, 128},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    int64_t base = 1700000000;
    cr_assert_eq(vt_time_bucket(base + cases[i].dt, base), cases[i].want,
                 "dt=%lld: got %d want %d", (long long)cases[i].dt,
                 vt_time_bucket(base + cases[i].dt, base), cases[i].want);
    cr_assert_eq(vt_time_bucket(base, base + cases[i].dt), cases[i].want, "dt=-%lld",
                 (long long)cases[i].dt);
  }
  // extremes: |INT64_MAX - INT64_MIN| overflows int64 but not the kernel
  cr_assert_eq(vt_time_bucket(INT64_MAX, INT64_MIN), 128);
  cr_assert_eq(vt_time_bucket(INT64_MIN, INT64_MAX), 128);
  cr_assert_eq(vt_time_bucket(INT64_MAX, INT64_MAX), 0);
  cr_assert_eq(vt_time_bucket(0, INT64_MIN), 128);
}

Test(time_bucket, matches_formula_everywhere) {
  // every |dt| up to 200000 s, then both sides of every bucket boundary exp(0.301 k)
  for (int64_t d = 0; d <= 200000; d++) {
    cr_assert_eq(vt_time_bucket(d, 0), ref_bucket(d, 0), "dt=%lld", (long long)d);
  }
  for (int k = 1; k <= 130; k++) {
    double t = exp(0.301 * k);
    if (t > 9e18) {
      break;
    }
    int64_t c = (int64_t)t;
    for (int64_t d = c - 2; d <= c + 2; d++) {
      if (d < 0) {
        continue;
      }
      cr_assert_eq(vt_time_bucket(-d, 0), ref_bucket(-d, 0), "dt=%lld k=%d", (long long)d, k);
    }
  }
  // the buckets are monotone in |dt| and reach 128
  int prev = 0;
  for (int e = 0; e < 63; e++) {
    int b = vt_time_bucket((int64_t)1 << e, 0);
    cr_assert(b >= prev, "not monotone at 2^%d", e);
    prev = b;
  }
  cr_assert_eq(prev, 128);
}

/* ---- norms ------------------------------------------------------------------------------ */

Test(norm, layernorm) {
  rng_seed(1);
  const int shapes[][2] = {{1, 36}, {5, 37}, {3, 7}};
  for (size_t s = 0; s < 3; s++) {
    const int N = shapes[s][0], C = shapes[s][1];
    float *x = rand_floats((size_t)N * C, -2.0f, 2.0f);
    for (int i = 0; i < N * C; i++) {
      x[i] += 3.0f; // a non-zero mean, which a one-pass variance would get wrong
    }
    for (int i = 0; i < C; i++) {
      x[i] = 1e-3f * (x[i] - 3.0f); // row 0: variance ~3e-7, where eps 1e-5 dominates
    }
    float *w = rand_floats(C, 0.5f, 1.5f), *b = rand_floats(C, -0.5f, 0.5f);
    float *out = gfloats((size_t)N * C);
    vt_layernorm(out, x, w, b, N, C);
    ASSERT_GUARD(out, (size_t)N * C);
    double xd[64], yd[64];
    for (int n = 0; n < N; n++) {
      for (int i = 0; i < C; i++) {
        xd[i] = x[n * C + i];
      }
      ref_layernorm(yd, xd, w, b, C);
      for (int i = 0; i < C; i++) {
        ASSERT_CLOSE(out[n * C + i], yd[i], 1e-5, "layernorm", n * C + i);
      }
    }
    // in place (out aliases inp) gives the same bits
    vt_layernorm(x, x, w, b, N, C);
    cr_assert(memcmp(x, out, (size_t)N * C * sizeof(float)) == 0, "in-place layernorm differs");
    free(x), free(w), free(b), free(out);
  }
}

Test(norm, residual_layernorm) {
  rng_seed(2);
  const int N = 3, C = 37;
  float *resid = rand_floats((size_t)N * C, -1.0f, 1.0f);
  float *add = rand_floats((size_t)N * C, -1.0f, 1.0f);
  float *w = rand_floats(C, 0.5f, 1.5f), *b = rand_floats(C, -0.5f, 0.5f);
  float *want = malloc((size_t)N * C * sizeof(float));
  for (int i = 0; i < N * C; i++) {
    want[i] = resid[i] + add[i]; // the float sum the kernel must store
  }
  float *r = gfloats((size_t)N * C), *out = gfloats((size_t)N * C);
  memcpy(r, resid, (size_t)N * C * sizeof(float));
  vt_residual_layernorm(r, out, add, w, b, N, C);
  ASSERT_GUARD(r, (size_t)N * C);
  ASSERT_GUARD(out, (size_t)N * C);
  double xd[64], yd[64];
  for (int n = 0; n < N; n++) {
    for (int i = 0; i < C; i++) {
      cr_assert_eq(r[n * C + i], want[n * C + i], "resid[%d] != resid + add", n * C + i);
      xd[i] = want[n * C + i];
    }
    ref_layernorm(yd, xd, w, b, C);
    for (int i = 0; i < C; i++) {
      ASSERT_CLOSE(out[n * C + i], yd[i], 1e-5, "residual_layernorm", n * C + i);
    }
  }
  free(resid), free(add), free(w), free(b), free(want), free(r), free(out);
}

Test(norm, rmsnorm) {
  rng_seed(3);
  const int shapes[][2] = {{1, 36}, {4, 13}};
  for (size_t s = 0; s < 2; s++) {
    const int N = shapes[s][0], C = shapes[s][1];
    float *x = rand_floats((size_t)N * C, -3.0f, 3.0f), *w = rand_floats(C, 0.5f, 1.5f);
    for (int i = 0; i < C; i++) {
      x[i] *= 1e-3f; // row 0: mean square ~3e-6, where eps 1e-6 matters
    }
    float *out = gfloats((size_t)N * C);
    vt_rmsnorm(out, x, w, N, C);
    ASSERT_GUARD(out, (size_t)N * C);
    for (int n = 0; n < N; n++) {
      double ms = 0.0;
      for (int i = 0; i < C; i++) {
        ms += (double)x[n * C + i] * x[n * C + i];
      }
      double r = 1.0 / sqrt(ms / C + 1e-6);
      for (int i = 0; i < C; i++) {
        ASSERT_CLOSE(out[n * C + i], x[n * C + i] * r * w[i], 1e-5, "rmsnorm", n * C + i);
      }
    }
    free(x), free(w), free(out);
  }
}

Test(norm, rmsnorm_zero_row_uses_eps) {
  // a zero row must give zeros (rsqrt(0 + eps) is finite), not NaN
  const int C = 5;
  float x[5] = {0}, w[5] = {1, 2, 3, 4, 5};
  float *out = gfloats(C);
  vt_rmsnorm(out, x, w, 1, C);
  ASSERT_GUARD(out, C);
  for (int i = 0; i < C; i++) {
    cr_assert_eq(out[i], 0.0f, "out[%d] = %g", i, out[i]);
  }
  free(out);
}

Test(norm, add) {
  rng_seed(4);
  const int n = 13;
  float *a = rand_floats(n, -1.0f, 1.0f), *b = rand_floats(n, -1.0f, 1.0f);
  float *r = gfloats(n);
  memcpy(r, a, n * sizeof(float));
  vt_add(r, b, n);
  ASSERT_GUARD(r, n);
  for (int i = 0; i < n; i++) {
    cr_assert_eq(r[i], a[i] + b[i], "add[%d]", i);
  }
  free(a), free(b), free(r);
}

/* ---- matmul ----------------------------------------------------------------------------- */

Test(matmul, against_triple_loop) {
  rng_seed(5);
  const struct {
    int N, IN, OUT, bias;
    enum vt_act act;
  } cases[] = {
      {1, 37, 19, 1, VT_ACT_NONE}, {7, 36, 80, 1, VT_ACT_GELU}, {5, 13, 3, 0, VT_ACT_GELU},
      {3, 80, 36, 0, VT_ACT_NONE}, {2, 0, 3, 1, VT_ACT_GELU},
  };
  for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
    const int N = cases[c].N, IN = cases[c].IN, OUT = cases[c].OUT;
    // pre-activations over roughly [-6, 6]: both GELU tails and its bend are exercised
    float *x = rand_floats((size_t)N * IN + 1, -1.0f, 1.0f);
    float *W = rand_floats((size_t)OUT * IN + 1, -0.6f, 0.6f);
    float *b = cases[c].bias ? rand_floats(OUT, -1.0f, 1.0f) : NULL;
    float *out = gfloats((size_t)N * OUT);
    vt_matmul(out, x, W, b, N, IN, OUT, cases[c].act);
    ASSERT_GUARD(out, (size_t)N * OUT);
    for (int n = 0; n < N; n++) {
      for (int o = 0; o < OUT; o++) {
        double s = 0.0, mag = 0.0;
        for (int i = 0; i < IN; i++) {
          s += (double)x[n * IN + i] * W[o * IN + i];
          mag += fabs((double)x[n * IN + i] * W[o * IN + i]);
        }
        if (b) {
          s += b[o];
          mag += fabs(b[o]);
        }
        double want = cases[c].act == VT_ACT_GELU ? ref_gelu(s) : s;
        // float accumulation error scales with the sum of |terms|, not with the (possibly
        // cancelled) result
        double err = fabs(out[n * OUT + o] - want);
        cr_assert(err <= 1e-5 * (mag + fabs(want)) + 1e-6,
                  "case %zu out[%d,%d]: got %.9g want %.9g", c, n, o, out[n * OUT + o], want);
      }
    }
    free(x), free(W), free(b), free(out);
  }
}

Test(matmul, gelu_is_exact_erf) {
  // identity weights isolate the epilogue: tanh-approximate GELU differs by > 1e-4 near |x|=2
  const int N = 1, C = 9;
  float W[81] = {0}, x[9] = {-6.0f, -3.0f, -2.0f, -1.0f, -0.5f, 0.0f, 0.7f, 2.0f, 5.0f};
  for (int i = 0; i < C; i++) {
    W[i * C + i] = 1.0f;
  }
  float *out = gfloats(C);
  vt_matmul(out, x, W, NULL, N, C, C, VT_ACT_GELU);
  ASSERT_GUARD(out, C);
  for (int i = 0; i < C; i++) {
    double want = ref_gelu(x[i]);
    cr_assert(fabs(out[i] - want) <= 1e-6 * (1 + fabs(want)), "gelu(%g) = %.9g, want %.9g", x[i],
              out[i], want);
  }
  free(out);
}

/* ---- event embedding -------------------------------------------------------------------- */

Test(embed, event_embed) {
  rng_seed(6);
  const int N = 5, C = 36, L = 3, K = 6, MQ = 5, P = 7, V = 11, NA = 5, NR = 4;
  const int TF = P + VT_N_CAL;
  float *code_tab[3];
  for (int l = 0; l < L; l++) {
    code_tab[l] = rand_floats((size_t)(K + 2) * C, -0.3f, 0.3f);
  }
  float *action_emb = rand_floats((size_t)NA * C, -0.3f, 0.3f);
  float *region_emb = rand_floats((size_t)NR * C, -0.3f, 0.3f);
  float *tok_emb = rand_floats((size_t)V * C, -0.3f, 0.3f);
  float *t2v_w = rand_floats(P, -0.7f, 0.7f), *t2v_b = rand_floats(P, -0.7f, 0.7f);
  float *time_w = rand_floats((size_t)C * TF, -0.3f, 0.3f), *time_b = rand_floats(C, -0.1f, 0.1f);
  float *ln_w = rand_floats(C, 0.5f, 1.5f), *ln_b = rand_floats(C, -0.2f, 0.2f);
  // codes use the "unknown" (K) and "none" (K+1) rows too
  const int32_t codes[5 * 3] = {K + 1, K + 1, K + 1, 0, 5, 2, K, K, K, 3, 3, 1, 5, 0, 4};
  const int32_t action[5] = {4, 0, 1, 3, 2};
  // no query; padding between tokens; a full query; a single token last; a repeated token
  const int32_t qtok[5 * 5] = {0, 0, 0, 0, 0, 3, 0, 7, 0, 0, 1, 2, 3, 4, 5,
                               0, 0, 0, 0, 9, 10, 10, 0, 0, 0};
  const float x[5] = {0.0f, 1.5f, 7.25f, 12.0f, 17.9f};
  float *cal = rand_floats((size_t)N * VT_N_CAL, -1.0f, 1.0f);
  const int32_t region[5] = {2, -1, -1, 0, -1}; // region 0 is a real region, -1 means none
  float *out = gfloats((size_t)N * C);
  vt_event_embed(out, codes, action, qtok, x, cal, region, (const float *const *)code_tab,
                 action_emb, region_emb, tok_emb, t2v_w, t2v_b, time_w, time_b, ln_w, ln_b, N, C,
                 L, MQ, P);
  ASSERT_GUARD(out, (size_t)N * C);
  double e[36], y[36], f[13];
  for (int n = 0; n < N; n++) {
    f[0] = (double)t2v_w[0] * x[n] + t2v_b[0];
    for (int k = 1; k < P; k++) {
      f[k] = sin((double)x[n] * t2v_w[k] + t2v_b[k]);
    }
    for (int k = 0; k < VT_N_CAL; k++) {
      f[P + k] = cal[n * VT_N_CAL + k];
    }
    int nq = 0;
    for (int j = 0; j < MQ; j++) {
      nq += qtok[n * MQ + j] != 0;
    }
    for (int c = 0; c < C; c++) {
      double s = 0.0;
      for (int l = 0; l < L; l++) {
        s += code_tab[l][codes[n * L + l] * C + c];
      }
      s += action_emb[action[n] * C + c];
      double q = 0.0;
      for (int j = 0; j < MQ; j++) {
        if (qtok[n * MQ + j] != 0) {
          q += tok_emb[qtok[n * MQ + j] * C + c];
        }
      }
      s += nq > 0 ? q / nq : 0.0;
      double t = time_b[c];
      for (int k = 0; k < TF; k++) {
        t += (double)time_w[c * TF + k] * f[k];
      }
      s += t;
      if (region[n] >= 0) {
        s += region_emb[region[n] * C + c];
      }
      e[c] = s;
    }
    ref_layernorm(y, e, ln_w, ln_b, C);
    for (int c = 0; c < C; c++) {
      ASSERT_CLOSE(out[n * C + c], y[c], 1e-5, "event_embed", n * C + c);
    }
  }
  for (int l = 0; l < L; l++) {
    free(code_tab[l]);
  }
  free(action_emb), free(region_emb), free(tok_emb), free(t2v_w), free(t2v_b), free(time_w);
  free(time_b), free(ln_w), free(ln_b), free(cal), free(out);
}

/* ---- attention -------------------------------------------------------------------------- */

/* Full-matrix reference of vt_attention in double: S (n x n) per sequence and head. */
static void check_attention(const float *out, const float *qkv, const int64_t *ts,
                            const int32_t *off, const float *bias, int B, int C, int NH,
                            double tol) {
  const int HS = C / NH;
  for (int b = 0; b < B; b++) {
    const int n0 = off[b], n = off[b + 1] - off[b];
    double *S = malloc((size_t)n * n * sizeof(double)); // the matrix the kernel must not build
    const float **v = malloc((size_t)n * sizeof(float *));
    double y[64];
    for (int h = 0; h < NH; h++) {
      for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
          const float *q = qkv + (size_t)(n0 + i) * 3 * C + h * HS;
          const float *k = qkv + (size_t)(n0 + j) * 3 * C + C + h * HS;
          S[i * n + j] = ref_dot(q, k, HS) / sqrt((double)HS) +
                         bias[h * VT_N_TIME_BUCKETS + ref_bucket(ts[n0 + i], ts[n0 + j])];
        }
      }
      for (int j = 0; j < n; j++) {
        v[j] = qkv + (size_t)(n0 + j) * 3 * C + 2 * C + h * HS;
      }
      for (int i = 0; i < n; i++) {
        ref_softmax_sum(y, S + i * n, v, n, HS);
        for (int d = 0; d < HS; d++) {
          int at = (n0 + i) * C + h * HS + d;
          ASSERT_CLOSE(out[at], y[d], tol, "attention", at);
        }
      }
    }
    free(S), free(v);
  }
}

/* Timestamps with duplicates (dt = 0), dt = 1 and 2, and gaps from seconds to years. */
static void fill_times(int64_t *ts, int n) {
  int64_t t = 1700000000;
  for (int i = 0; i < n; i++) {
    static const int64_t gaps[] = {0, 1, 2, 3, 47, 3600, 86400, 2592000, 31536000};
    t += gaps[rng_int(9)];
    ts[i] = t;
  }
  // not sorted in general: shuffle, as attention must not assume an order
  for (int i = n - 1; i > 0; i--) {
    int j = rng_int(i + 1);
    int64_t tmp = ts[i];
    ts[i] = ts[j];
    ts[j] = tmp;
  }
}

Test(attention, ragged_with_time_bias) {
  rng_seed(7);
  const int B = 4, C = 36, NH = 3;
  const int32_t off[5] = {0, 5, 6, 17, 20}; // lengths 5, 1, 11, 3
  const int N = off[B];
  float *qkv = rand_floats((size_t)N * 3 * C, -1.0f, 1.0f);
  float *bias = rand_floats(NH * VT_N_TIME_BUCKETS, -2.0f, 2.0f); // wrong buckets show up
  int64_t ts[20];
  fill_times(ts, N);
  float *out = gfloats((size_t)N * C);
  vt_attention(out, qkv, ts, off, bias, B, C, NH);
  ASSERT_GUARD(out, (size_t)N * C);
  check_attention(out, qkv, ts, off, bias, B, C, NH, 1e-5);
  // the length-1 sequence attends to itself only: softmax weight exactly 1, out = its v
  for (int c = 0; c < C; c++) {
    cr_assert_eq(out[5 * C + c], qkv[5 * 3 * C + 2 * C + c], "single-row sequence, col %d", c);
  }
  free(qkv), free(bias), free(out);
}

Test(attention, large_scores_do_not_overflow) {
  // biases of +-150 make exp(score) overflow float unless the maximum is subtracted
  rng_seed(8);
  const int B = 2, C = 36, NH = 3;
  const int32_t off[3] = {0, 9, 16};
  const int N = off[B];
  float *qkv = rand_floats((size_t)N * 3 * C, -1.0f, 1.0f);
  float *bias = rand_floats(NH * VT_N_TIME_BUCKETS, -150.0f, 150.0f);
  int64_t ts[16];
  fill_times(ts, N);
  float *out = gfloats((size_t)N * C);
  vt_attention(out, qkv, ts, off, bias, B, C, NH);
  ASSERT_GUARD(out, (size_t)N * C);
  check_attention(out, qkv, ts, off, bias, B, C, NH, 2e-5);
  free(qkv), free(bias), free(out);
}

Test(attention, more_heads_than_one_chunk) {
  // 11 heads of 5: the kernel's per-chunk head state (8 heads) wraps, with a partial chunk
  rng_seed(16);
  const int B = 3, C = 55, NH = 11;
  const int32_t off[4] = {0, 1, 10, 23}; // lengths 1, 9, 13
  const int N = off[B];
  float *qkv = rand_floats((size_t)N * 3 * C, -1.0f, 1.0f);
  float *bias = rand_floats(NH * VT_N_TIME_BUCKETS, -2.0f, 2.0f);
  int64_t ts[23];
  fill_times(ts, N);
  float *out = gfloats((size_t)N * C);
  vt_attention(out, qkv, ts, off, bias, B, C, NH);
  ASSERT_GUARD(out, (size_t)N * C);
  check_attention(out, qkv, ts, off, bias, B, C, NH, 1e-5);
  free(qkv), free(bias), free(out);
}

Test(attention, cross_attention_groups) {
  rng_seed(9);
  const int B = 4, C = 36, NH = 3, HS = 12;
  const int32_t qoff[5] = {0, 1, 5, 7, 10};   // 1, 4, 2, 3 queries
  const int32_t kvoff[5] = {0, 5, 6, 13, 13}; // 5, 1, 7, 0 keys
  const int Nq = qoff[B], Nkv = kvoff[B];
  float *q = rand_floats((size_t)Nq * C, -1.5f, 1.5f);
  float *kv = rand_floats((size_t)Nkv * 2 * C, -1.5f, 1.5f);
  float *out = gfloats((size_t)Nq * C);
  vt_cross_attention(out, q, kv, qoff, kvoff, B, C, NH);
  ASSERT_GUARD(out, (size_t)Nq * C);
  double s[16], y[16];
  const float *v[16];
  for (int b = 0; b < B; b++) {
    const int nk = kvoff[b + 1] - kvoff[b];
    for (int i = qoff[b]; i < qoff[b + 1]; i++) {
      for (int h = 0; h < NH; h++) {
        for (int j = 0; j < nk; j++) {
          const float *k = kv + (size_t)(kvoff[b] + j) * 2 * C + h * HS;
          s[j] = ref_dot(q + (size_t)i * C + h * HS, k, HS) / sqrt((double)HS);
          v[j] = k + C;
        }
        ref_softmax_sum(y, s, v, nk, HS); // zeros for the empty group
        for (int d = 0; d < HS; d++) {
          ASSERT_CLOSE(out[i * C + h * HS + d], y[d], 1e-5, "cross_attention", i * C + h * HS + d);
        }
      }
    }
  }
  free(q), free(kv), free(out);
}

Test(attention, decoder_slots_and_causality) {
  rng_seed(10);
  const int C = 36, NH = 3, HS = 12, nrows = 3, maxT = 6, S = 24, POISON = 20;
  float *kpool = rand_floats((size_t)S * C, -1.5f, 1.5f);
  float *vpool = rand_floats((size_t)S * C, -1.5f, 1.5f);
  // pool rows POISON.. hold NaN: any read of them (a position after T) makes the output NaN
  for (int r = POISON; r < S; r++) {
    for (int c = 0; c < C; c++) {
      kpool[r * C + c] = NAN;
      vpool[r * C + c] = NAN;
    }
  }
  float *q = rand_floats((size_t)nrows * C, -1.5f, 1.5f);
  for (int T = 0; T < maxT; T++) {
    int32_t slot[3 * 6];
    for (int r = 0; r < nrows; r++) {
      for (int t = 0; t < maxT; t++) {
        // beams share prefix slots (rows 0 and 1 share position 0), scattered pool order
        slot[r * maxT + t] = t <= T ? (r == 1 && t == 0 ? slot[0] : rng_int(POISON))
                                    : POISON + rng_int(S - POISON);
      }
    }
    float *out = gfloats((size_t)nrows * C);
    int32_t pos[3] = {T, T, T}, live = nrows;
    const vt_beam_rows rows = {.pos = pos, .slots = slot, .n = &live};
    vt_dec_self_attention(out, q, kpool, vpool, rows, nrows, maxT, C, NH);
    ASSERT_GUARD(out, (size_t)nrows * C);
    double s[8], y[16];
    const float *v[8];
    for (int r = 0; r < nrows; r++) {
      for (int h = 0; h < NH; h++) {
        for (int t = 0; t <= T; t++) {
          const int p = slot[r * maxT + t];
          s[t] = ref_dot(q + r * C + h * HS, kpool + p * C + h * HS, HS) / sqrt((double)HS);
          v[t] = vpool + p * C + h * HS;
        }
        ref_softmax_sum(y, s, v, T + 1, HS);
        for (int d = 0; d < HS; d++) {
          const int at = r * C + h * HS + d;
          ASSERT_CLOSE(out[at], y[d], 1e-5, "dec_self_attention", at);
          if (T == 0) { // one key: weight exactly 1
            cr_assert_eq(out[at], v[0][d], "T=0 must copy v exactly");
          }
        }
      }
    }
    free(out);
  }
  free(kpool), free(vpool), free(q);
}

/* ---- beam step -------------------------------------------------------------------------- */

/* The brute-force reference: list every candidate (beam by beam, children in trie order) with
 * its float32 score computed in the plain way the header specifies, then a stable insertion sort
 * on descending score. Also checks each float score against a double computation. */
typedef struct {
  int beam, e;
  float s;
} cand;

static int ref_beam(cand *all, const float *h, const int32_t *node, const float *score,
                    int nbeams, const float *tok_emb, const int32_t *indptr,
                    const int32_t *token, int C) {
  int m = 0;
  for (int b = 0; b < nbeams; b++) {
    const int e0 = indptr[node[b]], ne = indptr[node[b] + 1] - e0;
    float lg[64];
    double lgd[64];
    float mx = -FLT_MAX;
    double mxd = -INFINITY;
    for (int i = 0; i < ne; i++) {
      // the kernel's child logit is OpenBLAS's sdot (vectorised, in its own summation order):
      // the float reference takes the same, the double one bounds it against the true dot
      const float s = cblas_sdot(C, h + b * C, 1, tok_emb + token[e0 + i] * C, 1);
      lg[i] = s;
      lgd[i] = ref_dot(h + b * C, tok_emb + token[e0 + i] * C, C);
      mx = fmaxf(mx, s);
      mxd = fmax(mxd, lgd[i]);
    }
    float sum = 0.0f;
    double sumd = 0.0;
    for (int i = 0; i < ne; i++) {
      sum += expf(lg[i] - mx);
      sumd += exp(lgd[i] - mxd);
    }
    for (int i = 0; i < ne; i++) {
      all[m].beam = b;
      all[m].e = e0 + i;
      all[m].s = score[b] + (lg[i] - mx - logf(sum));
      double sd = score[b] + (lgd[i] - mxd - log(sumd));
      ASSERT_CLOSE(all[m].s, sd, 1e-5, "reference candidate score vs double", m);
      m++;
    }
  }
  for (int i = 1; i < m; i++) { // stable: move only past strictly smaller scores
    cand x = all[i];
    int j = i;
    while (j > 0 && all[j - 1].s < x.s) {
      all[j] = all[j - 1];
      j--;
    }
    all[j] = x;
  }
  return m;
}

/* Runs vt_beam_step with guarded outputs and scratch and compares with the brute force. */
static void check_beam(const float *h, const int32_t *node, const float *score, int nbeams,
                       const float *tok_emb, const int32_t *indptr, const int32_t *token,
                       const int32_t *child, const int32_t *phrase, int C, int width,
                       int32_t *sel_parent, int32_t *sel_token) {
  cand all[512];
  const int m = ref_beam(all, h, node, score, nbeams, tok_emb, indptr, token, C);
  const int want_n = m < width ? m : width;
  int32_t *parent = gints(width), *tok = gints(width), *nd = gints(width), *ph = gints(width);
  float *sc = gfloats(width);
  const size_t nscratch = 3 * (size_t)m; // the header's bound: 2m floats + m ints
  float *scratch = gfloats(nscratch);
  int got = vt_beam_step(parent, tok, nd, sc, ph, h, node, score, nbeams, tok_emb, indptr, token,
                         child, phrase, C, width, scratch);
  cr_assert_eq(got, want_n, "selected %d, want min(width %d, candidates %d)", got, width, m);
  ASSERT_GUARD(parent, width);
  ASSERT_GUARD(tok, width);
  ASSERT_GUARD(nd, width);
  ASSERT_GUARD(ph, width);
  ASSERT_GUARD(sc, width);
  ASSERT_GUARD(scratch, nscratch);
  for (int i = 0; i < want_n; i++) {
    const cand *c = &all[i];
    cr_assert_eq(parent[i], c->beam, "rank %d: parent %d, want %d", i, parent[i], c->beam);
    cr_assert_eq(tok[i], token[c->e], "rank %d: token %d, want %d", i, tok[i], token[c->e]);
    cr_assert_eq(nd[i], child[c->e], "rank %d: node", i);
    cr_assert_eq(ph[i], phrase[child[c->e]], "rank %d: phrase", i);
    cr_assert_eq(sc[i], c->s, "rank %d: score %.9g, want %.9g", i, sc[i], c->s);
    if (sel_parent) {
      sel_parent[i] = parent[i];
      sel_token[i] = tok[i];
    }
  }
  free(parent), free(tok), free(nd), free(ph), free(sc), free(scratch);
}

Test(beam, random_trie_against_brute_force) {
  rng_seed(11);
  const int C = 36, V = 40, NN = 30;
  // a CSR "trie": node i has 0..7 children with ascending distinct tokens; a terminator
  // (token 2) child, where present, carries a phrase id
  int32_t indptr[31], token[30 * 7], child[30 * 7], phrase[30];
  indptr[0] = 0;
  for (int i = 0; i < NN; i++) {
    const int cnt = i == 0 ? 7 : i == 1 ? 1 : rng_int(8);
    int e = indptr[i];
    // a sorted random subset of cnt tokens of [0, V) (selection sampling)
    for (int t = 0, k = 0; t < V && k < cnt; t++) {
      if (rng_int(V - t) < cnt - k) {
        token[e + k] = t;
        child[e + k] = rng_int(NN);
        k++;
      }
    }
    indptr[i + 1] = e + cnt;
    phrase[i] = rng_int(3) == 0 ? rng_int(100) : -1;
  }
  float *tok_emb = rand_floats((size_t)V * C, -0.5f, 0.5f);
  float *h = rand_floats((size_t)8 * C, -1.0f, 1.0f);
  // beams sit on nodes with children, including the one-child node 1
  int32_t node[8];
  int nb = 0;
  node[nb++] = 1;
  for (int i = 0; nb < 8; i = (i + 7) % NN) {
    if (indptr[i + 1] > indptr[i]) {
      node[nb++] = i;
    }
  }
  float score[8] = {-0.1f, -0.5f, -0.9f, -1.2f, -1.25f, -2.0f, -3.5f, -3.6f};
  const int widths[] = {1, 3, 8, 13, 1000};
  for (size_t w = 0; w < 5; w++) {
    check_beam(h, node, score, 8, tok_emb, indptr, token, child, phrase, C, widths[w], NULL, NULL);
  }
  // a single beam with a single child keeps its score exactly (log-softmax of one logit is 0)
  int32_t one = 1;
  float s1 = -0.75f;
  int32_t parent[1], tk[1], nd[1], ph[1];
  float sc[1];
  float scratch[8];
  int n = vt_beam_step(parent, tk, nd, sc, ph, h, &one, &s1, 1, tok_emb, indptr, token, child,
                       phrase, C, 4, scratch);
  cr_assert_eq(n, 1);
  cr_assert_eq(sc[0], s1, "one child: score %.9g, want %.9g", sc[0], s1);
  cr_assert_eq(tk[0], token[indptr[1]]);
  cr_assert_eq(ph[0], phrase[child[indptr[1]]]);
  free(tok_emb), free(h);
}

Test(beam, ties_go_to_lower_beam_then_lower_token) {
  // beams 0 and 1: same node, same hidden state, same score -> identical candidate lists;
  // tokens 3 and 4 have identical embeddings -> identical logits within a beam.
  const int C = 12, V = 10;
  float tok_emb[10 * 12];
  rng_seed(12);
  for (int i = 0; i < V * C; i++) {
    tok_emb[i] = rng_uniform(-0.2f, 0.2f);
  }
  float h[3 * 12];
  for (int c = 0; c < C; c++) {
    h[c] = h[C + c] = rng_uniform(-1.0f, 1.0f);
    h[2 * C + c] = rng_uniform(-1.0f, 1.0f);
    tok_emb[3 * C + c] = tok_emb[4 * C + c] = 2.0f * h[c]; // the best children of beams 0 and 1
  }
  // node 0: tokens 1 3 4 6; node 1: tokens 2 5; children nodes 2.. are leaves
  const int32_t indptr[9] = {0, 4, 6, 6, 6, 6, 6, 6, 6};
  const int32_t token[6] = {1, 3, 4, 6, 2, 5};
  const int32_t child[6] = {2, 3, 4, 5, 6, 7};
  const int32_t phrase[8] = {-1, -1, -1, 11, -1, -1, 12, -1};
  const int32_t node[3] = {0, 0, 1};
  const float score[3] = {-1.0f, -1.0f, -30.0f}; // beam 2 cannot compete
  int32_t par[4], tok[4];
  check_beam(h, node, score, 3, tok_emb, indptr, token, child, phrase, C, 4, par, tok);
  // and the order is the stable one, spelled out: b0 t3, b0 t4, b1 t3, b1 t4
  const int32_t want_par[4] = {0, 0, 1, 1}, want_tok[4] = {3, 4, 3, 4};
  for (int i = 0; i < 4; i++) {
    cr_assert(par[i] == want_par[i] && tok[i] == want_tok[i], "rank %d: (beam %d, token %d)", i,
              par[i], tok[i]);
  }
  // a width that cuts the tie group keeps the earlier-listed candidate
  check_beam(h, node, score, 3, tok_emb, indptr, token, child, phrase, C, 3, par, tok);
  cr_assert(par[2] == 1 && tok[2] == 3, "cut tie: (beam %d, token %d)", par[2], tok[2]);
  check_beam(h, node, score, 3, tok_emb, indptr, token, child, phrase, C, 1, par, tok);
  cr_assert(par[0] == 0 && tok[0] == 3, "width 1: (beam %d, token %d)", par[0], tok[0]);
}

/* ---- retrieval -------------------------------------------------------------------------- */

Test(retrieval, scores) {
  rng_seed(13);
  const int P = 17, R = 20, n = 7;
  float *emb = rand_floats((size_t)P * R, -1.0f, 1.0f), *u = rand_floats(R, -1.0f, 1.0f);
  const int32_t idx[7] = {16, 0, 3, 3, 9, 0, 11}; // repeats and both ends
  float *out = gfloats(n);
  vt_retrieval_scores(out, u, emb, idx, n, R);
  ASSERT_GUARD(out, n);
  for (int i = 0; i < n; i++) {
    ASSERT_CLOSE(out[i], ref_dot(u, emb + idx[i] * R, R), 1e-5, "retrieval", i);
  }
  cr_assert_eq(out[2], out[3], "the same product scores the same");
  free(emb), free(u), free(out);
}

typedef struct {
  float s;
  int32_t id;
} pair;

static int cmp_pair(const void *a, const void *b) {
  const pair *x = a, *y = b;
  if (x->s != y->s) {
    return x->s > y->s ? -1 : 1;
  }
  return (x->id > y->id) - (x->id < y->id);
}

static void check_topk(const float *score, const int32_t *id, int n, int k) {
  pair *p = malloc(((size_t)n + 1) * sizeof(pair));
  for (int i = 0; i < n; i++) {
    p[i].s = score[i];
    p[i].id = id[i];
  }
  qsort(p, n, sizeof(pair), cmp_pair);
  const int want = k < n ? k : n;
  const int cap = want > 0 ? want : 1;
  int32_t *oid = gints(cap), *scratch = gints(n > 0 ? n : 1);
  float *osc = gfloats(cap);
  int got = vt_topk(oid, osc, score, id, n, k, scratch);
  cr_assert_eq(got, want, "n=%d k=%d: returned %d", n, k, got);
  ASSERT_GUARD(oid, cap);
  ASSERT_GUARD(osc, cap);
  ASSERT_GUARD(scratch, n > 0 ? n : 1);
  for (int i = 0; i < want; i++) {
    cr_assert_eq(oid[i], p[i].id, "n=%d k=%d rank %d: id %d, want %d", n, k, i, oid[i], p[i].id);
    cr_assert_eq(osc[i], p[i].s, "n=%d k=%d rank %d: score", n, k, i);
  }
  free(p), free(oid), free(scratch), free(osc);
}

Test(retrieval, topk_ties_to_lower_id) {
  rng_seed(14);
  const int n = 50;
  // few distinct scores (-0.0 and 0.0 compare equal) -> many ties; ids unique, shuffled
  const float levels[6] = {-1.0f, 0.0f, -0.0f, 0.5f, 2.0f, 3.0f};
  float score[50];
  int32_t id[50];
  for (int i = 0; i < n; i++) {
    score[i] = levels[rng_int(6)];
    id[i] = 1000 - 7 * i;
  }
  for (int i = n - 1; i > 0; i--) {
    int j = rng_int(i + 1);
    int32_t t = id[i];
    id[i] = id[j];
    id[j] = t;
  }
  const int ks[] = {1, 2, 5, 17, 49, 50, 64};
  for (size_t i = 0; i < sizeof(ks) / sizeof(ks[0]); i++) {
    check_topk(score, id, n, ks[i]);
  }
  // explicit: two equal best scores, the lower id first although it comes later in the input
  const float s2[4] = {1.0f, 5.0f, 2.0f, 5.0f};
  const int32_t id2[4] = {3, 9, 1, 4};
  int32_t oid[2], scr[4];
  float osc[2];
  cr_assert_eq(vt_topk(oid, osc, s2, id2, 4, 2, scr), 2);
  cr_assert(oid[0] == 4 && oid[1] == 9, "ties: got ids %d %d, want 4 9", oid[0], oid[1]);
}

Test(retrieval, topk_random_and_degenerate) {
  rng_seed(15);
  const int n = 1000;
  float *score = rand_floats(n, -5.0f, 5.0f);
  int32_t *id = malloc(n * sizeof(int32_t));
  for (int i = 0; i < n; i++) {
    id[i] = i * 3 + 1;
  }
  check_topk(score, id, n, 10);
  check_topk(score, id, n, 1);
  check_topk(score, id, 1, 3); // n = 1
  // k = 0 and n = 0 select nothing and write nothing
  int32_t *oid = gints(1);
  float *osc = gfloats(1);
  int32_t scr[1];
  cr_assert_eq(vt_topk(oid, osc, score, id, n, 0, scr), 0);
  cr_assert_eq(vt_topk(oid, osc, score, id, 0, 5, scr), 0);
  int32_t fill;
  memset(&fill, FILL_INT, sizeof(fill));
  cr_assert_eq(oid[0], fill, "k = 0 wrote an id");
  ASSERT_GUARD(oid, 1);
  ASSERT_GUARD(osc, 1);
  free(score), free(id), free(oid), free(osc);
}
