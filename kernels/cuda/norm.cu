/* Normalisations and the residual add on CUDA: LayerNorm, residual + LayerNorm, RMSNorm, add.
 *
 * Shapes: N rows of C floats, (N, C), row-major; w, b (C,). Semantics of kernels/cpu/norm.c:
 * LayerNorm with the biased two-pass variance (sum of squared deviations, not E[x^2] - mean^2),
 * eps 1e-5; RMSNorm with eps 1e-6.
 * Algorithm: one block per row; threads stride over the row, block reductions give the mean and
 * then the variance. Every statistic of a row is complete (the reductions end in barriers) before
 * any of its outputs is written, so out may alias inp, and for the residual variant the whole
 * row's residual update precedes the reads of the statistics pass (out may alias add).
 * Limits: N < 2^31 rows (grid.x), any C >= 1.
 */
#include "kernels/cuda/common.cuh"

#define NORM_THREADS 256

/* mean and rstd of x (C,) over the block; shared: 32 floats. */
__device__ __forceinline__ void row_stats(const float *x, int C, float *shared, float *mean,
                                          float *rstd) {
  float s = 0.0f;
  for (int i = threadIdx.x; i < C; i += blockDim.x) {
    s += x[i];
  }
  const float m = block_sum(s, shared) / (float)C;
  float v = 0.0f;
  for (int i = threadIdx.x; i < C; i += blockDim.x) {
    const float d = x[i] - m;
    v += d * d;
  }
  const float var = block_sum(v, shared) / (float)C; // biased, as nn.LayerNorm
  *mean = m;
  *rstd = 1.0f / sqrtf(var + VT_LN_EPS);
}

static __global__ void layernorm_kernel(float *out, const float *inp, const float *w,
                                        const float *b, int C) {
  __shared__ float shared[WARP];
  const float *x = inp + (size_t)blockIdx.x * C; // (C,)
  float *y = out + (size_t)blockIdx.x * C;       // (C,)
  float mean, rstd;
  row_stats(x, C, shared, &mean, &rstd);
  for (int i = threadIdx.x; i < C; i += blockDim.x) {
    y[i] = (x[i] - mean) * rstd * w[i] + b[i];
  }
}

static __global__ void residual_layernorm_kernel(float *resid, float *out, const float *add,
                                                 const float *w, const float *b, int C) {
  __shared__ float shared[WARP];
  float *r = resid + (size_t)blockIdx.x * C;     // (C,)
  const float *a = add + (size_t)blockIdx.x * C; // (C,)
  float *y = out + (size_t)blockIdx.x * C;       // (C,)
  for (int i = threadIdx.x; i < C; i += blockDim.x) {
    r[i] += a[i];
  }
  __syncthreads(); // the updated row is read by other threads below
  float mean, rstd;
  row_stats(r, C, shared, &mean, &rstd);
  for (int i = threadIdx.x; i < C; i += blockDim.x) {
    y[i] = (r[i] - mean) * rstd * w[i] + b[i];
  }
}

static __global__ void rmsnorm_kernel(float *out, const float *inp, const float *w, int C) {
  __shared__ float shared[WARP];
  const float *x = inp + (size_t)blockIdx.x * C; // (C,)
  float *y = out + (size_t)blockIdx.x * C;       // (C,)
  float ss = 0.0f;
  for (int i = threadIdx.x; i < C; i += blockDim.x) {
    ss += x[i] * x[i];
  }
  const float r = 1.0f / sqrtf(block_sum(ss, shared) / (float)C + VT_RMS_EPS);
  for (int i = threadIdx.x; i < C; i += blockDim.x) {
    y[i] = x[i] * r * w[i];
  }
}

static __global__ void add_kernel(float *resid, const float *add, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    resid[i] += add[i];
  }
}

/* Threads per row: enough warps to cover C, at most NORM_THREADS. */
static int row_threads(int C) {
  int t = CEIL_DIV(C, WARP) * WARP;
  return t < NORM_THREADS ? t : NORM_THREADS;
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
  VT_LAUNCH(layernorm_kernel, N, row_threads(C), 0, vt__stream(stream))(out, inp, w, b, C);
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
  VT_LAUNCH(residual_layernorm_kernel, N, row_threads(C), 0, vt__stream(stream))(resid, out, add, w, b,
                                                                          C);
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
  VT_LAUNCH(rmsnorm_kernel, N, row_threads(C), 0, vt__stream(stream))(out, inp, w, C);
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
  const int threads = 256;
  VT_LAUNCH(add_kernel, CEIL_DIV(n, threads), threads, 0, vt__stream(stream))(resid, add, n);
  return vt__cuda_check_launch("vt_add_cuda");
}
