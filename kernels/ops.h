/* vitrine kernels: the math of the cascade, one function per op.
 *
 * These are the CPU implementations, the reference every other backend is tested against
 * (plain loops; OpenBLAS for the GEMM). The numerical specification is train/model.py and
 * train/cascade.py; docs/MODEL.md is the map. Conventions (llm.c style):
 *   - outputs first, then inputs, then weights, then dimensions;
 *   - float32, row-major; a Linear weight is (OUT, IN) and y = x W^T + b;
 *   - shape letters: N rows (events or tokens), C model width, NH heads, HS = C / NH head size,
 *     F FFN width, V vocabulary, L code levels, K codebook size, P Time2Vec width, R retrieval width;
 *   - ragged batches: `off` arrays of B+1 ints, sequence b owns rows off[b] .. off[b+1]-1;
 *   - no allocation inside a kernel: scratch space, where needed, comes from the caller.
 * Masked softmaxes start from -FLT_MAX, never -INFINITY, so an empty row gives no NaN.
 */
#ifndef VITRINE_KERNELS_OPS_H
#define VITRINE_KERNELS_OPS_H

#include <stdint.h>

#define VT_N_CAL 6            /* calendar features: sin/cos of hour, weekday, day of year */
#define VT_N_TIME_BUCKETS 129 /* HSTU log buckets of |dt|: clamp(floor(ln(max(dt,1))/0.301),0,128) */
#define VT_LN_EPS 1e-5f
#define VT_RMS_EPS 1e-6f

/* The log time bucket of |a - b| seconds, computed in double as the reference does. */
int vt_time_bucket(int64_t a, int64_t b);

/* Fused event embedding, for N events (context tokens included):
 *   e = sum_l code_emb[l][codes[n,l]] + action_emb[action[n]]
 *       + mean_{j: qtok[n,j] != 0} tok_emb[qtok[n,j]]            (0 if no query token)
 *       + time_w [t2v(x[n]); cal[n]] + time_b
 *       + region_emb[region[n]]                                    (only if region[n] >= 0)
 *   out[n] = LayerNorm(e) with ln_w, ln_b
 * t2v(x) = [t2v_w[0] x + t2v_b[0], sin(t2v_w[k] x + t2v_b[k]) for k = 1..P-1].
 * codes (N, L); qtok (N, MQ) token ids, 0 = padding; x (N,) = log1p(max(now - ts, 0));
 * cal (N, 6); code_emb: L pointers to (K+2, C); time_w (C, P+6). */
void vt_event_embed(float *out, const int32_t *codes, const int32_t *action, const int32_t *qtok,
                    const float *x, const float *cal, const int32_t *region,
                    const float *const *code_emb, const float *action_emb, const float *region_emb,
                    const float *tok_emb, const float *t2v_w, const float *t2v_b,
                    const float *time_w, const float *time_b, const float *ln_w, const float *ln_b,
                    int N, int C, int L, int MQ, int P);

/* out[n] = LayerNorm(inp[n]) (eps 1e-5, biased variance); out may alias inp. (N, C) */
void vt_layernorm(float *out, const float *inp, const float *w, const float *b, int N, int C);

/* resid[n] += add[n]; then out[n] = LayerNorm(resid[n]). The pre-norm block's residual step. */
void vt_residual_layernorm(float *resid, float *out, const float *add, const float *w,
                           const float *b, int N, int C);

/* out[n] = inp[n] * rsqrt(mean(inp[n]^2) + 1e-6) * w. (N, C) */
void vt_rmsnorm(float *out, const float *inp, const float *w, int N, int C);

/* resid += add, elementwise over n floats. */
void vt_add(float *resid, const float *add, int n);

enum vt_act { VT_ACT_NONE = 0, VT_ACT_GELU = 1 };

/* out = act(inp W^T + b): inp (N, IN), W (OUT, IN), b (OUT,) or NULL, out (N, OUT).
 * GELU is the exact one: 0.5 x (1 + erf(x / sqrt 2)). */
void vt_matmul(float *out, const float *inp, const float *W, const float *b, int N, int IN,
               int OUT, enum vt_act act);

/* The threads OpenBLAS may use for one vt_matmul (n >= 1), and how many it uses now. Its pthread
 * build keeps that many threads spinning (sched_yield) between calls, so a server whose workers
 * are the parallelism runs it with 1. */
void vt_blas_set_threads(int n);
int vt_blas_threads(void);

/* Bidirectional self-attention over a ragged batch with the time-bucket bias computed on the fly.
 * qkv (Ntot, 3C): q | k | v, head h in columns h*HS .. h*HS+HS-1 of each third;
 * ts (Ntot,) event times in seconds; bias (NH, 129); out (Ntot, C).
 * score(i, j) = q_i . k_j / sqrt(HS) + bias[h][bucket(ts_i, ts_j)], softmax over j in i's
 * sequence (online softmax: one pass, never an N x N matrix). */
void vt_attention(float *out, const float *qkv, const int64_t *ts, const int32_t *off,
                  const float *bias, int B, int C, int NH);

/* Cross-attention for ragged groups: the query rows qoff[b] .. qoff[b+1]-1 attend to the key/value
 * rows kvoff[b] .. kvoff[b+1]-1. q (Nq, C); kv (Nkv, 2C): k | v; out (Nq, C). No bias, no mask.
 * Used by the Query-Former (queries x events) and by the decoder (beams x memory tokens).
 * A group with no key/value rows gives zero outputs. */
void vt_cross_attention(float *out, const float *q, const float *kv, const int32_t *qoff,
                        const int32_t *kvoff, int B, int C, int NH);

/* The decoder's attentions over beam rows (self, through a slot-indirected KV pool, and cross, to
 * each row's memory) are kernels/decode.h's vt_dec_self_attention and vt_dec_cross_attention. */

/* One step of masked constrained beam search over a CSR trie.
 * For each live beam b (rank order) with hidden state h[b] (C,) and trie node node[b]:
 *   its valid children are entries e = indptr[node[b]] .. indptr[node[b]+1]-1 (ascending token);
 *   logit_e = h[b] . tok_emb[token[e]] (only these logits are computed: a sparse projection);
 *   cand_e = score[b] + log_softmax over the beam's children (float32, max-subtracted).
 * The best `width` candidates over all beams are written, best first; on equal scores the
 * candidate listed earlier (lower beam, then lower token) wins. For selected candidate i:
 *   out_parent[i] = its beam, out_token[i] = token, out_node[i] = child node,
 *   out_score[i] = its score, out_phrase[i] = phrase[child node] (>= 0: the terminator was
 *   taken and the hypothesis is finished, -1: still live).
 * scratch: at least 2 * (total children of the live beams) floats + as many ints (as floats).
 * Returns the number selected: min(width, total candidates). */
int vt_beam_step(int32_t *out_parent, int32_t *out_token, int32_t *out_node, float *out_score,
                 int32_t *out_phrase, const float *h, const int32_t *node, const float *score,
                 int nbeams, const float *tok_emb, const int32_t *indptr, const int32_t *token,
                 const int32_t *child, const int32_t *phrase, int C, int width, float *scratch);

/* Retrieval scoring: out[i] = u . emb[idx[i]] for n candidates; emb (P, R). */
void vt_retrieval_scores(float *out, const float *u, const float *emb, const int32_t *idx, int n,
                         int R);

/* Top-k of n (score, id) pairs by descending score, ties to the lower id; writes k' = min(k, n)
 * entries to out_id / out_score, best first, and returns k'. scratch: n ints. */
int vt_topk(int32_t *out_id, float *out_score, const float *score, const int32_t *id, int n, int k,
            int32_t *scratch);

#endif
