/* The CUDA runtime API of the vitrine CUDA emulator (docs/CUDA.md): devices, launches, copies,
 * streams, events, stream capture and graphs.
 *
 * Work is done when it is enqueued (every stream is trivially in order); a stream that is
 * capturing records it instead, by value, and cudaGraphLaunch replays the records in order.
 * Capture follows CUDA's rules for what may happen meanwhile: a potentially unsafe call (a
 * synchronous copy, a sync, an allocation) from a thread the capture mode prohibits returns
 * cudaErrorStreamCaptureUnsupported and invalidates the capture; work on the legacy default
 * stream while a blocking stream of its device captures returns cudaErrorStreamCaptureImplicit.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "internal.h"

namespace vt_emu {

struct node {
  const char *what;
  work run;
};

struct capture {
  cudaStreamCaptureMode mode;
  std::thread::id thread;
  bool invalidated;
  CUgraph_st *graph;
  stream *origin;
  std::vector<stream *> joined; /* streams that joined through cudaStreamWaitEvent */
  std::vector<CUevent_st *> events; /* events recorded in it */
};

} // namespace vt_emu

using namespace vt_emu;

enum : uint32_t {
  STREAM_MAGIC = 0x5354524d,
  EVENT_MAGIC = 0x45564e54,
  GRAPH_MAGIC = 0x47525048,
  EXEC_MAGIC = 0x47455845
};

struct CUstream_st {
  uint32_t magic;
  int device;
  unsigned flags;
  bool legacy; /* the legacy default stream (NULL, cudaStreamLegacy) */
  capture *cap;
};

struct CUevent_st {
  uint32_t magic;
  int device;
  unsigned flags;
  bool recorded;
  double ms; /* host monotonic time at the record */
  capture *cap; /* the capture it was last recorded in, while that lasts */
};

struct CUgraph_st {
  uint32_t magic;
  int device;
  std::vector<node> nodes;
};

struct CUgraphExec_st {
  uint32_t magic;
  int device;
  std::shared_ptr<const std::vector<node>> nodes;
};

namespace vt_emu {
namespace {

/* handles, captures, function attributes; never destroyed, like memory.cc's tables: a stream a
 * program leaves behind is not a host leak */
std::mutex rt_mu;
std::unordered_set<const void *> &handles = *new std::unordered_set<const void *>;
std::vector<capture *> &captures = *new std::vector<capture *>;
std::map<std::pair<int, const void *>, size_t> &dyn_smem_limit =
    *new std::map<std::pair<int, const void *>, size_t>;
bool peer_enabled[VT_EMU_MAX_DEVICES][VT_EMU_MAX_DEVICES];
CUstream_st legacy_streams[VT_EMU_MAX_DEVICES];
thread_local CUstream_st per_thread_streams[VT_EMU_MAX_DEVICES];
thread_local int tl_device = 0;
thread_local cudaStreamCaptureMode tl_capture_mode = cudaStreamCaptureModeGlobal;

constexpr size_t DEFAULT_SHMEM = 48 * 1024, OPTIN_SHMEM = 227 * 1024;

double now_ms(void) {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

template <class T> bool valid(const T *h, uint32_t magic) {
  return h != nullptr && handles.count(h) != 0 && h->magic == magic;
}

void invalidate(capture *c, const char *why) {
  if (!c->invalidated) {
    c->invalidated = true;
    diag("%s -> the stream capture begun on stream %p is invalidated", why, (void *)c->origin);
  }
}

void end_capture(capture *c) {
  c->origin->cap = nullptr;
  for (stream *s : c->joined) {
    s->cap = nullptr;
  }
  for (CUevent_st *ev : c->events) {
    if (valid(ev, EVENT_MAGIC) && ev->cap == c) {
      ev->cap = nullptr;
    }
  }
  captures.erase(std::find(captures.begin(), captures.end(), c));
}

/* The captures an implicit dependency of the legacy stream of dev would reach (under rt_mu). */
std::vector<capture *> implicit_victims(int dev) {
  std::vector<capture *> v;
  for (capture *c : captures) {
    if (!c->invalidated && c->origin->device == dev &&
        !(c->origin->flags & cudaStreamNonBlocking)) {
      v.push_back(c);
    }
  }
  return v;
}

const char *kind_name(cudaMemcpyKind k) {
  switch (k) {
  case cudaMemcpyHostToHost:
    return "host to host";
  case cudaMemcpyHostToDevice:
    return "host to device";
  case cudaMemcpyDeviceToHost:
    return "device to host";
  case cudaMemcpyDeviceToDevice:
    return "device to device";
  default:
    return "default";
  }
}

struct copy_plan {
  void *dst;
  const void *src;
  size_t n;
  cudaMemcpyKind kind;
  int dst_dev, src_dev; /* -1: host */
  int dst_pinned;
};

/* Checks a copy: the kind against the pointers (cudaMemcpyDefault is inferred), and every device
 * range inside one live allocation of its device. */
cudaError_t plan_copy(void *dst, const void *src, size_t n, cudaMemcpyKind kind, int dst_dev,
                      int src_dev, const char *what, copy_plan *p) {
  const range_info di = classify(dst, n), si = classify(src, n);
  const bool d_dev = di.device >= 0, s_dev = si.device >= 0;
  if (kind == cudaMemcpyDefault) {
    kind = d_dev ? (s_dev ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                 : (s_dev ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
  }
  if ((int)kind < 0 || (int)kind > 3) {
    diag("%s: bad cudaMemcpyKind %d -> cudaErrorInvalidMemcpyDirection", what, (int)kind);
    return set_last(cudaErrorInvalidMemcpyDirection);
  }
  const bool want_d = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool want_s = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (!want_d && d_dev) {
    diag("%s (%s): the destination %p is device memory -> cudaErrorInvalidValue", what,
         kind_name(kind), dst);
    return set_last(cudaErrorInvalidValue);
  }
  if (!want_s && s_dev) {
    diag("%s (%s): the source %p is device memory -> cudaErrorInvalidValue", what,
         kind_name(kind), src);
    return set_last(cudaErrorInvalidValue);
  }
  if (want_d && check_device_range(dst, n, dst_dev, what, "destination") != cudaSuccess) {
    return cudaErrorInvalidValue;
  }
  if (want_s && check_device_range(src, n, src_dev, what, "source") != cudaSuccess) {
    return cudaErrorInvalidValue;
  }
  *p = copy_plan{dst, src, n, kind, want_d ? dst_dev : -1, want_s ? src_dev : -1, di.pinned};
  return cudaSuccess;
}

/* The copy itself, when it runs (again, in a graph replay: the memory may be gone by then). */
cudaError_t do_copy(const copy_plan &p, const char *what, bool async) {
  if ((p.dst_dev >= 0 && classify(p.dst, p.n).bad) ||
      (p.src_dev >= 0 && classify(p.src, p.n).bad)) {
    const int dev = p.dst_dev >= 0 ? p.dst_dev : p.src_dev;
    diag("%s (%zu bytes, %s): a device range is no longer allocated -> cudaErrorIllegalAddress",
         what, p.n, kind_name(p.kind));
    set_sticky(dev, cudaErrorIllegalAddress);
    return set_last(cudaErrorIllegalAddress);
  }
  memmove(p.dst, p.src, p.n);
  switch (p.kind) {
  case cudaMemcpyHostToDevice:
    count(stats.h2d);
    count(stats.bytes_h2d, p.n);
    break;
  case cudaMemcpyDeviceToHost:
    count(stats.d2h);
    count(stats.bytes_d2h, p.n);
    if (async && !p.dst_pinned) {
      count(stats.syncs); // CUDA returns only when a copy into pageable memory is done
    }
    break;
  case cudaMemcpyDeviceToDevice:
    count(stats.d2d);
    break;
  default:
    count(stats.h2h);
  }
  return cudaSuccess;
}

stream *legacy(int dev) {
  stream *s = &legacy_streams[dev];
  s->magic = STREAM_MAGIC;
  s->device = dev;
  s->legacy = true;
  return s;
}

void fill_props(cudaDeviceProp *p, int dev) {
  memset(p, 0, sizeof *p);
  snprintf(p->name, sizeof p->name, "vitrine CUDA emulator");
  snprintf(p->uuid.bytes, sizeof p->uuid.bytes, "vt-emu-dev%02d", dev);
  p->totalGlobalMem = cfg().device_mem;
  p->sharedMemPerBlock = DEFAULT_SHMEM;
  p->regsPerBlock = 65536;
  p->warpSize = 32;
  p->memPitch = 2147483647;
  p->maxThreadsPerBlock = 1024;
  p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024;
  p->maxThreadsDim[2] = 64;
  p->maxGridSize[0] = 2147483647;
  p->maxGridSize[1] = p->maxGridSize[2] = 65535;
  p->totalConstMem = 65536;
  p->major = 9;
  p->minor = 0;
  p->textureAlignment = 512;
  p->texturePitchAlignment = 32;
  p->multiProcessorCount = 132;
  p->canMapHostMemory = 1;
  p->concurrentKernels = 1;
  p->ECCEnabled = 1;
  p->pciBusID = dev + 1;
  p->asyncEngineCount = 3;
  p->unifiedAddressing = 1;
  p->memoryBusWidth = 5120;
  p->l2CacheSize = 50 << 20;
  p->persistingL2CacheMaxSize = 30 << 20;
  p->maxThreadsPerMultiProcessor = 2048;
  p->streamPrioritiesSupported = 1;
  p->globalL1CacheSupported = 1;
  p->localL1CacheSupported = 1;
  p->sharedMemPerMultiprocessor = 228 * 1024;
  p->regsPerMultiprocessor = 65536;
  p->managedMemory = 1;
  p->hostNativeAtomicSupported = 0;
  p->computePreemptionSupported = 1;
  p->cooperativeLaunch = 1;
  p->sharedMemPerBlockOptin = OPTIN_SHMEM;
  p->maxBlocksPerMultiProcessor = 32;
  p->accessPolicyMaxWindowSize = 134213632;
  p->reservedSharedMemPerBlock = 1024;
  p->memoryPoolsSupported = 1;
  p->clusterLaunch = 1;
  p->deviceNumaId = -1;
  p->hostNumaId = -1;
}

} // namespace

int current_device(void) { return tl_device; }

int stream_device(const stream *s) { return s->device; }

cudaError_t resolve_stream(cudaStream_t h, stream **out) {
  const int dev = tl_device;
  if (h == nullptr || h == cudaStreamLegacy) {
    *out = legacy(dev);
    return cudaSuccess;
  }
  if (h == cudaStreamPerThread) {
    stream *s = &per_thread_streams[dev];
    s->magic = STREAM_MAGIC;
    s->device = dev;
    *out = s;
    return cudaSuccess;
  }
  std::lock_guard<std::mutex> lock(rt_mu);
  if (!valid(h, STREAM_MAGIC)) {
    diag("stream %p is not a live stream -> cudaErrorInvalidResourceHandle", (void *)h);
    return set_last(cudaErrorInvalidResourceHandle);
  }
  *out = h;
  return cudaSuccess;
}

cudaError_t submit(stream *s, const char *what, work w) {
  {
    std::lock_guard<std::mutex> lock(rt_mu);
    if (s->cap != nullptr) {
      if (s->cap->invalidated) {
        return set_last(cudaErrorStreamCaptureInvalidated);
      }
      s->cap->graph->nodes.push_back(node{what, std::move(w)});
      return cudaSuccess;
    }
    if (s->legacy) {
      const std::vector<capture *> v = implicit_victims(s->device);
      if (!v.empty()) {
        char why[256];
        snprintf(why, sizeof why, "%s on the legacy default stream of device %d while a blocking "
                 "stream of it captures (cudaErrorStreamCaptureImplicit)", what, s->device);
        for (capture *c : v) {
          invalidate(c, why);
        }
        return set_last(cudaErrorStreamCaptureImplicit);
      }
    }
  }
  return set_last(w());
}

cudaError_t unsafe_call(const char *what) {
  std::lock_guard<std::mutex> lock(rt_mu);
  const std::thread::id me = std::this_thread::get_id();
  bool hit = false;
  for (capture *c : captures) {
    if (c->invalidated) {
      continue;
    }
    const bool own = c->thread == me;
    if ((own && c->mode != cudaStreamCaptureModeRelaxed &&
         tl_capture_mode != cudaStreamCaptureModeRelaxed) ||
        (!own && c->mode == cudaStreamCaptureModeGlobal &&
         tl_capture_mode == cudaStreamCaptureModeGlobal)) {
      char why[256];
      snprintf(why, sizeof why, "%s during stream capture: a potentially unsafe call "
               "(cudaErrorStreamCaptureUnsupported)", what);
      invalidate(c, why);
      hit = true;
    }
  }
  return hit ? set_last(cudaErrorStreamCaptureUnsupported) : cudaSuccess;
}

size_t max_dynamic_shmem(const void *fn, int dev) {
  std::lock_guard<std::mutex> lock(rt_mu);
  auto it = dyn_smem_limit.find({dev, fn});
  return it == dyn_smem_limit.end() ? DEFAULT_SHMEM : it->second;
}

/* ---- injected launch failures (vt_emu_fail_kernel, VT_EMU_FAIL_KERNEL) ------------------------ */

namespace {
std::mutex fail_mu;
std::string fail_name; // "" : none
int fail_skip, fail_count;
std::once_flag fail_once;

void fail_from_env(void) {
  const char *s = getenv("VT_EMU_FAIL_KERNEL"); // name[:skip[:count]]
  if (s == nullptr || *s == 0) {
    return;
  }
  std::string v(s);
  int skip = 0, count = 1;
  const size_t c1 = v.find(':');
  if (c1 != std::string::npos) {
    skip = atoi(v.c_str() + c1 + 1);
    const size_t c2 = v.find(':', c1 + 1);
    if (c2 != std::string::npos) {
      count = atoi(v.c_str() + c2 + 1);
    }
    v.resize(c1);
  }
  std::lock_guard<std::mutex> lock(fail_mu); // inside call_once: set directly
  fail_name = v;
  fail_skip = skip > 0 ? skip : 0;
  fail_count = count;
}

/* Whether this launch of `name` is one to fail. */
bool fail_now(const char *name) {
  std::call_once(fail_once, fail_from_env);
  std::lock_guard<std::mutex> lock(fail_mu);
  if (fail_name.empty() || fail_count <= 0 || strstr(name, fail_name.c_str()) == nullptr) {
    return false;
  }
  if (fail_skip > 0) {
    fail_skip--;
    return false;
  }
  fail_count--;
  return true;
}
} // namespace

/* ---- launches (vt_emu_kernel.h) ----------------------------------------------------------- */

void launch(const launch_site &site, dim3 grid, dim3 block, size_t shmem, cudaStream_t h,
            std::shared_ptr<kernel_body> body) {
  const int dev = tl_device;
  if (check_device(dev) != cudaSuccess) {
    return;
  }
  stream *s = nullptr;
  if (resolve_stream(h, &s) != cudaSuccess) {
    return;
  }
  if (s->device != dev) {
    diag("kernel %s (launched at %s:%d) on a stream of device %d while device %d is current -> "
         "cudaErrorInvalidResourceHandle", site.name, short_path(site.file), site.line,
         s->device, dev);
    set_last(cudaErrorInvalidResourceHandle);
    return;
  }
  const launch_config lc{site, grid, block, shmem};
  std::string why;
  const cudaError_t e = check_launch(lc, max_dynamic_shmem(site.fn, dev), &why);
  if (e != cudaSuccess) {
    diag("kernel %s (launched at %s:%d): bad launch configuration: %s -> %s", site.name,
         short_path(site.file), site.line, why.c_str(), cudaGetErrorName(e));
    set_last(e);
    return;
  }
  if (fail_now(site.name)) {
    diag("kernel %s (launched at %s:%d): failure injected (VT_EMU_FAIL_KERNEL) -> "
         "cudaErrorLaunchOutOfResources", site.name, short_path(site.file), site.line);
    set_last(cudaErrorLaunchOutOfResources);
    return;
  }
  (void)submit(s, site.name, [lc, body, dev] { return run_kernel(lc, body.get(), dev); });
}

cudaError_t symbol_copy(void *dst, const void *src, size_t count, int to_symbol) {
  const cudaError_t e = unsafe_call(to_symbol ? "cudaMemcpyToSymbol" : "cudaMemcpyFromSymbol");
  if (e != cudaSuccess) {
    return e;
  }
  memcpy(dst, src, count);
  vt_emu::count(to_symbol ? stats.h2d : stats.d2h);
  vt_emu::count(stats.syncs);
  return cudaSuccess;
}

} // namespace vt_emu

/* ---- the C API ------------------------------------------------------------------------------ */

extern "C" {

void vt_emu_fail_kernel(const char *name_part, int skip, int count) {
  std::call_once(vt_emu::fail_once, [] {}); // a call overrides the environment
  std::lock_guard<std::mutex> lock(vt_emu::fail_mu);
  vt_emu::fail_name = name_part != nullptr ? name_part : "";
  vt_emu::fail_skip = skip > 0 ? skip : 0;
  vt_emu::fail_count = count;
}

cudaError_t cudaGetLastError(void) { return peek_last(1); }
cudaError_t cudaPeekAtLastError(void) { return peek_last(0); }

cudaError_t cudaGetDeviceCount(int *count) {
  if (count == nullptr) {
    return set_last(cudaErrorInvalidValue);
  }
  *count = cfg().devices;
  return *count == 0 ? set_last(cudaErrorNoDevice) : cudaSuccess;
}

cudaError_t cudaGetDevice(int *device) {
  if (device == nullptr) {
    return set_last(cudaErrorInvalidValue);
  }
  *device = tl_device;
  return cfg().devices == 0 ? set_last(cudaErrorNoDevice) : cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  if (cfg().devices == 0) {
    return set_last(cudaErrorNoDevice);
  }
  if (device < 0 || device >= cfg().devices) {
    return set_last(cudaErrorInvalidDevice);
  }
  tl_device = device;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device) {
  if (cfg().devices == 0) {
    return set_last(cudaErrorNoDevice);
  }
  if (device < 0 || device >= cfg().devices) {
    return set_last(cudaErrorInvalidDevice);
  }
  if (prop == nullptr) {
    return set_last(cudaErrorInvalidValue);
  }
  fill_props(prop, device);
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device) {
  if (cfg().devices == 0) {
    return set_last(cudaErrorNoDevice);
  }
  if (device < 0 || device >= cfg().devices) {
    return set_last(cudaErrorInvalidDevice);
  }
  if (value == nullptr) {
    return set_last(cudaErrorInvalidValue);
  }
  cudaDeviceProp p;
  fill_props(&p, device);
  switch (attr) {
  case cudaDevAttrMaxThreadsPerBlock: *value = p.maxThreadsPerBlock; break;
  case cudaDevAttrMaxBlockDimX: *value = p.maxThreadsDim[0]; break;
  case cudaDevAttrMaxBlockDimY: *value = p.maxThreadsDim[1]; break;
  case cudaDevAttrMaxBlockDimZ: *value = p.maxThreadsDim[2]; break;
  case cudaDevAttrMaxGridDimX: *value = p.maxGridSize[0]; break;
  case cudaDevAttrMaxGridDimY: *value = p.maxGridSize[1]; break;
  case cudaDevAttrMaxGridDimZ: *value = p.maxGridSize[2]; break;
  case cudaDevAttrMaxSharedMemoryPerBlock: *value = (int)p.sharedMemPerBlock; break;
  case cudaDevAttrTotalConstantMemory: *value = (int)p.totalConstMem; break;
  case cudaDevAttrWarpSize: *value = p.warpSize; break;
  case cudaDevAttrMaxPitch: *value = (int)p.memPitch; break;
  case cudaDevAttrMaxRegistersPerBlock: *value = p.regsPerBlock; break;
  case cudaDevAttrClockRate: *value = 1980000; break;
  case cudaDevAttrTextureAlignment: *value = (int)p.textureAlignment; break;
  case cudaDevAttrMultiProcessorCount: *value = p.multiProcessorCount; break;
  case cudaDevAttrIntegrated: *value = p.integrated; break;
  case cudaDevAttrCanMapHostMemory: *value = p.canMapHostMemory; break;
  case cudaDevAttrConcurrentKernels: *value = p.concurrentKernels; break;
  case cudaDevAttrEccEnabled: *value = p.ECCEnabled; break;
  case cudaDevAttrPciBusId: *value = p.pciBusID; break;
  case cudaDevAttrPciDeviceId: *value = p.pciDeviceID; break;
  case cudaDevAttrMemoryClockRate: *value = 2619000; break;
  case cudaDevAttrGlobalMemoryBusWidth: *value = p.memoryBusWidth; break;
  case cudaDevAttrL2CacheSize: *value = p.l2CacheSize; break;
  case cudaDevAttrMaxThreadsPerMultiProcessor: *value = p.maxThreadsPerMultiProcessor; break;
  case cudaDevAttrAsyncEngineCount: *value = p.asyncEngineCount; break;
  case cudaDevAttrUnifiedAddressing: *value = p.unifiedAddressing; break;
  case cudaDevAttrPciDomainId: *value = p.pciDomainID; break;
  case cudaDevAttrComputeCapabilityMajor: *value = p.major; break;
  case cudaDevAttrComputeCapabilityMinor: *value = p.minor; break;
  case cudaDevAttrStreamPrioritiesSupported: *value = p.streamPrioritiesSupported; break;
  case cudaDevAttrMaxSharedMemoryPerMultiprocessor:
    *value = (int)p.sharedMemPerMultiprocessor;
    break;
  case cudaDevAttrMaxRegistersPerMultiprocessor: *value = p.regsPerMultiprocessor; break;
  case cudaDevAttrManagedMemory: *value = p.managedMemory; break;
  case cudaDevAttrCooperativeLaunch: *value = p.cooperativeLaunch; break;
  case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = (int)p.sharedMemPerBlockOptin; break;
  case cudaDevAttrMaxBlocksPerMultiprocessor: *value = p.maxBlocksPerMultiProcessor; break;
  case cudaDevAttrReservedSharedMemoryPerBlock: *value = (int)p.reservedSharedMemPerBlock; break;
  case cudaDevAttrMemoryPoolsSupported: *value = p.memoryPoolsSupported; break;
  case cudaDevAttrClusterLaunch: *value = p.clusterLaunch; break;
  default:
    return set_last(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) {
  const int dev = tl_device;
  cudaError_t e = check_device(dev);
  if (e != cudaSuccess) {
    return e;
  }
  {
    std::lock_guard<std::mutex> lock(rt_mu);
    bool hit = false;
    for (capture *c : captures) {
      if (!c->invalidated && c->origin->device == dev) {
        invalidate(c, "cudaDeviceSynchronize during stream capture "
                      "(cudaErrorStreamCaptureUnsupported)");
        hit = true;
      }
    }
    if (hit) {
      return set_last(cudaErrorStreamCaptureUnsupported);
    }
  }
  if ((e = unsafe_call("cudaDeviceSynchronize")) != cudaSuccess) {
    return e;
  }
  count(stats.syncs);
  return cudaSuccess;
}

cudaError_t cudaDeviceReset(void) {
  const int dev = tl_device;
  if (cfg().devices == 0) {
    return set_last(cudaErrorNoDevice);
  }
  mem_free_device(dev);
  {
    std::lock_guard<std::mutex> lock(rt_mu);
    for (auto it = dyn_smem_limit.begin(); it != dyn_smem_limit.end();) {
      it = it->first.first == dev ? dyn_smem_limit.erase(it) : std::next(it);
    }
  }
  clear_sticky(dev);
  return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int *v) {
  if (v == nullptr) {
    return set_last(cudaErrorInvalidValue);
  }
  *v = CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int *v) {
  if (v == nullptr) {
    return set_last(cudaErrorInvalidValue);
  }
  *v = CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void *func, cudaFuncAttribute attr, int value) {
  const int dev = tl_device;
  cudaError_t e = check_device(dev);
  if (e != cudaSuccess) {
    return e;
  }
  if (func == nullptr) {
    return set_last(cudaErrorInvalidDeviceFunction);
  }
  switch (attr) {
  case cudaFuncAttributeMaxDynamicSharedMemorySize:
    if (value < 0 || (size_t)value > OPTIN_SHMEM) {
      diag("cudaFuncSetAttribute: %d bytes of dynamic shared memory (at most %zu on sm_90) -> "
           "cudaErrorInvalidValue", value, OPTIN_SHMEM);
      return set_last(cudaErrorInvalidValue);
    }
    {
      std::lock_guard<std::mutex> lock(rt_mu);
      dyn_smem_limit[{dev, func}] = (size_t)value;
    }
    return cudaSuccess;
  case cudaFuncAttributePreferredSharedMemoryCarveout:
    return value >= -1 && value <= 100 ? cudaSuccess : set_last(cudaErrorInvalidValue);
  default:
    return set_last(cudaErrorInvalidValue);
  }
}

cudaError_t cudaDeviceCanAccessPeer(int *can, int device, int peer) {
  const int n = cfg().devices;
  if (n == 0) {
    return set_last(cudaErrorNoDevice);
  }
  if (device < 0 || device >= n || peer < 0 || peer >= n) {
    return set_last(cudaErrorInvalidDevice);
  }
  *can = device != peer;
  return cudaSuccess;
}

cudaError_t cudaDeviceEnablePeerAccess(int peer, unsigned int flags) {
  const int dev = tl_device;
  cudaError_t e = check_device(dev);
  if (e != cudaSuccess) {
    return e;
  }
  if (peer < 0 || peer >= cfg().devices || peer == dev) {
    return set_last(cudaErrorInvalidDevice);
  }
  if (flags != 0) {
    return set_last(cudaErrorInvalidValue);
  }
  std::lock_guard<std::mutex> lock(rt_mu);
  if (peer_enabled[dev][peer]) {
    return set_last(cudaErrorPeerAccessAlreadyEnabled);
  }
  peer_enabled[dev][peer] = true;
  return cudaSuccess;
}

/* ---- memory ------------------------------------------------------------------------------- */

cudaError_t cudaMalloc(void **p, size_t size) {
  if (p == nullptr) {
    return set_last(cudaErrorInvalidValue);
  }
  const int dev = tl_device;
  cudaError_t e = check_device(dev);
  if (e == cudaSuccess) {
    e = unsafe_call("cudaMalloc");
  }
  return e != cudaSuccess ? e : mem_alloc(p, size, dev);
}

cudaError_t cudaFree(void *p) {
  cudaError_t e = check_device(tl_device);
  if (e == cudaSuccess) {
    e = unsafe_call("cudaFree");
  }
  return e != cudaSuccess ? e : mem_free(p);
}

cudaError_t cudaMallocHost(void **p, size_t size) {
  if (p == nullptr) {
    return set_last(cudaErrorInvalidValue);
  }
  cudaError_t e = check_device(tl_device);
  if (e == cudaSuccess) {
    e = unsafe_call("cudaMallocHost");
  }
  return e != cudaSuccess ? e : host_alloc(p, size);
}

cudaError_t cudaHostAlloc(void **p, size_t size, unsigned int flags) {
  if (flags > 7) {
    return set_last(cudaErrorInvalidValue);
  }
  return cudaMallocHost(p, size);
}

cudaError_t cudaFreeHost(void *p) {
  cudaError_t e = check_device(tl_device);
  if (e == cudaSuccess) {
    e = unsafe_call("cudaFreeHost");
  }
  return e != cudaSuccess ? e : host_free(p);
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total) {
  const int dev = tl_device;
  const cudaError_t e = check_device(dev);
  if (e != cudaSuccess) {
    return e;
  }
  if (free_bytes == nullptr || total == nullptr) {
    return set_last(cudaErrorInvalidValue);
  }
  mem_info(dev, free_bytes, total);
  return cudaSuccess;
}

cudaError_t cudaPointerGetAttributes(cudaPointerAttributes *a, const void *p) {
  if (a == nullptr) {
    return set_last(cudaErrorInvalidValue);
  }
  const range_info r = classify(p, 1);
  memset(a, 0, sizeof *a);
  if (r.device >= 0 && !r.bad) {
    a->type = cudaMemoryTypeDevice;
    a->device = r.device;
    a->devicePointer = (void *)p;
  } else if (r.pinned) {
    a->type = cudaMemoryTypeHost;
    a->device = tl_device;
    a->devicePointer = a->hostPointer = (void *)p;
  } else {
    a->type = cudaMemoryTypeUnregistered;
    a->device = -2; // cudaInvalidDeviceId
    a->hostPointer = (void *)p;
  }
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, cudaMemcpyKind kind) {
  const int dev = tl_device;
  cudaError_t e = check_device(dev);
  if (e != cudaSuccess || n == 0) {
    return e;
  }
  if ((e = unsafe_call("cudaMemcpy")) != cudaSuccess) {
    return e;
  }
  copy_plan p;
  if ((e = plan_copy(dst, src, n, kind, dev, dev, "cudaMemcpy", &p)) != cudaSuccess) {
    return e;
  }
  if (p.kind != cudaMemcpyDeviceToDevice) {
    count(stats.syncs);
  }
  return submit(legacy(dev), "cudaMemcpy", [p] { return do_copy(p, "cudaMemcpy", false); });
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind kind,
                            cudaStream_t h) {
  stream *s = nullptr;
  cudaError_t e = resolve_stream(h, &s);
  if (e == cudaSuccess) {
    e = check_device(s->device);
  }
  if (e != cudaSuccess || n == 0) {
    return e;
  }
  copy_plan p;
  if ((e = plan_copy(dst, src, n, kind, s->device, s->device, "cudaMemcpyAsync", &p)) !=
      cudaSuccess) {
    return e;
  }
  return submit(s, "cudaMemcpyAsync", [p] { return do_copy(p, "cudaMemcpyAsync", true); });
}

static cudaError_t peer_copy(void *dst, int dd, const void *src, int sd, size_t n, stream *s,
                             const char *what) {
  cudaError_t e = check_device(dd);
  if (e == cudaSuccess) {
    e = check_device(sd);
  }
  if (e != cudaSuccess || n == 0) {
    return e;
  }
  copy_plan p;
  if ((e = plan_copy(dst, src, n, cudaMemcpyDeviceToDevice, dd, sd, what, &p)) != cudaSuccess) {
    return e;
  }
  return submit(s, what, [p, what] { return do_copy(p, what, true); });
}

cudaError_t cudaMemcpyPeer(void *dst, int dd, const void *src, int sd, size_t n) {
  const cudaError_t e = unsafe_call("cudaMemcpyPeer");
  if (e != cudaSuccess) {
    return e;
  }
  return peer_copy(dst, dd, src, sd, n, legacy(tl_device), "cudaMemcpyPeer");
}

cudaError_t cudaMemcpyPeerAsync(void *dst, int dd, const void *src, int sd, size_t n,
                                cudaStream_t h) {
  stream *s = nullptr;
  const cudaError_t e = resolve_stream(h, &s);
  return e != cudaSuccess ? e : peer_copy(dst, dd, src, sd, n, s, "cudaMemcpyPeerAsync");
}

static cudaError_t memset_on(void *p, int value, size_t n, stream *s, const char *what) {
  cudaError_t e = check_device(s->device);
  if (e != cudaSuccess || n == 0) {
    return e;
  }
  if ((e = check_device_range(p, n, s->device, what, "destination")) != cudaSuccess) {
    return e;
  }
  const int dev = s->device;
  return submit(s, what, [p, value, n, dev, what] {
    if (classify(p, n).bad) {
      diag("%s (%zu bytes): the range is no longer allocated -> cudaErrorIllegalAddress", what, n);
      set_sticky(dev, cudaErrorIllegalAddress);
      return set_last(cudaErrorIllegalAddress);
    }
    memset(p, value, n);
    count(stats.memsets);
    return cudaSuccess;
  });
}

cudaError_t cudaMemset(void *p, int value, size_t n) {
  const cudaError_t e = unsafe_call("cudaMemset");
  return e != cudaSuccess ? e : memset_on(p, value, n, legacy(tl_device), "cudaMemset");
}

cudaError_t cudaMemsetAsync(void *p, int value, size_t n, cudaStream_t h) {
  stream *s = nullptr;
  const cudaError_t e = resolve_stream(h, &s);
  return e != cudaSuccess ? e : memset_on(p, value, n, s, "cudaMemsetAsync");
}

/* ---- streams and events ------------------------------------------------------------------- */

cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithFlags(s, 0); }

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *out, unsigned int flags) {
  if (out == nullptr || flags > cudaStreamNonBlocking) {
    return set_last(cudaErrorInvalidValue);
  }
  const int dev = tl_device;
  const cudaError_t e = check_device(dev);
  if (e != cudaSuccess) {
    return e;
  }
  stream *s = new stream{STREAM_MAGIC, dev, flags, false, nullptr};
  std::lock_guard<std::mutex> lock(rt_mu);
  handles.insert(s);
  *out = s;
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t h) {
  std::lock_guard<std::mutex> lock(rt_mu);
  if (!valid(h, STREAM_MAGIC)) {
    return set_last(cudaErrorInvalidResourceHandle);
  }
  if (h->cap != nullptr) {
    capture *c = h->cap;
    invalidate(c, "cudaStreamDestroy of a capturing stream");
    if (c->origin == h) {
      end_capture(c);
      delete c->graph;
      delete c;
    } else {
      c->joined.erase(std::find(c->joined.begin(), c->joined.end(), h));
    }
  }
  handles.erase(h);
  h->magic = 0;
  delete h;
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t h) {
  stream *s = nullptr;
  cudaError_t e = resolve_stream(h, &s);
  if (e == cudaSuccess) {
    e = check_device(s->device);
  }
  if (e != cudaSuccess) {
    return e;
  }
  {
    std::lock_guard<std::mutex> lock(rt_mu);
    std::vector<capture *> v;
    if (s->cap != nullptr) {
      v.push_back(s->cap);
    } else if (s->legacy) {
      v = implicit_victims(s->device);
    }
    if (!v.empty()) {
      for (capture *c : v) {
        invalidate(c, "cudaStreamSynchronize of a capturing stream "
                      "(cudaErrorStreamCaptureUnsupported)");
      }
      return set_last(cudaErrorStreamCaptureUnsupported);
    }
  }
  count(stats.syncs);
  return cudaSuccess;
}

cudaError_t cudaStreamQuery(cudaStream_t h) {
  stream *s = nullptr;
  cudaError_t e = resolve_stream(h, &s);
  if (e == cudaSuccess) {
    e = check_device(s->device);
  }
  if (e != cudaSuccess) {
    return e;
  }
  std::lock_guard<std::mutex> lock(rt_mu);
  if (s->cap != nullptr) {
    invalidate(s->cap, "cudaStreamQuery of a capturing stream (cudaErrorStreamCaptureUnsupported)");
    return set_last(cudaErrorStreamCaptureUnsupported);
  }
  return cudaSuccess;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t h, cudaEvent_t ev, unsigned int flags) {
  stream *s = nullptr;
  cudaError_t e = resolve_stream(h, &s);
  if (e != cudaSuccess) {
    return e;
  }
  (void)flags;
  std::lock_guard<std::mutex> lock(rt_mu);
  if (!valid(ev, EVENT_MAGIC)) {
    return set_last(cudaErrorInvalidResourceHandle);
  }
  // waiting on an event recorded in a capture makes the stream join that capture
  if (ev->cap != nullptr && s->cap == nullptr && !s->legacy) {
    s->cap = ev->cap;
    ev->cap->joined.push_back(s);
  }
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *ev) { return cudaEventCreateWithFlags(ev, 0); }

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *out, unsigned int flags) {
  if (out == nullptr || flags > 7) {
    return set_last(cudaErrorInvalidValue);
  }
  const int dev = tl_device;
  const cudaError_t e = check_device(dev);
  if (e != cudaSuccess) {
    return e;
  }
  cudaEvent_t ev = new CUevent_st{EVENT_MAGIC, dev, flags, false, 0.0, nullptr};
  std::lock_guard<std::mutex> lock(rt_mu);
  handles.insert(ev);
  *out = ev;
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t ev, cudaStream_t h) {
  stream *s = nullptr;
  cudaError_t e = resolve_stream(h, &s);
  if (e == cudaSuccess) {
    e = check_device(s->device);
  }
  if (e != cudaSuccess) {
    return e;
  }
  {
    std::lock_guard<std::mutex> lock(rt_mu);
    if (!valid(ev, EVENT_MAGIC) || ev->device != s->device) {
      return set_last(cudaErrorInvalidResourceHandle);
    }
    ev->cap = s->cap;
    if (s->cap != nullptr) {
      s->cap->events.push_back(ev);
    }
  }
  return submit(s, "cudaEventRecord", [ev] {
    ev->recorded = true;
    ev->ms = now_ms();
    return cudaSuccess;
  });
}

static cudaError_t event_ready(cudaEvent_t ev) {
  std::lock_guard<std::mutex> lock(rt_mu);
  if (!valid(ev, EVENT_MAGIC)) {
    return set_last(cudaErrorInvalidResourceHandle);
  }
  if (ev->cap != nullptr) {
    return set_last(cudaErrorCapturedEvent);
  }
  return cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t ev) { return event_ready(ev); }

cudaError_t cudaEventSynchronize(cudaEvent_t ev) {
  const cudaError_t e = event_ready(ev);
  if (e == cudaSuccess) {
    count(stats.syncs);
  }
  return e;
}

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
  if (ms == nullptr) {
    return set_last(cudaErrorInvalidValue);
  }
  std::lock_guard<std::mutex> lock(rt_mu);
  if (!valid(a, EVENT_MAGIC) || !valid(b, EVENT_MAGIC) || !a->recorded || !b->recorded ||
      ((a->flags | b->flags) & cudaEventDisableTiming)) {
    return set_last(cudaErrorInvalidResourceHandle);
  }
  *ms = (float)(b->ms - a->ms);
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t ev) {
  std::lock_guard<std::mutex> lock(rt_mu);
  if (!valid(ev, EVENT_MAGIC)) {
    return set_last(cudaErrorInvalidResourceHandle);
  }
  handles.erase(ev);
  ev->magic = 0;
  delete ev;
  return cudaSuccess;
}

/* ---- stream capture and graphs ------------------------------------------------------------ */

cudaError_t cudaStreamBeginCapture(cudaStream_t h, cudaStreamCaptureMode mode) {
  stream *s = nullptr;
  cudaError_t e = resolve_stream(h, &s);
  if (e == cudaSuccess) {
    e = check_device(s->device);
  }
  if (e != cudaSuccess) {
    return e;
  }
  if (mode < cudaStreamCaptureModeGlobal || mode > cudaStreamCaptureModeRelaxed) {
    return set_last(cudaErrorInvalidValue);
  }
  if (s->legacy) {
    diag("cudaStreamBeginCapture on the legacy default stream -> "
         "cudaErrorStreamCaptureUnsupported");
    return set_last(cudaErrorStreamCaptureUnsupported);
  }
  std::lock_guard<std::mutex> lock(rt_mu);
  if (s->cap != nullptr) {
    return set_last(cudaErrorIllegalState);
  }
  capture *c = new capture{mode, std::this_thread::get_id(), false,
                           new CUgraph_st{GRAPH_MAGIC, s->device, {}}, s, {}, {}};
  s->cap = c;
  captures.push_back(c);
  return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t h, cudaGraph_t *graph) {
  stream *s = nullptr;
  cudaError_t e = resolve_stream(h, &s);
  if (e != cudaSuccess) {
    return e;
  }
  if (graph == nullptr) {
    return set_last(cudaErrorInvalidValue);
  }
  std::lock_guard<std::mutex> lock(rt_mu);
  capture *c = s->cap;
  if (c == nullptr) {
    return set_last(cudaErrorIllegalState);
  }
  if (c->origin != s) {
    return set_last(cudaErrorStreamCaptureUnmatched);
  }
  if (c->mode != cudaStreamCaptureModeRelaxed && c->thread != std::this_thread::get_id()) {
    return set_last(cudaErrorStreamCaptureWrongThread);
  }
  end_capture(c);
  const bool bad = c->invalidated;
  CUgraph_st *g = c->graph;
  delete c;
  if (bad) {
    delete g;
    *graph = nullptr;
    return set_last(cudaErrorStreamCaptureInvalidated);
  }
  handles.insert(g);
  *graph = g;
  return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t h, cudaStreamCaptureStatus *status) {
  stream *s = nullptr;
  const cudaError_t e = resolve_stream(h, &s);
  if (e != cudaSuccess) {
    return e;
  }
  if (status == nullptr) {
    return set_last(cudaErrorInvalidValue);
  }
  std::lock_guard<std::mutex> lock(rt_mu);
  *status = s->cap == nullptr     ? cudaStreamCaptureStatusNone
            : s->cap->invalidated ? cudaStreamCaptureStatusInvalidated
                                  : cudaStreamCaptureStatusActive;
  return cudaSuccess;
}

cudaError_t cudaThreadExchangeStreamCaptureMode(cudaStreamCaptureMode *mode) {
  if (mode == nullptr || *mode < cudaStreamCaptureModeGlobal ||
      *mode > cudaStreamCaptureModeRelaxed) {
    return set_last(cudaErrorInvalidValue);
  }
  std::swap(*mode, tl_capture_mode);
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t g, unsigned long long flags) {
  (void)flags;
  if (exec == nullptr) {
    return set_last(cudaErrorInvalidValue);
  }
  std::lock_guard<std::mutex> lock(rt_mu);
  if (!valid(g, GRAPH_MAGIC)) {
    return set_last(cudaErrorInvalidValue);
  }
  cudaGraphExec_t x = new CUgraphExec_st{EXEC_MAGIC, g->device,
                                         std::make_shared<const std::vector<node>>(g->nodes)};
  handles.insert(x);
  *exec = x;
  return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t x, cudaStream_t h) {
  stream *s = nullptr;
  cudaError_t e = resolve_stream(h, &s);
  if (e != cudaSuccess) {
    return e;
  }
  std::shared_ptr<const std::vector<node>> nodes;
  int dev = 0;
  {
    std::lock_guard<std::mutex> lock(rt_mu);
    if (!valid(x, EXEC_MAGIC)) {
      return set_last(cudaErrorInvalidResourceHandle);
    }
    nodes = x->nodes;
    dev = x->device;
  }
  if ((e = check_device(dev)) != cudaSuccess) {
    return e;
  }
  return submit(s, "cudaGraphLaunch", [nodes] {
    count(stats.graph_launches);
    for (const node &n : *nodes) {
      count(stats.graph_nodes);
      const cudaError_t ne = n.run();
      if (ne != cudaSuccess) {
        return ne;
      }
    }
    return cudaSuccess;
  });
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t x) {
  std::lock_guard<std::mutex> lock(rt_mu);
  if (!valid(x, EXEC_MAGIC)) {
    return set_last(cudaErrorInvalidValue);
  }
  handles.erase(x);
  x->magic = 0;
  delete x;
  return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t g) {
  std::lock_guard<std::mutex> lock(rt_mu);
  if (!valid(g, GRAPH_MAGIC)) {
    return set_last(cudaErrorInvalidValue);
  }
  handles.erase(g);
  g->magic = 0;
  delete g;
  return cudaSuccess;
}

cudaError_t cudaGraphGetNodes(cudaGraph_t g, cudaGraphNode_t *nodes, size_t *num) {
  if (num == nullptr) {
    return set_last(cudaErrorInvalidValue);
  }
  std::lock_guard<std::mutex> lock(rt_mu);
  if (!valid(g, GRAPH_MAGIC)) {
    return set_last(cudaErrorInvalidValue);
  }
  if (nodes != nullptr) {
    for (size_t i = 0; i < *num && i < g->nodes.size(); i++) {
      nodes[i] = (cudaGraphNode_t)(uintptr_t)(i + 1); // opaque; the emulator has no node API
    }
  }
  *num = g->nodes.size();
  return cudaSuccess;
}

} // extern "C"
