/* Internals of the vitrine CUDA emulator shared by its .cc files (docs/CUDA.md).
 *
 *   config.cc   environment, order, the last error and diagnostics, sticky errors, stats,
 *               barrier-site bookkeeping, the vt_emu.h API
 *   fiber.cc    fiber stacks and the context switch (x86-64 assembly, ucontext elsewhere)
 *   exec.cc     running a kernel: blocks, the fiber scheduler, barriers, warp intrinsics
 *   memory.cc   device and pinned allocations with guard zones, copy and memset checks
 *   runtime.cc  devices, streams, events, launches, copies, stream capture and graphs
 *   cublas.cc   cuBLAS SGEMM through OpenBLAS;   nccl.cc   NCCL between emulated devices
 *   errors.cc   cudaGetErrorName / cudaGetErrorString
 */
#ifndef VT_EMU_INTERNAL_H
#define VT_EMU_INTERNAL_H

#include <cuda_runtime.h>

#include <atomic>
#include <functional>
#include <string>

#include "vt_emu.h"

#define VT_EMU_MAX_DEVICES 16

namespace vt_emu {

/* ---- configuration (config.cc) ------------------------------------------------------------ */

struct config {
  int devices;              /* VT_EMU_DEVICES */
  size_t stack_bytes;       /* VT_EMU_STACK_KIB */
  size_t device_mem;        /* VT_EMU_DEVICE_MEM_MIB */
};
const config &cfg(void);    /* read from the environment once */
int order(uint64_t *seed);  /* the current vt_emu_order */

/* ---- errors and diagnostics --------------------------------------------------------------- */

/* Records e (unless cudaSuccess) as this thread's last error; returns e. */
cudaError_t set_last(cudaError_t e);
cudaError_t peek_last(int clear);

/* Prints one "vt_emu: <message>" line to stderr and keeps it for vt_emu_last_diagnostic. */
void diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A source path as diagnostics print it: from "kernels/" or "tests/" on, else the base name. */
const char *short_path(const char *file);

cudaError_t sticky(int dev);
void set_sticky(int dev, cudaError_t e);
void clear_sticky(int dev);

/* cudaSuccess, or the error every call on a device returns: no device at all, a bad ordinal, or
 * the device's sticky error. Records it as the last error. */
cudaError_t check_device(int dev);

int current_device(void);

/* ---- statistics --------------------------------------------------------------------------- */

struct counters {
  std::atomic<uint64_t> launches{0}, blocks{0}, switches{0}, h2d{0}, d2h{0}, d2d{0}, h2h{0},
      bytes_h2d{0}, bytes_d2h{0}, memsets{0}, syncs{0}, graph_launches{0}, graph_nodes{0},
      gemms{0}, collectives{0}, mallocs{0}, frees{0};
};
extern counters stats;
inline void count(std::atomic<uint64_t> &c, uint64_t n = 1) {
  c.fetch_add(n, std::memory_order_relaxed);
}

/* ---- barrier sites (config.cc) ------------------------------------------------------------ */

/* Whether the __syncthreads at file:line was removed by vt_emu_drop_barrier. */
extern std::atomic<int> drops_active;
bool barrier_dropped_slow(const char *file, int line);
inline bool barrier_dropped(const char *file, int line) {
  return drops_active.load(std::memory_order_relaxed) != 0 && barrier_dropped_slow(file, line);
}

/* Adds file:line to the sites vt_emu_barrier_sites lists (a per-thread cache keeps it cheap). */
void note_barrier_site(const char *file, int line);

/* ---- memory (memory.cc) ------------------------------------------------------------------- */

/* What a pointer range is: inside one live device allocation (device >= 0), host memory
 * (device -1, pinned or not), or a bad device range (an allocation's guard zone or past its end,
 * or freed memory: bad = 1, with the reason in why). */
struct range_info {
  int device;
  int pinned;
  int bad;
  size_t alloc_size;
  std::string why;
};
range_info classify(const void *p, size_t n);

/* cudaSuccess, or cudaErrorInvalidValue with a diagnostic "<what>: ..." when [p, p+n) is not inside
 * one live allocation of device dev. */
cudaError_t check_device_range(const void *p, size_t n, int dev, const char *what,
                               const char *role);

/* After a kernel or a cuBLAS call on dev: every live allocation's guard zones must be intact;
 * an overwrite is reported (naming `what` and the allocation) and made the device's sticky
 * cudaErrorIllegalAddress, which is returned. */
cudaError_t check_guards(int dev, const char *what);

cudaError_t mem_alloc(void **p, size_t size, int dev);
cudaError_t mem_free(void *p);
cudaError_t host_alloc(void **p, size_t size);
cudaError_t host_free(void *p);
void mem_info(int dev, size_t *free_bytes, size_t *total);
void mem_free_device(int dev); /* cudaDeviceReset */

/* ---- streams and stream-ordered work (runtime.cc) ----------------------------------------- */

using stream = ::CUstream_st;
using work = std::function<cudaError_t()>;

/* The stream a handle names for the current device (NULL = the legacy default stream). */
cudaError_t resolve_stream(cudaStream_t s, stream **out);
int stream_device(const stream *s);

/* Runs w now, or records it when s is capturing; returns the error of either. */
cudaError_t submit(stream *s, const char *what, work w);

/* cudaSuccess, or cudaErrorStreamCaptureUnsupported (the captures it spoils invalidated) when
 * this thread may not make a potentially unsafe call (a synchronous copy, a sync, an allocation)
 * during stream capture. */
cudaError_t unsafe_call(const char *what);

/* ---- kernels (exec.cc) -------------------------------------------------------------------- */

struct launch_config {
  launch_site site;
  dim3 grid, block;
  size_t shmem;
};

/* cudaSuccess or the launch error (not sticky) for a configuration on an sm_90 part. */
cudaError_t check_launch(const launch_config &lc, size_t max_dynamic_shmem, std::string *why);

/* Runs every block; a failure is reported, made sticky on dev and returned. */
cudaError_t run_kernel(const launch_config &lc, kernel_body *body, int dev);

/* The dynamic shared memory limit cudaFuncSetAttribute gave fn on dev (48 KiB by default). */
size_t max_dynamic_shmem(const void *fn, int dev);

} // namespace vt_emu

#endif
