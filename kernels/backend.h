/* A compute backend: the ops of kernels/ops.h and kernels/decode.h plus the memory operations an
 * engine needs to place its buffers where the backend computes (ggml's design: allocate, upload,
 * download, ops on buffers). The engine calls kernels only through this table, so a device
 * backend plugs in without touching the cascade's code.
 *
 * A backend is an instance bound to one place: "cpu" (host memory, the reference kernels) or
 * "cuda:N" (device N, its own stream; built with VITRINE_CUDA). Every op has the CPU function's
 * arguments after the backend, returns 0 or a negative code, and on failure be->error(be) says
 * why (an argument error, a CUDA or cuBLAS status, a launch error): nothing is lost and nothing
 * aborts. Device ops are asynchronous on the backend's stream; download() and sync() wait, and an
 * asynchronous failure surfaces there.
 */
#ifndef VITRINE_KERNELS_BACKEND_H
#define VITRINE_KERNELS_BACKEND_H

#include <stddef.h>

#include "kernels/decode.h"
#include "kernels/ops.h"

typedef struct vt_backend vt_backend;

struct vt_backend {
  char name[16];   /* "cpu", "cuda:0", ... */
  int host_memory; /* 1: buffers are host memory, which the caller may read and write directly */

  /* memory: alloc'd buffers live where the backend computes; host_alloc'd buffers are the host
   * side of uploads and downloads (page-locked on CUDA, so copies are asynchronous) */
  void *(*alloc)(vt_backend *be, size_t bytes);
  void (*free)(vt_backend *be, void *p);
  void *(*host_alloc)(vt_backend *be, size_t bytes);
  void (*host_free)(vt_backend *be, void *p);
  int (*upload)(vt_backend *be, void *dst, const void *src, size_t bytes);
  int (*download)(vt_backend *be, void *dst, const void *src, size_t bytes); /* waits */
  int (*zero)(vt_backend *be, void *dst, size_t bytes);
  int (*copy)(vt_backend *be, void *dst, const void *src, size_t bytes); /* both where be computes */
  int (*sync)(vt_backend *be);
  const char *(*error)(vt_backend *be); /* why the last call on this thread failed */
  void (*close)(vt_backend *be);        /* frees the instance (vt_backend_close) */
  /* the same n-byte buffer of bes[0] copied into bufs[1 ..] of the other backends (same kind):
   * NCCL's broadcast on CUDA where it is available, peer copies otherwise */
  int (*broadcast)(vt_backend *const *bes, void *const *bufs, int n, size_t bytes);

  /* ops: kernels/ops.h */
  int (*event_embed)(vt_backend *be, float *out, const int32_t *codes, const int32_t *action,
                     const int32_t *qtok, const float *x, const float *cal, const int32_t *region,
                     const float *const *code_emb, const float *action_emb,
                     const float *region_emb, const float *tok_emb, const float *t2v_w,
                     const float *t2v_b, const float *time_w, const float *time_b,
                     const float *ln_w, const float *ln_b, int N, int C, int L, int MQ, int P);
  int (*layernorm)(vt_backend *be, float *out, const float *inp, const float *w, const float *b,
                   int N, int C);
  int (*residual_layernorm)(vt_backend *be, float *resid, float *out, const float *add,
                            const float *w, const float *b, int N, int C);
  int (*rmsnorm)(vt_backend *be, float *out, const float *inp, const float *w, int N, int C);
  int (*add)(vt_backend *be, float *resid, const float *add, int n);
  int (*matmul)(vt_backend *be, float *out, const float *inp, const float *W, const float *b,
                int N, int IN, int OUT, enum vt_act act);
  int (*attention)(vt_backend *be, float *out, const float *qkv, const int64_t *ts,
                   const int32_t *off, const float *bias, int B, int C, int NH);
  int (*cross_attention)(vt_backend *be, float *out, const float *q, const float *kv,
                         const int32_t *qoff, const int32_t *kvoff, int B, int C, int NH);
  int (*repeat_rows)(vt_backend *be, float *out, const float *src, int R, int times, int C);
  int (*mean_rows)(vt_backend *be, float *out, const float *inp, int B, int K, int C);

  /* ops: kernels/decode.h */
  int (*beam_feed)(vt_backend *be, float *Y, vt_beam_rows rows, const int32_t *slot_base,
                   const float *tok_emb, const float *pos_emb, int cap, int C, int maxT);
  int (*kv_append)(vt_backend *be, float *Q, float *kpool, float *vpool, const float *QKV,
                   vt_beam_rows rows, int cap, int C, int maxT);
  int (*dec_self_attention)(vt_backend *be, float *out, const float *q, const float *kpool,
                            const float *vpool, vt_beam_rows rows, int cap, int maxT, int C,
                            int NH);
  int (*dec_cross_attention)(vt_backend *be, float *out, const float *q, const float *xkv,
                             vt_beam_rows rows, int cap, int NQ, int C, int NH);
  int (*beam_select)(vt_backend *be, vt_beam_picks picks, const float *h, vt_beam_rows rows,
                     vt_beam_groups g, int G, int cap, int wmax, const float *tok_emb,
                     vt_trie_csr trie, int C, void *scratch);
  int (*beam_advance)(vt_backend *be, vt_beam_rows next, vt_beam_groups g, int32_t *slot_base,
                      vt_beam_picks picks, vt_beam_rows cur, int G, int wmax, int maxT,
                      int max_dec_len);
  int (*themes_to_keywords)(vt_backend *be, vt_storefront *out, vt_beam_rows rows2,
                            vt_beam_groups g2, vt_beam_groups g1, const vt_page_req *req,
                            vt_theme_rules tr, int B, int G2, int maxT, int sep);
  size_t (*page_scratch)(int P, int max_cands, int B);
  int (*page_assemble)(vt_backend *be, vt_storefront *out, const vt_page_req *req,
                       const int32_t *hist, const int32_t *excl, const float *user,
                       vt_beam_groups g2, vt_shelf shelf, vt_ranker rk, vt_ranker_model lm,
                       int B, int max_cands, void *scratch);

  /* CUDA graphs, or NULL where the backend has none: the ops enqueued between capture_begin and
   * capture_end are recorded into *graph instead of run; replay runs them again with the same
   * arguments (the same buffers). */
  int (*capture_begin)(vt_backend *be);
  int (*capture_end)(vt_backend *be, void **graph);
  int (*replay)(vt_backend *be, void *graph);
  void (*graph_free)(vt_backend *be, void *graph);

  void *ctx; /* the backend's own state (device, stream) */
};

/* A backend by name: "cpu", "cuda" (= "cuda:0") or "cuda:N". 0, or VT_BACKEND_EUNKNOWN (a name
 * that is not a backend), VT_BACKEND_ENOCUDA (this binary has no CUDA backend, or device N does not
 * answer), with the reason in err. Close with vt_backend_close. */
enum { VT_BACKEND_EUNKNOWN = -1, VT_BACKEND_ENOCUDA = -2, VT_BACKEND_EFAIL = -3 };
int vt_backend_open(vt_backend **out, const char *name, char *err, size_t errlen);
void vt_backend_close(vt_backend *be);

/* The number of CUDA devices this binary can use: 0 when built without CUDA or none answers
 * (then why, in err). */
int vt_backend_cuda_devices(char *err, size_t errlen);

/* ---- the backends' entry points, for kernels/backend.c: the CPU's (kernels/cpu/backend.c) and
 * CUDA's (kernels/cuda/backend_cuda.c; kernels/nocuda.c in a binary built without CUDA; the test
 * binaries ending in _emu link the CUDA emulator's build of backend_cuda.c instead) ---------- */
int vt__backend_cpu_open(vt_backend **out, char *err, size_t errlen);
int vt__backend_cuda_open(vt_backend **out, int device, char *err, size_t errlen);
int vt__backend_cuda_devices(char *err, size_t errlen);

#endif
