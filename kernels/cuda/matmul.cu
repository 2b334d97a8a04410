/* The Linear layer on CUDA: out = act(inp W^T + b).
 *
 * Shapes: inp (N, IN), W (OUT, IN) as nn.Linear stores it, b (OUT,) or NULL, out (N, OUT).
 * Algorithm: one cuBLAS SGEMM, then (only with a bias or an activation) one fused epilogue pass
 * adding the bias and applying the exact GELU, x * 0.5 * (1 + erf(x * (1/sqrt 2))), in the
 * CPU's (PyTorch's) operation order.
 * Row-major to cuBLAS's column-major: out^T (OUT, N) = W (OUT, IN) . inp^T (IN, N); the row-major
 * W (OUT, IN) is a column-major (IN, OUT) matrix with leading dimension IN, so op(W) = W^T, and
 * inp is a column-major (IN, N) matrix, leading dimension IN.
 * The math mode is CUBLAS_DEFAULT_MATH: true FP32, no TF32 tensor cores (the CPU parity needs
 * ~1e-5; TF32's 10-bit mantissa would give ~1e-3).
 * cuBLAS handles: one per calling thread and device, created on first use and kept for the
 * thread's life (a handle is not safe to share between threads that set different streams).
 * out must not alias inp or W.
 */
#include <cublas_v2.h>

#include "kernels/cuda/common.cuh"

#define EPILOGUE_THREADS 256

static __global__ void __launch_bounds__(EPILOGUE_THREADS)
    bias_act_kernel(float *out, const float *b, int N, int OUT, int gelu) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (size_t)N * OUT) {
    return;
  }
  const float alpha = 0.70710678118654752440f; // 1 / sqrt 2
  float v = out[i];
  if (b != NULL) {
    v = v + b[i % OUT];
  }
  if (gelu) {
    v = v * 0.5f * (1.0f + erff(v * alpha));
  }
  out[i] = v;
}

static thread_local cublasHandle_t tl_handle = NULL;
static thread_local int tl_device = -1;

static int get_handle(cublasHandle_t *out, const char *what) {
  int dev = 0;
  cudaError_t ce = cudaGetDevice(&dev);
  if (ce != cudaSuccess) {
    (void)cudaGetLastError();
    return vt__cuda_fail(VT_CUDA_EDEVICE, "%s: cudaGetDevice: %s", what, cudaGetErrorString(ce));
  }
  if (tl_handle == NULL || tl_device != dev) {
    if (tl_handle != NULL) {
      (void)cublasDestroy(tl_handle);
      tl_handle = NULL;
    }
    cublasStatus_t st = cublasCreate(&tl_handle);
    if (st != CUBLAS_STATUS_SUCCESS) {
      tl_handle = NULL;
      return vt__cuda_fail(VT_CUDA_EDEVICE, "%s: cublasCreate: %s", what,
                           cublasGetStatusString(st));
    }
    (void)cublasSetMathMode(tl_handle, CUBLAS_DEFAULT_MATH);
    tl_device = dev;
  }
  *out = tl_handle;
  return 0;
}

extern "C" int vt_matmul_cuda(float *out, const float *inp, const float *W, const float *b, int N,
                              int IN, int OUT, enum vt_act act, void *stream) {
  const char *what = "vt_matmul_cuda";
  if (N < 0 || IN < 0 || OUT < 0 || (act != VT_ACT_NONE && act != VT_ACT_GELU)) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: bad arguments N=%d IN=%d OUT=%d act=%d", what, N, IN,
                         OUT, (int)act);
  }
  if (N == 0 || OUT == 0) {
    return 0;
  }
  if (!out || (IN > 0 && (!inp || !W))) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: NULL pointer", what);
  }
  cudaStream_t s = vt__stream(stream);
  if (IN == 0) {
    // an empty inner dimension gives a zero product; SGEMM would reject lda = 0
    cudaError_t ce = cudaMemsetAsync(out, 0, (size_t)N * OUT * sizeof(float), s);
    if (ce != cudaSuccess) {
      (void)cudaGetLastError();
      return vt__cuda_fail(VT_CUDA_EDEVICE, "%s: cudaMemsetAsync: %s", what,
                           cudaGetErrorString(ce));
    }
  } else {
    cublasHandle_t h = NULL;
    int rc = get_handle(&h, what);
    if (rc != 0) {
      return rc;
    }
    cublasStatus_t st = cublasSetStream(h, s);
    if (st == CUBLAS_STATUS_SUCCESS) {
      const float one = 1.0f, zero = 0.0f;
      st = cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, OUT, N, IN, &one, W, IN, inp, IN, &zero, out,
                       OUT);
    }
    if (st != CUBLAS_STATUS_SUCCESS) {
      return vt__cuda_fail(VT_CUDA_EDEVICE, "%s: cublasSgemm(N=%d IN=%d OUT=%d): %s", what, N, IN,
                           OUT, cublasGetStatusString(st));
    }
  }
  if (b == NULL && act == VT_ACT_NONE) {
    return 0;
  }
  const size_t total = (size_t)N * OUT;
  const size_t blocks = CEIL_DIV(total, (size_t)EPILOGUE_THREADS);
  if (blocks > 0x7fffffffu) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: N * OUT = %zu is too large", what, total);
  }
  VT_LAUNCH(bias_act_kernel, (unsigned)blocks, EPILOGUE_THREADS, 0, s)(out, b, N, OUT,
                                                                act == VT_ACT_GELU);
  return vt__cuda_check_launch(what);
}
