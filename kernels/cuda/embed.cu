/* Fused event embedding on CUDA (kernels/cpu/embed.c on the device).
 *
 * Shapes: out (N, C); codes (N, L); action, region (N,); qtok (N, MQ), 0 = padding; x (N,);
 * cal (N, 6); code_emb: L device pointers to (K+2, C) tables (the pointer table itself on the
 * host, passed to the kernel by value); action_emb, region_emb, tok_emb (rows, C); t2v_w, t2v_b
 * (P,); time_w (C, P+6); time_b, ln_w, ln_b (C,).
 * Algorithm: one block per event. The P+6 time features (Time2Vec then calendar) are computed
 * once into shared memory; then each thread builds its channels of e in the CPU's order (time
 * projection + time_b first, then e = item + action, + query mean, + time, + region) into a
 * shared row (C,), and the block normalises the row (two-pass LayerNorm) into out.
 * region_emb may be NULL only when no region[n] is >= 0 (it cannot be checked on the host).
 * Shared memory: (P + 6 + C) floats. Limits: L <= VT_CUDA_MAX_LEVELS, (P + 6 + C) * 4 bytes
 * <= 48 KiB.
 */
#include "kernels/cuda/common.cuh"

#define EMBED_THREADS 256

struct code_tables {
  const float *t[VT_CUDA_MAX_LEVELS]; // (K+2, C) each
};

static __global__ void __launch_bounds__(EMBED_THREADS)
    event_embed_kernel(float *out, const int32_t *codes, const int32_t *action,
                                          const int32_t *qtok, const float *x, const float *cal,
                                          const int32_t *region, code_tables code_emb,
                                          const float *action_emb, const float *region_emb,
                                          const float *tok_emb, const float *t2v_w,
                                          const float *t2v_b, const float *time_w,
                                          const float *time_b, const float *ln_w,
                                          const float *ln_b, int C, int L, int MQ, int P) {
  VT_DYNAMIC_SHARED(float, smem);
  __shared__ float red[WARP];
  const int TF = P + VT_N_CAL;
  const int n = blockIdx.x;
  float *f = smem;      // (TF,) time features of this event
  float *e = smem + TF; // (C,) the summed embedding before LayerNorm
  const float xn = x[n];
  for (int k = threadIdx.x; k < TF; k += blockDim.x) {
    float v;
    if (k == 0) {
      v = t2v_w[0] * xn + t2v_b[0];
    } else if (k < P) {
      v = sinf(xn * t2v_w[k] + t2v_b[k]);
    } else {
      v = cal[(size_t)n * VT_N_CAL + (k - P)];
    }
    f[k] = v;
  }
  __syncthreads();

  const int32_t *qt = qtok + (size_t)n * MQ; // (MQ,)
  int nq = 0;
  for (int j = 0; j < MQ; j++) {
    nq += qt[j] != 0;
  }
  const float qdiv = nq > 0 ? (float)nq : 1.0f;
  const float *arow = action_emb + (size_t)action[n] * C;                       // (C,)
  const float *rrow = region[n] >= 0 ? region_emb + (size_t)region[n] * C : NULL; // (C,) or none
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float t = 0.0f;
    const float *wr = time_w + (size_t)c * TF; // (TF,)
    for (int k = 0; k < TF; k++) {
      t += wr[k] * f[k];
    }
    t += time_b[c];
    float item = 0.0f;
    for (int l = 0; l < L; l++) {
      item += code_emb.t[l][(size_t)codes[(size_t)n * L + l] * C + c];
    }
    float q = 0.0f;
    for (int j = 0; j < MQ; j++) {
      if (qt[j] != 0) {
        q += tok_emb[(size_t)qt[j] * C + c];
      }
    }
    float v = item + arow[c];
    v += q / qdiv;
    v += t;
    if (rrow != NULL) {
      v += rrow[c];
    }
    e[c] = v;
  }
  __syncthreads();

  float s = 0.0f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    s += e[c];
  }
  const float mean = block_sum(s, red) / (float)C;
  float var = 0.0f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const float d = e[c] - mean;
    var += d * d;
  }
  const float rstd = 1.0f / sqrtf(block_sum(var, red) / (float)C + VT_LN_EPS);
  float *o = out + (size_t)n * C; // (C,)
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    o[c] = (e[c] - mean) * rstd * ln_w[c] + ln_b[c];
  }
}

extern "C" int vt_event_embed_cuda(float *out, const int32_t *codes, const int32_t *action,
                                   const int32_t *qtok, const float *x, const float *cal,
                                   const int32_t *region, const float *const *code_emb,
                                   const float *action_emb, const float *region_emb,
                                   const float *tok_emb, const float *t2v_w, const float *t2v_b,
                                   const float *time_w, const float *time_b, const float *ln_w,
                                   const float *ln_b, int N, int C, int L, int MQ, int P,
                                   void *stream) {
  const char *what = "vt_event_embed_cuda";
  if (N < 0 || C <= 0 || L < 0 || L > VT_CUDA_MAX_LEVELS || MQ < 0 || P < 1) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: bad shape N=%d C=%d L=%d (max %d) MQ=%d P=%d", what,
                         N, C, L, VT_CUDA_MAX_LEVELS, MQ, P);
  }
  if (N == 0) {
    return 0;
  }
  const size_t shmem = (size_t)(P + VT_N_CAL + C) * sizeof(float);
  if (shmem > 48 * 1024) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: C=%d P=%d need %zu bytes of shared memory (> 48 KiB)",
                         what, C, P, shmem);
  }
  if (!out || !codes || !action || (MQ > 0 && !qtok) || !x || !cal || !region ||
      (L > 0 && !code_emb) || !action_emb || !tok_emb || !t2v_w || !t2v_b ||
      !time_w || !time_b || !ln_w || !ln_b) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: NULL pointer", what);
  }
  code_tables tables = {};
  for (int l = 0; l < L; l++) {
    if (code_emb[l] == NULL) {
      return vt__cuda_fail(VT_CUDA_EINVAL, "%s: code_emb[%d] is NULL", what, l);
    }
    tables.t[l] = code_emb[l];
  }
  int threads = CEIL_DIV(C, WARP) * WARP;
  threads = threads < EMBED_THREADS ? threads : EMBED_THREADS;
  VT_LAUNCH(event_embed_kernel, N, threads, shmem, vt__stream(stream))(
      out, codes, action, qtok, x, cal, region, tables, action_emb, region_emb, tok_emb, t2v_w,
      t2v_b, time_w, time_b, ln_w, ln_b, C, L, MQ, P);
  return vt__cuda_check_launch(what);
}
