/* Kernels for the CUDA emulator's own tests (selftest.h, tests/test_cuda_emu.c): correct ones,
 * and ones that misuse barriers, warp intrinsics, shared memory and launches on purpose. Valid
 * CUDA C++; under the emulator the host compiler builds them as it builds kernels/cuda/. */
#include <cuda_runtime.h>

#include "selftest.h"

#ifndef VT_CUDA_EMU
#define VT_LAUNCH(kernel, grid, block, shmem, stream) kernel<<<grid, block, shmem, stream>>>
#define VT_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

#define FULL 0xffffffffu

template <int MISSING> static __global__ void reduce_kernel(float *out, const float *in) {
  __shared__ float s[1024];
  const int t = threadIdx.x;
  s[t] = in[blockIdx.x * blockDim.x + t];
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (t < stride) {
      s[t] += s[t + stride];
    }
    if (!MISSING) {
      __syncthreads();
    }
  }
  if (t == 0) {
    out[blockIdx.x] = s[0];
  }
}

extern "C" cudaError_t st_reduce(float *out, const float *in, int blocks, int threads,
                                 int missing_barrier) {
  if (missing_barrier) {
    VT_LAUNCH(reduce_kernel<1>, blocks, threads, 0, 0)(out, in);
  } else {
    VT_LAUNCH(reduce_kernel<0>, blocks, threads, 0, 0)(out, in);
  }
  return cudaGetLastError();
}

static __device__ float warp_total(float v) {
  for (int o = 16; o > 0; o /= 2) {
    v += __shfl_xor_sync(FULL, v, o);
  }
  return v;
}

static __global__ void warp_reduce_kernel(float *out, const float *in) {
  __shared__ float part[32];
  const int t = threadIdx.x, lane = t % 32, w = t / 32;
  float v = warp_total(in[blockIdx.x * blockDim.x + t]);
  if (lane == 0) {
    part[w] = v;
  }
  __syncthreads();
  if (w == 0) {
    v = warp_total(lane < (int)blockDim.x / 32 ? part[lane] : 0.0f);
    if (lane == 0) {
      out[blockIdx.x] = v;
    }
  }
}

extern "C" cudaError_t st_warp_reduce(float *out, const float *in, int blocks, int threads) {
  VT_LAUNCH(warp_reduce_kernel, blocks, threads, 0, 0)(out, in);
  return cudaGetLastError();
}

static __global__ void bad_barrier_kernel(int *out, int how) {
  const int t = threadIdx.x;
  if (how == 0) {
    if (t < 32) {
      __syncthreads();
    } else {
      __syncthreads();
    }
  } else {
    if (t == 5) {
      return;
    }
    __syncthreads();
  }
  out[t] = 1;
}

extern "C" cudaError_t st_bad_barrier(int *out, int threads, int how) {
  VT_LAUNCH(bad_barrier_kernel, 1, threads, 0, 0)(out, how);
  return cudaGetLastError();
}

static __global__ void bad_warp_kernel(int *out, int how) {
  const int t = threadIdx.x, lane = t % 32;
  int v = lane;
  switch (how) {
  case 0:
    if (lane == 3) {
      return;
    }
    v = __shfl_xor_sync(FULL, v, 1);
    break;
  case 1:
    if (lane < 16) {
      v = __shfl_xor_sync(FULL, v, 1);
    } else {
      v = __shfl_xor_sync(FULL, v, 1);
    }
    break;
  case 2:
    v = __shfl_xor_sync(FULL, v, 1);
    break;
  case 3:
    if (t == 0) {
      __syncwarp(0x3u);
    } else {
      __syncthreads();
    }
    break;
  case 4:
    if (lane == 0) {
      v = __shfl_sync(0x2u, v, 1);
    }
    break;
  default:
    v = __shfl_down_sync(FULL, v, 1, 12);
  }
  out[t] = v;
}

extern "C" cudaError_t st_bad_warp(int *out, int how) {
  VT_LAUNCH(bad_warp_kernel, 1, how == 2 ? 48 : 32, 0, 0)(out, how);
  return cudaGetLastError();
}

static __global__ void shuffles_kernel(int *out) {
  const int lane = threadIdx.x;
  int *o = out + lane;
  o[0 * 32] = __shfl_sync(FULL, lane * 10, 5);
  o[1 * 32] = __shfl_sync(FULL, lane, 33);
  o[2 * 32] = __shfl_sync(FULL, lane, 3, 8);
  o[3 * 32] = __shfl_up_sync(FULL, lane, 1);
  o[4 * 32] = __shfl_up_sync(FULL, lane, 3, 16);
  o[5 * 32] = __shfl_down_sync(FULL, lane, 1);
  o[6 * 32] = __shfl_down_sync(FULL, lane, 2, 8);
  o[7 * 32] = __shfl_xor_sync(FULL, lane, 1);
  o[8 * 32] = __shfl_xor_sync(FULL, lane, 16, 16);
  o[9 * 32] = __shfl_xor_sync(FULL, lane, 4, 8);
  o[10 * 32] = (int)__ballot_sync(FULL, lane % 3 == 0);
  o[11 * 32] = __any_sync(FULL, lane == 7);
  o[12 * 32] = __all_sync(FULL, lane < 31);
  if (lane < 16) {
    o[13 * 32] = __shfl_sync(0x0000ffffu, lane, lane ^ 1);
  } else {
    o[14 * 32] = (int)__ballot_sync(0xffff0000u, lane & 1);
  }
  const double d = __shfl_down_sync(FULL, lane + 0.5, 4);
  o[15 * 32] = (int)(d * 2.0);
  __syncwarp();
  o[16 * 32] = __shfl_sync(FULL, lane, 31 - lane);
}

extern "C" cudaError_t st_shuffles(int *out) {
  VT_LAUNCH(shuffles_kernel, 1, 32, 0, 0)(out);
  return cudaGetLastError();
}

static __global__ void config_kernel(int *out) {
  const unsigned nt = blockDim.x * blockDim.y * blockDim.z;
  const unsigned b = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const unsigned t = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  out[(size_t)b * nt + t] = 1;
}

extern "C" cudaError_t st_config(int *out, dim3 grid, dim3 block, size_t shmem) {
  VT_LAUNCH(config_kernel, grid, block, shmem, 0)(out);
  return cudaGetLastError();
}

static __global__ void shared_bytes_kernel(unsigned *out, int words) {
  VT_DYNAMIC_SHARED(unsigned, smem);
  const int t = threadIdx.x;
  out[t] = smem[t];
  if (t == 0) {
    smem[words - 1] = 0u; // the last word of the allocation
  }
  smem[t] = (unsigned)t * 7u + 1u;
  __syncthreads();
  const int ok = __syncthreads_and(smem[(t + 1) % 32] == (unsigned)((t + 1) % 32) * 7u + 1u);
  if (t == 0) {
    out[32] = (unsigned)ok;
  }
}

extern "C" cudaError_t st_allow_shared(int bytes) {
  return cudaFuncSetAttribute(shared_bytes_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              bytes);
}

extern "C" cudaError_t st_shared_bytes(unsigned *out, size_t bytes) {
  VT_LAUNCH(shared_bytes_kernel, 1, 32, bytes, 0)(out, (int)(bytes / 4));
  return cudaGetLastError();
}

static __global__ void static_shared_kernel(int *out) {
  __shared__ int who;
  if (threadIdx.x == 0) {
    who = (int)blockIdx.x;
  }
  __syncthreads();
  if (threadIdx.x == blockDim.x - 1) {
    out[blockIdx.x] = who;
  }
}

extern "C" cudaError_t st_static_shared(int *out, int blocks) {
  VT_LAUNCH(static_shared_kernel, blocks, 64, 0, 0)(out);
  return cudaGetLastError();
}

static __global__ void write_past_kernel(float *out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i <= n) {
    out[i] = 1.0f;
  }
}

extern "C" cudaError_t st_write_past(float *out, int n) {
  VT_LAUNCH(write_past_kernel, (n + 1 + 127) / 128, 128, 0, 0)(out, n);
  return cudaGetLastError();
}

static __global__ void fill_kernel(float *out, int n, float v) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    out[i] = v;
  }
}

extern "C" cudaError_t st_fill(float *out, int n, float v, cudaStream_t stream) {
  VT_LAUNCH(fill_kernel, (n + 255) / 256, 256, 0, stream)(out, n, v);
  return cudaGetLastError();
}

static __global__ void increment_kernel(float *out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    out[i] += 1.0f;
  }
}

extern "C" cudaError_t st_increment(float *out, int n, cudaStream_t stream) {
  VT_LAUNCH(increment_kernel, (n + 255) / 256, 256, 0, stream)(out, n);
  return cudaGetLastError();
}

static __global__ void atomics_kernel(int *counter, float *fsum) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  atomicAdd(&counter[0], 1);
  atomicAdd(fsum, 1.0f);
  atomicMax(&counter[1], t);
  while (atomicCAS(&counter[4], 0, 1) != 0) {
  }
  volatile int *guarded = &counter[2];
  *guarded = *guarded + 1;
  __threadfence();
  atomicExch(&counter[4], 0);
  const int odd = __syncthreads_count(threadIdx.x & 1);
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    counter[3] = odd;
  }
}

extern "C" cudaError_t st_atomics(int *counter, float *fsum, int blocks, int threads) {
  VT_LAUNCH(atomics_kernel, blocks, threads, 0, 0)(counter, fsum);
  return cudaGetLastError();
}

static __global__ void trap_kernel(int *out) {
  if (threadIdx.x == 7) {
    __trap();
  }
  out[threadIdx.x] = 1;
}

extern "C" cudaError_t st_trap(int *out) {
  VT_LAUNCH(trap_kernel, 1, 32, 0, 0)(out);
  return cudaGetLastError();
}

static __global__ void barriers_kernel(int rounds) {
  for (int r = 0; r < rounds; r++) {
    __syncthreads();
  }
}

extern "C" cudaError_t st_barriers(int blocks, int threads, int rounds) {
  VT_LAUNCH(barriers_kernel, blocks, threads, 0, 0)(rounds);
  return cudaGetLastError();
}

static __global__ void big_stack_kernel(int *out) {
  volatile char buf[512 * 1024]; // far more than a fiber's 64 KiB (256 KiB under ASan)
  for (int i = 0; i < (int)sizeof buf; i += 512) {
    buf[i] = (char)i;
  }
  out[threadIdx.x] = buf[threadIdx.x * 512];
}

extern "C" cudaError_t st_big_stack(int *out) {
  VT_LAUNCH(big_stack_kernel, 1, 32, 0, 0)(out);
  return cudaGetLastError();
}
