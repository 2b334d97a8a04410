/* The CUDA backend: kernels/ops_cuda.h behind the vt_backend table, one instance per device with
 * a stream of its own. Every entry makes the instance's device current for the calling thread
 * (cheap when it already is), then enqueues on the instance's stream; download() and sync()
 * wait, and an asynchronous failure surfaces there. Errors keep the CUDA layer's message
 * (vt_cuda_last_error, per thread), which be->error() returns. Plain C over ops_cuda.h: the same
 * file builds against the real runtime (nvcc) and the tests' CUDA emulator. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"
#include "kernels/ops_cuda.h"

typedef struct cuda_ctx {
  int device;
  void *stream;
} cuda_ctx;

#define CTX(be) ((cuda_ctx *)(be)->ctx)
#define ON(be)                                                                                   \
  do {                                                                                           \
    if (vt_cuda_set_device(CTX(be)->device))                                                     \
      return VT_CUDA_EDEVICE;                                                                    \
  } while (0)

static void *cu_alloc(vt_backend *be, size_t bytes) {
  if (vt_cuda_set_device(CTX(be)->device))
    return NULL;
  return vt_cuda_malloc(bytes ? bytes : 1);
}

static void cu_free(vt_backend *be, void *p) {
  if (!vt_cuda_set_device(CTX(be)->device))
    vt_cuda_free(p);
}

static void *cu_host_alloc(vt_backend *be, size_t bytes) {
  if (vt_cuda_set_device(CTX(be)->device))
    return NULL;
  return vt_cuda_host_alloc(bytes);
}

static void cu_host_free(vt_backend *be, void *p) {
  (void)be;
  vt_cuda_host_free(p);
}

static int cu_upload(vt_backend *be, void *dst, const void *src, size_t bytes) {
  ON(be);
  return vt_cuda_memcpy_h2d_async(dst, src, bytes, CTX(be)->stream);
}

static int cu_download(vt_backend *be, void *dst, const void *src, size_t bytes) {
  ON(be);
  int rc = vt_cuda_memcpy_d2h_async(dst, src, bytes, CTX(be)->stream);
  return rc ? rc : vt_cuda_sync(CTX(be)->stream);
}

static int cu_zero(vt_backend *be, void *dst, size_t bytes) {
  ON(be);
  return vt_cuda_memset0_async(dst, bytes, CTX(be)->stream);
}

static int cu_copy(vt_backend *be, void *dst, const void *src, size_t bytes) {
  ON(be);
  return vt_cuda_memcpy_d2d(dst, src, bytes, CTX(be)->stream);
}

static int cu_sync(vt_backend *be) {
  ON(be);
  return vt_cuda_sync(CTX(be)->stream);
}

static const char *cu_error(vt_backend *be) {
  (void)be;
  return vt_cuda_last_error();
}

static int cu_broadcast(vt_backend *const *bes, void *const *bufs, int n, size_t bytes) {
  int devices[64];
  if (n > 64)
    return VT_CUDA_EINVAL;
  for (int i = 0; i < n; i++)
    devices[i] = CTX(bes[i])->device;
  for (int i = 0; i < n; i++) /* everything enqueued before is part of what is copied */
    if (cu_sync(bes[i]))
      return VT_CUDA_EDEVICE;
  return vt_cuda_broadcast(devices, bufs, n, bytes, NULL);
}

static void cu_close(vt_backend *be) {
  if (!vt_cuda_set_device(CTX(be)->device)) {
    (void)vt_cuda_sync(CTX(be)->stream);
    vt_cuda_stream_destroy(CTX(be)->stream);
  }
  free(be->ctx);
  free(be);
}

/* ---- ops ------------------------------------------------------------------------------------- */
static int cu_event_embed(vt_backend *be, float *out, const int32_t *codes, const int32_t *action,
                          const int32_t *qtok, const float *x, const float *cal,
                          const int32_t *region, const float *const *code_emb,
                          const float *action_emb, const float *region_emb, const float *tok_emb,
                          const float *t2v_w, const float *t2v_b, const float *time_w,
                          const float *time_b, const float *ln_w, const float *ln_b, int N, int C,
                          int L, int MQ, int P) {
  ON(be);
  return vt_event_embed_cuda(out, codes, action, qtok, x, cal, region, code_emb, action_emb,
                             region_emb, tok_emb, t2v_w, t2v_b, time_w, time_b, ln_w, ln_b, N, C,
                             L, MQ, P, CTX(be)->stream);
}

static int cu_layernorm(vt_backend *be, float *out, const float *inp, const float *w,
                        const float *b, int N, int C) {
  ON(be);
  return vt_layernorm_cuda(out, inp, w, b, N, C, CTX(be)->stream);
}

static int cu_residual_layernorm(vt_backend *be, float *resid, float *out, const float *add,
                                 const float *w, const float *b, int N, int C) {
  ON(be);
  return vt_residual_layernorm_cuda(resid, out, add, w, b, N, C, CTX(be)->stream);
}

static int cu_rmsnorm(vt_backend *be, float *out, const float *inp, const float *w, int N, int C) {
  ON(be);
  return vt_rmsnorm_cuda(out, inp, w, N, C, CTX(be)->stream);
}

static int cu_add(vt_backend *be, float *resid, const float *add, int n) {
  ON(be);
  return vt_add_cuda(resid, add, n, CTX(be)->stream);
}

static int cu_matmul(vt_backend *be, float *out, const float *inp, const float *W, const float *b,
                     int N, int IN, int OUT, enum vt_act act) {
  ON(be);
  return vt_matmul_cuda(out, inp, W, b, N, IN, OUT, act, CTX(be)->stream);
}

static int cu_attention(vt_backend *be, float *out, const float *qkv, const int64_t *ts,
                        const int32_t *off, const float *bias, int B, int C, int NH) {
  ON(be);
  return vt_attention_cuda(out, qkv, ts, off, bias, B, C, NH, CTX(be)->stream);
}

static int cu_cross_attention(vt_backend *be, float *out, const float *q, const float *kv,
                              const int32_t *qoff, const int32_t *kvoff, int B, int C, int NH) {
  ON(be);
  return vt_cross_attention_cuda(out, q, kv, qoff, kvoff, B, C, NH, CTX(be)->stream);
}

static int cu_repeat_rows(vt_backend *be, float *out, const float *src, int R, int times, int C) {
  ON(be);
  return vt_repeat_rows_cuda(out, src, R, times, C, CTX(be)->stream);
}

static int cu_mean_rows(vt_backend *be, float *out, const float *inp, int B, int K, int C) {
  ON(be);
  return vt_mean_rows_cuda(out, inp, B, K, C, CTX(be)->stream);
}

static int cu_beam_feed(vt_backend *be, float *Y, vt_beam_rows rows, const int32_t *slot_base,
                        const float *tok_emb, const float *pos_emb, int cap, int C, int maxT) {
  ON(be);
  return vt_beam_feed_cuda(Y, rows, slot_base, tok_emb, pos_emb, cap, C, maxT, CTX(be)->stream);
}

static int cu_kv_append(vt_backend *be, float *Q, float *kpool, float *vpool, const float *QKV,
                        vt_beam_rows rows, int cap, int C, int maxT) {
  ON(be);
  return vt_kv_append_cuda(Q, kpool, vpool, QKV, rows, cap, C, maxT, CTX(be)->stream);
}

static int cu_dec_self_attention(vt_backend *be, float *out, const float *q, const float *kpool,
                                 const float *vpool, vt_beam_rows rows, int cap, int maxT, int C,
                                 int NH) {
  ON(be);
  return vt_dec_self_attention_cuda(out, q, kpool, vpool, rows, cap, maxT, C, NH,
                                    CTX(be)->stream);
}

static int cu_dec_cross_attention(vt_backend *be, float *out, const float *q, const float *xkv,
                                  vt_beam_rows rows, int cap, int NQ, int C, int NH) {
  ON(be);
  return vt_dec_cross_attention_cuda(out, q, xkv, rows, cap, NQ, C, NH, CTX(be)->stream);
}

static int cu_beam_select(vt_backend *be, vt_beam_picks picks, const float *h, vt_beam_rows rows,
                          vt_beam_groups g, int G, int cap, int wmax, const float *tok_emb,
                          vt_trie_csr trie, int C, void *scratch) {
  ON(be);
  return vt_beam_select_cuda(picks, h, rows, g, G, cap, wmax, tok_emb, trie, C, scratch,
                             CTX(be)->stream);
}

static int cu_beam_advance(vt_backend *be, vt_beam_rows next, vt_beam_groups g,
                           int32_t *slot_base, vt_beam_picks picks, vt_beam_rows cur, int G,
                           int wmax, int maxT, int max_dec_len) {
  ON(be);
  return vt_beam_advance_cuda(next, g, slot_base, picks, cur, G, wmax, maxT, max_dec_len,
                              CTX(be)->stream);
}

static int cu_themes_to_keywords(vt_backend *be, vt_storefront *out, vt_beam_rows rows2,
                                 vt_beam_groups g2, vt_beam_groups g1, const vt_page_req *req,
                                 vt_theme_rules tr, int B, int G2, int maxT, int sep) {
  ON(be);
  return vt_beam_themes_to_keywords_cuda(out, rows2, g2, g1, req, tr, B, G2, maxT, sep,
                                         CTX(be)->stream);
}

static int cu_page_assemble(vt_backend *be, vt_storefront *out, const vt_page_req *req,
                            const int32_t *hist, const int32_t *excl, const float *user,
                            vt_beam_groups g2, vt_shelf shelf, vt_ranker rk,
                            vt_ranker_model lm, int B, int max_cands, void *scratch) {
  ON(be);
  return vt_page_assemble_cuda(out, req, hist, excl, user, g2, shelf, rk, lm, B, max_cands,
                               scratch, CTX(be)->stream);
}

static int cu_capture_begin(vt_backend *be) {
  ON(be);
  return vt_cuda_capture_begin(CTX(be)->stream);
}

static int cu_capture_end(vt_backend *be, void **graph) {
  ON(be);
  return vt_cuda_capture_end(CTX(be)->stream, graph);
}

static int cu_replay(vt_backend *be, void *graph) {
  ON(be);
  return vt_cuda_graph_replay(graph, CTX(be)->stream);
}

static void cu_graph_free(vt_backend *be, void *graph) {
  (void)be;
  vt_cuda_graph_free(graph);
}

static const vt_backend cuda_table = {
    .host_memory = 0,
    .alloc = cu_alloc,
    .free = cu_free,
    .host_alloc = cu_host_alloc,
    .host_free = cu_host_free,
    .upload = cu_upload,
    .download = cu_download,
    .zero = cu_zero,
    .copy = cu_copy,
    .sync = cu_sync,
    .error = cu_error,
    .close = cu_close,
    .broadcast = cu_broadcast,
    .event_embed = cu_event_embed,
    .layernorm = cu_layernorm,
    .residual_layernorm = cu_residual_layernorm,
    .rmsnorm = cu_rmsnorm,
    .add = cu_add,
    .matmul = cu_matmul,
    .attention = cu_attention,
    .cross_attention = cu_cross_attention,
    .repeat_rows = cu_repeat_rows,
    .mean_rows = cu_mean_rows,
    .beam_feed = cu_beam_feed,
    .kv_append = cu_kv_append,
    .dec_self_attention = cu_dec_self_attention,
    .dec_cross_attention = cu_dec_cross_attention,
    .beam_select = cu_beam_select,
    .beam_advance = cu_beam_advance,
    .themes_to_keywords = cu_themes_to_keywords,
    .page_scratch = vt_page_scratch_cuda,
    .page_assemble = cu_page_assemble,
    .capture_begin = cu_capture_begin,
    .capture_end = cu_capture_end,
    .replay = cu_replay,
    .graph_free = cu_graph_free,
};

int vt__backend_cuda_devices(char *err, size_t errlen) {
  const int n = vt_cuda_device_count();
  if (n == 0)
    snprintf(err, errlen, "no CUDA device answers (%s)", vt_cuda_last_error());
  return n;
}

int vt__backend_cuda_open(vt_backend **out, int device, char *err, size_t errlen) {
  *out = NULL;
  const int n = vt_cuda_device_count();
  if (device < 0 || device >= n) {
    if (n == 0)
      snprintf(err, errlen, "cuda:%d: no CUDA device answers (%s)", device, vt_cuda_last_error());
    else
      snprintf(err, errlen, "cuda:%d does not exist (%d device%s)", device, n, n == 1 ? "" : "s");
    return VT_BACKEND_ENOCUDA;
  }
  vt_backend *be = malloc(sizeof *be);
  cuda_ctx *ctx = calloc(1, sizeof *ctx);
  if (!be || !ctx) {
    free(be);
    free(ctx);
    snprintf(err, errlen, "out of memory");
    return VT_BACKEND_EFAIL;
  }
  *be = cuda_table;
  snprintf(be->name, sizeof be->name, "cuda:%d", device);
  ctx->device = device;
  be->ctx = ctx;
  if (vt_cuda_set_device(device) || vt_cuda_stream_create(&ctx->stream)) {
    snprintf(err, errlen, "cuda:%d: %s", device, vt_cuda_last_error());
    free(ctx);
    free(be);
    return VT_BACKEND_EFAIL;
  }
  *out = be;
  return 0;
}
