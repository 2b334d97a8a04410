/* Attention on CUDA: encoder self-attention with the time-bucket bias, cross-attention, and the
 * decoder's two attentions over beam rows (kernels/cpu/attention.c, kernels/decode.h).
 *
 * Shapes: C = NH * HS; head h owns columns h*HS .. h*HS+HS-1 of every q, k, v and output row.
 *   self:       qkv (Ntot, 3C) = q | k | v, ts (Ntot,) int64 seconds, bias (NH, 129), off (B+1,);
 *   cross:      q (Nq, C), kv (Nkv, 2C) = k | v, qoff, kvoff (B+1,);
 *   beam self:  q (cap, C), kpool, vpool (S, C); live row r's keys are its positions
 *               0 .. pos[r] through its slot table (cap, maxT);
 *   beam cross: q (cap, C), xkv (B * NQ, 2C); live row r's keys are request mem[r]'s NQ rows.
 * score = q . k * scale (+ bias[h][bucket(ts_i, ts_j)]), scale = (float)(1 / sqrt(HS)).
 *
 * Algorithm: one templated kernel, one block per query row at a time, all heads of that row
 * together, keys in tiles of ATT_TILE with an online softmax (flash-attention style, never an
 * N x N matrix). Per tile:
 *   1. the tile's time buckets (one double log per key, shared by all heads), or for the beam
 *      self-attention the tile's pool rows read from the slot table, into shared memory;
 *   2. the NH x tile scores, one dot product (HS,) per thread, into shared memory;
 *   3. per head: the tile maximum, the new running maximum m, the rescale factor
 *      exp(m_old - m_new) (0 for the first tile since m starts at -FLT_MAX, never -INF), the
 *      probabilities exp(s - m) in place, and the running denominator l;
 *   4. per output column: acc = acc * rescale + sum_j p_j v_j.
 * At the end the row is divided by l (zeros when there was no key: an empty cross group).
 * Beam rows: one block per row of the capacity; a row past the live count (read on the device)
 * returns at once, so the launch needs no host copy of the count.
 * Ragged batches: off arrays stay on the device; the grid is (B, Y) and block (b, y) takes rows
 * off[b] + y, + Y, ..., so no host copy of off is needed. Y = ATT_GRID_TARGET / B, at most
 * ATT_MAX_PER_SEQ: a small batch spreads its rows over the whole card (a batch of one request
 * gets a block per row), a large one gives each block a few rows; blocks past a group's rows
 * return at once.
 * Shared memory: (2 C + NH (ATT_TILE + 3)) floats + ATT_TILE ints, at most 48 KiB.
 * Floats differ from the CPU only in summation order (~1e-6 relative).
 */
#include <math.h>

#include "kernels/cuda/common.cuh"

#define ATT_TILE 32          /* keys per tile */
#define ATT_THREADS 128      /* threads per block (one query row) */
#define ATT_GRID_TARGET 1024 /* blocks a ragged launch aims at (a few per SM of an H100) */
#define ATT_MAX_PER_SEQ 256  /* most blocks one ragged group gets */

enum { ATT_SELF = 0, ATT_CROSS = 1, ATT_BEAM_SELF = 2, ATT_BEAM_CROSS = 3 };

struct att_args {
  float *out;                   // (rows, C)
  const float *q;               // query row i at q + i * qstride
  const float *k, *v;           // key row j at k + j * kvstride, its value at v + j * kvstride
  int qstride, kvstride;        // floats
  const int64_t *ts;            // self: (Ntot,)
  const float *bias;            // self: (NH, 129)
  const int32_t *qoff, *kvoff;  // self, cross: (B+1,)
  const int32_t *slot;          // beam self: (cap, maxT) pool slots
  int maxT;                     // beam self
  const int32_t *pos, *mem, *nlive; // beam rows: position, request, live count (device)
  int cap, NQ;                  // beam rows: capacity; memory tokens per request
  int C, NH, HS;
  float scale;
};

template <int MODE>
static __global__ void __launch_bounds__(ATT_THREADS) attention_kernel(att_args a) {
  VT_DYNAMIC_SHARED(float, smem);
  const int C = a.C, NH = a.NH, HS = a.HS;
  float *qs = smem;              // (C,) the query row
  float *acc = qs + C;           // (C,) the running weighted sum of values
  float *S = acc + C;            // (NH, ATT_TILE) scores, then probabilities
  float *mh = S + NH * ATT_TILE; // (NH,) running maxima
  float *lh = mh + NH;           // (NH,) running denominators
  float *ch = lh + NH;           // (NH,) this tile's rescale factors
  int *tk = (int *)(ch + NH);    // (ATT_TILE,) self: buckets; beam self: pool rows

  int r0, rend, rstep, k0, kend;
  if (MODE == ATT_BEAM_SELF || MODE == ATT_BEAM_CROSS) {
    r0 = blockIdx.x;
    const int n = *a.nlive < a.cap ? *a.nlive : a.cap;
    if (r0 >= n) {
      return; // a dead row: uniform over the block
    }
    rend = r0 + 1;
    rstep = 1;
    k0 = MODE == ATT_BEAM_SELF ? 0 : a.mem[r0] * a.NQ;
    kend = MODE == ATT_BEAM_SELF ? a.pos[r0] + 1 : k0 + a.NQ;
  } else {
    const int b = blockIdx.x;
    r0 = a.qoff[b] + blockIdx.y;
    rend = a.qoff[b + 1];
    rstep = gridDim.y;
    k0 = a.kvoff[b];
    kend = a.kvoff[b + 1];
  }

  for (int i = r0; i < rend; i += rstep) {
    const float *qrow = a.q + (size_t)i * a.qstride; // (C,)
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
      qs[c] = qrow[c];
      acc[c] = 0.0f;
    }
    for (int h = threadIdx.x; h < NH; h += blockDim.x) {
      mh[h] = -FLT_MAX;
      lh[h] = 0.0f;
    }
    const int64_t tsi = MODE == ATT_SELF ? a.ts[i] : 0;
    __syncthreads();

    for (int t0 = k0; t0 < kend; t0 += ATT_TILE) {
      const int nt = kend - t0 < ATT_TILE ? kend - t0 : ATT_TILE;
      // 1. per-key data shared by all heads
      if ((int)threadIdx.x < nt) {
        if (MODE == ATT_SELF) {
          tk[threadIdx.x] = time_bucket_dev(tsi, a.ts[t0 + threadIdx.x]);
        } else if (MODE == ATT_BEAM_SELF) {
          tk[threadIdx.x] = a.slot[(size_t)i * a.maxT + t0 + threadIdx.x];
        }
      }
      __syncthreads();
      // 2. scores (NH, nt)
      for (int idx = threadIdx.x; idx < NH * nt; idx += blockDim.x) {
        const int h = idx / nt, jj = idx - h * nt;
        const size_t j = MODE == ATT_BEAM_SELF ? (size_t)tk[jj] : (size_t)(t0 + jj);
        const float *kr = a.k + j * a.kvstride + (size_t)h * HS; // (HS,)
        const float *qh = qs + h * HS;                            // (HS,)
        float s = 0.0f;
        for (int d = 0; d < HS; d++) {
          s += qh[d] * kr[d];
        }
        s *= a.scale; // the reference scales q.k first, then adds the bias
        if (MODE == ATT_SELF) {
          s += a.bias[(size_t)h * VT_N_TIME_BUCKETS + tk[jj]];
        }
        S[h * ATT_TILE + jj] = s;
      }
      __syncthreads();
      // 3. online softmax state per head
      for (int h = threadIdx.x; h < NH; h += blockDim.x) {
        float *sh = S + h * ATT_TILE;
        float mt = -FLT_MAX;
        for (int jj = 0; jj < nt; jj++) {
          mt = fmaxf(mt, sh[jj]);
        }
        const float mold = mh[h], mnew = fmaxf(mold, mt);
        const float corr = expf(mold - mnew);
        float sum = 0.0f;
        for (int jj = 0; jj < nt; jj++) {
          const float p = expf(sh[jj] - mnew);
          sh[jj] = p;
          sum += p;
        }
        lh[h] = lh[h] * corr + sum;
        mh[h] = mnew;
        ch[h] = corr;
      }
      __syncthreads();
      // 4. values
      for (int c = threadIdx.x; c < C; c += blockDim.x) {
        const int h = c / HS;
        const float *ph = S + h * ATT_TILE;
        float av = acc[c] * ch[h];
        for (int jj = 0; jj < nt; jj++) {
          const size_t j = MODE == ATT_BEAM_SELF ? (size_t)tk[jj] : (size_t)(t0 + jj);
          av += ph[jj] * a.v[j * a.kvstride + c];
        }
        acc[c] = av;
      }
      __syncthreads();
    }

    float *orow = a.out + (size_t)i * C; // (C,)
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
      const float l = lh[c / HS];
      orow[c] = acc[c] * (l > 0.0f ? 1.0f / l : 0.0f);
    }
    __syncthreads(); // the next row overwrites qs, acc, mh, lh
  }
}

static size_t att_shmem(int C, int NH) {
  return (size_t)(2 * C + NH * (ATT_TILE + 3)) * sizeof(float) + ATT_TILE * sizeof(int);
}

static int att_check(const char *what, int C, int NH) {
  if (C <= 0 || NH <= 0 || C % NH != 0) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: C=%d is not a positive multiple of NH=%d", what, C,
                         NH);
  }
  if (att_shmem(C, NH) > 48 * 1024) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: C=%d NH=%d need %zu bytes of shared memory "
                         "(> 48 KiB)", what, C, NH, att_shmem(C, NH));
  }
  return 0;
}

static dim3 att_ragged_grid(int B) {
  int y = CEIL_DIV(ATT_GRID_TARGET, B);
  y = y < ATT_MAX_PER_SEQ ? y : ATT_MAX_PER_SEQ;
  return dim3((unsigned)B, (unsigned)(y > 0 ? y : 1));
}

static void att_common(att_args *a, float *out, int C, int NH) {
  *a = att_args{};
  a->out = out;
  a->C = C;
  a->NH = NH;
  a->HS = C / NH;
  a->scale = (float)(1.0 / sqrt((double)a->HS));
}

extern "C" int vt_attention_cuda(float *out, const float *qkv, const int64_t *ts,
                                 const int32_t *off, const float *bias, int B, int C, int NH,
                                 void *stream) {
  const char *what = "vt_attention_cuda";
  int rc = att_check(what, C, NH);
  if (rc != 0) {
    return rc;
  }
  if (B < 0) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: B=%d", what, B);
  }
  if (B == 0) {
    return 0;
  }
  if (!out || !qkv || !ts || !off || !bias) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: NULL pointer", what);
  }
  att_args a;
  att_common(&a, out, C, NH);
  a.q = qkv;
  a.k = qkv + C;
  a.v = qkv + 2 * (size_t)C;
  a.qstride = a.kvstride = 3 * C;
  a.ts = ts;
  a.bias = bias;
  a.qoff = a.kvoff = off;
  const dim3 grid = att_ragged_grid(B);
  VT_LAUNCH(attention_kernel<ATT_SELF>, grid, ATT_THREADS, att_shmem(C, NH), vt__stream(stream))(a);
  return vt__cuda_check_launch(what);
}

extern "C" int vt_cross_attention_cuda(float *out, const float *q, const float *kv,
                                       const int32_t *qoff, const int32_t *kvoff, int B, int C,
                                       int NH, void *stream) {
  const char *what = "vt_cross_attention_cuda";
  int rc = att_check(what, C, NH);
  if (rc != 0) {
    return rc;
  }
  if (B < 0) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: B=%d", what, B);
  }
  if (B == 0) {
    return 0;
  }
  if (!out || !q || !kv || !qoff || !kvoff) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: NULL pointer", what);
  }
  att_args a;
  att_common(&a, out, C, NH);
  a.q = q;
  a.qstride = C;
  a.k = kv;
  a.v = kv + C;
  a.kvstride = 2 * C;
  a.qoff = qoff;
  a.kvoff = kvoff;
  const dim3 grid = att_ragged_grid(B);
  VT_LAUNCH(attention_kernel<ATT_CROSS>, grid, ATT_THREADS, att_shmem(C, NH), vt__stream(stream))(a);
  return vt__cuda_check_launch(what);
}

static int beam_att_check(const char *what, const vt_beam_rows &rows, int cap, int C, int NH) {
  int rc = att_check(what, C, NH);
  if (rc != 0) {
    return rc;
  }
  if (cap < 0 || !rows.pos || !rows.mem || !rows.slots || !rows.n) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: cap=%d or a NULL pointer in the rows", what, cap);
  }
  return 0;
}

extern "C" int vt_dec_self_attention_cuda(float *out, const float *q, const float *kpool,
                                          const float *vpool, vt_beam_rows rows, int cap,
                                          int maxT, int C, int NH, void *stream) {
  const char *what = "vt_dec_self_attention_cuda";
  int rc = beam_att_check(what, rows, cap, C, NH);
  if (rc != 0) {
    return rc;
  }
  if (maxT <= 0 || !out || !q || !kpool || !vpool) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: maxT=%d or a NULL pointer", what, maxT);
  }
  if (cap == 0) {
    return 0;
  }
  att_args a;
  att_common(&a, out, C, NH);
  a.q = q;
  a.qstride = C;
  a.k = kpool;
  a.v = vpool;
  a.kvstride = C;
  a.slot = rows.slots;
  a.pos = rows.pos;
  a.nlive = rows.n;
  a.cap = cap;
  a.maxT = maxT;
  VT_LAUNCH(attention_kernel<ATT_BEAM_SELF>, cap, ATT_THREADS, att_shmem(C, NH),
            vt__stream(stream))(a);
  return vt__cuda_check_launch(what);
}

extern "C" int vt_dec_cross_attention_cuda(float *out, const float *q, const float *xkv,
                                           vt_beam_rows rows, int cap, int NQ, int C, int NH,
                                           void *stream) {
  const char *what = "vt_dec_cross_attention_cuda";
  int rc = beam_att_check(what, rows, cap, C, NH);
  if (rc != 0) {
    return rc;
  }
  if (NQ < 0 || !out || !q || !xkv) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: NQ=%d or a NULL pointer", what, NQ);
  }
  if (cap == 0) {
    return 0;
  }
  att_args a;
  att_common(&a, out, C, NH);
  a.q = q;
  a.qstride = C;
  a.k = xkv;
  a.v = xkv + C;
  a.kvstride = 2 * C;
  a.mem = rows.mem;
  a.nlive = rows.n;
  a.cap = cap;
  a.NQ = NQ;
  VT_LAUNCH(attention_kernel<ATT_BEAM_CROSS>, cap, ATT_THREADS, att_shmem(C, NH),
            vt__stream(stream))(a);
  return vt__cuda_check_launch(what);
}
