/* Retrieval scoring and top-k selection on CUDA (kernels/cpu/retrieval.c on the device).
 *
 * vt_retrieval_scores_cuda: out (n,) = emb[idx] (n, R) . u (R,); one warp per candidate, lanes
 * strided over R, a shuffle reduction. emb (P, R) is the catalogue's product vectors.
 *
 * vt_topk_cuda: the best k' = min(k, n) of n (score, id) pairs, best first, under the CPU's
 * total order (a number beats a NaN, then the higher score, then the lower id, then the lower
 * input position), so the result is exactly the CPU's whatever the algorithm.
 * Algorithm: for small inputs (n <= TOPK_CHUNK, or k too large for a two-stage split) one block
 * makes k' passes over all pairs, each taking the best pair ranked after the previous pick.
 * Otherwise two stages: topk_chunk_kernel gives each block a chunk of TOPK_CHUNK pairs held in
 * registers (TOPK_ITEMS per thread) and writes the positions of the chunk's best min(k, chunk)
 * to scratch, block b at scratch[b * k ..]; then one block selects the final k' from those
 * (nblocks - 1) * k + min(k, last chunk) <= n positions. The true top k' of all pairs is among
 * the union of every chunk's top k', so the result is the same.
 * Cost: O(k) block-wide passes; meant for k up to about a thousand.
 */
#include "kernels/cuda/common.cuh"

#define SCORE_THREADS 256
#define TOPK_THREADS 256                       /* stage 1 */
#define TOPK_ITEMS 8                           /* pairs per thread in stage 1 */
#define TOPK_CHUNK (TOPK_THREADS * TOPK_ITEMS) /* pairs per stage-1 block */
#define TOPK_FINAL_THREADS 1024                /* the single-block selection */

static __global__ void __launch_bounds__(SCORE_THREADS)
    retrieval_scores_kernel(float *out, const float *u, const float *emb,
                                               const int32_t *idx, int n, int R) {
  const int warps = blockDim.x / WARP;
  const int i = blockIdx.x * warps + threadIdx.x / WARP;
  const int lane = threadIdx.x % WARP;
  if (i >= n) {
    return; // a whole warp leaves together
  }
  const float *e = emb + (size_t)idx[i] * R; // (R,)
  float s = 0.0f;
  for (int r = lane; r < R; r += WARP) {
    s += e[r] * u[r];
  }
  s = warp_sum(s);
  if (lane == 0) {
    out[i] = s;
  }
}

static __device__ __forceinline__ sel_key pair_key(const float *score, const int32_t *id,
                                                   int p) {
  sel_key k;
  k.s = score[p];
  k.id = id[p];
  k.pos = p;
  return k;
}

/* Stage 1: block b's best min(k, chunk) positions of pairs b*TOPK_CHUNK .., unordered. */
static __global__ void __launch_bounds__(TOPK_THREADS)
    topk_chunk_kernel(int32_t *cand, const float *score, const int32_t *id,
                                         int n, int k) {
  __shared__ sel_key shared[WARP];
  const int p0 = blockIdx.x * TOPK_CHUNK;
  const int m = n - p0 < TOPK_CHUNK ? n - p0 : TOPK_CHUNK;
  sel_key items[TOPK_ITEMS];
#pragma unroll
  for (int t = 0; t < TOPK_ITEMS; t++) {
    const int i = threadIdx.x + t * TOPK_THREADS;
    items[t] = i < m ? pair_key(score, id, p0 + i) : sel_none();
  }
  const int kk = k < m ? k : m;
  sel_key prev = sel_none();
  for (int r = 0; r < kk; r++) {
    sel_key best = sel_none();
#pragma unroll
    for (int t = 0; t < TOPK_ITEMS; t++) {
      if ((r == 0 || sel_better(prev, items[t])) && sel_better(items[t], best)) {
        best = items[t];
      }
    }
    best = block_best(best, shared);
    if (threadIdx.x == 0) {
      cand[(size_t)blockIdx.x * k + r] = best.pos;
    }
    prev = best;
  }
}

/* The final selection over m items: positions cand[0 .. m-1], or (cand NULL) all of 0 .. m-1. */
static __global__ void __launch_bounds__(TOPK_FINAL_THREADS)
    topk_select_kernel(int32_t *out_id, float *out_score, const float *score,
                                          const int32_t *id, const int32_t *cand, int m, int k) {
  __shared__ sel_key shared[WARP];
  auto load = [&](int i) { return pair_key(score, id, cand != NULL ? cand[i] : i); };
  auto emit = [&](int r, sel_key key) {
    out_id[r] = key.id;
    out_score[r] = key.s;
  };
  block_select(m, k, load, emit, shared);
}

extern "C" int vt_retrieval_scores_cuda(float *out, const float *u, const float *emb,
                                        const int32_t *idx, int n, int R, void *stream) {
  const char *what = "vt_retrieval_scores_cuda";
  if (n < 0 || R < 0) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: bad shape n=%d R=%d", what, n, R);
  }
  if (n == 0) {
    return 0;
  }
  if (!out || !idx || (R > 0 && (!u || !emb))) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: NULL pointer", what);
  }
  const int per_block = SCORE_THREADS / WARP;
  VT_LAUNCH(retrieval_scores_kernel, CEIL_DIV(n, per_block), SCORE_THREADS, 0, vt__stream(stream))(
      out, u, emb, idx, n, R);
  return vt__cuda_check_launch(what);
}

extern "C" int vt_topk_cuda(int32_t *out_id, float *out_score, const float *score,
                            const int32_t *id, int n, int k, int32_t *scratch, void *stream) {
  const char *what = "vt_topk_cuda";
  if (n < 0) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: n=%d", what, n);
  }
  const int kk = k < n ? k : n;
  if (kk <= 0) {
    return 0;
  }
  if (!out_id || !out_score || !score || !id) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: NULL pointer", what);
  }
  cudaStream_t s = vt__stream(stream);
  // two stages only when they shrink the input well: many chunks, k small against a chunk
  if (n > TOPK_CHUNK && kk <= TOPK_CHUNK / 4) {
    if (scratch == NULL) {
      return vt__cuda_fail(VT_CUDA_EINVAL, "%s: NULL scratch", what);
    }
    const int nblocks = CEIL_DIV(n, TOPK_CHUNK);
    const int last = n - (nblocks - 1) * TOPK_CHUNK;
    const int m = (nblocks - 1) * kk + (kk < last ? kk : last); // <= n
    VT_LAUNCH(topk_chunk_kernel, nblocks, TOPK_THREADS, 0, s)(scratch, score, id, n, kk);
    int rc = vt__cuda_check_launch("vt_topk_cuda (chunks)");
    if (rc != 0) {
      return rc;
    }
    VT_LAUNCH(topk_select_kernel, 1, TOPK_FINAL_THREADS, 0, s)(out_id, out_score, score, id, scratch, m,
                                                        kk);
  } else {
    VT_LAUNCH(topk_select_kernel, 1, TOPK_FINAL_THREADS, 0, s)(out_id, out_score, score, id, NULL, n,
                                                        kk);
  }
  int rc = vt__cuda_check_launch(what);
  return rc != 0 ? rc : kk;
}
