/* The CPU backend table: the reference kernels of kernels/cpu/ on host memory. */
#include "kernels/backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *cpu_alloc(vt_backend *be, size_t bytes) {
  (void)be;
  return malloc(bytes ? bytes : 1);
}

static void cpu_free(vt_backend *be, void *p) {
  (void)be;
  free(p);
}

static int cpu_copy(vt_backend *be, void *dst, const void *src, size_t bytes) {
  (void)be;
  if (bytes)
    memcpy(dst, src, bytes);
  return 0;
}

static int cpu_zero(vt_backend *be, void *dst, size_t bytes) {
  (void)be;
  if (bytes)
    memset(dst, 0, bytes);
  return 0;
}

static int cpu_sync(vt_backend *be) {
  (void)be;
  return 0;
}

static const char *cpu_error(vt_backend *be) {
  (void)be;
  return "";
}

static void cpu_close(vt_backend *be) { free(be); }

static int cpu_broadcast(vt_backend *const *bes, void *const *bufs, int n, size_t bytes) {
  (void)bes;
  for (int i = 1; i < n; i++)
    if (bufs[i] != bufs[0])
      memcpy(bufs[i], bufs[0], bytes);
  return 0;
}

/* The ops: the CPU functions, which cannot fail once the engine has checked the shapes. */
static int cpu_event_embed(vt_backend *be, float *out, const int32_t *codes,
                           const int32_t *action, const int32_t *qtok, const float *x,
                           const float *cal, const int32_t *region, const float *const *code_emb,
                           const float *action_emb, const float *region_emb, const float *tok_emb,
                           const float *t2v_w, const float *t2v_b, const float *time_w,
                           const float *time_b, const float *ln_w, const float *ln_b, int N, int C,
                           int L, int MQ, int P) {
  (void)be;
  vt_event_embed(out, codes, action, qtok, x, cal, region, code_emb, action_emb, region_emb,
                 tok_emb, t2v_w, t2v_b, time_w, time_b, ln_w, ln_b, N, C, L, MQ, P);
  return 0;
}

static int cpu_layernorm(vt_backend *be, float *out, const float *inp, const float *w,
                         const float *b, int N, int C) {
  (void)be;
  vt_layernorm(out, inp, w, b, N, C);
  return 0;
}

static int cpu_residual_layernorm(vt_backend *be, float *resid, float *out, const float *add,
                                  const float *w, const float *b, int N, int C) {
  (void)be;
  vt_residual_layernorm(resid, out, add, w, b, N, C);
  return 0;
}

static int cpu_rmsnorm(vt_backend *be, float *out, const float *inp, const float *w, int N,
                       int C) {
  (void)be;
  vt_rmsnorm(out, inp, w, N, C);
  return 0;
}

static int cpu_add(vt_backend *be, float *resid, const float *add, int n) {
  (void)be;
  vt_add(resid, add, n);
  return 0;
}

static int cpu_matmul(vt_backend *be, float *out, const float *inp, const float *W,
                      const float *b, int N, int IN, int OUT, enum vt_act act) {
  (void)be;
  vt_matmul(out, inp, W, b, N, IN, OUT, act);
  return 0;
}

static int cpu_attention(vt_backend *be, float *out, const float *qkv, const int64_t *ts,
                         const int32_t *off, const float *bias, int B, int C, int NH) {
  (void)be;
  vt_attention(out, qkv, ts, off, bias, B, C, NH);
  return 0;
}

static int cpu_cross_attention(vt_backend *be, float *out, const float *q, const float *kv,
                               const int32_t *qoff, const int32_t *kvoff, int B, int C, int NH) {
  (void)be;
  vt_cross_attention(out, q, kv, qoff, kvoff, B, C, NH);
  return 0;
}

static int cpu_repeat_rows(vt_backend *be, float *out, const float *src, int R, int times,
                           int C) {
  (void)be;
  vt_repeat_rows(out, src, R, times, C);
  return 0;
}

static int cpu_mean_rows(vt_backend *be, float *out, const float *inp, int B, int K, int C) {
  (void)be;
  vt_mean_rows(out, inp, B, K, C);
  return 0;
}

static int cpu_beam_feed(vt_backend *be, float *Y, vt_beam_rows rows, const int32_t *slot_base,
                         const float *tok_emb, const float *pos_emb, int cap, int C, int maxT) {
  (void)be;
  vt_beam_feed(Y, rows, slot_base, tok_emb, pos_emb, cap, C, maxT);
  return 0;
}

static int cpu_kv_append(vt_backend *be, float *Q, float *kpool, float *vpool, const float *QKV,
                         vt_beam_rows rows, int cap, int C, int maxT) {
  (void)be;
  vt_kv_append(Q, kpool, vpool, QKV, rows, cap, C, maxT);
  return 0;
}

static int cpu_dec_self_attention(vt_backend *be, float *out, const float *q, const float *kpool,
                                  const float *vpool, vt_beam_rows rows, int cap, int maxT, int C,
                                  int NH) {
  (void)be;
  vt_dec_self_attention(out, q, kpool, vpool, rows, cap, maxT, C, NH);
  return 0;
}

static int cpu_dec_cross_attention(vt_backend *be, float *out, const float *q, const float *xkv,
                                   vt_beam_rows rows, int cap, int NQ, int C, int NH) {
  (void)be;
  vt_dec_cross_attention(out, q, xkv, rows, cap, NQ, C, NH);
  return 0;
}

static int cpu_beam_select(vt_backend *be, vt_beam_picks picks, const float *h,
                           vt_beam_rows rows, vt_beam_groups g, int G, int cap, int wmax,
                           const float *tok_emb, vt_trie_csr trie, int C, void *scratch) {
  (void)be;
  vt_beam_select(picks, h, rows, g, G, cap, wmax, tok_emb, trie, C, scratch);
  return 0;
}

static int cpu_beam_advance(vt_backend *be, vt_beam_rows next, vt_beam_groups g,
                            int32_t *slot_base, vt_beam_picks picks, vt_beam_rows cur, int G,
                            int wmax, int maxT, int max_dec_len) {
  (void)be;
  vt_beam_advance(next, g, slot_base, picks, cur, G, wmax, maxT, max_dec_len);
  return 0;
}

static int cpu_themes_to_keywords(vt_backend *be, vt_storefront *out, vt_beam_rows rows2,
                                  vt_beam_groups g2, vt_beam_groups g1, const vt_page_req *req,
                                  vt_theme_rules tr, int B, int G2, int maxT, int sep) {
  (void)be;
  vt_beam_themes_to_keywords(out, rows2, g2, g1, req, tr, B, G2, maxT, sep);
  return 0;
}

static int cpu_page_assemble(vt_backend *be, vt_storefront *out, const vt_page_req *req,
                             const int32_t *hist, const int32_t *excl, const float *user,
                             vt_beam_groups g2, vt_shelf shelf, vt_ranker rk,
                             vt_ranker_model lm, int B, int max_cands, void *scratch) {
  (void)be;
  vt_page_assemble(out, req, hist, excl, user, g2, shelf, rk, lm, B, max_cands, scratch);
  return 0;
}

static const vt_backend cpu_backend = {
    .name = "cpu",
    .host_memory = 1,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .host_alloc = cpu_alloc,
    .host_free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .zero = cpu_zero,
    .copy = cpu_copy,
    .sync = cpu_sync,
    .error = cpu_error,
    .close = cpu_close,
    .broadcast = cpu_broadcast,
    .event_embed = cpu_event_embed,
    .layernorm = cpu_layernorm,
    .residual_layernorm = cpu_residual_layernorm,
    .rmsnorm = cpu_rmsnorm,
    .add = cpu_add,
    .matmul = cpu_matmul,
    .attention = cpu_attention,
    .cross_attention = cpu_cross_attention,
    .repeat_rows = cpu_repeat_rows,
    .mean_rows = cpu_mean_rows,
    .beam_feed = cpu_beam_feed,
    .kv_append = cpu_kv_append,
    .dec_self_attention = cpu_dec_self_attention,
    .dec_cross_attention = cpu_dec_cross_attention,
    .beam_select = cpu_beam_select,
    .beam_advance = cpu_beam_advance,
    .themes_to_keywords = cpu_themes_to_keywords,
    .page_scratch = vt_page_scratch,
    .page_assemble = cpu_page_assemble,
    .ctx = NULL,
};

int vt__backend_cpu_open(vt_backend **out, char *err, size_t errlen) {
  vt_backend *be = malloc(sizeof *be);
  if (!be) {
    *out = NULL;
    snprintf(err, errlen, "out of memory");
    return VT_BACKEND_EFAIL;
  }
  *be = cpu_backend;
  *out = be;
  return 0;
}
