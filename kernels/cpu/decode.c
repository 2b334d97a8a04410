/* The beam searches' steps on the CPU (kernels/decode.h): feeding rows, appending to the KV pool,
 * the beam step of every group, the bookkeeping after it, and the theme -> keyword hand-over.
 * Plain loops in the reference's order (train/cascade.py Cascade.beam_search); the live counts
 * are read directly, since the state is in host memory.
 */
#include <string.h>

#include "kernels/cpu/rank.h"
#include "kernels/decode.h"
#include "kernels/ops.h"

static int live_rows(vt_beam_rows rows, int cap) { return *rows.n < cap ? *rows.n : cap; }

void vt_beam_feed(float *Y, vt_beam_rows rows, const int32_t *slot_base, const float *tok_emb,
                  const float *pos_emb, int cap, int C, int maxT) {
  const int n = live_rows(rows, cap);
  for (int r = 0; r < n; r++) {
    const float *te = tok_emb + (size_t)rows.token[r] * C; // (C,)
    const float *pe = pos_emb + (size_t)rows.pos[r] * C;   // (C,)
    float *y = Y + (size_t)r * C;                          // (C,)
    for (int c = 0; c < C; c++)
      y[c] = te[c] + pe[c];
    rows.slots[(size_t)r * maxT + rows.pos[r]] = *slot_base + r;
  }
}

void vt_kv_append(float *Q, float *kpool, float *vpool, const float *QKV, vt_beam_rows rows,
                  int cap, int C, int maxT) {
  const int n = live_rows(rows, cap);
  for (int r = 0; r < n; r++) {
    const float *src = QKV + (size_t)r * 3 * C; // (3C,) q | k | v
    const size_t s = (size_t)rows.slots[(size_t)r * maxT + rows.pos[r]];
    memcpy(Q + (size_t)r * C, src, (size_t)C * sizeof(float));
    memcpy(kpool + s * C, src + C, (size_t)C * sizeof(float));
    memcpy(vpool + s * C, src + 2 * C, (size_t)C * sizeof(float));
  }
}

void vt_beam_select(vt_beam_picks picks, const float *h, vt_beam_rows rows, vt_beam_groups g,
                    int G, int cap, int wmax, const float *tok_emb, vt_trie_csr trie, int C,
                    void *scratch) {
  (void)cap; /* the groups' row ranges say which rows are live */
  for (int gi = 0; gi < G; gi++) {
    if (g.state[gi] & VT_GROUP_DONE || g.n_rows[gi] <= 0) {
      picks.n[gi] = 0;
      continue;
    }
    const int r0 = g.row0[gi], base = gi * wmax;
    const int ns = vt_beam_step(picks.parent + base, picks.token + base, picks.node + base,
                                picks.score + base, picks.phrase + base, h + (size_t)r0 * C,
                                rows.node + r0, rows.score + r0, g.n_rows[gi], tok_emb,
                                trie.indptr, trie.token, trie.child, trie.phrase, C, g.width[gi],
                                scratch);
    for (int s = 0; s < ns; s++)
      picks.parent[base + s] += r0;
    picks.n[gi] = ns;
  }
}

/* The n_best-th largest of the finished scores (ties: the earlier one ranks first); 0 if fewer. */
static int kth_finished(const float *fin, int n_fin, int n_best, float *kth) {
  for (int f = 0; f < n_fin; f++) {
    int larger = 0;
    for (int f2 = 0; f2 < n_fin; f2++)
      larger += fin[f2] > fin[f] || (fin[f2] == fin[f] && f2 < f);
    if (larger == n_best - 1) {
      *kth = fin[f];
      return 1;
    }
  }
  return 0;
}

void vt_beam_advance(vt_beam_rows next, vt_beam_groups g, int32_t *slot_base, vt_beam_picks picks,
                     vt_beam_rows cur, int G, int wmax, int maxT, int max_dec_len) {
  int nn = 0;
  for (int gi = 0; gi < G; gi++) {
    if (g.state[gi] & VT_GROUP_DONE) { /* no rows; row0: where they would start */
      g.row0[gi] = nn;
      g.n_rows[gi] = 0;
      continue;
    }
    const int pos = g.pos[gi];
    if (!(g.state[gi] & VT_GROUP_FIRST) && pos + 1 >= max_dec_len) { /* as the reference */
      g.state[gi] |= VT_GROUP_DONE;
      g.row0[gi] = nn;
      g.n_rows[gi] = 0;
      continue;
    }
    g.state[gi] &= ~VT_GROUP_FIRST;
    const int base = gi * wmax, ns = picks.n[gi], live0 = nn;
    float *fin_score = g.fin_score + (size_t)gi * g.fin_cap;
    int32_t *fin_phrase = g.fin_phrase + (size_t)gi * g.fin_cap;
    int best_live = -1;
    for (int s = 0; s < ns; s++) {
      const int parent = picks.parent[base + s];
      const int32_t *pslots = cur.slots + (size_t)parent * maxT; // (pos + 1,) used
      if (picks.phrase[base + s] >= 0) {
        const int f = g.n_fin[gi];
        if (f < g.fin_cap) {
          g.n_fin[gi] = f + 1;
          fin_score[f] = picks.score[base + s];
          fin_phrase[f] = picks.phrase[base + s];
          g.fin_len[(size_t)gi * g.fin_cap + f] = pos + 1;
          if (g.fin_slots)
            memcpy(g.fin_slots + ((size_t)gi * g.fin_cap + f) * maxT, pslots,
                   (size_t)(pos + 1) * sizeof(int32_t));
        }
      } else {
        if (best_live < 0)
          best_live = s;
        next.token[nn] = picks.token[base + s];
        next.node[nn] = picks.node[base + s];
        next.score[nn] = picks.score[base + s];
        next.mem[nn] = cur.mem[parent];
        memcpy(next.slots + (size_t)nn * maxT, pslots, (size_t)(pos + 1) * sizeof(int32_t));
        nn++;
      }
    }
    /* exact early stop: n_best finished and no live beam can overtake the n_best-th */
    float kth;
    if (g.n_fin[gi] >= g.n_best[gi] && nn > live0 &&
        kth_finished(fin_score, g.n_fin[gi], g.n_best[gi], &kth) &&
        picks.score[base + best_live] < kth)
      nn = live0;
    g.row0[gi] = live0;
    g.n_rows[gi] = nn - live0;
    if (nn == live0) {
      g.state[gi] |= VT_GROUP_DONE;
    } else {
      g.pos[gi] = pos + 1;
      for (int r = live0; r < nn; r++)
        next.pos[r] = pos + 1;
    }
  }
  *slot_base += *cur.n;
  *next.n = nn;
}

void vt_beam_themes_to_keywords(vt_storefront *out, vt_beam_rows rows2, vt_beam_groups g2,
                                vt_beam_groups g1, const vt_page_req *req, vt_theme_rules tr,
                                int B, int G2, int maxT, int sep) {
  int nrows = 0;
  for (int gi = 0; gi < G2; gi++) { /* groups of sections without a theme stay done */
    g2.state[gi] = VT_GROUP_DONE;
    g2.n_rows[gi] = 0;
    g2.n_fin[gi] = 0;
  }
  for (int i = 0; i < B; i++) {
    int32_t order[VT_MAX_SECTIONS];
    const size_t f0 = (size_t)i * g1.fin_cap;
    const int ns = vt__rank_finished(order, g1.fin_score + f0, g1.fin_phrase + f0, g1.n_fin[i],
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
      const int gi = req[i].group0 + s, len = g1.fin_len[f];
      g2.width[gi] = req[i].kw_width;
      g2.n_best[gi] = req[i].keywords;
      g2.row0[gi] = nrows;
      g2.n_rows[gi] = 1;
      g2.pos[gi] = len;
      g2.state[gi] = VT_GROUP_FIRST;
      rows2.token[nrows] = sep;
      rows2.node[nrows] = 0;
      rows2.score[nrows] = 0.0f;
      rows2.pos[nrows] = len;
      rows2.mem[nrows] = i;
      memcpy(rows2.slots + (size_t)nrows * maxT, g1.fin_slots + f * maxT,
             (size_t)len * sizeof(int32_t));
      nrows++;
    }
  }
  /* rows are packed in group order; a done group's row0 is where its rows would start */
  for (int gi = 0, r = 0; gi < G2; r += g2.n_rows[gi], gi++)
    g2.row0[gi] = r;
  *rows2.n = nrows;
}

void vt_repeat_rows(float *out, const float *src, int R, int times, int C) {
  for (int t = 0; t < times; t++)
    memcpy(out + (size_t)t * R * C, src, (size_t)R * C * sizeof(float));
}

void vt_mean_rows(float *out, const float *inp, int B, int K, int C) {
  for (int b = 0; b < B; b++)
    for (int c = 0; c < C; c++) {
      float s = 0.0f;
      for (int k = 0; k < K; k++)
        s += inp[((size_t)b * K + k) * C + c];
      out[(size_t)b * C + c] = s / (float)K;
    }
}
