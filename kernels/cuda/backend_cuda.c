/* The CUDA backend table: kernels/ops_cuda.h behind the vt_backend interface, on one device's
 * default stream. Ops enqueue work and return; download() and sync() wait. The beam step's count
 * is produced on the device; this table's beam_step copies it back (one small synchronous copy)
 * to keep the CPU op's contract, which an engine that keeps decoding on the device does without. */
#include "kernels/backend.h"
#include "kernels/ops_cuda.h"

#include <stdint.h>

static void *cu_alloc(const vt_backend *be, size_t bytes) {
  (void)be;
  return vt_cuda_malloc(bytes ? bytes : 1);
}

static void cu_free(const vt_backend *be, void *p) {
  (void)be;
  vt_cuda_free(p);
}

static int cu_upload(const vt_backend *be, void *dst, const void *src, size_t bytes) {
  (void)be;
  return vt_cuda_memcpy_h2d(dst, src, bytes);
}

static int cu_download(const vt_backend *be, void *dst, const void *src, size_t bytes) {
  (void)be;
  return vt_cuda_sync(NULL) ? -1 : vt_cuda_memcpy_d2h(dst, src, bytes);
}

static int cu_sync(const vt_backend *be) {
  (void)be;
  return vt_cuda_sync(NULL);
}

/* The table's ops return void like the CPU ones: an error is kept by the CUDA layer
 * (vt_cuda_last_error) and surfaces at the next sync or download. */
static void cu_event_embed(float *out, const int32_t *codes, const int32_t *action,
                           const int32_t *qtok, const float *x, const float *cal,
                           const int32_t *region, const float *const *code_emb,
                           const float *action_emb, const float *region_emb, const float *tok_emb,
                           const float *t2v_w, const float *t2v_b, const float *time_w,
                           const float *time_b, const float *ln_w, const float *ln_b, int N, int C,
                           int L, int MQ, int P) {
  (void)vt_event_embed_cuda(out, codes, action, qtok, x, cal, region, code_emb, action_emb,
                            region_emb, tok_emb, t2v_w, t2v_b, time_w, time_b, ln_w, ln_b, N, C,
                            L, MQ, P, NULL);
}

static void cu_layernorm(float *out, const float *inp, const float *w, const float *b, int N,
                         int C) {
  (void)vt_layernorm_cuda(out, inp, w, b, N, C, NULL);
}

static void cu_residual_layernorm(float *resid, float *out, const float *add, const float *w,
                                  const float *b, int N, int C) {
  (void)vt_residual_layernorm_cuda(resid, out, add, w, b, N, C, NULL);
}

static void cu_rmsnorm(float *out, const float *inp, const float *w, int N, int C) {
  (void)vt_rmsnorm_cuda(out, inp, w, N, C, NULL);
}

static void cu_add(float *resid, const float *add, int n) { (void)vt_add_cuda(resid, add, n, NULL); }

static void cu_matmul(float *out, const float *inp, const float *W, const float *b, int N, int IN,
                      int OUT, enum vt_act act) {
  (void)vt_matmul_cuda(out, inp, W, b, N, IN, OUT, act, NULL);
}

static void cu_attention(float *out, const float *qkv, const int64_t *ts, const int32_t *off,
                         const float *bias, int B, int C, int NH) {
  (void)vt_attention_cuda(out, qkv, ts, off, bias, B, C, NH, NULL);
}

static void cu_cross_attention(float *out, const float *q, const float *kv, const int32_t *qoff,
                               const int32_t *kvoff, int B, int C, int NH) {
  (void)vt_cross_attention_cuda(out, q, kv, qoff, kvoff, B, C, NH, NULL);
}

static void cu_decoder_attention(float *out, const float *q, const float *kpool,
                                 const float *vpool, const int32_t *slot, int nrows, int T,
                                 int maxT, int C, int NH) {
  (void)vt_decoder_attention_cuda(out, q, kpool, vpool, slot, nrows, T, maxT, C, NH, NULL);
}

/* scratch (device) must hold the CUDA op's scratch plus one int for the count at its end:
 * the caller sizes it as for the CPU op (3 x candidates), which covers both. */
static int cu_beam_step(int32_t *out_parent, int32_t *out_token, int32_t *out_node,
                        float *out_score, int32_t *out_phrase, const float *h,
                        const int32_t *node, const float *score, int nbeams,
                        const float *tok_emb, const int32_t *indptr, const int32_t *token,
                        const int32_t *child, const int32_t *phrase, int C, int width,
                        float *scratch) {
  int32_t *count = (int32_t *)scratch;
  if (vt_beam_step_cuda(out_parent, out_token, out_node, out_score, out_phrase, h, node, score,
                        nbeams, tok_emb, indptr, token, child, phrase, C, width, scratch + 1,
                        count, NULL) < 0)
    return -1;
  int32_t n = -1;
  if (vt_cuda_sync(NULL) || vt_cuda_memcpy_d2h(&n, count, sizeof n))
    return -1;
  return n;
}

static void cu_retrieval_scores(float *out, const float *u, const float *emb, const int32_t *idx,
                                int n, int R) {
  (void)vt_retrieval_scores_cuda(out, u, emb, idx, n, R, NULL);
}

static int cu_topk(int32_t *out_id, float *out_score, const float *score, const int32_t *id,
                   int n, int k, int32_t *scratch) {
  return vt_topk_cuda(out_id, out_score, score, id, n, k, scratch, NULL);
}

static const vt_backend cuda_backend = {
    .name = "cuda:0",
    .alloc = cu_alloc,
    .free = cu_free,
    .upload = cu_upload,
    .download = cu_download,
    .sync = cu_sync,
    .event_embed = cu_event_embed,
    .layernorm = cu_layernorm,
    .residual_layernorm = cu_residual_layernorm,
    .rmsnorm = cu_rmsnorm,
    .add = cu_add,
    .matmul = cu_matmul,
    .attention = cu_attention,
    .cross_attention = cu_cross_attention,
    .decoder_attention = cu_decoder_attention,
    .beam_step = cu_beam_step,
    .retrieval_scores = cu_retrieval_scores,
    .topk = cu_topk,
    .ctx = NULL,
};

const vt_backend *vt_backend_cuda(void) {
  return vt_cuda_device_count() > 0 ? &cuda_backend : NULL;
}
