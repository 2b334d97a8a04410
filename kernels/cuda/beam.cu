/* One step of masked constrained beam search on CUDA (kernels/cpu/beam.c on the device).
 *
 * Shapes: h (nbeams, C); node, score (nbeams,); tok_emb (V, C); the CSR trie: indptr (nodes+1,),
 * token / child (entries,), phrase (nodes,); outputs (width,); out_count (1,) device int.
 * scratch (device, 4-byte elements): offs (nbeams+1,) int32, then cand (total,) float.
 *
 * Algorithm, three launches on one stream and no host sync:
 *   1. beam_offsets_kernel (1 block): each beam's child count indptr[node+1] - indptr[node]
 *      (negative counts as 0, as the CPU skips such a beam) and their exclusive prefix sum offs,
 *      so beam b's candidates are cand[offs[b] .. offs[b+1]-1] in the CPU's listing order;
 *   2. beam_logits_kernel (one block per beam): a warp per child computes the sparse logit
 *      h[b] . tok_emb[token[e]]; then the block's log-softmax in float32, max-subtracted as
 *      PyTorch writes it, and cand = score[b] + (logit - max - log(sum exp(logit - max)));
 *   3. beam_select_kernel (1 block): the best min(width, total) candidates, best first, under
 *      the CPU's order: higher score first, NaN last, ties to the earlier-listed candidate
 *      (= the lower flat index: lower beam, then lower token). Each pick finds its beam by a
 *      binary search in offs and writes parent, token, child node, score and phrase.
 * Floats differ from the CPU only in the dot product's summation order (~1e-6 relative), so
 * the selected ids agree exactly unless two candidates are that close.
 */
#include "kernels/cuda/common.cuh"

#define BEAM_SCAN_THREADS 1024
#define BEAM_LOGIT_THREADS 128
#define BEAM_SELECT_THREADS 1024

static __global__ void beam_offsets_kernel(int32_t *offs, const int32_t *node,
                                           const int32_t *indptr, int nbeams) {
  __shared__ int32_t cnt[BEAM_SCAN_THREADS];
  __shared__ int32_t base;
  if (threadIdx.x == 0) {
    base = 0;
  }
  for (int b0 = 0; b0 < nbeams; b0 += blockDim.x) {
    const int b = b0 + threadIdx.x;
    int32_t c = 0;
    if (b < nbeams) {
      const int32_t nd = node[b];
      c = indptr[nd + 1] - indptr[nd];
      c = c > 0 ? c : 0;
    }
    cnt[threadIdx.x] = c;
    __syncthreads();
    if (threadIdx.x == 0) {
      // a short serial scan in shared memory: beam counts are at most a few hundred
      const int nb = nbeams - b0 < (int)blockDim.x ? nbeams - b0 : (int)blockDim.x;
      int32_t run = base;
      for (int t = 0; t < nb; t++) {
        offs[b0 + t] = run;
        run += cnt[t];
      }
      base = run;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    offs[nbeams] = base;
  }
}

static __global__ void beam_logits_kernel(float *cand, const int32_t *offs, const float *h,
                                          const int32_t *node, const float *score,
                                          const float *tok_emb, const int32_t *indptr,
                                          const int32_t *token, int C) {
  __shared__ float red[WARP];
  const int b = blockIdx.x;
  const int e0 = indptr[node[b]];
  const int ne = offs[b + 1] - offs[b];
  if (ne <= 0) {
    return; // uniform over the block: a node without children offers no candidate
  }
  float *cb = cand + offs[b];          // (ne,)
  const float *hb = h + (size_t)b * C; // (C,)
  const int lane = threadIdx.x % WARP, wid = threadIdx.x / WARP, nw = blockDim.x / WARP;
  for (int i = wid; i < ne; i += nw) {
    const float *w = tok_emb + (size_t)token[e0 + i] * C; // (C,)
    float s = 0.0f;
    for (int c = lane; c < C; c += WARP) {
      s += hb[c] * w[c];
    }
    s = warp_sum(s);
    if (lane == 0) {
      cb[i] = s;
    }
  }
  __syncthreads();
  float mx = -FLT_MAX;
  for (int i = threadIdx.x; i < ne; i += blockDim.x) {
    mx = fmaxf(mx, cb[i]);
  }
  mx = block_max(mx, red);
  float sum = 0.0f;
  for (int i = threadIdx.x; i < ne; i += blockDim.x) {
    sum += expf(cb[i] - mx);
  }
  const float lse = logf(block_sum(sum, red));
  const float sb = score[b];
  for (int i = threadIdx.x; i < ne; i += blockDim.x) {
    cb[i] = sb + (cb[i] - mx - lse);
  }
}

static __global__ void beam_select_kernel(int32_t *out_parent, int32_t *out_token,
                                          int32_t *out_node, float *out_score,
                                          int32_t *out_phrase, int32_t *out_count,
                                          const float *cand, const int32_t *offs,
                                          const int32_t *node, const int32_t *indptr,
                                          const int32_t *token, const int32_t *child,
                                          const int32_t *phrase, int nbeams, int width) {
  __shared__ sel_key shared[WARP];
  const int total = offs[nbeams];
  auto load = [&](int i) {
    sel_key k;
    k.s = cand[i];
    k.id = i; // the listing order breaks ties
    k.pos = i;
    return k;
  };
  auto emit = [&](int r, sel_key k) {
    // the beam owning flat candidate k.pos: the last b with offs[b] <= pos
    int lo = 0, hi = nbeams - 1;
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (offs[mid] <= k.pos) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    const int e = indptr[node[lo]] + (k.pos - offs[lo]);
    out_parent[r] = lo;
    out_token[r] = token[e];
    out_node[r] = child[e];
    out_score[r] = k.s;
    out_phrase[r] = phrase[child[e]];
  };
  block_select(total, width, load, emit, shared);
  if (threadIdx.x == 0 && out_count != NULL) {
    *out_count = width < total ? width : total;
  }
}

extern "C" int vt_beam_step_cuda(int32_t *out_parent, int32_t *out_token, int32_t *out_node,
                                 float *out_score, int32_t *out_phrase, const float *h,
                                 const int32_t *node, const float *score, int nbeams,
                                 const float *tok_emb, const int32_t *indptr,
                                 const int32_t *token, const int32_t *child,
                                 const int32_t *phrase, int C, int width, float *scratch,
                                 int32_t *out_count, void *stream) {
  const char *what = "vt_beam_step_cuda";
  cudaStream_t s = vt__stream(stream);
  if (nbeams < 0 || C <= 0) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: bad shape nbeams=%d C=%d", what, nbeams, C);
  }
  if (width <= 0 || nbeams == 0) {
    if (out_count != NULL) {
      cudaError_t ce = cudaMemsetAsync(out_count, 0, sizeof(int32_t), s);
      if (ce != cudaSuccess) {
        (void)cudaGetLastError();
        return vt__cuda_fail(VT_CUDA_EDEVICE, "%s: cudaMemsetAsync: %s", what,
                             cudaGetErrorString(ce));
      }
    }
    return 0;
  }
  if (!out_parent || !out_token || !out_node || !out_score || !out_phrase || !h || !node ||
      !score || !tok_emb || !indptr || !token || !child || !phrase || !scratch) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: NULL pointer", what);
  }
  int32_t *offs = (int32_t *)scratch; // (nbeams+1,)
  float *cand = scratch + nbeams + 1; // (total,)
  VT_LAUNCH(beam_offsets_kernel, 1, BEAM_SCAN_THREADS, 0, s)(offs, node, indptr, nbeams);
  int rc = vt__cuda_check_launch("vt_beam_step_cuda (offsets)");
  if (rc != 0) {
    return rc;
  }
  VT_LAUNCH(beam_logits_kernel, nbeams, BEAM_LOGIT_THREADS, 0, s)(cand, offs, h, node, score, tok_emb,
                                                           indptr, token, C);
  rc = vt__cuda_check_launch("vt_beam_step_cuda (logits)");
  if (rc != 0) {
    return rc;
  }
  VT_LAUNCH(beam_select_kernel, 1, BEAM_SELECT_THREADS, 0, s)(out_parent, out_token, out_node, out_score,
                                                       out_phrase, out_count, cand, offs, node,
                                                       indptr, token, child, phrase, nbeams,
                                                       width);
  return vt__cuda_check_launch("vt_beam_step_cuda (select)");
}
