/* Tests of the CUDA emulator itself (tests/cuda_emu/, docs/CUDA.md): each check it makes is shown
 * to catch what it is for, on small kernels of tests/cuda_emu/selftest_kernels.cu, and the same
 * kernels written correctly are shown to pass, in every thread order (forward, reverse, shuffle):
 * barriers (a correct reduction; the same with a barrier missing or dropped gives a wrong answer
 * in some order; divergent barriers; a thread exiting before a barrier), warp intrinsics (CUDA's
 * shuffle semantics; an exited lane; lanes at different call sites; a mask naming lanes that do
 * not exist; a deadlock), the launch limits of sm_90, dynamic shared memory, guard zones, frees
 * and copies, the sticky error and vt_emu_reset, statistics, stream capture and graphs, two
 * devices (peer copies, NCCL, two host threads at once) and cuBLAS against a plain loop.
 * Built only with the emulator (cmake/cuda_emu.cmake); each test runs in its own process.
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <nccl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "selftest.h"
#include "vt_emu.h"

static const int orders[3] = {VT_EMU_FORWARD, VT_EMU_REVERSE, VT_EMU_SHUFFLE};
static const char *const order_names[3] = {"forward", "reverse", "shuffle"};

#define CU(call)                                                                                \
  do {                                                                                          \
    cudaError_t e_ = (call);                                                                    \
    cr_assert_eq(e_, cudaSuccess, "%s: %s (%s)", #call, cudaGetErrorName(e_),                   \
                 vt_emu_last_diagnostic());                                                     \
  } while (0)

/* call fails with `want`, and the diagnostic mentions `text` (may be NULL); then the (not
 * sticky) last error is cleared, as the st_* launchers return cudaGetLastError() */
#define FAILS(call, want, text)                                                                 \
  do {                                                                                          \
    cudaError_t e_ = (call);                                                                    \
    cr_assert_eq(e_, (want), "%s: %s, want %s", #call, cudaGetErrorName(e_),                    \
                 cudaGetErrorName(want));                                                       \
    const char *t_ = (text);                                                                    \
    cr_assert(t_ == NULL || strstr(vt_emu_last_diagnostic(), t_) != NULL,                       \
              "%s: the diagnostic \"%s\" does not mention \"%s\"", #call,                       \
              vt_emu_last_diagnostic(), t_);                                                    \
    (void)cudaGetLastError();                                                                   \
  } while (0)

static void *dalloc(size_t bytes) {
  void *p = NULL;
  CU(cudaMalloc(&p, bytes));
  return p;
}

static uint64_t rng = 88172645463325252ull;
static int rand_int(int n) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (int)(rng % (uint64_t)n);
}

/* A launch failure is sticky: every later call on the device returns it, until vt_emu_reset. */
static void expect_sticky(cudaError_t want) {
  void *p = NULL;
  cr_assert_eq(cudaMalloc(&p, 16), want, "a later cudaMalloc returns the sticky error");
  cr_assert_eq(cudaDeviceSynchronize(), want);
  cr_assert_eq(cudaGetLastError(), want, "cudaGetLastError does not clear a sticky error");
  cr_assert_eq(cudaGetLastError(), want);
  vt_emu_reset();
  CU(cudaMalloc(&p, 16));
  CU(cudaFree(p));
  cr_assert_eq(cudaGetLastError(), cudaSuccess);
}

/* ---- barriers ----------------------------------------------------------------------------- */

/* The tree reduction of `blocks` blocks of `threads` random small integers (exact in float):
 * 1 if every block's sum is right. */
static int reduce_ok(int blocks, int threads, int missing, int warp_version) {
  const int n = blocks * threads;
  float *h = malloc((size_t)n * 4), *got = malloc((size_t)blocks * 4), *want = calloc(blocks, 4);
  for (int i = 0; i < n; i++) {
    h[i] = (float)rand_int(1000);
    want[i / threads] += h[i];
  }
  float *din = dalloc((size_t)n * 4), *dout = dalloc((size_t)blocks * 4);
  CU(cudaMemcpy(din, h, (size_t)n * 4, cudaMemcpyHostToDevice));
  if (warp_version) {
    CU(st_warp_reduce(dout, din, blocks, threads));
  } else {
    CU(st_reduce(dout, din, blocks, threads, missing));
  }
  CU(cudaMemcpy(got, dout, (size_t)blocks * 4, cudaMemcpyDeviceToHost));
  int ok = 1;
  for (int b = 0; b < blocks; b++) {
    ok = ok && got[b] == want[b];
  }
  CU(cudaFree(din));
  CU(cudaFree(dout));
  free(h), free(got), free(want);
  return ok;
}

Test(emu_barrier, correct_reduction_in_every_order) {
  static const int shapes[][2] = {{1, 32}, {3, 64}, {4, 256}, {2, 1024}};
  for (int o = 0; o < 3; o++) {
    for (uint64_t seed = 1; seed <= (orders[o] == VT_EMU_SHUFFLE ? 3u : 1u); seed++) {
      vt_emu_set_order(orders[o], seed);
      for (int s = 0; s < 4; s++) {
        cr_assert(reduce_ok(shapes[s][0], shapes[s][1], 0, 0), "tree, %s, %d x %d",
                  order_names[o], shapes[s][0], shapes[s][1]);
        cr_assert(reduce_ok(shapes[s][0], shapes[s][1], 0, 1), "warp, %s, %d x %d",
                  order_names[o], shapes[s][0], shapes[s][1]);
      }
    }
  }
}

Test(emu_barrier, missing_barrier_gives_a_wrong_answer) {
  int wrong = 0;
  for (int o = 0; o < 3; o++) {
    vt_emu_set_order(orders[o], 7);
    const int ok = reduce_ok(4, 256, 1, 0);
    cr_log_info("missing barrier, %s order: %s", order_names[o], ok ? "right" : "wrong");
    wrong += !ok;
  }
  cr_assert_gt(wrong, 0, "the missing barrier went unnoticed in every order");
}

Test(emu_barrier, each_dropped_barrier_gives_a_wrong_answer) {
  vt_emu_clear_barrier_sites();
  cr_assert(reduce_ok(2, 128, 0, 0));
  char sites[16][128];
  const int n = vt_emu_barrier_sites(sites, 16);
  int mine = 0;
  for (int i = 0; i < n && i < 16; i++) {
    const char *colon = strrchr(sites[i], ':');
    if (strstr(sites[i], "selftest_kernels.cu") == NULL || colon == NULL) {
      continue;
    }
    mine++;
    vt_emu_drop_barrier("tests/cuda_emu/selftest_kernels.cu", atoi(colon + 1));
    int wrong = 0;
    for (int o = 0; o < 3; o++) {
      vt_emu_set_order(orders[o], 3);
      wrong += !reduce_ok(2, 128, 0, 0);
    }
    vt_emu_drop_barrier(NULL, 0);
    cr_assert_gt(wrong, 0, "dropping the barrier at %s went unnoticed", sites[i]);
  }
  cr_assert_eq(mine, 2, "the reduction has two barrier sites, found %d", mine);
}

Test(emu_barrier, divergent_barriers_are_reported) {
  int *d = dalloc(64 * 4);
  for (int o = 0; o < 3; o++) {
    vt_emu_set_order(orders[o], 1);
    FAILS(st_bad_barrier(d, 64, 0), cudaErrorLaunchFailure, "divergent barriers");
    cr_assert(strstr(vt_emu_last_diagnostic(), "bad_barrier_kernel") != NULL);
    cr_assert(strstr(vt_emu_last_diagnostic(), "selftest_kernels.cu:") != NULL);
    cr_assert(strstr(vt_emu_last_diagnostic(), "threads 0-31") != NULL, "%s",
              vt_emu_last_diagnostic());
    expect_sticky(cudaErrorLaunchFailure);
  }
}

Test(emu_barrier, thread_exiting_before_a_barrier_is_reported) {
  int *d = dalloc(64 * 4);
  for (int o = 0; o < 3; o++) {
    vt_emu_set_order(orders[o], 1);
    FAILS(st_bad_barrier(d, 64, 1), cudaErrorLaunchFailure, "thread 5 exited");
    cr_assert(strstr(vt_emu_last_diagnostic(), "wait at __syncthreads") != NULL);
    expect_sticky(cudaErrorLaunchFailure);
  }
}

/* ---- warp intrinsics ---------------------------------------------------------------------- */

Test(emu_warp, shuffle_semantics) {
  int *d = dalloc(17 * 32 * 4);
  int got[17 * 32];
  for (int o = 0; o < 3; o++) {
    vt_emu_set_order(orders[o], 5);
    CU(cudaMemset(d, 0xFF, sizeof got));
    CU(st_shuffles(d));
    CU(cudaMemcpy(got, d, sizeof got, cudaMemcpyDeviceToHost));
    for (int l = 0; l < 32; l++) {
      // CUDA's documented results, case by case (selftest_kernels.cu, shuffles_kernel)
      const int want[17] = {
          50,                                   // __shfl_sync(lane * 10, 5)
          1,                                    // srcLane 33 is lane 1
          (l & ~7) + 3,                         // width 8: lane 3 of each segment
          l == 0 ? 0 : l - 1,                   // up 1: lane 0 keeps its value
          l % 16 < 3 ? l : l - 3,               // up 3 within 16
          l == 31 ? 31 : l + 1,                 // down 1
          l % 8 + 2 >= 8 ? l : l + 2,           // down 2 within 8
          l ^ 1,                                // xor 1
          l < 16 ? l : l - 16,                  // xor 16, width 16: a later segment gives own
          l ^ 4,                                // xor 4 within 8
          (int)0x49249249u,                     // ballot of lane % 3 == 0
          1,                                    // any lane == 7
          0,                                    // all lane < 31
          l < 16 ? l ^ 1 : -1,                  // mask of lanes 0-15 only
          l >= 16 ? (int)0xaaaa0000u : -1,      // ballot over lanes 16-31 of odd lanes
          2 * (l + 4 <= 31 ? l + 4 : l) + 1,    // a double, down 4
          31 - l};                              // each lane its own source
      for (int k = 0; k < 17; k++) {
        cr_assert_eq(got[k * 32 + l], want[k], "%s order, case %d, lane %d: got %d, want %d",
                     order_names[o], k, l, got[k * 32 + l], want[k]);
      }
    }
  }
}

Test(emu_warp, exited_lane_is_reported) {
  int *d = dalloc(48 * 4);
  for (int o = 0; o < 3; o++) {
    vt_emu_set_order(orders[o], 1);
    FAILS(st_bad_warp(d, 0), cudaErrorLaunchFailure, "__shfl_xor_sync at tests/cuda_emu/");
    cr_assert(strstr(vt_emu_last_diagnostic(), "thread 3 exited") != NULL ||
                  strstr(vt_emu_last_diagnostic(), "thread 3 of the mask exited") != NULL,
              "%s", vt_emu_last_diagnostic());
    expect_sticky(cudaErrorLaunchFailure);
  }
}

Test(emu_warp, lanes_at_different_sites_are_reported) {
  int *d = dalloc(48 * 4);
  for (int o = 0; o < 3; o++) {
    vt_emu_set_order(orders[o], 1);
    FAILS(st_bad_warp(d, 1), cudaErrorLaunchFailure, "warp-synchronous call diverged");
    expect_sticky(cudaErrorLaunchFailure);
  }
}

Test(emu_warp, mask_naming_missing_lanes_is_reported) {
  int *d = dalloc(48 * 4);
  FAILS(st_bad_warp(d, 2), cudaErrorLaunchFailure, "do not exist");
  cr_assert(strstr(vt_emu_last_diagnostic(), "the block has 48 threads") != NULL);
  expect_sticky(cudaErrorLaunchFailure);
}

Test(emu_warp, deadlock_is_reported) {
  int *d = dalloc(48 * 4);
  for (int o = 0; o < 3; o++) {
    vt_emu_set_order(orders[o], 1);
    FAILS(st_bad_warp(d, 3), cudaErrorLaunchFailure, "deadlock");
    cr_assert(strstr(vt_emu_last_diagnostic(), "thread 0 wait in __syncwarp") != NULL, "%s",
              vt_emu_last_diagnostic());
    cr_assert(strstr(vt_emu_last_diagnostic(), "wait at __syncthreads tests/cuda_emu/"
                                               "selftest_kernels.cu:") != NULL);
    expect_sticky(cudaErrorLaunchFailure);
  }
}

Test(emu_warp, mask_without_the_caller_and_bad_width_are_reported) {
  int *d = dalloc(48 * 4);
  FAILS(st_bad_warp(d, 4), cudaErrorLaunchFailure, "does not include its own lane 0");
  vt_emu_reset();
  FAILS(st_bad_warp(d, 5), cudaErrorLaunchFailure, "width 12");
  vt_emu_reset();
}

/* ---- launches ----------------------------------------------------------------------------- */

Test(emu_launch, limits_of_sm_90) {
  int *d = dalloc(4096 * 4);
  static const struct {
    unsigned g[3], b[3];
    cudaError_t want;
  } cases[] = {
      {{1, 1, 1}, {1024, 1, 1}, cudaSuccess},
      {{1, 1, 1}, {32, 32, 1}, cudaSuccess},
      {{1, 1, 1}, {1, 1, 64}, cudaSuccess},
      {{1, 1, 1}, {16, 1, 64}, cudaSuccess},
      {{2, 3, 2}, {4, 2, 3}, cudaSuccess},
      {{1, 1, 1}, {1025, 1, 1}, cudaErrorInvalidConfiguration},
      {{1, 1, 1}, {1, 1025, 1}, cudaErrorInvalidConfiguration},
      {{1, 1, 1}, {1, 1, 65}, cudaErrorInvalidConfiguration},
      {{1, 1, 1}, {64, 32, 1}, cudaErrorInvalidConfiguration},
      {{1, 1, 1}, {0, 1, 1}, cudaErrorInvalidConfiguration},
      {{1, 1, 1}, {8, 1, 0}, cudaErrorInvalidConfiguration},
      {{0, 1, 1}, {32, 1, 1}, cudaErrorInvalidConfiguration},
      {{1, 0, 1}, {32, 1, 1}, cudaErrorInvalidConfiguration},
      {{1, 65536, 1}, {1, 1, 1}, cudaErrorInvalidConfiguration},
      {{1, 1, 65536}, {1, 1, 1}, cudaErrorInvalidConfiguration},
      {{2147483648u, 1, 1}, {1, 1, 1}, cudaErrorInvalidConfiguration},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    CU(cudaMemset(d, 0, 4096 * 4));
    const dim3 g = {cases[i].g[0], cases[i].g[1], cases[i].g[2]};
    const dim3 b = {cases[i].b[0], cases[i].b[1], cases[i].b[2]};
    const cudaError_t e = st_config(d, g, b, 0);
    cr_assert_eq(e, cases[i].want, "case %zu: %s, want %s", i, cudaGetErrorName(e),
                 cudaGetErrorName(cases[i].want));
    cr_assert_eq(cudaGetLastError(), cudaSuccess, "case %zu: a launch error is not sticky", i);
    int h[4096];
    CU(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
    const size_t n = (size_t)g.x * g.y * g.z * b.x * b.y * b.z;
    for (size_t k = 0; k < 4096; k++) {
      const int want = cases[i].want == cudaSuccess && k < n;
      cr_assert_eq(h[k], want, "case %zu: element %zu is %d (the kernel %s)", i, k, h[k],
                   want ? "skipped a thread" : "ran anyway");
    }
  }
  // the largest grids are valid: y and z at 65535 (one thread per block keeps it short)
  int *big = dalloc(65535 * 4);
  CU(st_config(big, (dim3){1, 65535, 1}, (dim3){1, 1, 1}, 0));
  CU(st_config(big, (dim3){1, 1, 65535}, (dim3){1, 1, 1}, 0));
}

Test(emu_launch, dynamic_shared_memory_limit) {
  unsigned *d = dalloc(33 * 4), h[33];
  CU(st_shared_bytes(d, 48 * 1024)); // the default limit itself is fine
  FAILS(st_shared_bytes(d, 48 * 1024 + 4), cudaErrorInvalidValue, "dynamic shared memory");
  cr_assert_eq(cudaGetLastError(), cudaSuccess, "not sticky");
  CU(st_allow_shared(100 * 1024));
  CU(st_shared_bytes(d, 100 * 1024));
  CU(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
  for (int i = 0; i < 32; i++) {
    cr_assert_eq(h[i], 0xFFFFFFFFu, "dynamic shared memory starts as 0xFF bytes (word %d: %08x)",
                 i, h[i]);
  }
  cr_assert_eq(h[32], 1u, "the block shares its dynamic shared memory");
  FAILS(st_shared_bytes(d, 100 * 1024 + 4), cudaErrorInvalidValue, NULL);
  FAILS(st_allow_shared(227 * 1024 + 4), cudaErrorInvalidValue, "at most");
  CU(st_allow_shared(227 * 1024));
  CU(st_shared_bytes(d, 227 * 1024));
}

Test(emu_launch, static_shared_memory_is_per_block) {
  int *d = dalloc(100 * 4), h[100];
  for (int o = 0; o < 3; o++) {
    vt_emu_set_order(orders[o], 2);
    CU(st_static_shared(d, 100));
    CU(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
    for (int b = 0; b < 100; b++) {
      cr_assert_eq(h[b], b);
    }
  }
}

Test(emu_launch, stream_of_another_device) {
  cudaStream_t s1;
  CU(cudaSetDevice(1));
  CU(cudaStreamCreate(&s1));
  CU(cudaSetDevice(0));
  float *d = dalloc(64 * 4);
  FAILS(st_fill(d, 64, 1.0f, s1), cudaErrorInvalidResourceHandle, "stream of device 1");
  cr_assert_eq(cudaGetLastError(), cudaSuccess);
  CU(st_fill(d, 64, 1.0f, NULL));
  CU(cudaStreamDestroy(s1));
}

Test(emu_launch, trap_is_a_launch_failure) {
  int *d = dalloc(32 * 4);
  FAILS(st_trap(d), cudaErrorLaunchFailure, "thread 7 called __trap()");
  expect_sticky(cudaErrorLaunchFailure);
}

/* An injected failure fails the chosen launches only, as a refused launch (not sticky). */
Test(emu_launch, injected_failure_fails_the_chosen_launches_only) {
  float *d = dalloc(64 * 4), h[64];
  vt_emu_fail_kernel("fill", 1, 2);
  CU(st_fill(d, 64, 1.0f, NULL)); /* skipped */
  FAILS(st_fill(d, 64, 2.0f, NULL), cudaErrorLaunchOutOfResources, "failure injected");
  FAILS(st_fill(d, 64, 3.0f, NULL), cudaErrorLaunchOutOfResources, "failure injected");
  CU(st_increment(d, 64, NULL)); /* another kernel's name */
  CU(st_fill(d, 32, 4.0f, NULL)); /* count spent */
  CU(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
  cr_assert(h[0] == 4.0f && h[63] == 2.0f, "the failed launches ran nothing: %g %g", h[0], h[63]);
  vt_emu_fail_kernel(NULL, 0, 0);
}

Test(emu_launch, atomics_and_syncthreads_count) {
  for (int o = 0; o < 3; o++) {
    vt_emu_set_order(orders[o], 9);
    int *c = dalloc(5 * 4), h[5];
    float *f = dalloc(4), hf;
    CU(cudaMemset(c, 0, 5 * 4));
    CU(cudaMemset(f, 0, 4));
    CU(st_atomics(c, f, 3, 128));
    CU(cudaMemcpy(h, c, sizeof h, cudaMemcpyDeviceToHost));
    CU(cudaMemcpy(&hf, f, 4, cudaMemcpyDeviceToHost));
    cr_assert_eq(h[0], 384);
    cr_assert_eq(hf, 384.0f);
    cr_assert_eq(h[1], 383);
    cr_assert_eq(h[2], 384, "the spin lock lost updates");
    cr_assert_eq(h[3], 64);
    cr_assert_eq(h[4], 0);
  }
}

#if !defined(__SANITIZE_ADDRESS__) // ASan reports the fault its own way
/* the thread faults in its stack's guard page; the emulator names the kernel on stderr, then the
 * process dies of the SIGSEGV */
Test(emu_launch, stack_overflow_faults_in_the_guard_page, .signal = SIGSEGV) {
  int *d = dalloc(32 * 4);
  (void)st_big_stack(d);
}
#endif

/* ---- memory ------------------------------------------------------------------------------- */

Test(emu_memory, write_past_the_end_is_reported) {
  float *d = dalloc(100 * 4);
  FAILS(st_write_past(d, 100), cudaErrorIllegalAddress, "write_past_kernel");
  cr_assert(strstr(vt_emu_last_diagnostic(), "400-byte allocation") != NULL, "%s",
            vt_emu_last_diagnostic());
  expect_sticky(cudaErrorIllegalAddress);
}

#if !defined(__SANITIZE_ADDRESS__) // under ASan the freed memory is poisoned: ASan reports it
Test(emu_memory, write_after_free_is_reported) {
  float *d = dalloc(64 * 4);
  CU(cudaFree(d));
  CU(st_fill(d, 64, 1.0f, NULL)); // kernels do not check their pointers
  cudaError_t e = cudaSuccess;
  for (int i = 0; i < 5000 && e == cudaSuccess; i++) { // push it out of the quarantine (4096)
    void *p = NULL;
    e = cudaMalloc(&p, 16);
    if (e == cudaSuccess) {
      e = cudaFree(p);
    }
  }
  cr_assert_eq(e, cudaErrorIllegalAddress, "%s", cudaGetErrorName(e));
  cr_assert(strstr(vt_emu_last_diagnostic(), "256-byte allocation of device 0") != NULL &&
                strstr(vt_emu_last_diagnostic(), "written after cudaFree") != NULL,
            "%s", vt_emu_last_diagnostic());
  expect_sticky(cudaErrorIllegalAddress);
}
#endif

Test(emu_memory, fresh_memory_is_poisoned) {
  unsigned char *d = dalloc(1000), h[1000];
  CU(cudaMemcpy(h, d, 1000, cudaMemcpyDeviceToHost));
  for (int i = 0; i < 1000; i++) {
    cr_assert_eq(h[i], 0xFF);
  }
}

Test(emu_memory, bad_frees) {
  char *d = dalloc(64), host[8];
  FAILS(cudaFree(d + 4), cudaErrorInvalidValue, "not a pointer cudaMalloc returned");
  FAILS(cudaFree(host), cudaErrorInvalidValue, NULL);
  FAILS(cudaFreeHost(d), cudaErrorInvalidValue, NULL);
  CU(cudaFree(d));
  FAILS(cudaFree(d), cudaErrorInvalidValue, "freed twice");
  CU(cudaFree(NULL));
  void *p = dalloc(16); // not sticky
  CU(cudaFree(p));
  void *ph = NULL;
  CU(cudaMallocHost(&ph, 100));
  CU(cudaFreeHost(ph));
}

Test(emu_memory, copies_outside_an_allocation) {
  char *d = dalloc(100), h[200] = {0};
  CU(cudaMemcpy(d, h, 100, cudaMemcpyHostToDevice));
  FAILS(cudaMemcpy(d, h, 101, cudaMemcpyHostToDevice), cudaErrorInvalidValue, "cudaMemcpy");
  FAILS(cudaMemcpy(h, d + 50, 51, cudaMemcpyDeviceToHost), cudaErrorInvalidValue, "100-byte");
  FAILS(cudaMemcpy(h, d - 1, 10, cudaMemcpyDeviceToHost), cudaErrorInvalidValue, NULL);
  FAILS(cudaMemset(d, 0, 101), cudaErrorInvalidValue, "cudaMemset");
  FAILS(cudaMemcpyAsync(d, d + 50, 60, cudaMemcpyDeviceToDevice, NULL), cudaErrorInvalidValue,
        "cudaMemcpyAsync");
  FAILS(cudaMemcpy(h, h + 100, 10, cudaMemcpyHostToDevice), cudaErrorInvalidValue, "host memory");
  FAILS(cudaMemcpy(d, h, 10, cudaMemcpyDeviceToHost), cudaErrorInvalidValue, "device memory");
  cr_assert_eq(cudaMemset(d, 0, 101), cudaErrorInvalidValue);
  cr_assert_eq(cudaPeekAtLastError(), cudaErrorInvalidValue, "the last error");
  cr_assert_eq(cudaGetLastError(), cudaErrorInvalidValue, "the last error, once");
  cr_assert_eq(cudaGetLastError(), cudaSuccess, "not sticky");
  CU(cudaMemcpy(h, d, 100, cudaMemcpyDefault));
  CU(cudaFree(d));
  FAILS(cudaMemcpy(h, d, 10, cudaMemcpyDeviceToHost), cudaErrorInvalidValue, "freed memory");
}

/* ---- statistics --------------------------------------------------------------------------- */

Test(emu_stats, count_what_happened) {
  float *a = dalloc(256 * 4), *b = dalloc(256 * 4), h[256] = {0};
  cudaStream_t s;
  CU(cudaStreamCreate(&s));
  vt_emu_stats_reset();
  CU(cudaMemcpy(a, h, sizeof h, cudaMemcpyHostToDevice));          // h2d, sync
  CU(cudaMemcpyAsync(b, h, sizeof h, cudaMemcpyHostToDevice, s));  // h2d
  CU(cudaMemcpyAsync(b, a, sizeof h, cudaMemcpyDeviceToDevice, s)); // d2d
  CU(cudaMemsetAsync(b, 0, sizeof h, s));                          // memset
  CU(st_fill(a, 256, 2.0f, s));                                    // 3 launches
  CU(st_increment(a, 256, s));
  CU(st_increment(a, 256, s));
  CU(cudaStreamSynchronize(s));                                    // sync
  CU(cudaMemcpy(h, a, sizeof h, cudaMemcpyDeviceToHost));          // d2h, sync
  cr_assert_eq(h[255], 4.0f);
  CU(cudaDeviceSynchronize());                                     // sync
  CU(cudaMemcpyAsync(h, b, sizeof h, cudaMemcpyDeviceToHost, s));  // d2h into pageable: sync
  cr_assert_eq(h[255], 0.0f);
  vt_emu_stats st;
  vt_emu_stats_get(&st);
  cr_assert_eq(st.launches, 3);
  cr_assert_eq(st.blocks, 3);
  cr_assert_eq(st.h2d, 2);
  cr_assert_eq(st.bytes_h2d, 2 * sizeof h);
  cr_assert_eq(st.d2h, 2);
  cr_assert_eq(st.bytes_d2h, 2 * sizeof h);
  cr_assert_eq(st.d2d, 1);
  cr_assert_eq(st.memsets, 1);
  cr_assert_eq(st.syncs, 5, "%llu", (unsigned long long)st.syncs);
  cr_assert_gt(st.switches, 3 * 256);
  vt_emu_stats_reset();
  vt_emu_stats_get(&st);
  cr_assert_eq(st.launches + st.h2d + st.syncs, 0);
  CU(cudaStreamDestroy(s));
}

/* ---- stream capture and graphs ------------------------------------------------------------ */

Test(emu_graph, capture_records_then_replays) {
  const int n = 300;
  float *d = dalloc(n * 4), *h = NULL;
  CU(cudaMallocHost((void **)&h, n * 4));
  for (int i = 0; i < n; i++) {
    h[i] = -1.0f;
  }
  cudaStream_t s;
  CU(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CU(cudaMemset(d, 0, n * 4));
  vt_emu_stats_reset();
  CU(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  cudaStreamCaptureStatus st;
  CU(cudaStreamIsCapturing(s, &st));
  cr_assert_eq(st, cudaStreamCaptureStatusActive);
  CU(st_fill(d, n, 1.0f, s));
  CU(st_increment(d, n, s));
  CU(cudaMemcpyAsync(h, d, n * 4, cudaMemcpyDeviceToHost, s));
  cudaGraph_t g = NULL;
  CU(cudaStreamEndCapture(s, &g));
  vt_emu_stats stats;
  vt_emu_stats_get(&stats);
  cr_assert_eq(stats.launches + stats.d2h, 0, "capture records, it does not run");
  cr_assert_eq(h[0], -1.0f);
  size_t nodes = 0;
  CU(cudaGraphGetNodes(g, NULL, &nodes));
  cr_assert_eq(nodes, 3);
  cudaGraphExec_t x;
  CU(cudaGraphInstantiate(&x, g, 0));
  for (int rep = 0; rep < 2; rep++) {
    CU(cudaGraphLaunch(x, s));
    CU(cudaStreamSynchronize(s));
    for (int i = 0; i < n; i++) {
      cr_assert_eq(h[i], 2.0f, "replay %d, [%d]", rep, i);
      h[i] = -1.0f;
    }
  }
  vt_emu_stats_get(&stats);
  cr_assert_eq(stats.graph_launches, 2);
  cr_assert_eq(stats.graph_nodes, 6);
  cr_assert_eq(stats.launches, 4);
  cr_assert_eq(stats.d2h, 2);
  cr_assert_eq(stats.syncs, 2, "copies into pinned memory are not syncs");
  CU(cudaGraphExecDestroy(x));
  CU(cudaGraphDestroy(g));
  CU(cudaStreamDestroy(s));
  CU(cudaFreeHost(h));
}

Test(emu_graph, synchronous_work_during_capture_is_refused) {
  float *d = dalloc(64 * 4), h[64];
  cudaStream_t s;
  CU(cudaStreamCreate(&s));
  static const cudaStreamCaptureMode modes[2] = {cudaStreamCaptureModeGlobal,
                                                 cudaStreamCaptureModeThreadLocal};
  for (int m = 0; m < 2; m++) {
    cudaGraph_t g = (cudaGraph_t)1;
    // a synchronous copy
    CU(cudaStreamBeginCapture(s, modes[m]));
    CU(st_fill(d, 64, 1.0f, s));
    FAILS(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost), cudaErrorStreamCaptureUnsupported,
          "cudaMemcpy during stream capture");
    cudaStreamCaptureStatus st;
    CU(cudaStreamIsCapturing(s, &st));
    cr_assert_eq(st, cudaStreamCaptureStatusInvalidated);
    FAILS(st_fill(d, 64, 1.0f, s), cudaErrorStreamCaptureInvalidated, NULL);
    FAILS(cudaStreamEndCapture(s, &g), cudaErrorStreamCaptureInvalidated, NULL);
    cr_assert_null(g);
    // a sync of the capturing stream
    CU(cudaStreamBeginCapture(s, modes[m]));
    FAILS(cudaStreamSynchronize(s), cudaErrorStreamCaptureUnsupported, NULL);
    FAILS(cudaStreamEndCapture(s, &g), cudaErrorStreamCaptureInvalidated, NULL);
    // work on the legacy default stream while a blocking stream captures
    CU(cudaStreamBeginCapture(s, modes[m]));
    FAILS(st_fill(d, 64, 1.0f, NULL), cudaErrorStreamCaptureImplicit, "legacy default stream");
    FAILS(cudaStreamEndCapture(s, &g), cudaErrorStreamCaptureInvalidated, NULL);
  }
  // relaxed mode allows an allocation; the legacy stream cannot capture
  CU(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
  void *p = dalloc(16);
  cudaGraph_t g = NULL;
  CU(cudaStreamEndCapture(s, &g));
  CU(cudaGraphDestroy(g));
  CU(cudaFree(p));
  FAILS(cudaStreamBeginCapture(NULL, cudaStreamCaptureModeGlobal),
        cudaErrorStreamCaptureUnsupported, NULL);
  CU(cudaStreamDestroy(s));
}

/* ---- devices, NCCL, host threads ---------------------------------------------------------- */

Test(emu_devices, two_devices_and_peer_copies) {
  int n = 0;
  CU(cudaGetDeviceCount(&n));
  cr_assert_eq(n, 2, "VT_EMU_DEVICES defaults to 2");
  struct cudaDeviceProp prop;
  CU(cudaGetDeviceProperties(&prop, 1));
  cr_assert_str_eq(prop.name, "vitrine CUDA emulator");
  cr_assert_eq(prop.major, 9);
  cr_assert_eq(prop.multiProcessorCount, 132);
  cr_assert_eq(prop.sharedMemPerBlockOptin, 227 * 1024);
  int v = 0;
  CU(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlock, 0));
  cr_assert_eq(v, 48 * 1024);
  FAILS(cudaSetDevice(2), cudaErrorInvalidDevice, NULL);

  float *d0 = dalloc(64 * 4), h[64];
  CU(cudaSetDevice(1));
  int dev = -1;
  CU(cudaGetDevice(&dev));
  cr_assert_eq(dev, 1);
  float *d1 = dalloc(64 * 4);
  CU(st_fill(d1, 64, 5.0f, NULL));
  struct cudaPointerAttributes pa;
  CU(cudaPointerGetAttributes(&pa, d1));
  cr_assert_eq(pa.device, 1);
  CU(cudaPointerGetAttributes(&pa, d0));
  cr_assert_eq(pa.device, 0);
  // memory of device 0 from device 1: the emulator is stricter than unified addressing
  FAILS(cudaMemcpy(h, d0, sizeof h, cudaMemcpyDeviceToHost), cudaErrorInvalidValue,
        "memory of device 0, not of device 1");
  CU(cudaMemcpyPeer(d0, 0, d1, 1, sizeof h));
  FAILS(cudaMemcpyPeer(d0, 1, d1, 1, sizeof h), cudaErrorInvalidValue, "cudaMemcpyPeer");
  CU(cudaSetDevice(0));
  CU(cudaMemcpy(h, d0, sizeof h, cudaMemcpyDeviceToHost));
  for (int i = 0; i < 64; i++) {
    cr_assert_eq(h[i], 5.0f);
  }
  // a sticky error on device 0 leaves device 1 alone
  FAILS(st_write_past(d0, 64), cudaErrorIllegalAddress, NULL);
  CU(cudaSetDevice(1));
  CU(cudaMemcpy(h, d1, sizeof h, cudaMemcpyDeviceToHost));
  vt_emu_reset();
}

Test(emu_devices, nccl_broadcast) {
  int version = 0;
  cr_assert_eq(ncclGetVersion(&version), ncclSuccess);
  cr_assert_eq(version, NCCL_VERSION_CODE);
  cr_assert_str_eq(ncclGetErrorString(ncclInvalidUsage),
                   "invalid usage (run with NCCL_DEBUG=WARN for details)");
  ncclComm_t comms[2];
  cr_assert_eq(ncclCommInitAll(comms, 2, NULL), ncclSuccess);
  char *buf[2];
  cudaStream_t s[2];
  for (int r = 0; r < 2; r++) {
    CU(cudaSetDevice(r));
    buf[r] = dalloc(1000);
    CU(cudaStreamCreate(&s[r]));
  }
  char h[1000];
  for (int i = 0; i < 1000; i++) {
    h[i] = (char)(i * 7);
  }
  CU(cudaSetDevice(0));
  CU(cudaMemcpy(buf[0], h, 1000, cudaMemcpyHostToDevice));
  cr_assert_eq(ncclGroupStart(), ncclSuccess);
  for (int r = 0; r < 2; r++) {
    cr_assert_eq(ncclBroadcast(buf[0], buf[r], 1000, ncclChar, 0, comms[r], s[r]), ncclSuccess);
  }
  cr_assert_eq(ncclGroupEnd(), ncclSuccess);
  char got[1000];
  CU(cudaSetDevice(1));
  CU(cudaMemcpy(got, buf[1], 1000, cudaMemcpyDeviceToHost));
  cr_assert(memcmp(got, h, 1000) == 0, "device 1 has device 0's bytes");
  // the receive buffer must be memory of the rank's device
  cr_assert_eq(ncclBroadcast(buf[0], buf[0], 1000, ncclChar, 0, comms[1], s[1]),
               ncclInvalidArgument);
  vt_emu_stats st;
  vt_emu_stats_get(&st);
  cr_assert_eq(st.collectives, 1);
  for (int r = 0; r < 2; r++) {
    cr_assert_eq(ncclCommDestroy(comms[r]), ncclSuccess);
    CU(cudaSetDevice(r));
    CU(cudaStreamDestroy(s[r]));
    CU(cudaFree(buf[r]));
  }
}

struct worker {
  int device, ok;
};

static void *work(void *arg) {
  struct worker *w = arg;
  w->ok = cudaSetDevice(w->device) == cudaSuccess;
  const int blocks = 8, threads = 256, n = blocks * threads;
  float *h = malloc(n * 4), got[8];
  float *din = NULL, *dout = NULL;
  int *dshared = NULL, hs[50];
  w->ok = w->ok && cudaMalloc((void **)&din, n * 4) == cudaSuccess &&
          cudaMalloc((void **)&dout, blocks * 4) == cudaSuccess &&
          cudaMalloc((void **)&dshared, sizeof hs) == cudaSuccess;
  for (int it = 0; it < 40 && w->ok; it++) {
    float want[8] = {0};
    for (int i = 0; i < n; i++) {
      h[i] = (float)((i * 31 + it * 7 + w->device * 13) % 101);
      want[i / threads] += h[i];
    }
    w->ok = cudaMemcpy(din, h, n * 4, cudaMemcpyHostToDevice) == cudaSuccess &&
            st_reduce(dout, din, blocks, threads, 0) == cudaSuccess &&
            cudaMemcpy(got, dout, sizeof got, cudaMemcpyDeviceToHost) == cudaSuccess &&
            st_static_shared(dshared, 50) == cudaSuccess &&
            cudaMemcpy(hs, dshared, sizeof hs, cudaMemcpyDeviceToHost) == cudaSuccess;
    for (int b = 0; b < blocks && w->ok; b++) {
      w->ok = got[b] == want[b];
    }
    for (int b = 0; b < 50 && w->ok; b++) {
      w->ok = hs[b] == b;
    }
  }
  w->ok = w->ok && cudaFree(din) == cudaSuccess && cudaFree(dout) == cudaSuccess &&
          cudaFree(dshared) == cudaSuccess;
  free(h);
  return NULL;
}

Test(emu_devices, two_host_threads_at_once) {
  pthread_t t[2];
  struct worker w[2] = {{0, 0}, {1, 0}};
  for (int i = 0; i < 2; i++) {
    cr_assert_eq(pthread_create(&t[i], NULL, work, &w[i]), 0);
  }
  for (int i = 0; i < 2; i++) {
    pthread_join(t[i], NULL);
    cr_assert(w[i].ok, "host thread %d on device %d: %s", i, w[i].device,
              vt_emu_last_diagnostic());
  }
}

struct rank_arg {
  ncclComm_t comm;
  char *buf;
  ncclResult_t r;
};

static void *broadcast_rank(void *arg) {
  struct rank_arg *a = arg;
  int dev = -1;
  if (ncclCommCuDevice(a->comm, &dev) != ncclSuccess || cudaSetDevice(dev) != cudaSuccess) {
    a->r = ncclInternalError;
    return NULL;
  }
  a->r = ncclBroadcast(a->buf, a->buf, 256, ncclUint8, 1, a->comm, NULL); // outside a group
  return NULL;
}

/* one host thread per rank, no group: each call returns once every rank has made it */
Test(emu_devices, nccl_one_thread_per_rank) {
  ncclComm_t comms[2];
  const int devs[2] = {1, 0}; // rank 0 on device 1, rank 1 on device 0
  cr_assert_eq(ncclCommInitAll(comms, 2, devs), ncclSuccess);
  struct rank_arg args[2];
  unsigned char h[256];
  for (int r = 0; r < 2; r++) {
    CU(cudaSetDevice(devs[r]));
    args[r] = (struct rank_arg){comms[r], dalloc(256), ncclSuccess};
    memset(h, r == 1 ? 0x5A : 0, sizeof h);
    CU(cudaMemcpy(args[r].buf, h, sizeof h, cudaMemcpyHostToDevice));
  }
  pthread_t t[2];
  for (int r = 0; r < 2; r++) {
    cr_assert_eq(pthread_create(&t[r], NULL, broadcast_rank, &args[r]), 0);
  }
  for (int r = 0; r < 2; r++) {
    pthread_join(t[r], NULL);
    cr_assert_eq(args[r].r, ncclSuccess, "rank %d: %s", r, ncclGetErrorString(args[r].r));
  }
  CU(cudaSetDevice(devs[0]));
  CU(cudaMemcpy(h, args[0].buf, sizeof h, cudaMemcpyDeviceToHost));
  for (int i = 0; i < 256; i++) {
    cr_assert_eq(h[i], 0x5A, "rank 0 received root 1's bytes");
  }
  for (int r = 0; r < 2; r++) {
    cr_assert_eq(ncclCommDestroy(comms[r]), ncclSuccess);
  }
}

Test(emu_devices, no_device) {
  setenv("VT_EMU_DEVICES", "0", 1); // read on first use: this test's process has not used it
  int n = -1;
  cr_assert_eq(cudaGetDeviceCount(&n), cudaErrorNoDevice);
  cr_assert_eq(n, 0);
  void *p = NULL;
  cr_assert_eq(cudaMalloc(&p, 16), cudaErrorNoDevice);
}

/* ---- cuBLAS ------------------------------------------------------------------------------- */

/* C (m x n, ld ldc) = alpha op(A) op(B) + beta C, column-major, in double */
static void gemm_ref(int ta, int tb, int m, int n, int k, float alpha, const float *A, int lda,
                     const float *B, int ldb, float beta, float *C, int ldc) {
  for (int j = 0; j < n; j++) {
    for (int i = 0; i < m; i++) {
      double s = 0.0;
      for (int p = 0; p < k; p++) {
        const double a = ta ? A[(size_t)i * lda + p] : A[(size_t)p * lda + i];
        const double b = tb ? B[(size_t)p * ldb + j] : B[(size_t)j * ldb + p];
        s += a * b;
      }
      float *c = &C[(size_t)j * ldc + i];
      *c = (float)(alpha * s + (beta == 0.0f ? 0.0 : (double)beta * *c));
    }
  }
}

Test(emu_cublas, sgemm_against_a_loop) {
  cublasHandle_t hd;
  cr_assert_eq(cublasCreate(&hd), CUBLAS_STATUS_SUCCESS);
  cr_assert_eq(cublasSetMathMode(hd, CUBLAS_DEFAULT_MATH), CUBLAS_STATUS_SUCCESS);
  static const int shapes[][3] = {{5, 7, 3}, {17, 1, 33}, {1, 1, 1}, {64, 48, 100}, {3, 4, 0}};
  static const cublasOperation_t ops[2] = {CUBLAS_OP_N, CUBLAS_OP_T};
  for (int s = 0; s < 5; s++) {
    for (int oa = 0; oa < 2; oa++) {
      for (int ob = 0; ob < 2; ob++) {
        for (int pad = 0; pad <= 3; pad += 3) {
          const int m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
          const int ra = oa ? k : m, ca = oa ? m : k, rb = ob ? n : k, cb = ob ? k : n;
          const int lda = (ra > 1 ? ra : 1) + pad, ldb = (rb > 1 ? rb : 1) + pad, ldc = m + pad;
          const size_t na = (size_t)lda * (ca > 0 ? ca : 1), nb = (size_t)ldb * (cb > 0 ? cb : 1);
          const size_t nc = (size_t)ldc * n;
          float *A = malloc(na * 4), *B = malloc(nb * 4), *C = malloc(nc * 4), *R = malloc(nc * 4);
          for (size_t i = 0; i < na; i++) A[i] = (float)(rand_int(200) - 100) / 50.0f;
          for (size_t i = 0; i < nb; i++) B[i] = (float)(rand_int(200) - 100) / 50.0f;
          for (size_t i = 0; i < nc; i++) C[i] = (float)(rand_int(200) - 100) / 50.0f;
          const float alpha = 1.5f, beta = pad ? 0.5f : 0.0f;
          if (beta == 0.0f) {
            for (size_t i = 0; i < nc; i++) C[i] = NAN; // beta 0 never reads C
          }
          memcpy(R, C, nc * 4);
          float *dA = dalloc(na * 4), *dB = dalloc(nb * 4), *dC = dalloc(nc * 4);
          CU(cudaMemcpy(dA, A, na * 4, cudaMemcpyHostToDevice));
          CU(cudaMemcpy(dB, B, nb * 4, cudaMemcpyHostToDevice));
          CU(cudaMemcpy(dC, C, nc * 4, cudaMemcpyHostToDevice));
          cr_assert_eq(cublasSgemm(hd, ops[oa], ops[ob], m, n, k, &alpha, dA, lda, dB, ldb, &beta,
                                   dC, ldc),
                       CUBLAS_STATUS_SUCCESS);
          CU(cudaMemcpy(C, dC, nc * 4, cudaMemcpyDeviceToHost));
          gemm_ref(oa, ob, m, n, k, alpha, A, lda, B, ldb, beta, R, ldc);
          for (int j = 0; j < n; j++) {
            for (int i = 0; i < ldc; i++) {
              const size_t x = (size_t)j * ldc + i;
              if (i >= m) { // padding rows are left alone
                cr_assert(memcmp(&C[x], &R[x], 4) == 0, "padding overwritten");
                continue;
              }
              cr_assert(fabsf(C[x] - R[x]) <= 1e-4f * (1.0f + fabsf(R[x])),
                        "shape %d op %d%d pad %d: C[%d,%d] = %g, want %g", s, oa, ob, pad, i, j,
                        C[x], R[x]);
            }
          }
          CU(cudaFree(dA));
          CU(cudaFree(dB));
          CU(cudaFree(dC));
          free(A), free(B), free(C), free(R);
        }
      }
    }
  }
  // argument checks as cuBLAS's
  const float one = 1.0f;
  float *d = dalloc(64 * 4);
  cr_assert_eq(cublasSgemm(hd, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, d, 3, d, 4, &one, d, 4),
               CUBLAS_STATUS_INVALID_VALUE, "lda < m");
  cr_assert_eq(cublasSgemm(hd, CUBLAS_OP_N, CUBLAS_OP_N, -1, 4, 4, &one, d, 4, d, 4, &one, d, 4),
               CUBLAS_STATUS_INVALID_VALUE);
  cr_assert_str_eq(cublasGetStatusString(CUBLAS_STATUS_INVALID_VALUE),
                   "an unsupported value or parameter was passed to the function");
  // a matrix running past its allocation: an illegal address, as a kernel would get
  cr_assert_eq(cublasSgemm(hd, CUBLAS_OP_N, CUBLAS_OP_N, 8, 8, 8, &one, d, 8, d, 8, &one, d, 8),
               CUBLAS_STATUS_SUCCESS, "64 floats exactly");
  cr_assert_eq(cublasSgemm(hd, CUBLAS_OP_N, CUBLAS_OP_N, 8, 8, 8, &one, d, 9, d, 8, &one, d, 8),
               CUBLAS_STATUS_EXECUTION_FAILED, "A spans 7 * 9 + 8 floats");
  cr_assert(strstr(vt_emu_last_diagnostic(), "matrix A") != NULL, "%s", vt_emu_last_diagnostic());
  expect_sticky(cudaErrorIllegalAddress);
  cr_assert_eq(cublasDestroy(hd), CUBLAS_STATUS_SUCCESS);
}

Test(emu_cublas, recorded_under_capture) {
  cublasHandle_t hd;
  cudaStream_t s;
  cr_assert_eq(cublasCreate(&hd), CUBLAS_STATUS_SUCCESS);
  CU(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cr_assert_eq(cublasSetStream(hd, s), CUBLAS_STATUS_SUCCESS);
  float A[4] = {1, 2, 3, 4}, B[4] = {5, 6, 7, 8}, C[4] = {0};
  float *dA = dalloc(sizeof A), *dB = dalloc(sizeof B), *dC = dalloc(sizeof C);
  CU(cudaMemcpy(dA, A, sizeof A, cudaMemcpyHostToDevice));
  CU(cudaMemcpy(dB, B, sizeof B, cudaMemcpyHostToDevice));
  CU(cudaMemset(dC, 0, sizeof C));
  const float one = 1.0f, zero = 0.0f;
  vt_emu_stats_reset();
  CU(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  cr_assert_eq(cublasSgemm(hd, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 2, &one, dA, 2, dB, 2, &zero, dC, 2),
               CUBLAS_STATUS_SUCCESS);
  cudaGraph_t g;
  CU(cudaStreamEndCapture(s, &g));
  vt_emu_stats st;
  vt_emu_stats_get(&st);
  cr_assert_eq(st.gemms, 0, "recorded, not run");
  cudaGraphExec_t x;
  CU(cudaGraphInstantiate(&x, g, 0));
  CU(cudaGraphLaunch(x, s));
  CU(cudaMemcpy(C, dC, sizeof C, cudaMemcpyDeviceToHost));
  // column-major: C = A B = [1 3; 2 4] [5 7; 6 8] = [23 31; 34 46]
  cr_assert(C[0] == 23.0f && C[1] == 34.0f && C[2] == 31.0f && C[3] == 46.0f,
            "%g %g %g %g", C[0], C[1], C[2], C[3]);
  vt_emu_stats_get(&st);
  cr_assert_eq(st.gemms, 1);
  CU(cudaGraphExecDestroy(x));
  CU(cudaGraphDestroy(g));
  CU(cudaStreamDestroy(s));
  cr_assert_eq(cublasDestroy(hd), CUBLAS_STATUS_SUCCESS);
}

Test(emu_cublas, strided_batched) {
  cublasHandle_t hd;
  cr_assert_eq(cublasCreate(&hd), CUBLAS_STATUS_SUCCESS);
  const int m = 6, n = 5, k = 4, batch = 3;
  float A[3 * 24], B[3 * 20], C[3 * 30], R[3 * 30];
  for (int i = 0; i < 3 * 24; i++) A[i] = (float)(rand_int(20) - 10);
  for (int i = 0; i < 3 * 20; i++) B[i] = (float)(rand_int(20) - 10);
  for (int i = 0; i < 3 * 30; i++) C[i] = R[i] = (float)(rand_int(20) - 10);
  float *dA = dalloc(sizeof A), *dB = dalloc(sizeof B), *dC = dalloc(sizeof C);
  CU(cudaMemcpy(dA, A, sizeof A, cudaMemcpyHostToDevice));
  CU(cudaMemcpy(dB, B, sizeof B, cudaMemcpyHostToDevice));
  CU(cudaMemcpy(dC, C, sizeof C, cudaMemcpyHostToDevice));
  const float alpha = 1.0f, beta = 2.0f;
  cr_assert_eq(cublasSgemmStridedBatched(hd, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &alpha, dA, m, 24,
                                         dB, k, 20, &beta, dC, m, 30, batch),
               CUBLAS_STATUS_SUCCESS);
  CU(cudaMemcpy(C, dC, sizeof C, cudaMemcpyDeviceToHost));
  for (int b = 0; b < batch; b++) {
    gemm_ref(0, 0, m, n, k, alpha, A + 24 * b, m, B + 20 * b, k, beta, R + 30 * b, m);
  }
  for (int i = 0; i < 3 * 30; i++) {
    cr_assert_eq(C[i], R[i], "[%d]: %g, want %g", i, C[i], R[i]);
  }
  cr_assert_eq(cublasDestroy(hd), CUBLAS_STATUS_SUCCESS);
}

/* ---- the order API and the switch cost ----------------------------------------------------- */

Test(emu_order, set_and_get) {
  uint64_t seed = 0;
  vt_emu_set_order(VT_EMU_REVERSE, 0);
  cr_assert_eq(vt_emu_get_order(NULL), VT_EMU_REVERSE);
  vt_emu_set_order(VT_EMU_SHUFFLE, 42);
  cr_assert_eq(vt_emu_get_order(&seed), VT_EMU_SHUFFLE);
  cr_assert_eq(seed, 42);
}

Test(emu_order, from_the_environment) {
  // read on first use: this test's process has not used the emulator yet
  setenv("VT_EMU_ORDER", "shuffle:99", 1);
  setenv("VT_EMU_DROP_BARRIER", "tests/cuda_emu/no_such_file.cu:12,selftest_kernels.cu:1", 1);
  uint64_t seed = 0;
  cr_assert_eq(vt_emu_get_order(&seed), VT_EMU_SHUFFLE);
  cr_assert_eq(seed, 99);
  cr_assert(reduce_ok(2, 256, 0, 0), "no barrier of the reduction was named");
}

Test(emu_perf, fiber_switch_cost) {
  for (int o = 0; o < 3; o++) {
    vt_emu_set_order(orders[o], 1);
    vt_emu_stats_reset();
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CU(st_barriers(4, 1024, 250));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    vt_emu_stats st;
    vt_emu_stats_get(&st);
    const double ns = (double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec);
    cr_log_info("%s order: %llu fiber switches in %.1f ms, %.1f ns each (barrier bookkeeping "
                "included)", order_names[o], (unsigned long long)st.switches, ns / 1e6,
                ns / (double)st.switches);
    cr_assert_geq(st.switches, 4u * 1024 * 251);
  }
}
