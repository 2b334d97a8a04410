/* The page step on the CPU (kernels/decode.h vt_page_assemble): per request, per section in
 * order, rank the section's keywords, retrieve their products, filter, score, skip what the page
 * already shows, keep the best. Cascade.retrieve / Cascade.pick of train/cascade.py.
 *
 * Scratch (one "lane": the CPU does one request at a time): dense per-product arrays (P) for the
 * history features (again, cooc, recent), a touched list and three mark bytes (touched / retrieved in
 * this section / shown on this page), then the section's candidate buffers (max_cands each). The
 * dense arrays start zeroed and are left zeroed: only the touched entries are cleared after each
 * request, so a request costs what it touches, not P.
 */
#include <string.h>

#include "kernels/calib.h"
#include "kernels/cpu/rank.h"
#include "kernels/decode.h"
#include "kernels/ops.h"
#include "kernels/ranker.h"

typedef struct lane {
  float *again, *cooc, *recent;  /* (P) */
  int32_t *touched;              /* (P) products whose features are non-zero */
  uint8_t *marked, *seen, *shown; /* (P) */
  int32_t *cand, *cred, *ids, *heap, *top; /* (max_cands) */
  float *dot, *score, *top_score;          /* (max_cands) */
} lane;

static size_t al(size_t bytes) { return (bytes + 63) & ~(size_t)63; }

/* Carves the lane out of scratch (NULL: only measures); returns the bytes it needs. */
static size_t lane_layout(lane *l, char *base, int P, int max_cands) {
  const size_t p = (size_t)P + 1, m = (size_t)max_cands + 1;
  size_t off = 0;
#define TAKE(field, count)                                                                       \
  do {                                                                                           \
    if (base)                                                                                    \
      l->field = (void *)(base + off);                                                           \
    off += al((count) * sizeof *l->field);                                                       \
  } while (0)
  TAKE(again, p);
  TAKE(cooc, p);
  TAKE(recent, p);
  TAKE(touched, p);
  TAKE(marked, p);
  TAKE(seen, p);
  TAKE(shown, p);
  TAKE(cand, m);
  TAKE(cred, m);
  TAKE(ids, m);
  TAKE(heap, m);
  TAKE(top, m);
  TAKE(dot, m);
  TAKE(score, m);
  TAKE(top_score, m);
#undef TAKE
  return off;
}

size_t vt_page_scratch(int P, int max_cands, int B) {
  (void)B;
  lane l = {0};
  return lane_layout(&l, NULL, P, max_cands);
}

/* again[p] += decay^k, cooc[q] += decay^k rel_w for the history's k-th newest product p and its
 * related products q, in the reference's order, and recent[] = 1 / (1 + k) at a product's first
 * touch (the newest k); returns how many products it touched. */
static int history_features(lane *l, const int32_t *hist, int n_hist, vt_shelf sh, float decay) {
  float wgt = 1.0f;
  int nt = 0;
  for (int k = n_hist - 1; k >= 0; k--) {
    const int p = hist[k];
    const float recent = 1.0f / (float)(n_hist - k);
    if (!l->marked[p]) {
      l->marked[p] = 1;
      l->touched[nt++] = p;
      l->recent[p] = recent;
    }
    l->again[p] = l->again[p] + wgt;
    for (int i = sh.rel_off[p]; i < sh.rel_off[p + 1]; i++) {
      const int q = sh.rel_idx[i];
      if (!l->marked[q]) {
        l->marked[q] = 1;
        l->touched[nt++] = q;
        l->recent[q] = recent;
      }
      const float add = wgt * sh.rel_w[i];
      l->cooc[q] = l->cooc[q] + add;
    }
    wgt = wgt * decay;
  }
  return nt;
}

/* One section's products (its keywords already chosen), scored by the weights' mix or the
 * learned ranker lm; cal: the page's calibration, NULL when off. */
static void retrieve(lane *l, vt_section *sec, int section, const vt_page_req *r,
                     const int32_t *excl, const float *u, vt_shelf sh, vt_ranker rk,
                     const vt_ranker_model *lm, vt_calib *cal) {
  int nc = 0;
  for (int k = 0; k < sec->n_keywords; k++) {
    const int kw = sec->keyword[k];
    for (int i = sh.kw_off[kw]; i < sh.kw_off[kw + 1]; i++) {
      const int p = sh.kw_prod[i];
      if (l->seen[p])
        continue;
      l->seen[p] = 1;
      int excluded = 0;
      for (int x = 0; x < r->n_excl; x++)
        excluded |= excl[x] == p;
      if (excluded || sh.stock[p] <= 0 || !(sh.regions[p] >> r->region & 1u) ||
          !(sh.seasons[p] >> r->season & 1u) ||
          (sh.prod_block && sh.prod_block[(size_t)p * 4 + (size_t)r->season] >> r->region & 1u))
        continue;
      l->cand[nc] = p;
      l->cred[nc] = kw;
      nc++;
    }
  }
  for (int k = 0; k < sec->n_keywords; k++) { /* clear the section's marks */
    const int kw = sec->keyword[k];
    for (int i = sh.kw_off[kw]; i < sh.kw_off[kw + 1]; i++)
      l->seen[sh.kw_prod[i]] = 0;
  }
  vt_retrieval_scores(l->dot, u, sh.emb, l->cand, nc, sh.d_retrieval);
  int m = 0;
  for (int i = 0; i < nc; i++) {
    const int p = l->cand[i];
    if (l->shown[p])
      continue;
    float s;
    if (lm->hidden >= 0) {
      float x[VT_RANKER_FEATURES];
      vt__ranker_features(x, lm, l->dot[i], l->again[p], l->cooc[p], l->recent[p], sh.log_pop[p],
                          sec, vt__keyword_rank(sec, l->cred[i]), section);
      s = vt__ranker_score(lm, x);
    } else {
      s = l->dot[i] + rk.again * l->again[p];
      s = s + rk.cooc * l->cooc[p];
      s = s + rk.popularity * sh.log_pop[p];
    }
    l->score[m] = s;
    l->ids[m] = p; /* top-k breaks ties on the id: the lower product index wins */
    m++;
  }
  double kl[VT_CALIB_CATEGORIES];
  const int k = cal ? vt_calib_pick(l->top, l->top_score, cal, kl, l->shown, l->ids, l->score, m,
                                    r->products, &sh, rk.calibration)
                    : vt_topk(l->top, l->top_score, l->score, l->ids, m, r->products, l->heap);
  sec->n_products = k;
  for (int i = 0; i < k; i++) {
    const int p = l->top[i];
    int kw = -1; /* the keyword that first retrieved p in this section */
    for (int j = 0; j < nc && kw < 0; j++)
      if (l->cand[j] == p)
        kw = l->cred[j];
    sec->products[i].product = p;
    sec->products[i].keyword = kw;
    sec->products[i].score = l->top_score[i];
    l->shown[p] = 1;
  }
}

void vt_page_assemble(vt_storefront *out, const vt_page_req *req, const int32_t *hist,
                      const int32_t *excl, const float *user, vt_beam_groups g2, vt_shelf shelf,
                      vt_ranker rk, vt_ranker_model lm, int B, int max_cands, void *scratch) {
  lane l = {0};
  lane_layout(&l, scratch, shelf.n_products, max_cands);
  vt_calib cal;
  for (int i = 0; i < B; i++) {
    const vt_page_req *r = &req[i];
    vt_storefront *o = &out[i];
    const int nt = history_features(&l, hist + r->hist0, r->n_hist, shelf, rk.decay);
    const int calibrated = rk.calibration > 0.0f && shelf.codes && r->n_hist > 0;
    if (calibrated)
      vt_calib_start(&cal, &shelf, hist + r->hist0, r->n_hist);
    for (int s = 0; s < o->n_sections; s++) {
      vt_section *sec = &o->sections[s];
      const int gi = r->group0 + s;
      const size_t f0 = (size_t)gi * g2.fin_cap;
      int32_t order[VT_MAX_KEYWORDS];
      const int nk = vt__rank_finished(order, g2.fin_score + f0, g2.fin_phrase + f0, g2.n_fin[gi],
                                       r->keywords, shelf.kw_block, r->region, r->season, NULL,
                                       0u);
      sec->n_keywords = nk;
      for (int k = 0; k < nk; k++) {
        sec->keyword[k] = g2.fin_phrase[f0 + order[k]];
        sec->keyword_score[k] = g2.fin_score[f0 + order[k]];
      }
      retrieve(&l, sec, s, r, excl + r->excl0, user + (size_t)i * shelf.d_retrieval, shelf, rk,
               &lm, calibrated ? &cal : NULL);
    }
    for (int k = 0; k < nt; k++) {
      l.again[l.touched[k]] = 0.0f;
      l.cooc[l.touched[k]] = 0.0f;
      l.recent[l.touched[k]] = 0.0f;
      l.marked[l.touched[k]] = 0;
    }
    for (int s = 0; s < o->n_sections; s++)
      for (int k = 0; k < o->sections[s].n_products; k++)
        l.shown[o->sections[s].products[k].product] = 0;
  }
}
