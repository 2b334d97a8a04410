/* The kernels of the CUDA emulator's own tests (tests/test_cuda_emu.c), in
 * tests/cuda_emu/selftest_kernels.cu: each st_* launches one kernel (valid CUDA: nvcc would build
 * it too) and returns cudaGetLastError() right after the launch. All pointers are device pointers
 * unless said otherwise. */
#ifndef VT_EMU_SELFTEST_H
#define VT_EMU_SELFTEST_H

#include <cuda_runtime_api.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* out[b] = sum of in[b*threads .. b*threads + threads-1] for b < blocks: a shared-memory tree
 * with a barrier after every level (missing_barrier: without the one inside the loop). threads
 * is a power of two <= 1024. */
cudaError_t st_reduce(float *out, const float *in, int blocks, int threads, int missing_barrier);

/* The same sum by warp shuffles and one barrier (common.cuh's block_sum pattern). */
cudaError_t st_warp_reduce(float *out, const float *in, int blocks, int threads);

/* Barrier misuse, one block of `threads`: threads 0-31 and the rest at different __syncthreads
 * sites (0), thread 5 returning before the barrier (1). */
cudaError_t st_bad_barrier(int *out, int threads, int how);

/* Warp misuse, one block: lane 3 returns before a full-mask shuffle (0); lanes 0-15 and 16-31 at
 * different __shfl_xor_sync sites (1); a full mask in a block of 48 threads (2); lane 0 in a
 * __syncwarp(0x3) while lane 1 waits at __syncthreads (3, a deadlock); a shuffle mask that omits
 * the calling lane (4); a shuffle width of 12 (5). */
cudaError_t st_bad_warp(int *out, int how);

/* One warp: out[k*32 + lane] for the cases of test_cuda_emu.c's shuffle_semantics. */
cudaError_t st_shuffles(int *out);

/* A kernel that writes 1 to out[global linear thread index], any configuration (launch checks). */
cudaError_t st_config(int *out, dim3 grid, dim3 block, size_t shmem);

/* cudaFuncSetAttribute(MaxDynamicSharedMemorySize) for st_shared_bytes' kernel. */
cudaError_t st_allow_shared(int bytes);

/* One block of 32 threads: out[0..31] = the 32-bit words of dynamic shared memory as the block
 * found it, then each thread writes and reads back its word across a barrier (out[32] = 1 when
 * every word came back). bytes >= 132. */
cudaError_t st_shared_bytes(unsigned *out, size_t bytes);

/* blocks blocks: each writes its blockIdx.x into a static __shared__ int, barriers, reads it back
 * into out[b] (blocks must not see each other's shared memory). */
cudaError_t st_static_shared(int *out, int blocks);

/* out[0 .. n] = 1: one element past the end. */
cudaError_t st_write_past(float *out, int n);

/* out[0 .. n-1] = v on stream. */
cudaError_t st_fill(float *out, int n, float v, cudaStream_t stream);

/* out[i] += 1 for i < n on stream. */
cudaError_t st_increment(float *out, int n, cudaStream_t stream);

/* counter[0] += 1 and fsum[0] += 1.0f from every thread (atomicAdd), counter[1] = the maximum
 * thread index (atomicMax), counter[2] incremented under a spin lock built on atomicCAS and
 * atomicExch, counter[3] = __syncthreads_count(threadIdx.x odd) of block 0. */
cudaError_t st_atomics(int *counter, float *fsum, int blocks, int threads);

/* Thread 7 calls __trap(). */
cudaError_t st_trap(int *out);

/* Each thread uses 512 KiB of stack: more than a fiber has. */
cudaError_t st_big_stack(int *out);

/* blocks x threads threads, each passes `rounds` __syncthreads (switch-cost measurement). */
cudaError_t st_barriers(int blocks, int threads, int rounds);

#ifdef __cplusplus
}
#endif

#endif
