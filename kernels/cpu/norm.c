/* Normalisations and the residual add: LayerNorm, residual + LayerNorm, RMSNorm, elementwise add.
 *
 * Shapes: every row is C floats; N rows, row-major, (N, C).
 * LayerNorm (train/model.py nn.LayerNorm): mean and biased variance over the row, eps 1e-5,
 *   y = (x - mean) * rstd * w + b.
 * RMSNorm (train/model.py RMSNorm): y = x * rsqrt(mean(x^2) + 1e-6) * w.
 * Statistics are accumulated in float, as the float32 reference does; the variance is the
 * two-pass sum of squared deviations (not E[x^2] - mean^2, which cancels badly for rows with a
 * large mean). Each row's statistics are complete before any of its outputs is written, so `out`
 * may alias the input row by row.
 */
#include <math.h>
#include <stddef.h>

#include "kernels/ops.h"

/* One row: out (C,) = LayerNorm(x (C,)) with weight w (C,) and bias b (C,). */
static void layernorm_row(float *out, const float *x, const float *w, const float *b, int C) {
  float sum = 0.0f;
  for (int i = 0; i < C; i++) {
    sum += x[i];
  }
  float mean = sum / (float)C;
  float var = 0.0f;
  for (int i = 0; i < C; i++) {
    float d = x[i] - mean;
    var += d * d;
  }
  var /= (float)C; // biased: divide by C, as nn.LayerNorm does
  float rstd = 1.0f / sqrtf(var + VT_LN_EPS);
  for (int i = 0; i < C; i++) {
    out[i] = (x[i] - mean) * rstd * w[i] + b[i];
  }
}

void vt_layernorm(float *out, const float *inp, const float *w, const float *b, int N, int C) {
  for (int n = 0; n < N; n++) {
    layernorm_row(out + (size_t)n * C, inp + (size_t)n * C, w, b, C);
  }
}

void vt_residual_layernorm(float *resid, float *out, const float *add, const float *w,
                           const float *b, int N, int C) {
  for (int n = 0; n < N; n++) {
    float *r = resid + (size_t)n * C;     // (C,)
    const float *a = add + (size_t)n * C; // (C,)
    // the whole row's residual update comes first, so `out` may even alias `add`
    for (int i = 0; i < C; i++) {
      r[i] += a[i];
    }
    layernorm_row(out + (size_t)n * C, r, w, b, C);
  }
}

void vt_rmsnorm(float *out, const float *inp, const float *w, int N, int C) {
  for (int n = 0; n < N; n++) {
    const float *x = inp + (size_t)n * C; // (C,)
    float *y = out + (size_t)n * C;       // (C,)
    float ss = 0.0f;
    for (int i = 0; i < C; i++) {
      ss += x[i] * x[i];
    }
    float r = 1.0f / sqrtf(ss / (float)C + VT_RMS_EPS);
    for (int i = 0; i < C; i++) {
      y[i] = x[i] * r * w[i];
    }
  }
}

void vt_add(float *resid, const float *add, int n) {
  for (int i = 0; i < n; i++) {
    resid[i] += add[i];
  }
}
