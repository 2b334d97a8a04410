/* The CUDA runtime helpers of kernels/ops_cuda.h: devices, streams, allocation, copies, sync,
 * graphs, the broadcast between devices, and the per-thread last-error message every vt_*_cuda
 * entry fills on failure.
 *
 * NCCL is loaded at run time (dlopen of libnccl.so.2, or the file VT_NCCL_LIB names), not linked:
 * a one-GPU machine needs no NCCL, and a several-GPU one without it falls back to peer copies.
 * VT_NCCL=off forces the peer copies. Under the CUDA emulator the emulator's NCCL is called.
 *
 * No helper aborts: CUDA errors become VT_CUDA_EDEVICE (or NULL from vt_cuda_malloc) with the
 * runtime's error name and string in the message. A missing driver or device is not an error for
 * vt_cuda_device_count, just 0 devices.
 */
#include <dlfcn.h>
#include <nccl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static int rt_fail(cudaError_t e, const char *what) {
  (void)cudaGetLastError();
  return vt__cuda_fail(VT_CUDA_EDEVICE, "%s: %s (%s)", what, cudaGetErrorString(e),
                       cudaGetErrorName(e));
}

extern "C" int vt_cuda_set_device(int device) {
  cudaError_t e = cudaSetDevice(device);
  return e == cudaSuccess ? 0 : rt_fail(e, "cudaSetDevice");
}

extern "C" int vt_cuda_stream_create(void **stream) {
  cudaStream_t s = NULL;
  cudaError_t e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
  if (e != cudaSuccess) {
    *stream = NULL;
    return rt_fail(e, "cudaStreamCreateWithFlags");
  }
  *stream = (void *)s;
  return 0;
}

extern "C" void vt_cuda_stream_destroy(void *stream) {
  if (stream != NULL) {
    (void)cudaStreamDestroy(vt__stream(stream));
  }
}

extern "C" void *vt_cuda_host_alloc(size_t bytes) {
  void *p = NULL;
  cudaError_t e = cudaMallocHost(&p, bytes > 0 ? bytes : 1);
  if (e != cudaSuccess) {
    rt_fail(e, "cudaMallocHost");
    return NULL;
  }
  return p;
}

extern "C" void vt_cuda_host_free(void *p) {
  if (p != NULL) {
    (void)cudaFreeHost(p);
  }
}

static int copy_async(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, void *stream,
                      const char *what) {
  if (bytes == 0) {
    return 0;
  }
  if (dst == NULL || src == NULL) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: NULL pointer", what);
  }
  cudaError_t e = cudaMemcpyAsync(dst, src, bytes, kind, vt__stream(stream));
  return e == cudaSuccess ? 0 : rt_fail(e, what);
}

extern "C" int vt_cuda_memcpy_h2d_async(void *dst, const void *src, size_t bytes, void *stream) {
  return copy_async(dst, src, bytes, cudaMemcpyHostToDevice, stream, "vt_cuda_memcpy_h2d_async");
}

extern "C" int vt_cuda_memcpy_d2h_async(void *dst, const void *src, size_t bytes, void *stream) {
  return copy_async(dst, src, bytes, cudaMemcpyDeviceToHost, stream, "vt_cuda_memcpy_d2h_async");
}

extern "C" int vt_cuda_memset0_async(void *dst, size_t bytes, void *stream) {
  if (bytes == 0) {
    return 0;
  }
  if (dst == NULL) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "vt_cuda_memset0_async: NULL pointer");
  }
  cudaError_t e = cudaMemsetAsync(dst, 0, bytes, vt__stream(stream));
  return e == cudaSuccess ? 0 : rt_fail(e, "vt_cuda_memset0_async");
}

extern "C" int vt_cuda_capture_begin(void *stream) {
  cudaError_t e = cudaStreamBeginCapture(vt__stream(stream), cudaStreamCaptureModeThreadLocal);
  return e == cudaSuccess ? 0 : rt_fail(e, "cudaStreamBeginCapture");
}

extern "C" int vt_cuda_capture_end(void *stream, void **graph) {
  *graph = NULL;
  cudaGraph_t g = NULL;
  cudaError_t e = cudaStreamEndCapture(vt__stream(stream), &g);
  if (e != cudaSuccess) {
    if (g != NULL) {
      (void)cudaGraphDestroy(g);
    }
    return rt_fail(e, "cudaStreamEndCapture");
  }
  cudaGraphExec_t x = NULL;
  e = cudaGraphInstantiate(&x, g, 0);
  (void)cudaGraphDestroy(g);
  if (e != cudaSuccess) {
    return rt_fail(e, "cudaGraphInstantiate");
  }
  *graph = (void *)x;
  return 0;
}

extern "C" int vt_cuda_graph_replay(void *graph, void *stream) {
  cudaError_t e = cudaGraphLaunch((cudaGraphExec_t)graph, vt__stream(stream));
  return e == cudaSuccess ? 0 : rt_fail(e, "cudaGraphLaunch");
}

extern "C" void vt_cuda_graph_free(void *graph) {
  if (graph != NULL) {
    (void)cudaGraphExecDestroy((cudaGraphExec_t)graph);
  }
}

/* ---- broadcast ------------------------------------------------------------------------------ */
struct nccl_api {
  decltype(&ncclCommInitAll) comm_init_all;
  decltype(&ncclCommDestroy) comm_destroy;
  decltype(&ncclGroupStart) group_start;
  decltype(&ncclGroupEnd) group_end;
  decltype(&ncclBroadcast) broadcast;
  decltype(&ncclGetErrorString) error_string;
};

/* NCCL's entry points, or 0 when it is off or cannot be loaded. */
static int nccl_load(nccl_api *a) {
  const char *off = getenv("VT_NCCL");
  if (off != NULL && strcmp(off, "off") == 0) {
    return 0;
  }
#ifdef VT_CUDA_EMU
  *a = nccl_api{ncclCommInitAll, ncclCommDestroy, ncclGroupStart, ncclGroupEnd, ncclBroadcast,
                ncclGetErrorString};
  return 1;
#else
  const char *path = getenv("VT_NCCL_LIB");
  void *h = dlopen(path != NULL && *path ? path : "libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
  if (h == NULL) {
    return 0;
  }
  a->comm_init_all = (decltype(a->comm_init_all))dlsym(h, "ncclCommInitAll");
  a->comm_destroy = (decltype(a->comm_destroy))dlsym(h, "ncclCommDestroy");
  a->group_start = (decltype(a->group_start))dlsym(h, "ncclGroupStart");
  a->group_end = (decltype(a->group_end))dlsym(h, "ncclGroupEnd");
  a->broadcast = (decltype(a->broadcast))dlsym(h, "ncclBroadcast");
  a->error_string = (decltype(a->error_string))dlsym(h, "ncclGetErrorString");
  return a->comm_init_all && a->comm_destroy && a->group_start && a->group_end && a->broadcast &&
         a->error_string;
#endif
}

static int broadcast_nccl(const nccl_api &a, const int *devices, void *const *bufs, int n,
                          size_t bytes) {
  ncclComm_t comms[64];
  ncclResult_t r = a.comm_init_all(comms, n, devices);
  if (r != ncclSuccess) {
    return vt__cuda_fail(VT_CUDA_EDEVICE, "ncclCommInitAll: %s", a.error_string(r));
  }
  int rc = 0;
  r = a.group_start();
  for (int i = 0; i < n && r == ncclSuccess; i++) {
    cudaError_t e = cudaSetDevice(devices[i]);
    if (e != cudaSuccess) {
      rc = rt_fail(e, "cudaSetDevice");
      break;
    }
    r = a.broadcast(bufs[0], bufs[i], bytes, ncclChar, 0, comms[i], (cudaStream_t)0);
  }
  const ncclResult_t r2 = a.group_end();
  if (rc == 0 && (r != ncclSuccess || r2 != ncclSuccess)) {
    rc = vt__cuda_fail(VT_CUDA_EDEVICE, "ncclBroadcast of %zu bytes: %s", bytes,
                       a.error_string(r != ncclSuccess ? r : r2));
  }
  for (int i = 0; i < n && rc == 0; i++) {
    cudaError_t e = cudaSetDevice(devices[i]);
    if (e == cudaSuccess) {
      e = cudaDeviceSynchronize();
    }
    if (e != cudaSuccess) {
      rc = rt_fail(e, "after ncclBroadcast");
    }
  }
  for (int i = 0; i < n; i++) {
    (void)a.comm_destroy(comms[i]);
  }
  return rc;
}

extern "C" int vt_cuda_broadcast(const int *devices, void *const *bufs, int n, size_t bytes,
                                 const char **how) {
  if (n < 1 || n > 64) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "vt_cuda_broadcast: %d devices (1 to 64)", n);
  }
  int cur = 0;
  (void)cudaGetDevice(&cur);
  int rc = 0;
  nccl_api a;
  if (n > 1 && bytes > 0 && nccl_load(&a)) {
    if (how != NULL) {
      *how = "nccl";
    }
    rc = broadcast_nccl(a, devices, bufs, n, bytes);
  } else {
    if (how != NULL) {
      *how = "peer copies";
    }
    for (int i = 1; i < n && rc == 0 && bytes > 0; i++) {
      cudaError_t e = cudaMemcpyPeer(bufs[i], devices[i], bufs[0], devices[0], bytes);
      if (e != cudaSuccess) {
        rc = rt_fail(e, "cudaMemcpyPeer");
      }
    }
  }
  (void)cudaSetDevice(cur);
  return rc;
}
