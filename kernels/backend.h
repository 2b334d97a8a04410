/* A compute backend: a table of the ops of kernels/ops.h plus the memory operations an engine
 * needs to place its buffers. The engine calls kernels only through this table (ggml's design),
 * so a device backend plugs in without touching the cascade's code.
 *
 * The CPU backend is always present. A device backend registers itself when the build has it
 * (VITRINE_CUDA); vt_backend_find() answers NULL for a name that is not built in, and callers
 * fall back to the CPU with a log line. Every op keeps the CPU signature; the backend's `ctx`
 * (a device and stream, for CUDA) is bound in the table, not passed per call. */
#ifndef VITRINE_KERNELS_BACKEND_H
#define VITRINE_KERNELS_BACKEND_H

#include <stddef.h>

#include "kernels/ops.h"

typedef struct vt_backend {
  const char *name; /* "cpu", "cuda:0", ... */

  /* memory: buffers the ops read and write live where the backend computes */
  void *(*alloc)(const struct vt_backend *be, size_t bytes);
  void (*free)(const struct vt_backend *be, void *p);
  int (*upload)(const struct vt_backend *be, void *dst, const void *src, size_t bytes);
  int (*download)(const struct vt_backend *be, void *dst, const void *src, size_t bytes);
  int (*sync)(const struct vt_backend *be);

  /* ops: as in kernels/ops.h */
  void (*event_embed)(float *out, const int32_t *codes, const int32_t *action,
                      const int32_t *qtok, const float *x, const float *cal,
                      const int32_t *region, const float *const *code_emb,
                      const float *action_emb, const float *region_emb, const float *tok_emb,
                      const float *t2v_w, const float *t2v_b, const float *time_w,
                      const float *time_b, const float *ln_w, const float *ln_b, int N, int C,
                      int L, int MQ, int P);
  void (*layernorm)(float *out, const float *inp, const float *w, const float *b, int N, int C);
  void (*residual_layernorm)(float *resid, float *out, const float *add, const float *w,
                             const float *b, int N, int C);
  void (*rmsnorm)(float *out, const float *inp, const float *w, int N, int C);
  void (*add)(float *resid, const float *add, int n);
  void (*matmul)(float *out, const float *inp, const float *W, const float *b, int N, int IN,
                 int OUT, enum vt_act act);
  void (*attention)(float *out, const float *qkv, const int64_t *ts, const int32_t *off,
                    const float *bias, int B, int C, int NH);
  void (*cross_attention)(float *out, const float *q, const float *kv, const int32_t *qoff,
                          const int32_t *kvoff, int B, int C, int NH);
  void (*decoder_attention)(float *out, const float *q, const float *kpool, const float *vpool,
                            const int32_t *slot, int nrows, int T, int maxT, int C, int NH);
  int (*beam_step)(int32_t *out_parent, int32_t *out_token, int32_t *out_node, float *out_score,
                   int32_t *out_phrase, const float *h, const int32_t *node, const float *score,
                   int nbeams, const float *tok_emb, const int32_t *indptr, const int32_t *token,
                   const int32_t *child, const int32_t *phrase, int C, int width, float *scratch);
  void (*retrieval_scores)(float *out, const float *u, const float *emb, const int32_t *idx,
                           int n, int R);
  int (*topk)(int32_t *out_id, float *out_score, const float *score, const int32_t *id, int n,
              int k, int32_t *scratch);

  void *ctx; /* the backend's own state (device, stream, handles) */
} vt_backend;

/* The CPU backend: plain C with OpenBLAS; host memory. */
const vt_backend *vt_backend_cpu(void);

/* A backend by name ("cpu"; "cuda" or "cuda:0" when built with VITRINE_CUDA and a device
 * answers), or NULL. */
const vt_backend *vt_backend_find(const char *name);

#ifdef VITRINE_HAVE_CUDA
/* The CUDA backend on device 0's default stream, or NULL when no device answers. */
const vt_backend *vt_backend_cuda(void);
#endif

#endif
