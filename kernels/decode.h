/* vitrine kernels: the cascade's search and assembly steps, as ops over state kept where the
 * backend computes (host memory on the CPU, device memory on a GPU), so a batch decodes without
 * a host round trip per token.
 *
 *   themes:   vt_beam_feed, the decoder layers (kernels/ops.h with vt_kv_append,
 *             vt_dec_self_attention and vt_dec_cross_attention), vt_beam_select, vt_beam_advance,
 *             repeated; then vt_beam_themes_to_keywords starts one keyword search per section;
 *   keywords: the same loop over the keyword trie;
 *   products: vt_page_assemble ranks each section's keywords, retrieves, filters, scores and
 *             de-duplicates products, and writes the storefronts.
 *
 * train/cascade.py is the specification, tie-breaking included. Conventions as in kernels/ops.h
 * (outputs first, shape letters, no allocation: scratch comes from the caller). The state structs
 * are bundles of pointers into the backend's memory, passed by value; a CUDA op reads them on the
 * device. Counts that decide how much work there is (live rows, selections per group) live in that
 * memory too, so every op takes capacities (cap rows, G groups) and does the work of the live part.
 */
#ifndef VITRINE_KERNELS_DECODE_H
#define VITRINE_KERNELS_DECODE_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the storefront: what a batch produces, one per request ---------------------------------- */
#define VT_MAX_SECTIONS 16
#define VT_MAX_KEYWORDS 16
#define VT_MAX_PRODUCTS 64
#define VT_MAX_FINISHED 1024 /* finished hypotheses a beam search keeps (its best are ranked) */

typedef struct vt_hit {
  int32_t product;
  int32_t keyword; /* the section's keyword that first retrieved it */
  float score;
} vt_hit;

typedef struct vt_section {
  int32_t theme;
  float theme_score;
  int32_t n_keywords;
  int32_t keyword[VT_MAX_KEYWORDS];
  float keyword_score[VT_MAX_KEYWORDS];
  int32_t n_products;
  vt_hit products[VT_MAX_PRODUCTS];
} vt_section;

typedef struct vt_storefront {
  int32_t n_sections;
  int32_t dropped_events; /* set by the host: older events dropped for exceeding max_events */
  vt_section sections[VT_MAX_SECTIONS];
} vt_storefront;

/* ---- beam-search state -------------------------------------------------------------------- */
/* A prefix trie in CSR form (engine/bundle.h builds it): node n's children are entries
 * indptr[n] .. indptr[n+1]-1 in ascending token order; phrase[n] >= 0 where a phrase ends. */
typedef struct vt_trie_csr {
  const int32_t *indptr, *token, *child, *phrase;
} vt_trie_csr;

/* The rows of one decoder step: the live beams of every search, packed search after search.
 * Rows 0 .. *n - 1 are live; arrays have `cap` entries (slots: cap x maxT). */
typedef struct vt_beam_rows {
  int32_t *token; /* the token fed at this step */
  int32_t *node;  /* the trie node reached by the beam's tokens so far */
  float *score;   /* the beam's log-probability */
  int32_t *pos;   /* the position of the token fed */
  int32_t *mem;   /* the request whose memory tokens the row cross-attends to */
  int32_t *slots; /* (cap, maxT): KV-pool slot of positions 0 .. pos */
  int32_t *n;     /* (1,) live rows */
} vt_beam_rows;

enum { VT_GROUP_FIRST = 1, VT_GROUP_DONE = 2 };

/* The searches ("groups"): a request's themes, or one section's keywords. Arrays of G entries;
 * finished hypotheses G x fin_cap (slots G x fin_cap x maxT, or NULL when not kept). */
typedef struct vt_beam_groups {
  int32_t *width, *n_best; /* beam width, hypotheses wanted */
  int32_t *row0, *n_rows;  /* its rows in the current step */
  int32_t *pos;            /* position of the tokens fed this step */
  int32_t *state;          /* VT_GROUP_FIRST: the prefix's end, always followed by a selection;
                              VT_GROUP_DONE: finished */
  int32_t *n_fin;          /* finished hypotheses so far, <= fin_cap */
  float *fin_score;
  int32_t *fin_phrase, *fin_len, *fin_slots;
  int fin_cap;
} vt_beam_groups;

/* One step's selections: group g's best picks at g * wmax .., n[g] of them (G entries). */
typedef struct vt_beam_picks {
  int32_t *parent; /* the row it extends (absolute row index) */
  int32_t *token, *node, *phrase; /* phrase >= 0: the terminator was taken, the hypothesis ends */
  float *score;
  int32_t *n;
} vt_beam_picks;

/* Y[r] (C,) = tok_emb[token[r]] + pos_emb[pos[r]], and position pos[r] of row r gets the KV-pool
 * slot *slot_base + r, for the live rows r < *rows.n (<= cap). */
void vt_beam_feed(float *Y, vt_beam_rows rows, const int32_t *slot_base, const float *tok_emb,
                  const float *pos_emb, int cap, int C, int maxT);

/* Splits QKV (cap, 3C) of the live rows: Q[r] = q, and k | v into kpool / vpool (S, C) at the
 * slot of the row's current position. */
void vt_kv_append(float *Q, float *kpool, float *vpool, const float *QKV, vt_beam_rows rows,
                  int cap, int C, int maxT);

/* Decoder causal self-attention: live row r's query q[r] (C,) attends to its positions
 * 0 .. pos[r] through the slot table (pos[r] + 1 keys). out (cap, C). */
void vt_dec_self_attention(float *out, const float *q, const float *kpool, const float *vpool,
                           vt_beam_rows rows, int cap, int maxT, int C, int NH);

/* Decoder cross-attention: live row r's query attends to the NQ memory rows of request mem[r],
 * xkv (B * NQ, 2C) = k | v. out (cap, C). */
void vt_dec_cross_attention(float *out, const float *q, const float *xkv, vt_beam_rows rows,
                            int cap, int NQ, int C, int NH);

/* The beam step of every group at once: for each group g not done, its rows' valid children are
 * scored and the best width[g] candidates selected exactly as vt_beam_step does for one search
 * (sparse logits, log-softmax over a beam's children, stable order: lower row, then lower token,
 * wins a tie). picks.n[g] = how many; a done group gets 0. h (cap, C) final hidden states.
 * scratch: vt_beam_select_scratch(cap, max_cands) bytes, max_cands the most children the live
 * rows of one step can have together. */
static inline size_t vt_beam_select_scratch(int cap, int max_cands) {
  /* the CPU uses max-children floats of it; the CUDA op the rows' offsets, then the candidates */
  return ((size_t)cap + 1 + (size_t)max_cands) * 4 + 64;
}
void vt_beam_select(vt_beam_picks picks, const float *h, vt_beam_rows rows, vt_beam_groups g,
                    int G, int cap, int wmax, const float *tok_emb, vt_trie_csr trie, int C,
                    void *scratch);

/* The bookkeeping after a selection, for every group not done (train/cascade.py beam_search):
 * a group past its last position (pos + 1 >= max_dec_len, not at its first feed) is done; else
 * finished picks join its finished list (with their slot tables when g.fin_slots is kept), live
 * picks become its rows of the next step, packed group after group into `next`; a group stops
 * early, exactly, when it has n_best finished and no live pick can overtake the n_best-th; a
 * group without live rows is done. Sets *next.n and adds this step's rows to *slot_base. */
void vt_beam_advance(vt_beam_rows next, vt_beam_groups g, int32_t *slot_base, vt_beam_picks picks,
                     vt_beam_rows cur, int G, int wmax, int maxT, int max_dec_len);

/* ---- the page ------------------------------------------------------------------------------ */
/* What the page steps need to know of each request. */
typedef struct vt_page_req {
  int32_t sections, keywords, products; /* wanted: sections, keywords and products per section */
  int32_t kw_width;                     /* the keyword searches' beam width */
  int32_t group0;                       /* its first keyword group (one per section) */
  int32_t region, season;               /* for the catalogue's filters */
  int32_t hist0, n_hist; /* its history's products, oldest first: hist[hist0 .. +n_hist-1] */
  int32_t excl0, n_excl; /* excluded products: excl[excl0 .. +n_excl-1] */
} vt_page_req;

/* Which themes a section may show, from the catalogue's rules (engine/rules.h); all 0: any. */
typedef struct vt_theme_rules {
  const uint32_t *block; /* (n_themes * 4) or NULL: bit r of [t * 4 + s]: theme t is not shown
                            in region r during season s */
  const uint32_t *allow; /* (n_themes): bit k: theme t may be shown in section k (allow-only) */
  uint32_t restricted;   /* bit k: section k shows only the themes `allow` allows it */
} vt_theme_rules;

/* Stage 1 -> 2, per request i < B (theme group i): its best `sections` finished themes, by score
 * then lower phrase id, become out[i]'s sections (n_sections, theme, theme_score), leaving out
 * the themes tr blocks for the request's region and season and, for a restricted section, those
 * it does not allow (a section nothing fits ends the storefront there); each starts a keyword
 * group (group0 + s) with one row: token `sep` at the theme's end position, its cached slots
 * copied, node 0, score 0. Groups of sections without a theme are done. Rows of all groups are
 * packed in order into rows2 (*rows2.n set). g1 must keep fin_slots. G2 >= sum of sections:
 * groups beyond are done. */
void vt_beam_themes_to_keywords(vt_storefront *out, vt_beam_rows rows2, vt_beam_groups g2,
                                vt_beam_groups g1, const vt_page_req *req, vt_theme_rules tr,
                                int B, int G2, int maxT, int sep);

/* The catalogue as the page step reads it (docs/BUNDLE.md; engine/catalog.h). */
typedef struct vt_shelf {
  int n_products, d_retrieval;
  const int32_t *kw_off, *kw_prod; /* keyword k's products kw_prod[kw_off[k] ..] */
  const int32_t *stock;            /* (P) */
  const uint32_t *regions;         /* (P) bit r: sold in region r */
  const uint8_t *seasons;          /* (P) bit s: suits season s */
  const float *emb;                /* (P, R) */
  const float *log_pop;            /* (P) */
  const int32_t *rel_off, *rel_idx; /* product a's related products */
  const float *rel_w;
  /* optional (NULL: none), from the catalogue's rules (engine/rules.h): bit r of [k * 4 + s] set:
   * keyword k / product p is not shown in region r during season s */
  const uint32_t *kw_block;   /* (n_keywords * 4) */
  const uint32_t *prod_block; /* (P * 4) */
  /* the products' semantic codes (P, code_levels), read by the ranker's calibration only (NULL:
   * none, calibration off): a product's category is codes[p * code_levels] */
  const int32_t *codes;
  int code_levels;
} vt_shelf;

/* The ranker's weights (manifest "ranker"). calibration in [0, 1]: 0 is the plain top-k below;
 * above 0 a section's products are picked greedily (Steck's calibrated recommendations, see
 * vt_page_assemble) so the page's categories follow the history's; it needs shelf.codes. */
typedef struct vt_ranker {
  float again, cooc, popularity, decay;
  float calibration;
} vt_ranker;

/* Calibration: categories are the products' first semantic code (a codebook of at most this
 * many entries), the history's distribution is smoothed into the page's with this weight. */
#define VT_CALIB_CATEGORIES 256
#define VT_CALIB_ALPHA 0.01

/* A learned ranker (manifest "ranker" of kind "learned", docs/BUNDLE.md; train/ranker.py trains
 * it): when hidden >= 0 it scores the candidates in place of vt_ranker's mix (whose decay still
 * weighs the history). Features (kernels/ranker.h computes them), in this order:
 *   dot          user . emb[p], the retrieval head's score
 *   again, cooc  vt_ranker's decayed counts of p and of its related products in the history
 *   cooc_sat     cooc / (cooc + cooc_half)
 *   log_pop      log1p(popularity), the catalogue's
 *   in_history   1 when again > 0
 *   recency      1 / (1 + k), k the position from the newest of the newest history product that
 *                is p or relates to p (0: none)
 *   keyword_score, keyword_rank  the beam score and rank in the section of p's keyword
 *   theme_score, section         the section's theme's beam score and the section's index
 * hidden 0: score = b2 + w2 . x (w2 has VT_RANKER_FEATURES entries); hidden H > 0: one ReLU layer,
 * score = b2 + sum_j w2[j] relu(b1[j] + w1[j] . x). Passed by value (a few KiB), so a GPU reads it
 * from the kernel's parameters. */
#define VT_RANKER_FEATURES 11
#define VT_RANKER_MAX_HIDDEN 32
#define VT_RANKER_FEATURE_NAMES                                                                   \
  {"dot", "again", "cooc", "cooc_sat", "log_pop", "in_history", "recency", "keyword_score",        \
   "keyword_rank", "theme_score", "section"}
typedef struct vt_ranker_model {
  int32_t hidden;  /* -1: none (vt_ranker's mix scores); 0: linear; else hidden units */
  float cooc_half; /* > 0 */
  float b2;
  float w1[VT_RANKER_MAX_HIDDEN * VT_RANKER_FEATURES]; /* (H, F) */
  float b1[VT_RANKER_MAX_HIDDEN];                      /* (H) */
  float w2[VT_RANKER_MAX_HIDDEN];                      /* (H), or (F) when hidden is 0 */
} vt_ranker_model;

/* Per request i < B and section s < out[i].n_sections, in order: the section's best `keywords`
 * finished keywords of group group0 + s (score, then lower phrase id) that shelf.kw_block does not
 * block for the request's region and season; the products its keywords retrieve, in keyword
 * order, each once (its keyword: the first that retrieved it), without the excluded,
 * out-of-stock, not-sold-in-the-region, out-of-season or prod_block-blocked ones; scored
 *   user[i] . emb[p] + again * again_p + cooc * cooc_p + popularity * log_pop[p]
 * (again_p, cooc_p: decayed counts of p and of its related products in the history, newest
 * first), or by the learned ranker lm where lm.hidden >= 0; products already shown in an
 * earlier section of the page skipped; the best `products` by score, then lower product id.
 * With rk.calibration l > 0 and a history with products, the
 * `products` are instead taken one at a time (Steck 2018, greedy): the candidate maximising
 *   (1 - l) * score - l * KL(p || (1 - a) q + a p)   (in double; ties: the lower product id)
 * where p is the distribution of the history's products' categories (counts), q that of the
 * products on the page so far with the candidate added, a = VT_CALIB_ALPHA, the sum over p's
 * categories in ascending order (kernels/calib.h); the products keep their scores. user (B, R).
 * max_cands: the most products one section's keywords can retrieve. scratch:
 * vt_page_scratch(P, max_cands, B) bytes. */
size_t vt_page_scratch(int P, int max_cands, int B);
void vt_page_assemble(vt_storefront *out, const vt_page_req *req, const int32_t *hist,
                      const int32_t *excl, const float *user, vt_beam_groups g2, vt_shelf shelf,
                      vt_ranker rk, vt_ranker_model lm, int B, int max_cands, void *scratch);

/* ---- small ops of the encoder ------------------------------------------------------------- */
/* out[t * R + r] = src[r] for t < times: `times` copies of R rows of C floats. */
void vt_repeat_rows(float *out, const float *src, int R, int times, int C);

/* out[b] (C,) = the mean of inp's rows b * K .. b * K + K-1 (summed in order, then / K). */
void vt_mean_rows(float *out, const float *inp, int B, int K, int C);

#ifdef __cplusplus
}
#endif

#endif
