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
 *   - vt_beam_step_cuda cannot return its count (it depends on device data without a sync): it
 *     writes it to a device int32 `out_count` (may be NULL) and returns 0;
 *   - scratch sizes differ where the device algorithm differs (vt_beam_step_cuda, vt_topk_cuda).
 * This header is plain C11 with no CUDA types, so host code includes it without the toolkit; the
 * functions exist only when the build defines VITRINE_HAVE_CUDA (cmake/cuda.cmake).
 */
#ifndef VITRINE_KERNELS_OPS_CUDA_H
#define VITRINE_KERNELS_OPS_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes; the values agree with host/status.h where the meanings agree. */
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

/* The three attentions: off / qoff / kvoff (B+1,) and slot are read on the device (each ragged
 * group's rows are spread over a fixed number of blocks, so no host copy is needed); the time
 * bucket is computed in the kernel from the int64 times, never an N x N tensor. All require
 * C % NH == 0 and (2 C + 35 NH + 32) * 4 bytes of shared memory <= 48 KiB (C up to ~5000);
 * the decoder also 0 <= T < maxT. */
int vt_attention_cuda(float *out, const float *qkv, const int64_t *ts, const int32_t *off,
                      const float *bias, int B, int C, int NH, void *stream);

int vt_cross_attention_cuda(float *out, const float *q, const float *kv, const int32_t *qoff,
                            const int32_t *kvoff, int B, int C, int NH, void *stream);

int vt_decoder_attention_cuda(float *out, const float *q, const float *kpool, const float *vpool,
                              const int32_t *slot, int nrows, int T, int maxT, int C, int NH,
                              void *stream);

/* The whole step runs on the device (no host sync): child counts and offsets, the sparse logits
 * and log-softmax per beam, then the top-`width` selection in the CPU's exact order (descending
 * score, NaN last, ties to the earlier-listed candidate: lower beam, then lower token).
 * out_count (device, may be NULL): receives min(width, total candidates).
 * scratch (device): at least nbeams + 1 + (total children of the live beams) 4-byte elements
 * (nbeams + 1 int offsets, then the candidate scores); nbeams * (max children) + nbeams + 1 is
 * always enough. Returns 0 or a negative code. width <= 0 writes a count of 0. */
int vt_beam_step_cuda(int32_t *out_parent, int32_t *out_token, int32_t *out_node,
                      float *out_score, int32_t *out_phrase, const float *h, const int32_t *node,
                      const float *score, int nbeams, const float *tok_emb, const int32_t *indptr,
                      const int32_t *token, const int32_t *child, const int32_t *phrase, int C,
                      int width, float *scratch, int32_t *out_count, void *stream);

int vt_retrieval_scores_cuda(float *out, const float *u, const float *emb, const int32_t *idx,
                             int n, int R, void *stream);

/* Returns k' = min(k, n) (known on the host) or a negative code; the CPU's exact order (descending
 * score, NaN last, ties to the lower id). scratch (device): n ints, as on the CPU (used when n is
 * large enough for a two-stage selection). Selection costs O(k) block-wide passes, meant for
 * k up to about a thousand. */
int vt_topk_cuda(int32_t *out_id, float *out_score, const float *score, const int32_t *id, int n,
                 int k, int32_t *scratch, void *stream);

#ifdef __cplusplus
}
#endif

#endif
