/* vitrine kernels on CUDA: the ops of kernels/ops.h on the device.
 *
 * Every op here has the CPU op's name with a `_cuda` suffix, the CPU op's arguments in the same
 * order, and a stream (a cudaStream_t passed as void *, NULL = the default stream) at the end.
 * The CPU ops are the specification (kernels/ops.h and the files of kernels/cpu/): same
 * shapes, same semantics, floats within ~1e-5 relative, ids, parents and orders exactly equal.
 * Differences from the CPU versions, all on purpose:
 *   - every array argument is a DEVICE pointer, except where an entry says otherwise (the table of
 *     L code-embedding pointers of vt_event_embed_cuda lives on the host);
 *   - ops are asynchronous on `stream`: they enqueue work and return; results are ready after
 *     vt_cuda_sync(stream) (or any later stream-ordered operation);
 *   - every op returns an int: >= 0 on success, or a negative VT_CUDA_E* code; a bad argument or
 *     a CUDA / cuBLAS error never aborts, and vt_cuda_last_error() (per thread) then says why;
 *   - counts that depend on device data stay on the device (the decode ops of kernels/decode.h
 *     read and write them there), so no op waits for the host;
 *   - scratch sizes differ where the device algorithm differs (vt_topk_cuda, the page step).
 * This header is plain C11 with no CUDA types, so host code includes it without the toolkit; the
 * functions exist only when the build defines VITRINE_HAVE_CUDA (cmake/cuda.cmake).
 */
#ifndef VITRINE_KERNELS_OPS_CUDA_H
#define VITRINE_KERNELS_OPS_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/decode.h"
#include "kernels/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes; the values agree with engine/status.h where the meanings agree. */
enum {
  VT_CUDA_OK = 0,
  VT_CUDA_EINVAL = -3, /* a bad argument (shape, NULL pointer, unsupported size) */
  VT_CUDA_ENOMEM = -4, /* a device allocation failed */
  VT_CUDA_EDEVICE = -6 /* the CUDA runtime or cuBLAS reported an error (no device, bad launch) */
};

#define VT_CUDA_MAX_LEVELS 16 /* the most code levels L vt_event_embed_cuda accepts */

/* ---- runtime helpers -------------------------------------------------------------------- */

/* The number of usable CUDA devices: 0 when there is no driver or no device (never an error). */
int vt_cuda_device_count(void);

/* Device memory of `bytes` bytes, or NULL (the reason in vt_cuda_last_error()). */
void *vt_cuda_malloc(size_t bytes);

/* Frees what vt_cuda_malloc returned; NULL is a no-op. */
void vt_cuda_free(void *p);

/* Synchronous copies of `bytes` bytes, host to device and device to host; 0 or VT_CUDA_EDEVICE. */
int vt_cuda_memcpy_h2d(void *dst, const void *src, size_t bytes);
int vt_cuda_memcpy_d2h(void *dst, const void *src, size_t bytes);

/* A copy of `bytes` bytes from device to device, enqueued on `stream` (NULL: the default stream)
 * and asynchronous like the ops (a device copy needs no host wait); the regions must not overlap.
 * 0, VT_CUDA_EINVAL (a NULL pointer) or VT_CUDA_EDEVICE; 0 bytes is a no-op. */
int vt_cuda_memcpy_d2d(void *dst, const void *src, size_t bytes, void *stream);

/* Waits for everything enqueued on `stream` (NULL: the default stream); 0 or VT_CUDA_EDEVICE
 * (an asynchronous kernel error surfaces here). */
int vt_cuda_sync(void *stream);

/* Makes `device` the calling thread's current device (every later call of the thread uses it). */
int vt_cuda_set_device(int device);

/* A stream of the current device (non-blocking with respect to the legacy default stream), and
 * its end; 0 or VT_CUDA_EDEVICE. */
int vt_cuda_stream_create(void **stream);
void vt_cuda_stream_destroy(void *stream);

/* Page-locked host memory (copies from and to it are asynchronous), or NULL; and its release. */
void *vt_cuda_host_alloc(size_t bytes);
void vt_cuda_host_free(void *p);

/* Copies and a zero fill enqueued on `stream`: host to device, device to host, device bytes to
 * zero. With page-locked host memory the host is not blocked; wait with vt_cuda_sync. */
int vt_cuda_memcpy_h2d_async(void *dst, const void *src, size_t bytes, void *stream);
int vt_cuda_memcpy_d2h_async(void *dst, const void *src, size_t bytes, void *stream);
int vt_cuda_memset0_async(void *dst, size_t bytes, void *stream);

/* CUDA graphs: between capture_begin and capture_end, work enqueued on `stream` by this thread is
 * recorded instead of run; capture_end instantiates it into *graph, replay runs it again on
 * `stream`. A synchronising call while capturing fails (and ends the capture). */
int vt_cuda_capture_begin(void *stream);
int vt_cuda_capture_end(void *stream, void **graph);
int vt_cuda_graph_replay(void *graph, void *stream);
void vt_cuda_graph_free(void *graph);

/* The same `bytes` bytes from bufs[0] (on devices[0]) into bufs[1 .. n-1] (on devices[1 ..]):
 * NCCL's broadcast when libnccl.so.2 can be loaded (dlopen: no link dependency), else device to
 * device peer copies. Synchronous. *how, if not NULL, says which ("nccl" or "peer copies"). */
int vt_cuda_broadcast(const int *devices, void *const *bufs, int n, size_t bytes,
                      const char **how);

/* The message of this thread's last failed vt_*_cuda call ("" if none). */
const char *vt_cuda_last_error(void);

/* ---- ops (kernels/ops.h on the device) --------------------------------------------------- */

/* code_emb: a HOST array of L device pointers, L <= VT_CUDA_MAX_LEVELS; region_emb may be NULL
 * only if no region[n] >= 0. Shared memory (P + 6 + C) * 4 bytes <= 48 KiB. */
int vt_event_embed_cuda(float *out, const int32_t *codes, const int32_t *action,
                        const int32_t *qtok, const float *x, const float *cal,
                        const int32_t *region, const float *const *code_emb,
                        const float *action_emb, const float *region_emb, const float *tok_emb,
                        const float *t2v_w, const float *t2v_b, const float *time_w,
                        const float *time_b, const float *ln_w, const float *ln_b, int N, int C,
                        int L, int MQ, int P, void *stream);

int vt_layernorm_cuda(float *out, const float *inp, const float *w, const float *b, int N, int C,
                      void *stream);

int vt_residual_layernorm_cuda(float *resid, float *out, const float *add, const float *w,
                               const float *b, int N, int C, void *stream);

int vt_rmsnorm_cuda(float *out, const float *inp, const float *w, int N, int C, void *stream);

int vt_add_cuda(float *resid, const float *add, int n, void *stream);

/* cuBLAS SGEMM (FP32 math, no TF32) then one fused bias + GELU pass. Each calling thread gets its
 * own cuBLAS handle (per device), created on first use and kept for the thread's life. */
int vt_matmul_cuda(float *out, const float *inp, const float *W, const float *b, int N, int IN,
                   int OUT, enum vt_act act, void *stream);

/* The attentions (these two and the decoder's of kernels/decode.h): off / qoff / kvoff (B+1,),
 * slots and live counts are read on the device (each ragged group's rows are spread over a number
 * of blocks fixed by B, so no host copy is needed); the time bucket is computed in the kernel from
 * the int64 times, never an N x N tensor. All require C % NH == 0 and (2 C + 35 NH + 32) * 4
 * bytes of shared memory <= 48 KiB (C up to ~5000). */
int vt_attention_cuda(float *out, const float *qkv, const int64_t *ts, const int32_t *off,
                      const float *bias, int B, int C, int NH, void *stream);

int vt_cross_attention_cuda(float *out, const float *q, const float *kv, const int32_t *qoff,
                            const int32_t *kvoff, int B, int C, int NH, void *stream);

int vt_retrieval_scores_cuda(float *out, const float *u, const float *emb, const int32_t *idx,
                             int n, int R, void *stream);

/* Returns k' = min(k, n) (known on the host) or a negative code; the CPU's exact order (descending
 * score, NaN last, ties to the lower id). scratch (device): n ints, as on the CPU (used when n is
 * large enough for a two-stage selection). Selection costs O(k) block-wide passes, meant for
 * k up to about a thousand. */
int vt_topk_cuda(int32_t *out_id, float *out_score, const float *score, const int32_t *id, int n,
                 int k, int32_t *scratch, void *stream);

/* ---- the cascade's steps (kernels/decode.h on the device) ---------------------------------- */
/* All state pointers (inside the structs too) are device pointers; the live counts are read on
 * the device, so these ops never wait for the host and launch over their capacities. */
int vt_repeat_rows_cuda(float *out, const float *src, int R, int times, int C, void *stream);

int vt_mean_rows_cuda(float *out, const float *inp, int B, int K, int C, void *stream);

int vt_beam_feed_cuda(float *Y, vt_beam_rows rows, const int32_t *slot_base,
                      const float *tok_emb, const float *pos_emb, int cap, int C, int maxT,
                      void *stream);

int vt_kv_append_cuda(float *Q, float *kpool, float *vpool, const float *QKV, vt_beam_rows rows,
                      int cap, int C, int maxT, void *stream);

int vt_dec_self_attention_cuda(float *out, const float *q, const float *kpool,
                               const float *vpool, vt_beam_rows rows, int cap, int maxT, int C,
                               int NH, void *stream);

int vt_dec_cross_attention_cuda(float *out, const float *q, const float *xkv, vt_beam_rows rows,
                                int cap, int NQ, int C, int NH, void *stream);

/* scratch: vt_beam_select_scratch(cap, max_cands) bytes, max_cands the most children the live
 * rows of one step can have together (the rows' offsets, then their candidates' scores). */
int vt_beam_select_cuda(vt_beam_picks picks, const float *h, vt_beam_rows rows, vt_beam_groups g,
                        int G, int cap, int wmax, const float *tok_emb, vt_trie_csr trie, int C,
                        void *scratch, void *stream);

int vt_beam_advance_cuda(vt_beam_rows next, vt_beam_groups g, int32_t *slot_base,
                         vt_beam_picks picks, vt_beam_rows cur, int G, int wmax, int maxT,
                         int max_dec_len, void *stream);

int vt_beam_themes_to_keywords_cuda(vt_storefront *out, vt_beam_rows rows2, vt_beam_groups g2,
                                    vt_beam_groups g1, const vt_page_req *req, vt_theme_rules tr,
                                    int B, int G2, int maxT, int sep, void *stream);

/* scratch: vt_page_scratch_cuda(P, max_cands, B) bytes, zero-filled before the first call and
 * left zero-filled by every call that succeeds (one set of per-product marks per block). */
size_t vt_page_scratch_cuda(int P, int max_cands, int B);
int vt_page_assemble_cuda(vt_storefront *out, const vt_page_req *req, const int32_t *hist,
                          const int32_t *excl, const float *user, vt_beam_groups g2,
                          vt_shelf shelf, vt_ranker rk, vt_ranker_model lm, int B,
                          int max_cands, void *scratch, void *stream);

#ifdef __cplusplus
}
#endif

#endif
