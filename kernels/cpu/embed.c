/* Event embedding and the HSTU log time bucket.
 *
 * vt_event_embed, for N events (the context token included), each out row (C,):
 *   e = sum_l code_emb[l][codes[n,l]] + action_emb[action[n]] + mean query-token embedding
 *       + (time_w [t2v(x[n]); cal[n]] + time_b) [+ region_emb[region[n]]]
 *   out[n] = LayerNorm(e)
 * The terms are added in the order Model.embed_events adds them (item, action, query, time
 * projection, region) so float rounding follows the reference. The time projection (C, P+6) x
 * (P+6,) is accumulated first, straight into the output row, feature by feature: each Time2Vec
 * sine is then computed once per event rather than once per output channel, and no scratch is
 * needed. The row is normalised in place at the end.
 *
 * vt_time_bucket: clamp(floor(ln(max(|a - b|, 1)) / 0.301), 0, 128) in double, as time_bucket()
 * in train/model.py. |a - b| is formed in uint64 so that no pair of int64 times overflows.
 */
#include <math.h>
#include <stddef.h>

#include "kernels/ops.h"

int vt_time_bucket(int64_t a, int64_t b) {
  uint64_t d = a >= b ? (uint64_t)a - (uint64_t)b : (uint64_t)b - (uint64_t)a;
  if (d < 1) {
    d = 1;
  }
  double f = floor(log((double)d) / 0.301);
  if (f < 0.0) {
    return 0;
  }
  if (f > (double)(VT_N_TIME_BUCKETS - 1)) {
    return VT_N_TIME_BUCKETS - 1;
  }
  return (int)f;
}

void vt_event_embed(float *out, const int32_t *codes, const int32_t *action, const int32_t *qtok,
                    const float *x, const float *cal, const int32_t *region,
                    const float *const *code_emb, const float *action_emb, const float *region_emb,
                    const float *tok_emb, const float *t2v_w, const float *t2v_b,
                    const float *time_w, const float *time_b, const float *ln_w, const float *ln_b,
                    int N, int C, int L, int MQ, int P) {
  const int TF = P + VT_N_CAL; // time features per event: Time2Vec (P) then calendar (6)
  for (int n = 0; n < N; n++) {
    float *o = out + (size_t)n * C; // (C,): first the time projection, then e, then LN(e)

    // time projection: o = time_w f + time_b, f = [t2v(x); cal] built one feature at a time
    for (int c = 0; c < C; c++) {
      o[c] = 0.0f;
    }
    for (int k = 0; k < TF; k++) {
      float f;
      if (k == 0) {
        f = t2v_w[0] * x[n] + t2v_b[0]; // the linear Time2Vec component
      } else if (k < P) {
        f = sinf(x[n] * t2v_w[k] + t2v_b[k]);
      } else {
        f = cal[(size_t)n * VT_N_CAL + (k - P)];
      }
      for (int c = 0; c < C; c++) {
        o[c] += time_w[(size_t)c * TF + k] * f;
      }
    }
    for (int c = 0; c < C; c++) {
      o[c] += time_b[c];
    }

    // the query tokens' mean: padding (id 0) is excluded from both the sum and the count
    const int32_t *qt = qtok + (size_t)n * MQ; // (MQ,)
    int nq = 0;
    for (int j = 0; j < MQ; j++) {
      nq += qt[j] != 0;
    }
    const float qdiv = nq > 0 ? (float)nq : 1.0f;

    const float *arow = action_emb + (size_t)action[n] * C; // (C,)
    // (C,), or NULL: only the context token carries a region
    const float *rrow = region[n] >= 0 ? region_emb + (size_t)region[n] * C : NULL;
    for (int c = 0; c < C; c++) {
      float item = 0.0f;
      for (int l = 0; l < L; l++) {
        item += code_emb[l][(size_t)codes[(size_t)n * L + l] * C + c];
      }
      float q = 0.0f;
      for (int j = 0; j < MQ; j++) {
        if (qt[j] != 0) {
          q += tok_emb[(size_t)qt[j] * C + c];
        }
      }
      float e = item + arow[c];
      e += q / qdiv;
      e += o[c];
      if (rrow != NULL) {
        e += rrow[c];
      }
      o[c] = e;
    }
    vt_layernorm(o, o, ln_w, ln_b, 1, C);
  }
}
