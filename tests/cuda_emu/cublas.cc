/* cuBLAS of the vitrine CUDA emulator (docs/CUDA.md): SGEMM through OpenBLAS's cblas_sgemm,
 * column-major exactly as cuBLAS, on the handle's stream (recorded under stream capture).
 * Arguments are checked as cuBLAS checks them (CUBLAS_STATUS_INVALID_VALUE); the range each
 * matrix touches must lie inside one allocation of the handle's device, else the call fails as a
 * kernel with a bad address would: a diagnostic, a sticky cudaErrorIllegalAddress. After each
 * GEMM the device's guard zones are checked like after a kernel. */
#include <cblas.h>
#include <cublas_v2.h>
#include <stdio.h>

#include "internal.h"

struct cublasContext {
  uint32_t magic;
  int device;
  cudaStream_t stream;
  cublasMath_t math;
  cublasPointerMode_t pointer_mode;
};

namespace {

constexpr uint32_t HANDLE_MAGIC = 0x43424c53;

bool valid(cublasHandle_t h) { return h != nullptr && h->magic == HANDLE_MAGIC; }

/* The floats a column-major rows x cols matrix with leading dimension ld spans. */
size_t extent(int rows, int cols, int ld) {
  return rows == 0 || cols == 0 ? 0 : ((size_t)cols - 1) * (size_t)ld + (size_t)rows;
}

struct gemm_args {
  cublasOperation_t ta, tb;
  int m, n, k;
  float alpha, beta;
  const float *A, *B;
  float *C;
  int lda, ldb, ldc;
  long long sa, sb, sc;
  int batch;
  int device;
  const char *what;
};

/* Every matrix of every batch inside one allocation of the device: else a diagnostic. */
bool ranges_ok(const gemm_args &g) {
  const int ra = g.ta == CUBLAS_OP_N ? g.m : g.k, ca = g.ta == CUBLAS_OP_N ? g.k : g.m;
  const int rb = g.tb == CUBLAS_OP_N ? g.k : g.n, cb = g.tb == CUBLAS_OP_N ? g.n : g.k;
  struct {
    const char *name;
    const float *p;
    size_t floats;
    long long stride;
  } mats[3] = {{"A", g.A, g.k > 0 ? extent(ra, ca, g.lda) : 0, g.sa},
               {"B", g.B, g.k > 0 ? extent(rb, cb, g.ldb) : 0, g.sb},
               {"C", g.C, extent(g.m, g.n, g.ldc), g.sc}};
  for (const auto &mt : mats) {
    if (mt.floats == 0) {
      continue;
    }
    for (int i = 0; i < g.batch; i++) {
      const float *p = mt.p + (ptrdiff_t)i * mt.stride;
      const vt_emu::range_info r = vt_emu::classify(p, mt.floats * sizeof(float));
      if (r.device != g.device || r.bad) {
        vt_emu::diag("%s (m=%d n=%d k=%d, batch %d): matrix %s [%p, +%zu bytes) %s -> "
                     "cudaErrorIllegalAddress", g.what, g.m, g.n, g.k, i, mt.name, (const void *)p,
                     mt.floats * sizeof(float),
                     r.bad ? r.why.c_str()
                     : r.device >= 0 ? "is memory of another device"
                                     : "is not device memory");
        return false;
      }
    }
  }
  return true;
}

cudaError_t run_gemm(const gemm_args &g) {
  if (!ranges_ok(g)) {
    vt_emu::set_sticky(g.device, cudaErrorIllegalAddress);
    return vt_emu::set_last(cudaErrorIllegalAddress);
  }
  for (int i = 0; i < g.batch; i++) {
    const float *A = g.A + (ptrdiff_t)i * g.sa, *B = g.B + (ptrdiff_t)i * g.sb;
    float *C = g.C + (ptrdiff_t)i * g.sc;
    if (g.k == 0 || g.alpha == 0.0f) {
      // C = beta C; beta 0 writes zeros without reading C (NaN there does not survive)
      for (int j = 0; j < g.n; j++) {
        for (int r = 0; r < g.m; r++) {
          float *c = C + (size_t)j * g.ldc + r;
          *c = g.beta == 0.0f ? 0.0f : g.beta * *c;
        }
      }
      continue;
    }
    cblas_sgemm(CblasColMajor, g.ta == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
                g.tb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, g.m, g.n, g.k, g.alpha, A, g.lda,
                B, g.ldb, g.beta, C, g.ldc);
  }
  vt_emu::count(vt_emu::stats.gemms);
  return vt_emu::check_guards(g.device, g.what);
}

cublasStatus_t gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                    int k, const float *alpha, const float *A, int lda, long long sa,
                    const float *B, int ldb, long long sb, const float *beta, float *C, int ldc,
                    long long sc, int batch, const char *what) {
  if (!valid(h)) {
    return CUBLAS_STATUS_NOT_INITIALIZED;
  }
  const bool ops_ok = (ta == CUBLAS_OP_N || ta == CUBLAS_OP_T || ta == CUBLAS_OP_C) &&
                      (tb == CUBLAS_OP_N || tb == CUBLAS_OP_T || tb == CUBLAS_OP_C);
  const int ra = ta == CUBLAS_OP_N ? m : k, rb = tb == CUBLAS_OP_N ? k : n;
  if (!ops_ok || m < 0 || n < 0 || k < 0 || batch < 0 || lda < (ra > 1 ? ra : 1) ||
      ldb < (rb > 1 ? rb : 1) || ldc < (m > 1 ? m : 1) || alpha == nullptr || beta == nullptr) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (m == 0 || n == 0 || batch == 0) {
    return CUBLAS_STATUS_SUCCESS;
  }
  if (vt_emu::check_device(h->device) != cudaSuccess) {
    return CUBLAS_STATUS_EXECUTION_FAILED;
  }
  if (vt_emu::current_device() != h->device) {
    vt_emu::diag("%s: a handle of device %d used while device %d is current -> "
                 "CUBLAS_STATUS_EXECUTION_FAILED", what, h->device, vt_emu::current_device());
    return CUBLAS_STATUS_EXECUTION_FAILED;
  }
  vt_emu::stream *s = nullptr;
  if (vt_emu::resolve_stream(h->stream, &s) != cudaSuccess) {
    return CUBLAS_STATUS_EXECUTION_FAILED;
  }
  if (vt_emu::stream_device(s) != h->device) {
    vt_emu::diag("%s: the handle belongs to device %d but its stream to device %d -> "
                 "CUBLAS_STATUS_EXECUTION_FAILED", what, h->device, vt_emu::stream_device(s));
    return CUBLAS_STATUS_EXECUTION_FAILED;
  }
  const gemm_args g{ta, tb, m, n, k, *alpha, *beta, A, B, C, lda, ldb, ldc, sa, sb, sc, batch,
                    h->device, what};
  if (!ranges_ok(g)) {
    vt_emu::set_sticky(g.device, cudaErrorIllegalAddress);
    vt_emu::set_last(cudaErrorIllegalAddress);
    return CUBLAS_STATUS_EXECUTION_FAILED;
  }
  const cudaError_t e = vt_emu::submit(s, what, [g] { return run_gemm(g); });
  return e == cudaSuccess ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}

} // namespace

extern "C" {

cublasStatus_t cublasCreate_v2(cublasHandle_t *handle) {
  if (handle == nullptr) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  const int dev = vt_emu::current_device();
  if (vt_emu::check_device(dev) != cudaSuccess) {
    *handle = nullptr;
    return CUBLAS_STATUS_NOT_INITIALIZED;
  }
  *handle = new cublasContext{HANDLE_MAGIC, dev, nullptr, CUBLAS_DEFAULT_MATH,
                              CUBLAS_POINTER_MODE_HOST};
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t h) {
  if (!valid(h)) {
    return CUBLAS_STATUS_NOT_INITIALIZED;
  }
  h->magic = 0;
  delete h;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetVersion_v2(cublasHandle_t h, int *version) {
  if (!valid(h)) {
    return CUBLAS_STATUS_NOT_INITIALIZED;
  }
  if (version == nullptr) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  *version = CUBLAS_VER_MAJOR * 10000 + CUBLAS_VER_MINOR * 100 + CUBLAS_VER_PATCH;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t h, cudaStream_t stream) {
  if (!valid(h)) {
    return CUBLAS_STATUS_NOT_INITIALIZED;
  }
  h->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetStream_v2(cublasHandle_t h, cudaStream_t *stream) {
  if (!valid(h)) {
    return CUBLAS_STATUS_NOT_INITIALIZED;
  }
  if (stream == nullptr) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  *stream = h->stream;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetPointerMode_v2(cublasHandle_t h, cublasPointerMode_t mode) {
  if (!valid(h)) {
    return CUBLAS_STATUS_NOT_INITIALIZED;
  }
  if (mode != CUBLAS_POINTER_MODE_HOST) {
    return CUBLAS_STATUS_NOT_SUPPORTED; // alpha and beta on the device: not emulated
  }
  h->pointer_mode = mode;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetPointerMode_v2(cublasHandle_t h, cublasPointerMode_t *mode) {
  if (!valid(h)) {
    return CUBLAS_STATUS_NOT_INITIALIZED;
  }
  if (mode == nullptr) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  *mode = h->pointer_mode;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t mode) {
  if (!valid(h)) {
    return CUBLAS_STATUS_NOT_INITIALIZED;
  }
  h->math = mode; // all modes compute in FP32 here
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetMathMode(cublasHandle_t h, cublasMath_t *mode) {
  if (!valid(h)) {
    return CUBLAS_STATUS_NOT_INITIALIZED;
  }
  if (mode == nullptr) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  *mode = h->math;
  return CUBLAS_STATUS_SUCCESS;
}

const char *cublasGetStatusName(cublasStatus_t s) {
  switch (s) {
  case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
  case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
  case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
  case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
  case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
  case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
  case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
  case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
  case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
  case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}

/* the descriptions libcublas 13.0 gives */
const char *cublasGetStatusString(cublasStatus_t s) {
  switch (s) {
  case CUBLAS_STATUS_SUCCESS: return "success";
  case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
  case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
  case CUBLAS_STATUS_INVALID_VALUE:
    return "an unsupported value or parameter was passed to the function";
  case CUBLAS_STATUS_ARCH_MISMATCH:
    return "the function requires an architectural feature absent from the device";
  case CUBLAS_STATUS_MAPPING_ERROR: return "an access to GPU memory space failed";
  case CUBLAS_STATUS_EXECUTION_FAILED: return "the function failed to launch on the GPU";
  case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
  case CUBLAS_STATUS_NOT_SUPPORTED: return "the requested functionality is not supported";
  case CUBLAS_STATUS_LICENSE_ERROR: return "the license check failed";
  }
  return "unknown error";
}

cublasStatus_t cublasSgemm_v2(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                              int n, int k, const float *alpha, const float *A, int lda,
                              const float *B, int ldb, const float *beta, float *C, int ldc) {
  return gemm(h, ta, tb, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1, "cublasSgemm");
}

cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t h, cublasOperation_t ta,
                                         cublasOperation_t tb, int m, int n, int k,
                                         const float *alpha, const float *A, int lda,
                                         long long int sa, const float *B, int ldb,
                                         long long int sb, const float *beta, float *C, int ldc,
                                         long long int sc, int batch) {
  return gemm(h, ta, tb, m, n, k, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch,
              "cublasSgemmStridedBatched");
}

} // extern "C"
