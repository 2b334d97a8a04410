/* Attention: encoder self-attention with the time-bucket bias, cross-attention, and the
 * decoder's causal self-attention through a slot-indirected KV pool.
 *
 * Shapes: C = NH * HS; head h owns columns h*HS .. h*HS+HS-1 of every q, k, v and output row.
 * Scores are q . k / sqrt(HS) (+ bias), the scale rounded to float as PyTorch rounds the Python
 * scalar 1/math.sqrt(HS) when it multiplies a float32 tensor.
 *
 * Algorithm (all three kernels): one pass over the keys of a (query row, head) with an online
 * softmax. The running maximum m starts at -FLT_MAX, the running denominator l at 0, and the
 * weighted sum of values accumulates directly in the output slice (HS,), so no scratch and never
 * an N x N matrix. When a key raises the maximum, l and the accumulator are rescaled by
 * exp(m_old - m_new); the first key's rescale factor is exp(-FLT_MAX - s) = 0, which clears the
 * (zero) initial state without a special case. At the end the slice is divided by l.
 * Masked-out keys in the reference get -FLT_MAX scores and hence exactly zero weight, which is
 * the same as skipping them, so ragged batches just iterate over their own rows.
 * A query with no key at all (an empty cross-attention group) gets zeros.
 * vt_attention walks the keys once for up to 8 heads at a time, so each key's time bucket
 * (a double-precision log) is computed once per query, not once per head.
 */
#include <float.h>
#include <math.h>
#include <stddef.h>

#include "kernels/decode.h"
#include "kernels/ops.h"

#define ATT_HEADS 8 /* heads whose online-softmax state vt_attention keeps at once (on the stack) */

/* acc (HS,) accumulates sum_j p_j v_j with p_j = exp(s_j - m); *m and *l are the running max
 * and denominator. Folds in one key of score s and value v (HS,). */
static inline void online_softmax_step(float *acc, float *m, float *l, float s, const float *v,
                                       int HS) {
  if (s > *m) {
    float corr = expf(*m - s);
    *l *= corr;
    for (int d = 0; d < HS; d++) {
      acc[d] *= corr;
    }
    *m = s;
  }
  float p = expf(s - *m);
  *l += p;
  for (int d = 0; d < HS; d++) {
    acc[d] += p * v[d];
  }
}

/* Normalises acc (HS,) by the softmax denominator l; zeros when there was no key. */
static inline void online_softmax_finish(float *acc, float l, int HS) {
  float inv = l > 0.0f ? 1.0f / l : 0.0f;
  for (int d = 0; d < HS; d++) {
    acc[d] *= inv;
  }
}

static inline float dot(const float *a, const float *b, int n) {
  float s = 0.0f;
  for (int i = 0; i < n; i++) {
    s += a[i] * b[i];
  }
  return s;
}

static inline void zero(float *a, int n) {
  for (int i = 0; i < n; i++) {
    a[i] = 0.0f;
  }
}

void vt_attention(float *out, const float *qkv, const int64_t *ts, const int32_t *off,
                  const float *bias, int B, int C, int NH) {
  const int HS = C / NH;
  const float scale = (float)(1.0 / sqrt((double)HS));
  const size_t C3 = (size_t)3 * C; // qkv row stride
  for (int b = 0; b < B; b++) {
    for (int i = off[b]; i < off[b + 1]; i++) {
      // heads in chunks of up to ATT_HEADS, each with its own running max and denominator, so
      // that the bucket (a double log) is computed once per (i, j) pair and chunk, not per head
      for (int h0 = 0; h0 < NH; h0 += ATT_HEADS) {
        const int nh = NH - h0 < ATT_HEADS ? NH - h0 : ATT_HEADS;
        float m[ATT_HEADS], l[ATT_HEADS];
        for (int h = 0; h < nh; h++) {
          m[h] = -FLT_MAX;
          l[h] = 0.0f;
        }
        zero(out + (size_t)i * C + (size_t)h0 * HS, nh * HS);
        for (int j = off[b]; j < off[b + 1]; j++) {
          const int bucket = vt_time_bucket(ts[i], ts[j]);
          for (int h = 0; h < nh; h++) {
            const size_t col = (size_t)(h0 + h) * HS;
            const float *q = qkv + (size_t)i * C3 + col;         // (HS,)
            const float *k = qkv + (size_t)j * C3 + C + col;     // (HS,)
            const float *v = qkv + (size_t)j * C3 + 2 * C + col; // (HS,)
            // the reference scales the q.k product first, then adds bias[head][bucket]
            float s = dot(q, k, HS) * scale + bias[(size_t)(h0 + h) * VT_N_TIME_BUCKETS + bucket];
            online_softmax_step(out + (size_t)i * C + col, &m[h], &l[h], s, v, HS);
          }
        }
        for (int h = 0; h < nh; h++) {
          online_softmax_finish(out + (size_t)i * C + (size_t)(h0 + h) * HS, l[h], HS);
        }
      }
    }
  }
}

void vt_cross_attention(float *out, const float *q, const float *kv, const int32_t *qoff,
                        const int32_t *kvoff, int B, int C, int NH) {
  const int HS = C / NH;
  const float scale = (float)(1.0 / sqrt((double)HS));
  const size_t C2 = (size_t)2 * C; // kv row stride
  for (int b = 0; b < B; b++) {
    for (int i = qoff[b]; i < qoff[b + 1]; i++) {
      for (int h = 0; h < NH; h++) {
        const float *qi = q + (size_t)i * C + (size_t)h * HS; // (HS,)
        float *acc = out + (size_t)i * C + (size_t)h * HS;    // (HS,)
        float m = -FLT_MAX, l = 0.0f;
        zero(acc, HS);
        for (int j = kvoff[b]; j < kvoff[b + 1]; j++) {
          const float *k = kv + (size_t)j * C2 + (size_t)h * HS;     // (HS,)
          const float *v = kv + (size_t)j * C2 + C + (size_t)h * HS; // (HS,)
          online_softmax_step(acc, &m, &l, dot(qi, k, HS) * scale, v, HS);
        }
        online_softmax_finish(acc, l, HS);
      }
    }
  }
}

/* The decoder's attentions over beam rows (kernels/decode.h): the same online softmax per
 * (row, head), keys through the row's slot table (self) or its request's memory rows (cross). */
void vt_dec_self_attention(float *out, const float *q, const float *kpool, const float *vpool,
                           vt_beam_rows rows, int cap, int maxT, int C, int NH) {
  const int HS = C / NH;
  const float scale = (float)(1.0 / sqrt((double)HS));
  const int n = *rows.n < cap ? *rows.n : cap;
  for (int r = 0; r < n; r++) {
    const int32_t *rs = rows.slots + (size_t)r * maxT; // (maxT,) pool row of each position
    const int T = rows.pos[r];
    for (int h = 0; h < NH; h++) {
      const float *qi = q + (size_t)r * C + (size_t)h * HS; // (HS,)
      float *acc = out + (size_t)r * C + (size_t)h * HS;    // (HS,)
      float m = -FLT_MAX, l = 0.0f;
      zero(acc, HS);
      // causal: the new position T sees itself and every earlier position, nothing later
      for (int t = 0; t <= T; t++) {
        const float *k = kpool + (size_t)rs[t] * C + (size_t)h * HS; // (HS,)
        const float *v = vpool + (size_t)rs[t] * C + (size_t)h * HS; // (HS,)
        online_softmax_step(acc, &m, &l, dot(qi, k, HS) * scale, v, HS);
      }
      online_softmax_finish(acc, l, HS);
    }
  }
}

void vt_dec_cross_attention(float *out, const float *q, const float *xkv, vt_beam_rows rows,
                            int cap, int NQ, int C, int NH) {
  const int HS = C / NH;
  const float scale = (float)(1.0 / sqrt((double)HS));
  const size_t C2 = (size_t)2 * C; // xkv row stride
  const int n = *rows.n < cap ? *rows.n : cap;
  for (int r = 0; r < n; r++) {
    const float *kv = xkv + (size_t)rows.mem[r] * NQ * C2; // (NQ, 2C) the request's memory
    for (int h = 0; h < NH; h++) {
      const float *qi = q + (size_t)r * C + (size_t)h * HS; // (HS,)
      float *acc = out + (size_t)r * C + (size_t)h * HS;    // (HS,)
      float m = -FLT_MAX, l = 0.0f;
      zero(acc, HS);
      for (int j = 0; j < NQ; j++) {
        const float *k = kv + (size_t)j * C2 + (size_t)h * HS;     // (HS,)
        const float *v = kv + (size_t)j * C2 + C + (size_t)h * HS; // (HS,)
        online_softmax_step(acc, &m, &l, dot(qi, k, HS) * scale, v, HS);
      }
      online_softmax_finish(acc, l, HS);
    }
  }
}
