/* Normalisations and the residual add on CUDA: LayerNorm, residual + LayerNorm, RMSNorm, add.
 *
 * Shapes: N rows of C floats, (N, C), row-major; w, b (C,). Semantics of kernels/cpu/norm.c:
 * LayerNorm with the biased two-pass variance (sum of squared deviations, not E[x^2] - mean^2),
 * eps 1e-5; RMSNorm with eps 1e-6.
 * Algorithm: one warp per row (llm.c's layernorm_forward_kernel3), NORM_ROWS rows per block:
 * the lanes stride over the row, two warp reductions give the mean and then the variance; no
 * block barrier. A lane reads and writes only its own elements (i = lane, lane + 32, ...) and
 * the row's statistics are complete (the shuffles are warp-synchronous) before any output is
 * written, so out may alias inp, and for the residual variant a lane's residual update precedes
 * its reads of the statistics pass (out may alias add). A warp past the last row leaves at once.
 * Limits: N rows < 2^31 * NORM_ROWS, any C >= 1.
 */
#include "kernels/cuda/common.cuh"

#define NORM_THREADS 256                 /* per block */
#define NORM_ROWS (NORM_THREADS / WARP)  /* rows per block: one per warp */

/* mean and rstd of x (C,) over the warp (every lane gets both). */
__device__ __forceinline__ void row_stats(const float *x, int C, float *mean, float *rstd) {
  const int lane = threadIdx.x % WARP;
  float s = 0.0f;
  for (int i = lane; i < C; i += WARP) {
    s += x[i];
  }
  const float m = warp_sum(s) / (float)C;
  float v = 0.0f;
  for (int i = lane; i < C; i += WARP) {
    const float d = x[i] - m;
    v += d * d;
  }
  const float var = warp_sum(v) / (float)C; // biased, as nn.LayerNorm
  *mean = m;
  *rstd = 1.0f / sqrtf(var + VT_LN_EPS);
}

/* This warp's row, or -1 past the last one. */
__device__ __forceinline__ int warp_row(int N) {
  const int row = blockIdx.x * NORM_ROWS + threadIdx.x / WARP;
  return row < N ? row : -1;
}

static __global__ void __launch_bounds__(NORM_THREADS)
    layernorm_kernel(float *out, const float *inp, const float *w, const float *b, int N, int C) {
  const int row = warp_row(N);
  if (row < 0) {
    return; // the whole warp
  }
  const float *x = inp + (size_t)row * C; // (C,)
  float *y = out + (size_t)row * C;       // (C,)
  float mean, rstd;
  row_stats(x, C, &mean, &rstd);
  for (int i = threadIdx.x % WARP; i < C; i += WARP) {
    y[i] = (x[i] - mean) * rstd * w[i] + b[i];
  }
}

static __global__ void __launch_bounds__(NORM_THREADS)
    residual_layernorm_kernel(float *resid, float *out, const float *add, const float *w,
                              const float *b, int N, int C) {
  const int row = warp_row(N);
  if (row < 0) {
    return;
  }
  float *r = resid + (size_t)row * C;     // (C,)
  const float *a = add + (size_t)row * C; // (C,)
  float *y = out + (size_t)row * C;       // (C,)
  for (int i = threadIdx.x % WARP; i < C; i += WARP) {
    r[i] += a[i];
  }
  float mean, rstd;
  row_stats(r, C, &mean, &rstd);
  for (int i = threadIdx.x % WARP; i < C; i += WARP) {
    y[i] = (r[i] - mean) * rstd * w[i] + b[i];
  }
}

static __global__ void __launch_bounds__(NORM_THREADS)
    rmsnorm_kernel(float *out, const float *inp, const float *w, int N, int C) {
  const int row = warp_row(N);
  if (row < 0) {
    return;
  }
  const float *x = inp + (size_t)row * C; // (C,)
  float *y = out + (size_t)row * C;       // (C,)
  float ss = 0.0f;
  for (int i = threadIdx.x % WARP; i < C; i += WARP) {
    ss += x[i] * x[i];
  }
  const float r = 1.0f / sqrtf(warp_sum(ss) / (float)C + VT_RMS_EPS);
  for (int i = threadIdx.x % WARP; i < C; i += WARP) {
    y[i] = x[i] * r * w[i];
  }
}

static __global__ void __launch_bounds__(NORM_THREADS)
    add_kernel(float *resid, const float *add, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    resid[i] += add[i];
  }
}

static int check_rows(const char *what, int N, int C) {
  if (N < 0 || C <= 0) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: bad shape N=%d C=%d", what, N, C);
  }
  return 0;
}

extern "C" int vt_layernorm_cuda(float *out, const float *inp, const float *w, const float *b,
                                 int N, int C, void *stream) {
  int rc = check_rows("vt_layernorm_cuda", N, C);
  if (rc != 0 || N == 0) {
    return rc;
  }
  if (!out || !inp || !w || !b) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "vt_layernorm_cuda: NULL pointer");
  }
  VT_LAUNCH(layernorm_kernel, CEIL_DIV(N, NORM_ROWS), NORM_THREADS, 0, vt__stream(stream))(
      out, inp, w, b, N, C);
  return vt__cuda_check_launch("vt_layernorm_cuda");
}

extern "C" int vt_residual_layernorm_cuda(float *resid, float *out, const float *add,
                                          const float *w, const float *b, int N, int C,
                                          void *stream) {
  int rc = check_rows("vt_residual_layernorm_cuda", N, C);
  if (rc != 0 || N == 0) {
    return rc;
  }
  if (!resid || !out || !add || !w || !b) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "vt_residual_layernorm_cuda: NULL pointer");
  }
  VT_LAUNCH(residual_layernorm_kernel, CEIL_DIV(N, NORM_ROWS), NORM_THREADS, 0,
            vt__stream(stream))(resid, out, add, w, b, N, C);
  return vt__cuda_check_launch("vt_residual_layernorm_cuda");
}

extern "C" int vt_rmsnorm_cuda(float *out, const float *inp, const float *w, int N, int C,
                               void *stream) {
  int rc = check_rows("vt_rmsnorm_cuda", N, C);
  if (rc != 0 || N == 0) {
    return rc;
  }
  if (!out || !inp || !w) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "vt_rmsnorm_cuda: NULL pointer");
  }
  VT_LAUNCH(rmsnorm_kernel, CEIL_DIV(N, NORM_ROWS), NORM_THREADS, 0, vt__stream(stream))(
      out, inp, w, N, C);
  return vt__cuda_check_launch("vt_rmsnorm_cuda");
}

extern "C" int vt_add_cuda(float *resid, const float *add, int n, void *stream) {
  if (n < 0) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "vt_add_cuda: n=%d", n);
  }
  if (n == 0) {
    return 0;
  }
  if (!resid || !add) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "vt_add_cuda: NULL pointer");
  }
  const int threads = NORM_THREADS;
  VT_LAUNCH(add_kernel, CEIL_DIV(n, threads), threads, 0, vt__stream(stream))(resid, add, n);
  return vt__cuda_check_launch("vt_add_cuda");
}
