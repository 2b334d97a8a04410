/* The CUDA runtime helpers of kernels/ops_cuda.h: device count, allocation, copies, sync, and the
 * per-thread last-error message every vt_*_cuda entry fills on failure.
 *
 * No helper aborts: CUDA errors become VT_CUDA_EDEVICE (or NULL from vt_cuda_malloc) with the
 * runtime's error name and string in the message. A missing driver or device is not an error for
 * vt_cuda_device_count, just 0 devices.
 */
#include <stdarg.h>
#include <stdio.h>

#include "kernels/cuda/common.cuh"

static thread_local char last_error[512];

int vt__cuda_fail(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
  return code;
}

int vt__cuda_check_launch(const char *what) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) {
    return vt__cuda_fail(VT_CUDA_EDEVICE, "%s: %s (%s)", what, cudaGetErrorString(e),
                         cudaGetErrorName(e));
  }
  return 0;
}

extern "C" const char *vt_cuda_last_error(void) { return last_error; }

extern "C" int vt_cuda_device_count(void) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    // no driver, no device, or a driver older than the runtime: all mean "no usable device"
    (void)cudaGetLastError();
    vt__cuda_fail(VT_CUDA_EDEVICE, "cudaGetDeviceCount: %s (%s)", cudaGetErrorString(e),
                  cudaGetErrorName(e));
    return 0;
  }
  return n;
}

extern "C" void *vt_cuda_malloc(size_t bytes) {
  void *p = NULL;
  cudaError_t e = cudaMalloc(&p, bytes > 0 ? bytes : 1);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    vt__cuda_fail(VT_CUDA_ENOMEM, "cudaMalloc(%zu bytes): %s (%s)", bytes, cudaGetErrorString(e),
                  cudaGetErrorName(e));
    return NULL;
  }
  return p;
}

extern "C" void vt_cuda_free(void *p) {
  if (p != NULL) {
    (void)cudaFree(p);
  }
}

static int copy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, const char *what) {
  if (bytes == 0) {
    return 0;
  }
  if (dst == NULL || src == NULL) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: NULL pointer", what);
  }
  cudaError_t e = cudaMemcpy(dst, src, bytes, kind);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return vt__cuda_fail(VT_CUDA_EDEVICE, "%s(%zu bytes): %s (%s)", what, bytes,
                         cudaGetErrorString(e), cudaGetErrorName(e));
  }
  return 0;
}

extern "C" int vt_cuda_memcpy_h2d(void *dst, const void *src, size_t bytes) {
  return copy(dst, src, bytes, cudaMemcpyHostToDevice, "vt_cuda_memcpy_h2d");
}

extern "C" int vt_cuda_memcpy_d2h(void *dst, const void *src, size_t bytes) {
  return copy(dst, src, bytes, cudaMemcpyDeviceToHost, "vt_cuda_memcpy_d2h");
}

extern "C" int vt_cuda_memcpy_d2d(void *dst, const void *src, size_t bytes, void *stream) {
  if (bytes == 0) {
    return 0;
  }
  if (dst == NULL || src == NULL) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "vt_cuda_memcpy_d2d: NULL pointer");
  }
  cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, vt__stream(stream));
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return vt__cuda_fail(VT_CUDA_EDEVICE, "vt_cuda_memcpy_d2d(%zu bytes): %s (%s)", bytes,
                         cudaGetErrorString(e), cudaGetErrorName(e));
  }
  return 0;
}

extern "C" int vt_cuda_sync(void *stream) {
  cudaError_t e = cudaStreamSynchronize(vt__stream(stream));
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return vt__cuda_fail(VT_CUDA_EDEVICE, "vt_cuda_sync: %s (%s)", cudaGetErrorString(e),
                         cudaGetErrorName(e));
  }
  return 0;
}
