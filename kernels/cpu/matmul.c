/* The Linear layer: out = act(inp W^T + b).
 *
 * Shapes: inp (N, IN), W (OUT, IN) as nn.Linear stores it, b (OUT,) or NULL, out (N, OUT).
 * Algorithm: one OpenBLAS SGEMM (row-major, W transposed) writes inp W^T into out, then one pass
 * adds the bias and applies the activation while the row is still in cache. The GELU is the exact
 * one of torch.nn.functional.gelu: 0.5 x (1 + erf(x / sqrt 2)), written in PyTorch's operation
 * order x * 0.5 * (1 + erf(x * (1/sqrt 2))).
 * out must not alias inp or W (SGEMM's contract).
 */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "kernels/ops.h"

void vt_matmul(float *out, const float *inp, const float *W, const float *b, int N, int IN,
               int OUT, enum vt_act act) {
  if (N <= 0 || OUT <= 0) {
    return;
  }
  if (IN <= 0) {
    // an empty inner dimension gives a zero product; SGEMM would reject lda = 0
    memset(out, 0, (size_t)N * OUT * sizeof(float));
  } else {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OUT, IN, 1.0f, inp, IN, W, IN, 0.0f,
                out, OUT);
  }
  if (b == NULL && act == VT_ACT_NONE) {
    return;
  }
  const float alpha = 0.70710678118654752440f; // 1 / sqrt 2
  for (int n = 0; n < N; n++) {
    float *y = out + (size_t)n * OUT; // (OUT,)
    for (int o = 0; o < OUT; o++) {
      float v = b != NULL ? y[o] + b[o] : y[o];
      if (act == VT_ACT_GELU) {
        v = v * 0.5f * (1.0f + erff(v * alpha));
      }
      y[o] = v;
    }
  }
}

void vt_blas_set_threads(int n) {
  openblas_set_num_threads(n);
}

int vt_blas_threads(void) {
  return openblas_get_num_threads();
}
