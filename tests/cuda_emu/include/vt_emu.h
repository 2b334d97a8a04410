/* The vitrine CUDA emulator's own interface for tests (docs/CUDA.md): the thread order between
 * barriers, the last diagnostic, operation counters, a switch that removes one barrier, and a
 * reset of the sticky errors. C11 or C++; link vitrine_cuda_emu.
 *
 * Environment, read on first use (the calls below override it):
 *   VT_EMU_ORDER=forward|reverse|shuffle[:seed]  the order between barriers (default shuffle:1)
 *   VT_EMU_DEVICES=n                             emulated devices (default 2; 0 = no device)
 *   VT_EMU_DROP_BARRIER=file:line                one __syncthreads site made a no-op
 *   VT_EMU_STACK_KIB=n                           fiber stack size (default 64, 256 under ASan)
 *   VT_EMU_DEVICE_MEM_MIB=n                      each device's memory (default 80 GiB)
 *   VT_EMU_FAIL_KERNEL=name[:skip[:count]]       launches of a kernel whose name contains `name`
 *                                                fail (see vt_emu_fail_kernel)
 */
#ifndef VT_EMU_H
#define VT_EMU_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The order in which the runnable threads of a block run between two barriers. */
enum vt_emu_order {
  VT_EMU_FORWARD = 0, /* ascending thread index */
  VT_EMU_REVERSE = 1, /* descending thread index; blocks also in descending order */
  VT_EMU_SHUFFLE = 2  /* a seeded random order, drawn again at every barrier (the default) */
};

/* Sets the order for every later launch on every host thread. seed is used by VT_EMU_SHUFFLE. */
void vt_emu_set_order(int order, uint64_t seed);

/* The current order; *seed (may be NULL) receives the shuffle seed. */
int vt_emu_get_order(uint64_t *seed);

/* Clears the sticky error of every device and this thread's last error and diagnostic, as a
 * fresh process would have them. Allocations, streams and events stay valid. */
void vt_emu_reset(void);

/* The last "vt_emu: ..." diagnostic printed on this host thread ("" if none). */
const char *vt_emu_last_diagnostic(void);

/* Operations since the start or the last vt_emu_stats_reset, over all host threads. A kernel,
 * copy or memset replayed by cudaGraphLaunch counts as what it is and as a graph node; work
 * recorded during stream capture counts only when it runs. */
typedef struct vt_emu_stats {
  uint64_t launches;       /* kernels run */
  uint64_t blocks;         /* thread blocks run */
  uint64_t switches;       /* fiber context switches */
  uint64_t h2d, d2h, d2d;  /* copies by direction (cudaMemcpy*, cudaMemcpyPeer* are d2d) */
  uint64_t h2h;            /* host-to-host cudaMemcpy* */
  uint64_t bytes_h2d, bytes_d2h;
  uint64_t memsets;        /* cudaMemset, cudaMemsetAsync */
  uint64_t syncs;          /* stream, device and event synchronizations, every cudaMemcpy that
                              is not device to device, and cudaMemcpyAsync into pageable host
                              memory (which CUDA also makes synchronous) */
  uint64_t graph_launches; /* cudaGraphLaunch */
  uint64_t graph_nodes;    /* nodes run by cudaGraphLaunch */
  uint64_t gemms;          /* cuBLAS GEMMs run (a strided batch counts once) */
  uint64_t collectives;    /* NCCL collectives completed (over all ranks: once) */
  uint64_t mallocs, frees; /* cudaMalloc, cudaFree (device memory) */
} vt_emu_stats;

void vt_emu_stats_get(vt_emu_stats *out);
void vt_emu_stats_reset(void);

/* Makes the __syncthreads() at a site a no-op: the site whose file name ends with file_suffix
 * (a path suffix such as "attention.cu") and whose line is `line`. Sites add up; a NULL
 * file_suffix clears them all. */
void vt_emu_drop_barrier(const char *file_suffix, int line);

/* The distinct __syncthreads() sites completed (or dropped) so far, as "path:line" with the
 * path from "kernels/" or "tests/" on (else the base name), in first-hit order. Writes at most
 * max of them and returns how many there are. */
int vt_emu_barrier_sites(char (*out)[128], int max);

/* Forgets the sites vt_emu_barrier_sites lists. */
void vt_emu_clear_barrier_sites(void);

/* Fault injection: after `skip` launches of kernels whose name contains name_part, the next
 * `count` such launches fail as a launch the hardware refuses would (cudaErrorLaunchOutOfResources
 * from cudaGetLastError, not sticky, the kernel not run; a "vt_emu:" diagnostic names it), so
 * tests can show that a failed op fails its batch and the next one is served. NULL or count 0:
 * none. Overrides VT_EMU_FAIL_KERNEL. */
void vt_emu_fail_kernel(const char *name_part, int skip, int count);

#ifdef __cplusplus
}
#endif

#endif
