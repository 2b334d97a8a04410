/* The beam searches' steps on CUDA (kernels/cpu/decode.c on the device): feeding rows, appending
 * to the KV pool, the beam step of every group in one segmented pass, the bookkeeping after it,
 * the theme -> keyword hand-over, and two small row ops of the encoder.
 *
 * Shapes: rows (cap,) with slots (cap, maxT) and a live count *rows.n on the device; groups (G,),
 * finished (G, fin_cap); picks (G, wmax). Every kernel reads the live counts itself, so a decode
 * step launches over fixed capacities, never waits for the host, and replays from a CUDA graph.
 *
 * Algorithms:
 *   feed, kv_append: one block per row slot r < cap; rows r >= *n return at once.
 *   beam select, three launches: (1) one block scans the live rows' child counts into offsets
 *     (rows are packed group after group, so a group's candidates are one contiguous range);
 *     (2) one block per live row computes its children's sparse logits (a warp per child) and
 *     their log-softmax, max-subtracted in float32 as PyTorch writes it; (3) one block per group
 *     selects its best `width` candidates with block_select, in the CPU's order (higher score,
 *     NaN last, ties to the earlier-listed candidate: lower row, then lower token), and finds
 *     each pick's row by a binary search in the offsets. Floats differ from the CPU only by the
 *     dot products' summation order (~1e-6 relative).
 *   advance, one block: a thread per group appends finished picks and counts live ones (with the
 *     exact early stop); a block scan of the live counts places each group's next rows; a thread
 *     per group writes them (token, node, score, memory, position, slot table). The scan uses
 *     g.n_rows for the counts, then rewrites it.
 *   themes -> keywords, one block: a thread per request ranks its finished themes; a scan places
 *     the keyword searches' first rows; a thread per search writes its row. The finished theme
 *     a search starts from is parked in its n_fin slot between the two passes (request *
 *     VT_MAX_FINISHED + theme) and reset to 0 after.
 * Limits: G and B any size (the single-block kernels loop); maxT and widths as the engine's.
 */
#include "kernels/cuda/common.cuh"

#define ROW_THREADS 128    /* feed, kv_append */
#define SCAN_THREADS 1024  /* the single-block bookkeeping kernels */
#define LOGIT_THREADS 128  /* beam select (2) */
#define PICK_THREADS 64    /* beam select (3) */
#define ROWOP_THREADS 256  /* repeat_rows, mean_rows */

static __device__ __forceinline__ int live_rows(const vt_beam_rows &rows, int cap) {
  const int n = *rows.n;
  return n < cap ? n : cap;
}

/* ---- feed and KV append ------------------------------------------------------------------- */
static __global__ void __launch_bounds__(ROW_THREADS)
    beam_feed_kernel(float *Y, vt_beam_rows rows, const int32_t *slot_base, const float *tok_emb,
                     const float *pos_emb, int cap, int C, int maxT) {
  const int r = blockIdx.x;
  if (r >= live_rows(rows, cap)) {
    return;
  }
  const float *te = tok_emb + (size_t)rows.token[r] * C; // (C,)
  const float *pe = pos_emb + (size_t)rows.pos[r] * C;   // (C,)
  float *y = Y + (size_t)r * C;                          // (C,)
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    y[c] = te[c] + pe[c];
  }
  if (threadIdx.x == 0) {
    rows.slots[(size_t)r * maxT + rows.pos[r]] = *slot_base + r;
  }
}

static __global__ void __launch_bounds__(ROW_THREADS)
    kv_append_kernel(float *Q, float *kpool, float *vpool, const float *QKV, vt_beam_rows rows,
                     int cap, int C, int maxT) {
  const int r = blockIdx.x;
  if (r >= live_rows(rows, cap)) {
    return;
  }
  const float *src = QKV + (size_t)r * 3 * C; // (3C,) q | k | v
  const size_t s = (size_t)rows.slots[(size_t)r * maxT + rows.pos[r]];
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    Q[(size_t)r * C + c] = src[c];
    kpool[s * C + c] = src[C + c];
    vpool[s * C + c] = src[2 * C + c];
  }
}

/* ---- beam select ---------------------------------------------------------------------------- */
static __global__ void __launch_bounds__(SCAN_THREADS)
    sel_offsets_kernel(int32_t *offs, vt_beam_rows rows, const int32_t *indptr, int cap) {
  __shared__ int shared[WARP];
  const int n = live_rows(rows, cap);
  int carry = 0;
  for (int b0 = 0; b0 < n; b0 += blockDim.x) {
    const int r = b0 + threadIdx.x;
    int c = 0;
    if (r < n) {
      const int32_t nd = rows.node[r];
      c = indptr[nd + 1] - indptr[nd];
      c = c > 0 ? c : 0;
    }
    int total;
    const int ex = block_exclusive_scan(c, shared, &total);
    if (r < n) {
      offs[r] = carry + ex;
    }
    carry += total;
  }
  if (threadIdx.x == 0) {
    offs[n] = carry;
  }
}

static __global__ void __launch_bounds__(LOGIT_THREADS)
    sel_logits_kernel(float *cand, const int32_t *offs, const float *h, vt_beam_rows rows,
                      const float *tok_emb, const int32_t *indptr, const int32_t *token, int cap,
                      int C) {
  __shared__ float red[WARP];
  const int r = blockIdx.x;
  if (r >= live_rows(rows, cap)) {
    return;
  }
  const int ne = offs[r + 1] - offs[r];
  if (ne <= 0) {
    return; // uniform over the block: a node without children offers no candidate
  }
  const int e0 = indptr[rows.node[r]];
  float *cb = cand + offs[r];          // (ne,)
  const float *hb = h + (size_t)r * C; // (C,)
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
  const float sb = rows.score[r];
  for (int i = threadIdx.x; i < ne; i += blockDim.x) {
    cb[i] = sb + (cb[i] - mx - lse);
  }
}

static __global__ void __launch_bounds__(PICK_THREADS)
    sel_pick_kernel(vt_beam_picks picks, const float *cand, const int32_t *offs, vt_beam_rows rows,
                    vt_beam_groups g, int wmax, vt_trie_csr trie) {
  __shared__ sel_key shared[WARP];
  const int gi = blockIdx.x;
  const int nr = g.n_rows[gi];
  if ((g.state[gi] & VT_GROUP_DONE) || nr <= 0) {
    if (threadIdx.x == 0) {
      picks.n[gi] = 0;
    }
    return;
  }
  const int r0 = g.row0[gi], c0 = offs[r0], m = offs[r0 + nr] - c0;
  const int width = g.width[gi], base = gi * wmax;
  auto load = [&](int i) {
    sel_key k;
    k.s = cand[c0 + i];
    k.id = i; // the listing order breaks ties
    k.pos = i;
    return k;
  };
  auto emit = [&](int rank, sel_key k) {
    const int p = c0 + k.pos;
    int lo = r0, hi = r0 + nr - 1; // the last row whose candidates start at or before p
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (offs[mid] <= p) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    const int e = trie.indptr[rows.node[lo]] + (p - offs[lo]);
    const int32_t child = trie.child[e];
    picks.parent[base + rank] = lo;
    picks.token[base + rank] = trie.token[e];
    picks.node[base + rank] = child;
    picks.score[base + rank] = k.s;
    picks.phrase[base + rank] = trie.phrase[child];
  };
  block_select(m, width, load, emit, shared);
  if (threadIdx.x == 0) {
    picks.n[gi] = width < m ? width : m;
  }
}

/* ---- advance ------------------------------------------------------------------------------- */
/* The n_best-th largest of the finished scores (ties: the earlier first); 0 if there are fewer. */
static __device__ int kth_finished(const float *fin, int n_fin, int n_best, float *kth) {
  for (int f = 0; f < n_fin; f++) {
    int larger = 0;
    for (int f2 = 0; f2 < n_fin; f2++) {
      larger += fin[f2] > fin[f] || (fin[f2] == fin[f] && f2 < f);
    }
    if (larger == n_best - 1) {
      *kth = fin[f];
      return 1;
    }
  }
  return 0;
}

static __device__ void copy_slots(int32_t *dst, const int32_t *src, int n) {
  for (int t = 0; t < n; t++) {
    dst[t] = src[t];
  }
}

/* Exclusive scan of v[0 .. n-1] in place by one block; returns the total to every thread. */
static __device__ int block_scan_array(int32_t *v, int n, int *shared) {
  int carry = 0;
  for (int b0 = 0; b0 < n; b0 += blockDim.x) {
    const int i = b0 + threadIdx.x;
    const int x = i < n ? v[i] : 0;
    int total;
    const int ex = block_exclusive_scan(x, shared, &total);
    if (i < n) {
      v[i] = carry + ex;
    }
    carry += total;
  }
  return carry;
}

static __global__ void __launch_bounds__(SCAN_THREADS)
    beam_advance_kernel(vt_beam_rows next, vt_beam_groups g, int32_t *slot_base,
                        vt_beam_picks picks, vt_beam_rows cur, int G, int wmax, int maxT,
                        int max_dec_len) {
  __shared__ int shared[WARP];
  // 1. per group: finished picks join the list; live picks are counted (into row0, scanned below)
  for (int gi = threadIdx.x; gi < G; gi += blockDim.x) {
    const int st = g.state[gi];
    g.row0[gi] = 0;
    if (st & VT_GROUP_DONE) {
      g.n_rows[gi] = 0;
      continue;
    }
    const int pos = g.pos[gi];
    if (!(st & VT_GROUP_FIRST) && pos + 1 >= max_dec_len) { // as the reference
      g.state[gi] = st | VT_GROUP_DONE;
      g.n_rows[gi] = 0;
      continue;
    }
    g.state[gi] = st & ~VT_GROUP_FIRST;
    const int base = gi * wmax, ns = picks.n[gi];
    const size_t f0 = (size_t)gi * g.fin_cap;
    int live = 0, best_live = -1;
    for (int s = 0; s < ns; s++) {
      if (picks.phrase[base + s] >= 0) {
        const int f = g.n_fin[gi];
        if (f < g.fin_cap) {
          g.n_fin[gi] = f + 1;
          g.fin_score[f0 + f] = picks.score[base + s];
          g.fin_phrase[f0 + f] = picks.phrase[base + s];
          g.fin_len[f0 + f] = pos + 1;
          if (g.fin_slots != NULL) {
            copy_slots(g.fin_slots + (f0 + f) * maxT,
                       cur.slots + (size_t)picks.parent[base + s] * maxT, pos + 1);
          }
        }
      } else {
        if (best_live < 0) {
          best_live = s;
        }
        live++;
      }
    }
    // exact early stop: n_best finished and no live beam can overtake the n_best-th
    float kth;
    if (g.n_fin[gi] >= g.n_best[gi] && live > 0 &&
        kth_finished(g.fin_score + f0, g.n_fin[gi], g.n_best[gi], &kth) &&
        picks.score[base + best_live] < kth) {
      live = 0;
    }
    g.n_rows[gi] = live;
    g.row0[gi] = live;
  }
  __syncthreads();
  // 2. each group's first row in the next step
  const int total = block_scan_array(g.row0, G, shared);
  __syncthreads();
  // 3. per group: its live picks become its next rows
  for (int gi = threadIdx.x; gi < G; gi += blockDim.x) {
    if (g.state[gi] & VT_GROUP_DONE) {
      continue;
    }
    if (g.n_rows[gi] == 0) {
      g.state[gi] |= VT_GROUP_DONE;
      continue;
    }
    const int pos = g.pos[gi], base = gi * wmax, ns = picks.n[gi];
    int r = g.row0[gi];
    for (int s = 0; s < ns; s++) {
      if (picks.phrase[base + s] >= 0) {
        continue;
      }
      const int parent = picks.parent[base + s];
      next.token[r] = picks.token[base + s];
      next.node[r] = picks.node[base + s];
      next.score[r] = picks.score[base + s];
      next.mem[r] = cur.mem[parent];
      next.pos[r] = pos + 1;
      copy_slots(next.slots + (size_t)r * maxT, cur.slots + (size_t)parent * maxT, pos + 1);
      r++;
    }
    g.pos[gi] = pos + 1;
  }
  if (threadIdx.x == 0) {
    *slot_base += *cur.n;
    *next.n = total;
  }
}

/* ---- themes -> keywords ------------------------------------------------------------------- */
static __global__ void __launch_bounds__(SCAN_THREADS)
    themes_to_keywords_kernel(vt_storefront *out, vt_beam_rows rows2, vt_beam_groups g2,
                              vt_beam_groups g1, const vt_page_req *req, vt_theme_rules tr, int B,
                              int G2, int maxT, int sep) {
  __shared__ int shared[WARP];
  for (int gi = threadIdx.x; gi < G2; gi += blockDim.x) { // sections without a theme stay done
    g2.state[gi] = VT_GROUP_DONE;
    g2.n_rows[gi] = 0;
    g2.row0[gi] = 0;
    g2.n_fin[gi] = 0;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < B; i += blockDim.x) {
    int32_t order[VT_MAX_SECTIONS];
    const size_t f0 = (size_t)i * g1.fin_cap;
    const int ns = rank_finished_dev(order, g1.fin_score + f0, g1.fin_phrase + f0, g1.n_fin[i],
                                     req[i].sections, tr.block, req[i].region, req[i].season,
                                     tr.allow, tr.restricted);
    out[i].n_sections = ns;
    for (int s = 0; s < ns; s++) {
      const size_t f = f0 + (size_t)order[s];
      vt_section *sec = &out[i].sections[s];
      sec->theme = g1.fin_phrase[f];
      sec->theme_score = g1.fin_score[f];
      sec->n_keywords = 0;
      sec->n_products = 0;
      const int gi = req[i].group0 + s;
      g2.width[gi] = req[i].kw_width;
      g2.n_best[gi] = req[i].keywords;
      g2.n_rows[gi] = 1;
      g2.row0[gi] = 1;
      g2.pos[gi] = g1.fin_len[f];
      g2.state[gi] = VT_GROUP_FIRST;
      g2.n_fin[gi] = i * VT_MAX_FINISHED + order[s]; // parked until its row is written
    }
  }
  __syncthreads();
  const int total = block_scan_array(g2.row0, G2, shared);
  __syncthreads();
  for (int gi = threadIdx.x; gi < G2; gi += blockDim.x) {
    if (g2.n_rows[gi] == 0) {
      continue;
    }
    const int i = g2.n_fin[gi] / VT_MAX_FINISHED, f = g2.n_fin[gi] % VT_MAX_FINISHED;
    const size_t fi = (size_t)i * g1.fin_cap + f;
    const int r = g2.row0[gi], len = g2.pos[gi];
    rows2.token[r] = sep;
    rows2.node[r] = 0;
    rows2.score[r] = 0.0f;
    rows2.pos[r] = len;
    rows2.mem[r] = i;
    copy_slots(rows2.slots + (size_t)r * maxT, g1.fin_slots + fi * maxT, len);
    g2.n_fin[gi] = 0;
  }
  if (threadIdx.x == 0) {
    *rows2.n = total;
  }
}

/* ---- the encoder's row ops ------------------------------------------------------------------ */
static __global__ void __launch_bounds__(ROWOP_THREADS)
    repeat_rows_kernel(float *out, const float *src, size_t n, size_t RC) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    out[i] = src[i % RC];
  }
}

static __global__ void __launch_bounds__(ROWOP_THREADS)
    mean_rows_kernel(float *out, const float *inp, int B, int K, int C) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (size_t)B * C) {
    return;
  }
  const size_t b = i / C, c = i % C;
  float s = 0.0f;
  for (int k = 0; k < K; k++) { // in order, as the CPU
    s += inp[(b * K + k) * C + c];
  }
  out[i] = s / (float)K;
}

/* ---- launchers -------------------------------------------------------------------------------- */
static int check_rows_args(const char *what, const vt_beam_rows &rows, int cap, int maxT) {
  if (cap < 0 || maxT <= 0) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: bad shape cap=%d maxT=%d", what, cap, maxT);
  }
  if (!rows.token || !rows.node || !rows.score || !rows.pos || !rows.mem || !rows.slots ||
      !rows.n) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: NULL pointer in the rows", what);
  }
  return 0;
}

static int check_groups_args(const char *what, const vt_beam_groups &g) {
  if (!g.width || !g.n_best || !g.row0 || !g.n_rows || !g.pos || !g.state || !g.n_fin ||
      !g.fin_score || !g.fin_phrase || !g.fin_len || g.fin_cap <= 0) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: NULL pointer or fin_cap %d in the groups", what,
                         g.fin_cap);
  }
  return 0;
}

static int row_threads(int C) {
  const int t = CEIL_DIV(C, WARP) * WARP;
  return t < ROW_THREADS ? t : ROW_THREADS;
}

extern "C" int vt_beam_feed_cuda(float *Y, vt_beam_rows rows, const int32_t *slot_base,
                                 const float *tok_emb, const float *pos_emb, int cap, int C,
                                 int maxT, void *stream) {
  const char *what = "vt_beam_feed_cuda";
  int rc = check_rows_args(what, rows, cap, maxT);
  if (rc != 0) {
    return rc;
  }
  if (C <= 0 || !Y || !slot_base || !tok_emb || !pos_emb) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: C=%d or a NULL pointer", what, C);
  }
  if (cap == 0) {
    return 0;
  }
  VT_LAUNCH(beam_feed_kernel, cap, row_threads(C), 0, vt__stream(stream))(
      Y, rows, slot_base, tok_emb, pos_emb, cap, C, maxT);
  return vt__cuda_check_launch(what);
}

extern "C" int vt_kv_append_cuda(float *Q, float *kpool, float *vpool, const float *QKV,
                                 vt_beam_rows rows, int cap, int C, int maxT, void *stream) {
  const char *what = "vt_kv_append_cuda";
  int rc = check_rows_args(what, rows, cap, maxT);
  if (rc != 0) {
    return rc;
  }
  if (C <= 0 || !Q || !kpool || !vpool || !QKV) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: C=%d or a NULL pointer", what, C);
  }
  if (cap == 0) {
    return 0;
  }
  VT_LAUNCH(kv_append_kernel, cap, row_threads(C), 0, vt__stream(stream))(Q, kpool, vpool, QKV,
                                                                         rows, cap, C, maxT);
  return vt__cuda_check_launch(what);
}

extern "C" int vt_beam_select_cuda(vt_beam_picks picks, const float *h, vt_beam_rows rows,
                                   vt_beam_groups g, int G, int cap, int wmax,
                                   const float *tok_emb, vt_trie_csr trie, int C, void *scratch,
                                   void *stream) {
  const char *what = "vt_beam_select_cuda";
  int rc = check_groups_args(what, g);
  if (rc != 0) {
    return rc;
  }
  if (G < 0 || cap < 0 || wmax <= 0 || C <= 0) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: bad shape G=%d cap=%d wmax=%d C=%d", what, G, cap,
                         wmax, C);
  }
  if (G == 0) {
    return 0;
  }
  if (!picks.parent || !picks.token || !picks.node || !picks.phrase || !picks.score ||
      !picks.n || !h || !rows.node || !rows.score || !rows.n || !tok_emb || !trie.indptr ||
      !trie.token || !trie.child || !trie.phrase || !scratch) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: NULL pointer", what);
  }
  cudaStream_t s = vt__stream(stream);
  int32_t *offs = (int32_t *)scratch;        // (cap + 1,)
  float *cand = (float *)scratch + cap + 1;  // (total children of the live rows,)
  VT_LAUNCH(sel_offsets_kernel, 1, SCAN_THREADS, 0, s)(offs, rows, trie.indptr, cap);
  if ((rc = vt__cuda_check_launch("vt_beam_select_cuda (offsets)")) != 0) {
    return rc;
  }
  if (cap > 0) {
    VT_LAUNCH(sel_logits_kernel, cap, LOGIT_THREADS, 0, s)(cand, offs, h, rows, tok_emb,
                                                            trie.indptr, trie.token, cap, C);
    if ((rc = vt__cuda_check_launch("vt_beam_select_cuda (logits)")) != 0) {
      return rc;
    }
  }
  VT_LAUNCH(sel_pick_kernel, G, PICK_THREADS, 0, s)(picks, cand, offs, rows, g, wmax, trie);
  return vt__cuda_check_launch("vt_beam_select_cuda (picks)");
}

extern "C" int vt_beam_advance_cuda(vt_beam_rows next, vt_beam_groups g, int32_t *slot_base,
                                    vt_beam_picks picks, vt_beam_rows cur, int G, int wmax,
                                    int maxT, int max_dec_len, void *stream) {
  const char *what = "vt_beam_advance_cuda";
  int rc = check_groups_args(what, g);
  if (rc == 0) {
    rc = check_rows_args(what, next, 0, maxT);
  }
  if (rc == 0) {
    rc = check_rows_args(what, cur, 0, maxT);
  }
  if (rc != 0) {
    return rc;
  }
  if (G < 0 || wmax <= 0 || !slot_base || !picks.parent || !picks.token || !picks.node ||
      !picks.phrase || !picks.score || !picks.n) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: bad shape G=%d wmax=%d or a NULL pointer", what, G,
                         wmax);
  }
  VT_LAUNCH(beam_advance_kernel, 1, SCAN_THREADS, 0, vt__stream(stream))(
      next, g, slot_base, picks, cur, G, wmax, maxT, max_dec_len);
  return vt__cuda_check_launch(what);
}

extern "C" int vt_beam_themes_to_keywords_cuda(vt_storefront *out, vt_beam_rows rows2,
                                               vt_beam_groups g2, vt_beam_groups g1,
                                               const vt_page_req *req, vt_theme_rules tr, int B,
                                               int G2, int maxT, int sep, void *stream) {
  const char *what = "vt_beam_themes_to_keywords_cuda";
  int rc = check_groups_args(what, g2);
  if (rc == 0) {
    rc = check_groups_args(what, g1);
  }
  if (rc == 0) {
    rc = check_rows_args(what, rows2, 0, maxT);
  }
  if (rc != 0) {
    return rc;
  }
  if (B < 0 || G2 < 0 || !out || !req || !g1.fin_slots || (tr.restricted && !tr.allow)) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: bad shape B=%d G2=%d, a NULL pointer, or the themes'"
                         " slots not kept", what, B, G2);
  }
  VT_LAUNCH(themes_to_keywords_kernel, 1, SCAN_THREADS, 0, vt__stream(stream))(
      out, rows2, g2, g1, req, tr, B, G2, maxT, sep);
  return vt__cuda_check_launch(what);
}

extern "C" int vt_repeat_rows_cuda(float *out, const float *src, int R, int times, int C,
                                   void *stream) {
  const char *what = "vt_repeat_rows_cuda";
  if (R < 0 || times < 0 || C < 0) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: bad shape R=%d times=%d C=%d", what, R, times, C);
  }
  const size_t RC = (size_t)R * C, n = RC * times;
  if (n == 0) {
    return 0;
  }
  if (!out || !src) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: NULL pointer", what);
  }
  const int threads = ROWOP_THREADS;
  VT_LAUNCH(repeat_rows_kernel, (unsigned)CEIL_DIV(n, (size_t)threads), threads, 0,
            vt__stream(stream))(out, src, n, RC);
  return vt__cuda_check_launch(what);
}

extern "C" int vt_mean_rows_cuda(float *out, const float *inp, int B, int K, int C,
                                 void *stream) {
  const char *what = "vt_mean_rows_cuda";
  if (B < 0 || K <= 0 || C < 0) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: bad shape B=%d K=%d C=%d", what, B, K, C);
  }
  const size_t n = (size_t)B * C;
  if (n == 0) {
    return 0;
  }
  if (!out || !inp) {
    return vt__cuda_fail(VT_CUDA_EINVAL, "%s: NULL pointer", what);
  }
  const int threads = ROWOP_THREADS;
  VT_LAUNCH(mean_rows_kernel, (unsigned)CEIL_DIV(n, (size_t)threads), threads, 0,
            vt__stream(stream))(out, inp, B, K, C);
  return vt__cuda_check_launch(what);
}
