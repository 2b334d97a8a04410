/* The CUDA C++ kernel language under the host compiler, for the vitrine CUDA emulator
 * (docs/CUDA.md). Included by the emulator's <cuda_runtime.h> in C++; not meant to be included
 * directly.
 *
 * A launch runs the kernel on the calling host thread, block after block; the threads of a block
 * are fibers that switch only at __syncthreads() and the warp intrinsics (and, now and then, at an
 * atomic, so that spin loops progress). threadIdx & co are thread-local variables the scheduler
 * sets at every switch; static __shared__ variables are thread_local (block-scope thread_local is
 * implicitly static: one copy per host thread, which runs one block at a time); dynamic shared
 * memory is a fresh heap block per thread block.
 */
#ifndef VT_EMU_KERNEL_H
#define VT_EMU_KERNEL_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <cmath>
#include <memory>
#include <tuple>
#include <type_traits>

#include "cuda_runtime_api.h"

/* ---- qualifiers ---------------------------------------------------------------------------- */

/* __device__ functions and variables become inline so that one defined in a header included by
 * several .cu files links as it does under nvcc (where device code is per translation unit). */
#define __global__
#define __device__ inline
#define __host__
#define __constant__ inline
#define __forceinline__ __attribute__((always_inline))
#define __shared__ thread_local
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

/* ---- built-in variables -------------------------------------------------------------------- */

struct vt_emu_builtins {
  uint3 thread_idx, block_idx, block_dim, grid_dim;
};
/* __thread, not thread_local: no TLS wrapper call on every threadIdx.x */
extern __thread vt_emu_builtins vt_emu_bi;
extern __thread void *vt_emu_dyn_smem;
extern __thread unsigned vt_emu_atomic_ops;

#define threadIdx (static_cast<const uint3 &>(::vt_emu_bi.thread_idx))
#define blockIdx (static_cast<const uint3 &>(::vt_emu_bi.block_idx))
#define blockDim (static_cast<const uint3 &>(::vt_emu_bi.block_dim))
#define gridDim (static_cast<const uint3 &>(::vt_emu_bi.grid_dim))
static constexpr int warpSize = 32;

namespace vt_emu {

/* ---- launches ------------------------------------------------------------------------------ */

/* One kernel call with its arguments captured by value; run() is called once per thread (each
 * thread gets its own copy of the parameters, as on the device). Kept by CUDA graphs. */
struct kernel_body {
  virtual ~kernel_body() = default;
  virtual void run() = 0;
};

template <class... P> struct kernel_call final : kernel_body {
  void (*fn)(P...);
  std::tuple<P...> args;
  explicit kernel_call(void (*f)(P...), P... a) : fn(f), args(a...) {}
  void run() override { std::apply(fn, args); }
};

struct launch_site {
  const void *fn;   /* the kernel, for its attributes (cudaFuncSetAttribute) */
  const char *name; /* as written at VT_LAUNCH, e.g. "attention_kernel<ATT_SELF>" */
  const char *file;
  int line;
};

/* Checks the configuration, then runs the kernel (or records it under stream capture); errors
 * go to cudaGetLastError as for kernel<<<...>>>. */
void launch(const launch_site &site, dim3 grid, dim3 block, size_t shmem, cudaStream_t stream,
            std::shared_ptr<kernel_body> body);

template <class... P> struct launcher {
  static_assert(!(std::is_reference<P>::value || ...), "kernel parameters are passed by value");
  void (*fn)(P...);
  launch_site site;
  dim3 grid, block;
  size_t shmem;
  cudaStream_t stream;
  /* the arguments convert to the kernel's parameter types as in kernel<<<...>>>(args) */
  void operator()(P... a) const {
    launch(site, grid, block, shmem, stream, std::make_shared<kernel_call<P...>>(fn, a...));
  }
};

template <class... P>
launcher<P...> make_launcher(void (*fn)(P...), const char *name, const char *file, int line,
                             dim3 grid, dim3 block, size_t shmem, cudaStream_t stream) {
  return launcher<P...>{fn, {reinterpret_cast<const void *>(fn), name, file, line},
                        grid, block, shmem, stream};
}

/* ---- barriers and warp intrinsics ---------------------------------------------------------- */

void syncthreads(const char *file, int line);
int syncthreads_pred(int op, int pred, const char *file, int line); /* op: 0 count, 1 and, 2 or */

enum warp_kind {
  WARP_SYNC,
  WARP_SHFL_IDX,
  WARP_SHFL_UP,
  WARP_SHFL_DOWN,
  WARP_SHFL_XOR,
  WARP_BALLOT,
  WARP_ANY,
  WARP_ALL
};
uint64_t warp_op(int kind, unsigned mask, uint64_t value, int arg, int width, const char *file,
                 int line);

template <class T> inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value,
                "warp shuffles move values of at most 8 bytes");
  uint64_t b = 0;
  memcpy(&b, &v, sizeof v);
  return b;
}

template <class T> inline T from_bits(uint64_t b) {
  T v;
  memcpy(&v, &b, sizeof v);
  return v;
}

void atomic_yield(void);
[[noreturn]] void trap(const char *file, int line);
void nanosleep_yield(void);

/* Every 64th atomic of a host thread lets another thread of the block run: a spin loop on an
 * atomic then makes progress (one on a plain load does not: docs/CUDA.md). */
inline void atomic_hook(void) {
  if ((++vt_emu_atomic_ops & 63u) == 0) {
    atomic_yield();
  }
}

template <class T, class F> inline T atomic_update(T *p, F f) {
  atomic_hook();
  T old;
  __atomic_load(p, &old, __ATOMIC_RELAXED);
  T next = f(old);
  while (!__atomic_compare_exchange(p, &old, &next, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    next = f(old);
  }
  return old;
}

} // namespace vt_emu

#define __syncthreads() ::vt_emu::syncthreads(__FILE__, __LINE__)
#define __syncthreads_count(p) ::vt_emu::syncthreads_pred(0, (p), __FILE__, __LINE__)
#define __syncthreads_and(p) ::vt_emu::syncthreads_pred(1, (p), __FILE__, __LINE__)
#define __syncthreads_or(p) ::vt_emu::syncthreads_pred(2, (p), __FILE__, __LINE__)
#define __trap() ::vt_emu::trap(__FILE__, __LINE__)

/* The call site of a warp intrinsic is its caller's file and line (GCC and Clang evaluate
 * __builtin_FILE / __builtin_LINE default arguments where the call is written). */
#define VT_EMU_SITE const char *vt_site_file = __builtin_FILE(), int vt_site_line = __builtin_LINE()

template <class T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize, VT_EMU_SITE) {
  return ::vt_emu::from_bits<T>(::vt_emu::warp_op(::vt_emu::WARP_SHFL_IDX, mask,
                                                  ::vt_emu::to_bits(var), srcLane, width,
                                                  vt_site_file, vt_site_line));
}

template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize, VT_EMU_SITE) {
  return ::vt_emu::from_bits<T>(::vt_emu::warp_op(::vt_emu::WARP_SHFL_UP, mask,
                                                  ::vt_emu::to_bits(var), (int)delta, width,
                                                  vt_site_file, vt_site_line));
}

template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                          VT_EMU_SITE) {
  return ::vt_emu::from_bits<T>(::vt_emu::warp_op(::vt_emu::WARP_SHFL_DOWN, mask,
                                                  ::vt_emu::to_bits(var), (int)delta, width,
                                                  vt_site_file, vt_site_line));
}

template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize, VT_EMU_SITE) {
  return ::vt_emu::from_bits<T>(::vt_emu::warp_op(::vt_emu::WARP_SHFL_XOR, mask,
                                                  ::vt_emu::to_bits(var), laneMask, width,
                                                  vt_site_file, vt_site_line));
}

inline unsigned __ballot_sync(unsigned mask, int predicate, VT_EMU_SITE) {
  return (unsigned)::vt_emu::warp_op(::vt_emu::WARP_BALLOT, mask, predicate != 0, 0, warpSize,
                                     vt_site_file, vt_site_line);
}

inline int __any_sync(unsigned mask, int predicate, VT_EMU_SITE) {
  return (int)::vt_emu::warp_op(::vt_emu::WARP_ANY, mask, predicate != 0, 0, warpSize,
                                vt_site_file, vt_site_line);
}

inline int __all_sync(unsigned mask, int predicate, VT_EMU_SITE) {
  return (int)::vt_emu::warp_op(::vt_emu::WARP_ALL, mask, predicate != 0, 0, warpSize,
                                vt_site_file, vt_site_line);
}

inline void __syncwarp(unsigned mask = 0xffffffffu, VT_EMU_SITE) {
  (void)::vt_emu::warp_op(::vt_emu::WARP_SYNC, mask, 0, 0, warpSize, vt_site_file, vt_site_line);
}

#undef VT_EMU_SITE

/* ---- dynamic shared memory and launches ---------------------------------------------------- */

/* extern __shared__ type name[]: this block's dynamic shared memory (exactly the launch's bytes,
 * filled with 0xFF). */
#define VT_DYNAMIC_SHARED(type, name) type *const name = static_cast<type *>(::vt_emu_dyn_smem)

/* kernel<<<grid, block, shmem, stream>>>(args...) */
#define VT_LAUNCH(kernel, grid, block, shmem, stream)                                            \
  ::vt_emu::make_launcher(kernel, #kernel, __FILE__, __LINE__, grid, block, shmem, stream)

/* ---- atomics (int, unsigned, unsigned long long, long long, float, double as CUDA has them) - */

#define VT_EMU_ATOMIC_FETCH(name, builtin, T)                                                    \
  inline T name(T *address, T val) {                                                           \
    ::vt_emu::atomic_hook();                                                                    \
    return builtin(address, val, __ATOMIC_RELAXED);                                             \
  }
VT_EMU_ATOMIC_FETCH(atomicAdd, __atomic_fetch_add, int)
VT_EMU_ATOMIC_FETCH(atomicAdd, __atomic_fetch_add, unsigned int)
VT_EMU_ATOMIC_FETCH(atomicAdd, __atomic_fetch_add, unsigned long long)
VT_EMU_ATOMIC_FETCH(atomicSub, __atomic_fetch_sub, int)
VT_EMU_ATOMIC_FETCH(atomicSub, __atomic_fetch_sub, unsigned int)
VT_EMU_ATOMIC_FETCH(atomicAnd, __atomic_fetch_and, int)
VT_EMU_ATOMIC_FETCH(atomicAnd, __atomic_fetch_and, unsigned int)
VT_EMU_ATOMIC_FETCH(atomicAnd, __atomic_fetch_and, unsigned long long)
VT_EMU_ATOMIC_FETCH(atomicOr, __atomic_fetch_or, int)
VT_EMU_ATOMIC_FETCH(atomicOr, __atomic_fetch_or, unsigned int)
VT_EMU_ATOMIC_FETCH(atomicOr, __atomic_fetch_or, unsigned long long)
VT_EMU_ATOMIC_FETCH(atomicXor, __atomic_fetch_xor, int)
VT_EMU_ATOMIC_FETCH(atomicXor, __atomic_fetch_xor, unsigned int)
VT_EMU_ATOMIC_FETCH(atomicXor, __atomic_fetch_xor, unsigned long long)
#undef VT_EMU_ATOMIC_FETCH

#define VT_EMU_ATOMIC_EXCH(T)                                                                    \
  inline T atomicExch(T *address, T val) {                                                     \
    ::vt_emu::atomic_hook();                                                                    \
    T old;                                                                                      \
    __atomic_exchange(address, &val, &old, __ATOMIC_RELAXED);                                   \
    return old;                                                                                 \
  }
VT_EMU_ATOMIC_EXCH(int)
VT_EMU_ATOMIC_EXCH(unsigned int)
VT_EMU_ATOMIC_EXCH(unsigned long long)
VT_EMU_ATOMIC_EXCH(float)
#undef VT_EMU_ATOMIC_EXCH

#define VT_EMU_ATOMIC_CAS(T)                                                                     \
  inline T atomicCAS(T *address, T compare, T val) {                                           \
    ::vt_emu::atomic_hook();                                                                    \
    __atomic_compare_exchange(address, &compare, &val, false, __ATOMIC_RELAXED,                 \
                              __ATOMIC_RELAXED);                                                \
    return compare; /* the old value whether or not it was swapped */                           \
  }
VT_EMU_ATOMIC_CAS(int)
VT_EMU_ATOMIC_CAS(unsigned int)
VT_EMU_ATOMIC_CAS(unsigned long long)
VT_EMU_ATOMIC_CAS(unsigned short)
#undef VT_EMU_ATOMIC_CAS

#define VT_EMU_ATOMIC_MINMAX(T)                                                                  \
  inline T atomicMin(T *address, T val) {                                                      \
    return ::vt_emu::atomic_update(address, [val](T old) { return val < old ? val : old; });   \
  }                                                                                            \
  inline T atomicMax(T *address, T val) {                                                      \
    return ::vt_emu::atomic_update(address, [val](T old) { return val > old ? val : old; });   \
  }
VT_EMU_ATOMIC_MINMAX(int)
VT_EMU_ATOMIC_MINMAX(unsigned int)
VT_EMU_ATOMIC_MINMAX(long long)
VT_EMU_ATOMIC_MINMAX(unsigned long long)
#undef VT_EMU_ATOMIC_MINMAX

inline float atomicAdd(float *address, float val) {
  return ::vt_emu::atomic_update(address, [val](float old) { return old + val; });
}
inline double atomicAdd(double *address, double val) {
  return ::vt_emu::atomic_update(address, [val](double old) { return old + val; });
}
/* ((old >= val) ? 0 : (old + 1)) and (((old == 0) || (old > val)) ? val : (old - 1)) */
inline unsigned int atomicInc(unsigned int *address, unsigned int val) {
  return ::vt_emu::atomic_update(address,
                                 [val](unsigned old) { return old >= val ? 0u : old + 1; });
}
inline unsigned int atomicDec(unsigned int *address, unsigned int val) {
  return ::vt_emu::atomic_update(address,
                                 [val](unsigned old) {
                                   return old == 0 || old > val ? val : old - 1;
                                 });
}

/* ---- other intrinsics ---------------------------------------------------------------------- */

inline void __threadfence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __nanosleep(unsigned ns) {
  (void)ns;
  ::vt_emu::nanosleep_yield();
}
template <class T> inline T __ldg(const T *p) { return *p; }

inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned int __brev(unsigned int x) {
  unsigned r = 0;
  for (int i = 0; i < 32; i++) {
    r |= ((x >> i) & 1u) << (31 - i);
  }
  return r;
}

inline int __float_as_int(float x) { return ::vt_emu::from_bits<int>(::vt_emu::to_bits(x)); }
inline unsigned int __float_as_uint(float x) {
  return ::vt_emu::from_bits<unsigned>(::vt_emu::to_bits(x));
}
inline float __int_as_float(int x) { return ::vt_emu::from_bits<float>(::vt_emu::to_bits(x)); }
inline float __uint_as_float(unsigned int x) {
  return ::vt_emu::from_bits<float>(::vt_emu::to_bits(x));
}
inline long long __double_as_longlong(double x) {
  return ::vt_emu::from_bits<long long>(::vt_emu::to_bits(x));
}
inline double __longlong_as_double(long long x) {
  return ::vt_emu::from_bits<double>(::vt_emu::to_bits(x));
}

/* the fast-math intrinsics, computed here with the accurate host functions */
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
/* IEEE operations rounded to nearest: the host's default rounding, and never contracted into an
 * FMA by g++ here (-std=c++17, and x86-64 without -mfma has no FMA to contract into) */
inline float __fadd_rn(float x, float y) { return x + y; }
inline float __fsub_rn(float x, float y) { return x - y; }
inline float __fmul_rn(float x, float y) { return x * y; }
inline float __fdiv_rn(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fmaf_rn(float x, float y, float z) { return fmaf(x, y, z); }
inline double __dadd_rn(double x, double y) { return x + y; }
inline double __dsub_rn(double x, double y) { return x - y; }
inline double __dmul_rn(double x, double y) { return x * y; }
inline double __ddiv_rn(double x, double y) { return x / y; }
inline double __fma_rn(double x, double y, double z) { return fma(x, y, z); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x != x ? 0.0f : x; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }

/* CUDA's min and max overloads (crt/math_functions.hpp also gives them to host code) */
#define VT_EMU_MINMAX(T)                                                                         \
  inline T min(T a, T b) { return a < b ? a : b; }                                             \
  inline T max(T a, T b) { return a > b ? a : b; }
VT_EMU_MINMAX(int)
VT_EMU_MINMAX(unsigned int)
VT_EMU_MINMAX(long)
VT_EMU_MINMAX(unsigned long)
VT_EMU_MINMAX(long long)
VT_EMU_MINMAX(unsigned long long)
#undef VT_EMU_MINMAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline unsigned int min(int a, unsigned int b) { return min((unsigned)a, b); }
inline unsigned int min(unsigned int a, int b) { return min(a, (unsigned)b); }
inline unsigned int max(int a, unsigned int b) { return max((unsigned)a, b); }
inline unsigned int max(unsigned int a, int b) { return max(a, (unsigned)b); }

/* ---- host-side templates of cuda_runtime.h ------------------------------------------------- */

template <class T>
inline cudaError_t cudaFuncSetAttribute(T *entry, enum cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void *>(entry), attr, value);
}

namespace vt_emu {
cudaError_t symbol_copy(void *dst, const void *src, size_t count, int to_symbol);
}

template <class T>
inline cudaError_t cudaMemcpyToSymbol(const T &symbol, const void *src, size_t count,
                                      size_t offset = 0,
                                      enum cudaMemcpyKind kind = cudaMemcpyHostToDevice) {
  (void)kind;
  return ::vt_emu::symbol_copy((char *)&symbol + offset, src, count, 1);
}

template <class T>
inline cudaError_t cudaMemcpyFromSymbol(void *dst, const T &symbol, size_t count,
                                        size_t offset = 0,
                                        enum cudaMemcpyKind kind = cudaMemcpyDeviceToHost) {
  (void)kind;
  return ::vt_emu::symbol_copy(dst, (const char *)&symbol + offset, count, 0);
}

#endif
