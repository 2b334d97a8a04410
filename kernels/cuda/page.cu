/* The page step on CUDA (kernels/cpu/page.c on the device): per request, per section in order,
 * rank the section's keywords, retrieve their products, filter, score, skip what the page already
 * shows, keep the best.
 *
 * Shapes: out, req (B,); hist, excl flat; user (B, R); the catalogue (vt_shelf) as in
 * kernels/decode.h. Scratch: `lanes` copies of dense per-product arrays (P) — the history
 * features again / cooc / recent, first-occurrence positions, a touched list, touched and shown marks —
 * then the section's candidate buffers (max_cands each). The dense arrays are zero when a call
 * starts and when it ends: each request clears what it touched.
 *
 * Algorithm: one block per lane; a block takes requests blockIdx.x, + gridDim.x, ... and their
 * sections one after another (a section skips what earlier sections showed). Per section:
 *   1. one thread ranks the section's finished keywords and lays their product lists end to end
 *      (flat positions j);
 *   2. every j marks its product's first occurrence (atomicMax of INT_MAX - j: the lowest j
 *      wins, and 0 means none, so the marks start and end zeroed);
 *   3. the first occurrences that pass the filters (exclusions, stock, region, season) are
 *      compacted in order by a block scan: the CPU's candidate list, each with the keyword that
 *      first retrieved it;
 *   4. each candidate's score, user . emb[p] + again * again_p + cooc * cooc_p + popularity *
 *      log_pop[p], or the learned ranker's (kernels/ranker.h), in the CPU's operation order with contraction into FMA ruled out
 *      (__fmul_rn / __fadd_rn), so scores are bit-identical to the CPU's and so are the picks;
 *   5. block_select takes the best `products` not yet shown (higher score, then lower product);
 *      with the ranker's calibration on, one thread picks them greedily (kernels/calib.h).
 * The history features are summed by one thread in the reference's order (newest first), for the
 * same reason. Lanes: min(B, 32), fewer when the dense arrays would pass 256 MiB.
 */
#include <limits.h>

#include "kernels/calib.h"
#include "kernels/cuda/common.cuh"
#include "kernels/ranker.h"

#define PAGE_THREADS 128
#define PAGE_MAX_LANES 32
#define PAGE_LANE_BUDGET ((size_t)256 << 20)

struct page_lane {
  float *again, *cooc, *recent; // (P)
  int32_t *first, *touched;    // (P)
  uint8_t *marked, *shown;     // (P)
  int32_t *cand, *cred;        // (max_cands)
  float *score;                // (max_cands)
};

static __host__ __device__ size_t page_al(size_t b) { return (b + 255) & ~(size_t)255; }

static __host__ __device__ size_t page_lane_bytes(int P, int max_cands) {
  const size_t p = (size_t)P, m = (size_t)(max_cands > 0 ? max_cands : 1);
  return 5 * page_al(p * 4) + 2 * page_al(p) + 3 * page_al(m * 4);
}

static __device__ page_lane page_lane_at(char *base, int P, int max_cands) {
  const size_t p = (size_t)P, m = (size_t)(max_cands > 0 ? max_cands : 1);
  page_lane l;
  l.again = (float *)base;
  base += page_al(p * 4);
  l.cooc = (float *)base;
  base += page_al(p * 4);
  l.recent = (float *)base;
  base += page_al(p * 4);
  l.first = (int32_t *)base;
  base += page_al(p * 4);
  l.touched = (int32_t *)base;
  base += page_al(p * 4);
  l.marked = (uint8_t *)base;
  base += page_al(p);
  l.shown = (uint8_t *)base;
  base += page_al(p);
  l.cand = (int32_t *)base;
  base += page_al(m * 4);
  l.cred = (int32_t *)base;
  base += page_al(m * 4);
  l.score = (float *)base;
  return l;
}

static int page_lanes(int P, int max_cands, int B) {
  int lanes = B < PAGE_MAX_LANES ? B : PAGE_MAX_LANES;
  const size_t fit = PAGE_LANE_BUDGET / page_lane_bytes(P, max_cands);
  if ((size_t)lanes > fit) {
    lanes = (int)fit;
  }
  return lanes > 0 ? lanes : 1;
}

extern "C" size_t vt_page_scratch_cuda(int P, int max_cands, int B) {
  return (size_t)page_lanes(P, max_cands, B) * page_lane_bytes(P, max_cands);
}

/* again[p] += decay^k, cooc[q] += decay^k rel_w for the history's k-th newest product p and its
 * related products q (one thread, the reference's order), and recent[] = 1 / (1 + k) at a
 * product's first touch (the newest k); returns how many products it touched. */
static __device__ int history_features(page_lane &l, const int32_t *hist, int n_hist,
                                       const vt_shelf &sh, float decay) {
  float wgt = 1.0f;
  int nt = 0;
  for (int k = n_hist - 1; k >= 0; k--) {
    const int p = hist[k];
    const float recent = __fdiv_rn(1.0f, (float)(n_hist - k));
    if (!l.marked[p]) {
      l.marked[p] = 1;
      l.touched[nt++] = p;
      l.recent[p] = recent;
    }
    l.again[p] = __fadd_rn(l.again[p], wgt);
    for (int i = sh.rel_off[p]; i < sh.rel_off[p + 1]; i++) {
      const int q = sh.rel_idx[i];
      if (!l.marked[q]) {
        l.marked[q] = 1;
        l.touched[nt++] = q;
        l.recent[q] = recent;
      }
      l.cooc[q] = __fadd_rn(l.cooc[q], __fmul_rn(wgt, sh.rel_w[i]));
    }
    wgt = __fmul_rn(wgt, decay);
  }
  return nt;
}

/* The product at flat position j of the section's keyword lists, and its keyword. */
static __device__ __forceinline__ int32_t flat_product(const vt_shelf &sh, const vt_section *sec,
                                                       const int *kw_start, int nk, int j,
                                                       int32_t *kw) {
  int k = 0;
  while (k + 1 < nk && kw_start[k + 1] <= j) {
    k++;
  }
  *kw = sec->keyword[k];
  return sh.kw_prod[sh.kw_off[*kw] + (j - kw_start[k])];
}

static __global__ void __launch_bounds__(PAGE_THREADS)
    page_kernel(vt_storefront *out, const vt_page_req *req, const int32_t *hist,
                const int32_t *excl, const float *user, vt_beam_groups g2, vt_shelf sh,
                vt_ranker rk, vt_ranker_model lm, int B, int max_cands, char *scratch,
                size_t lane_bytes) {
  __shared__ int shared[WARP];
  __shared__ sel_key shared_keys[WARP];
  __shared__ int kw_start[VT_MAX_KEYWORDS + 1];
  __shared__ int n_touched;
  __shared__ vt_calib cal;                   // the page's calibration counts
  __shared__ double cal_kl[VT_CALIB_CATEGORIES];
  page_lane l = page_lane_at(scratch + (size_t)blockIdx.x * lane_bytes, sh.n_products, max_cands);
  const int R = sh.d_retrieval;
  for (int i = blockIdx.x; i < B; i += gridDim.x) {
    const vt_page_req r = req[i];
    vt_storefront *o = &out[i];
    const float *u = user + (size_t)i * R; // (R,)
    if (threadIdx.x == 0) {
      n_touched = history_features(l, hist + r.hist0, r.n_hist, sh, rk.decay);
    }
    const int calibrated = rk.calibration > 0.0f && sh.codes && r.n_hist > 0;
    if (calibrated && threadIdx.x == 0) {
      vt_calib_start(&cal, &sh, hist + r.hist0, r.n_hist);
    }
    __syncthreads();
    const int ns = o->n_sections;
    for (int s = 0; s < ns; s++) {
      vt_section *sec = &o->sections[s];
      // 1. the section's keywords, and their product lists end to end
      if (threadIdx.x == 0) {
        const int gi = r.group0 + s;
        const size_t f0 = (size_t)gi * g2.fin_cap;
        int32_t order[VT_MAX_KEYWORDS];
        const int nk = rank_finished_dev(order, g2.fin_score + f0, g2.fin_phrase + f0,
                                         g2.n_fin[gi], r.keywords, sh.kw_block, r.region,
                                         r.season, nullptr, 0u);
        sec->n_keywords = nk;
        kw_start[0] = 0;
        for (int k = 0; k < nk; k++) {
          const int32_t kw = g2.fin_phrase[f0 + order[k]];
          sec->keyword[k] = kw;
          sec->keyword_score[k] = g2.fin_score[f0 + order[k]];
          kw_start[k + 1] = kw_start[k] + (sh.kw_off[kw + 1] - sh.kw_off[kw]);
        }
      }
      __syncthreads();
      const int nk = sec->n_keywords, n = kw_start[nk];
      // 2. each product's first occurrence
      for (int j = threadIdx.x; j < n; j += blockDim.x) {
        int32_t kw;
        const int32_t p = flat_product(sh, sec, kw_start, nk, j, &kw);
        atomicMax(&l.first[p], INT_MAX - j);
      }
      __syncthreads();
      // 3. the candidates: first occurrences that pass the filters, in order
      int nc = 0;
      for (int b0 = 0; b0 < n; b0 += blockDim.x) {
        const int j = b0 + threadIdx.x;
        int keep = 0;
        int32_t p = 0, kw = 0;
        if (j < n) {
          p = flat_product(sh, sec, kw_start, nk, j, &kw);
          keep = l.first[p] == INT_MAX - j && sh.stock[p] > 0 &&
                 (sh.regions[p] >> r.region & 1u) && (sh.seasons[p] >> r.season & 1u) &&
                 !(sh.prod_block &&
                   (sh.prod_block[(size_t)p * 4 + (size_t)r.season] >> r.region & 1u));
          for (int x = 0; x < r.n_excl && keep; x++) {
            keep = excl[r.excl0 + x] != p;
          }
        }
        int total;
        const int ex = block_exclusive_scan(keep, shared, &total);
        if (keep) {
          l.cand[nc + ex] = p;
          l.cred[nc + ex] = kw;
        }
        nc += total;
      }
      __syncthreads(); // every first[] read is done before they are cleared
      for (int j = threadIdx.x; j < n; j += blockDim.x) {
        int32_t kw;
        l.first[flat_product(sh, sec, kw_start, nk, j, &kw)] = 0;
      }
      // 4. scores, in the CPU's order of operations
      int valid = 0;
      for (int c = threadIdx.x; c < nc; c += blockDim.x) {
        const int32_t p = l.cand[c];
        const float *e = sh.emb + (size_t)p * R; // (R,)
        float dot = 0.0f;
        for (int k = 0; k < R; k++) {
          dot = __fadd_rn(dot, __fmul_rn(e[k], u[k]));
        }
        float sc;
        if (lm.hidden >= 0) { // the learned ranker (kernels/ranker.h)
          float x[VT_RANKER_FEATURES];
          vt__ranker_features(x, &lm, dot, l.again[p], l.cooc[p], l.recent[p], sh.log_pop[p], sec,
                              vt__keyword_rank(sec, l.cred[c]), s);
          sc = vt__ranker_score(&lm, x);
        } else {
          sc = __fadd_rn(dot, __fmul_rn(rk.again, l.again[p]));
          sc = __fadd_rn(sc, __fmul_rn(rk.cooc, l.cooc[p]));
          sc = __fadd_rn(sc, __fmul_rn(rk.popularity, sh.log_pop[p]));
        }
        l.score[c] = sc;
        valid += !l.shown[p];
      }
      int n_valid;
      (void)block_exclusive_scan(valid, shared, &n_valid); // its total: the candidates not shown
      // 5. the best products not shown yet
      const int kk = r.products < n_valid ? r.products : n_valid;
      auto load = [&](int c) {
        if (l.shown[l.cand[c]]) {
          return sel_none();
        }
        sel_key k;
        k.s = l.score[c];
        k.id = l.cand[c]; // ties: the lower product index
        k.pos = c;
        return k;
      };
      auto emit = [&](int rank, sel_key k) {
        sec->products[rank].product = l.cand[k.pos];
        sec->products[rank].keyword = l.cred[k.pos]; // the keyword that first retrieved it
        sec->products[rank].score = k.s;
      };
      if (!calibrated) {
        block_select(nc, kk, load, emit, shared_keys);
      } else if (threadIdx.x == 0) {
        int32_t top[VT_MAX_PRODUCTS];
        float top_score[VT_MAX_PRODUCTS];
        const int got = vt_calib_pick(top, top_score, &cal, cal_kl, l.shown, l.cand, l.score, nc,
                                      kk, &sh, rk.calibration);
        for (int t = 0; t < got; t++) {
          int c = 0;
          while (l.cand[c] != top[t]) {
            c++;
          }
          sel_key k;
          k.s = top_score[t];
          k.id = top[t];
          k.pos = c;
          emit(t, k);
        }
      }
      if (threadIdx.x == 0) {
        sec->n_products = kk;
      }
      __syncthreads();
      for (int t = threadIdx.x; t < kk; t += blockDim.x) {
        l.shown[sec->products[t].product] = 1;
      }
      __syncthreads();
    }
    // the request's marks and features, back to zero
    for (int k = threadIdx.x; k < n_touched; k += blockDim.x) {
      const int32_t p = l.touched[k];
      l.again[p] = 0.0f;
      l.cooc[p] = 0.0f;
      l.recent[p] = 0.0f;
      l.marked[p] = 0;
    }
    for (int s = 0; s < ns; s++) {
      for (int t = threadIdx.x; t < o->sections[s].n_products; t += blockDim.x) {
        l.shown[o->sections[s].products[t].product] = 0;
      }
    }
    __syncthreads();
  }
}

extern "C" int vt_page_assemble_cuda(vt_storefront *out, const vt_page_req *req,
                                     const int32_t *hist, const int32_t *excl, const float *user,
                                     vt_beam_groups g2, vt_shelf shelf, vt_ranker rk,
                                     vt_ranker_model lm, int B, int max_cands, void *scratch,
                                     void *stream) {
  const char *what = "vt_page_assemble_cuda";
  if (B < 0 || max_cands < 0 || shelf.n_products < 1 || shelf.d_retrieval < 0) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: bad shape B=%d max_cands=%d P=%d R=%d", what, B,
                         max_cands, shelf.n_products, shelf.d_retrieval);
  }
  if (B == 0) {
    return 0;
  }
  if (!out || !req || !hist || !excl || !user || !scratch || !g2.n_fin || !g2.fin_score ||
      !g2.fin_phrase || !shelf.kw_off || !shelf.kw_prod || !shelf.stock || !shelf.regions ||
      !shelf.seasons || !shelf.emb || !shelf.log_pop || !shelf.rel_off || !shelf.rel_idx ||
      !shelf.rel_w) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: NULL pointer", what);
  }
  const int lanes = page_lanes(shelf.n_products, max_cands, B);
  VT_LAUNCH(page_kernel, lanes, PAGE_THREADS, 0, vt__stream(stream))(
      out, req, hist, excl, user, g2, shelf, rk, lm, B, max_cands, (char *)scratch,
      page_lane_bytes(shelf.n_products, max_cands));
  return vt__cuda_check_launch(what);
}
