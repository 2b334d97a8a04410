/* Shared pieces of the CUDA kernels: error reporting, CEIL_DIV, warp and block reductions, the
 * device time bucket, and the total order used by the top-k selections (beam step, retrieval).
 * Internal to kernels/cuda/; the public interface is kernels/ops_cuda.h.
 */
#ifndef VITRINE_KERNELS_CUDA_COMMON_CUH
#define VITRINE_KERNELS_CUDA_COMMON_CUH

#include <cuda_runtime.h>
#include <float.h>
#include <stdint.h>

#include "kernels/ops_cuda.h"

#define CEIL_DIV(a, b) (((a) + (b) - 1) / (b))
#define WARP 32

/* Launches and dynamic shared memory are written through two macros so that the same sources also
 * build with the host C++ compiler against the CUDA emulator of the tests (tests/cuda_emu/, which
 * defines VT_CUDA_EMU and its own versions of both; docs/CUDA.md):
 *   VT_LAUNCH(kernel, grid, block, shmem_bytes, stream)(args...)   kernel<<<...>>>(args...)
 *   VT_DYNAMIC_SHARED(type, name);                                 extern __shared__ type name[]
 * Everything else a kernel uses (__syncthreads, __shfl_xor_sync, threadIdx, static __shared__)
 * is spelled as CUDA spells it. */
#ifndef VT_CUDA_EMU
#define VT_LAUNCH(kernel, grid, block, shmem, stream) kernel<<<grid, block, shmem, stream>>>
#define VT_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

/* Records a printf-style message as this thread's last error and returns code. */
int vt__cuda_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* After a launch: 0, or VT_CUDA_EDEVICE with the CUDA error named after `what`. */
int vt__cuda_check_launch(const char *what);

static inline cudaStream_t vt__stream(void *s) { return (cudaStream_t)s; }

/* ---- reductions (blockDim.x a multiple of 32, at most 1024) ------------------------------- */

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = WARP / 2; o > 0; o /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, o);
  }
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = WARP / 2; o > 0; o /= 2) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  }
  return v;
}

/* The sum of v over the block, returned to every thread. shared: 32 floats. Contains barriers:
 * every thread of the block must call it. */
__device__ __forceinline__ float block_sum(float v, float *shared) {
  const int lane = threadIdx.x % WARP, wid = threadIdx.x / WARP, nw = blockDim.x / WARP;
  v = warp_sum(v);
  __syncthreads(); // shared may still be read by a previous call
  if (lane == 0) {
    shared[wid] = v;
  }
  __syncthreads();
  v = lane < nw ? shared[lane] : 0.0f;
  return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float *shared) {
  const int lane = threadIdx.x % WARP, wid = threadIdx.x / WARP, nw = blockDim.x / WARP;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) {
    shared[wid] = v;
  }
  __syncthreads();
  v = lane < nw ? shared[lane] : -FLT_MAX;
  return warp_max(v);
}

/* Exclusive prefix sum of v over the block (blockDim a multiple of 32, at most 1024); *total
 * receives the block's sum. shared: 32 ints. Contains barriers: every thread must call it. */
__device__ __forceinline__ int block_exclusive_scan(int v, int *shared, int *total) {
  const int lane = threadIdx.x % WARP, wid = threadIdx.x / WARP, nw = blockDim.x / WARP;
  int x = v; // inclusive within the warp
  for (int o = 1; o < WARP; o *= 2) {
    const int y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) {
      x += y;
    }
  }
  __syncthreads(); // shared may still be read by a previous call
  if (lane == WARP - 1) {
    shared[wid] = x;
  }
  __syncthreads();
  if (wid == 0) {
    int t = lane < nw ? shared[lane] : 0;
    for (int o = 1; o < WARP; o *= 2) {
      const int y = __shfl_up_sync(0xffffffffu, t, o);
      if (lane >= o) {
        t += y;
      }
    }
    if (lane < nw) {
      shared[lane] = t; // inclusive sums of the warps' totals
    }
  }
  __syncthreads();
  *total = shared[nw - 1];
  return (wid > 0 ? shared[wid - 1] : 0) + x - v;
}

/* The order of the best min(n, n_fin) finished hypotheses (higher score, then lower phrase id),
 * leaving out the phrases `block` marks for (region, season) (NULL: none) and, for a place k that
 * `restricted` has, those allow[phrase] has no bit k for: positions into order, returns the count.
 * One thread; n is a handful (kernels/cpu/rank.h). */
__device__ __forceinline__ int rank_finished_dev(int32_t *order, const float *score,
                                                 const int32_t *phrase, int n_fin, int n,
                                                 const uint32_t *block, int region, int season,
                                                 const uint32_t *allow, uint32_t restricted) {
  uint64_t taken[VT_MAX_FINISHED / 64];
  for (int i = 0; i < VT_MAX_FINISHED / 64; i++) {
    taken[i] = 0;
  }
  int k = 0;
  for (; k < n; k++) {
    int best = -1;
    for (int f = 0; f < n_fin; f++) {
      if (taken[f / 64] >> (f % 64) & 1u) {
        continue;
      }
      if (block && (block[(size_t)phrase[f] * 4 + (size_t)season] >> region & 1u)) {
        continue;
      }
      if ((restricted >> k & 1u) && !(allow[phrase[f]] >> k & 1u)) {
        continue;
      }
      if (best < 0 || score[f] > score[best] ||
          (score[f] == score[best] && phrase[f] < phrase[best])) {
        best = f;
      }
    }
    if (best < 0) {
      break;
    }
    order[k] = best;
    taken[best / 64] |= (uint64_t)1 << (best % 64);
  }
  return k;
}

/* vt_time_bucket on the device: clamp(floor(ln(max(|a - b|, 1)) / 0.301), 0, 128) in double. */
__device__ __forceinline__ int time_bucket_dev(int64_t a, int64_t b) {
  uint64_t d = a >= b ? (uint64_t)a - (uint64_t)b : (uint64_t)b - (uint64_t)a;
  if (d < 1) {
    d = 1;
  }
  double f = floor(log((double)d) / 0.301);
  if (f < 0.0) {
    return 0;
  }
  if (f > (double)(VT_N_TIME_BUCKETS - 1)) {
    return VT_N_TIME_BUCKETS - 1;
  }
  return (int)f;
}

/* ---- selection order ----------------------------------------------------------------------
 * A candidate is (score s, id, pos): better = a number beats a NaN, then the higher score, then
 * the lower id, then the lower position. Positions are unique, so this is a total order and any
 * selection algorithm gives the CPU's result. pos < 0 marks "no candidate" (worse than all). */
struct sel_key {
  float s;
  int32_t id;
  int32_t pos;
};

__device__ __forceinline__ bool sel_better(const sel_key &a, const sel_key &b) {
  if (a.pos < 0) {
    return false;
  }
  if (b.pos < 0) {
    return true;
  }
  const bool na = isnan(a.s), nb = isnan(b.s);
  if (na != nb) {
    return nb;
  }
  if (!na && a.s != b.s) {
    return a.s > b.s;
  }
  if (a.id != b.id) {
    return a.id < b.id;
  }
  return a.pos < b.pos;
}

__device__ __forceinline__ sel_key sel_none(void) {
  sel_key k;
  k.s = 0.0f;
  k.id = 0;
  k.pos = -1;
  return k;
}

/* The best key over the block, returned to every thread. shared: 32 keys. Contains barriers. */
__device__ __forceinline__ sel_key block_best(sel_key k, sel_key *shared) {
  const int lane = threadIdx.x % WARP, wid = threadIdx.x / WARP, nw = blockDim.x / WARP;
  for (int o = WARP / 2; o > 0; o /= 2) {
    sel_key other;
    other.s = __shfl_xor_sync(0xffffffffu, k.s, o);
    other.id = __shfl_xor_sync(0xffffffffu, k.id, o);
    other.pos = __shfl_xor_sync(0xffffffffu, k.pos, o);
    if (sel_better(other, k)) {
      k = other;
    }
  }
  __syncthreads();
  if (lane == 0) {
    shared[wid] = k;
  }
  __syncthreads();
  k = lane < nw ? shared[lane] : sel_none();
  for (int o = WARP / 2; o > 0; o /= 2) {
    sel_key other;
    other.s = __shfl_xor_sync(0xffffffffu, k.s, o);
    other.id = __shfl_xor_sync(0xffffffffu, k.id, o);
    other.pos = __shfl_xor_sync(0xffffffffu, k.pos, o);
    if (sel_better(other, k)) {
      k = other;
    }
  }
  return k;
}

/* The best min(k, m) of items 0 .. m-1, best first: emit(r, key) is called by thread 0 for rank
 * r = 0, 1, ...; load(i) gives item i's key. k block-wide passes, each taking the best item
 * ranked after the previous pick (a total order needs no "taken" marks). shared: 32 keys.
 * Every thread of the block must call it. Meant for small k (beam widths, top-k lists). */
template <class Load, class Emit>
__device__ void block_select(int m, int k, Load load, Emit emit, sel_key *shared) {
  const int kk = k < m ? k : m;
  sel_key prev = sel_none();
  for (int r = 0; r < kk; r++) {
    sel_key best = sel_none();
    for (int i = threadIdx.x; i < m; i += blockDim.x) {
      const sel_key c = load(i);
      if ((r == 0 || sel_better(prev, c)) && sel_better(c, best)) {
        best = c;
      }
    }
    best = block_best(best, shared);
    if (threadIdx.x == 0) {
      emit(r, best);
    }
    prev = best;
  }
}

#endif
