/* The ranker's calibration (kernels/decode.h vt_page_assemble with rk.calibration > 0), shared by
 * the CPU and CUDA page steps so both compute the same doubles in the same order; the Python
 * reference is train/cascade.py Calibration.
 *
 * Steck, "Calibrated Recommendations" (RecSys 2018): a page is calibrated when the distribution q
 * of the categories it shows follows the distribution p of the categories of the user's history.
 * Miscalibration KL(p || q~), q~ = (1 - a) q + a p (a = VT_CALIB_ALPHA, so q~ > 0 where p > 0),
 * summed over p's categories. The products are picked one at a time, each the candidate that
 * maximises (1 - l) * score - l * KL(p || q~(page so far + the candidate)).
 *
 * A product's category is its first semantic code (shelf.codes[p * code_levels]): the only
 * grouping of products the catalogue carries (docs/AUDIT.md).
 */
#ifndef VITRINE_KERNELS_CALIB_H
#define VITRINE_KERNELS_CALIB_H

#include <math.h>
#include <stdint.h>

#include "kernels/decode.h"

/* on the device, products and sums are rounded one by one (no contraction into FMA), so the
 * doubles are the CPU's */
#if defined(__CUDACC__) && defined(__CUDA_ARCH__)
#define VT_CALIB_FN static __host__ __device__ inline
#define VT_CALIB_MUL(a, b) __dmul_rn((a), (b))
#define VT_CALIB_ADD(a, b) __dadd_rn((a), (b))
#else
#if defined(__CUDACC__)
#define VT_CALIB_FN static __host__ __device__ inline
#elif defined(__device__) /* the CUDA emulator (tests/cuda_emu): __device__ is `inline` */
#define VT_CALIB_FN static __host__ __device__
#else
#define VT_CALIB_FN static inline
#endif
#define VT_CALIB_MUL(a, b) ((a) * (b))
#define VT_CALIB_ADD(a, b) ((a) + (b))
#endif

/* One page's counts: of the history's products, and of the products shown so far. */
typedef struct vt_calib {
  int32_t hist[VT_CALIB_CATEGORIES], page[VT_CALIB_CATEGORIES];
  int32_t n_hist, n_page;
} vt_calib;

VT_CALIB_FN int vt_calib_category(const vt_shelf *sh, int p) {
  return sh->codes[(size_t)p * (size_t)sh->code_levels];
}

/* Counts the history's categories; the page starts empty. */
VT_CALIB_FN void vt_calib_start(vt_calib *c, const vt_shelf *sh, const int32_t *hist, int n_hist) {
  for (int g = 0; g < VT_CALIB_CATEGORIES; g++) {
    c->hist[g] = 0;
    c->page[g] = 0;
  }
  for (int k = 0; k < n_hist; k++)
    c->hist[vt_calib_category(sh, hist[k])]++;
  c->n_hist = n_hist;
  c->n_page = 0;
}

/* p_g log(p_g / q~_g) with `shown` of the n page products in category g. */
VT_CALIB_FN double vt_calib_term(const vt_calib *c, int g, int shown, int n) {
  const double p = (double)c->hist[g] / (double)c->n_hist;
  const double q = VT_CALIB_ADD(VT_CALIB_MUL(1.0 - VT_CALIB_ALPHA, (double)shown / (double)n),
                                VT_CALIB_MUL(VT_CALIB_ALPHA, p));
  return VT_CALIB_MUL(p, log(p / q));
}

/* kl[g] = KL(p || q~) of the page with one more product, of category g (every g). */
VT_CALIB_FN void vt_calib_table(double *kl, const vt_calib *c) {
  const int n = c->n_page + 1;
  double base = 0.0; /* the added product outside p's categories */
  for (int g = 0; g < VT_CALIB_CATEGORIES; g++)
    if (c->hist[g] > 0)
      base = VT_CALIB_ADD(base, vt_calib_term(c, g, c->page[g], n));
  for (int g = 0; g < VT_CALIB_CATEGORIES; g++)
    kl[g] = c->hist[g] > 0 ? VT_CALIB_ADD(VT_CALIB_ADD(base, -vt_calib_term(c, g, c->page[g], n)),
                                          vt_calib_term(c, g, c->page[g] + 1, n))
                           : base;
}

/* The objective of a candidate of score s whose category's entry in the table is kl. */
VT_CALIB_FN double vt_calib_objective(float strength, float s, double kl) {
  const double l = (double)strength;
  return VT_CALIB_ADD(VT_CALIB_MUL(1.0 - l, (double)s), -VT_CALIB_MUL(l, kl));
}

/* Picks up to k of the m candidates (ids[i], score[i]; distinct, not yet on the page) greedily
 * into top / top_score, marking each in shown and counting it on the page; returns how many.
 * kl: VT_CALIB_CATEGORIES doubles of scratch. */
VT_CALIB_FN int vt_calib_pick(int32_t *top, float *top_score, vt_calib *c, double *kl,
                              uint8_t *shown, const int32_t *ids, const float *score, int m, int k,
                              const vt_shelf *sh, float strength) {
  int n = 0;
  for (; n < k && n < m; n++) {
    vt_calib_table(kl, c);
    int best = -1;
    double best_obj = 0.0;
    for (int i = 0; i < m; i++) {
      const int p = ids[i];
      if (shown[p])
        continue;
      const double obj = vt_calib_objective(strength, score[i], kl[vt_calib_category(sh, p)]);
      if (best < 0 || obj > best_obj || (obj == best_obj && p < ids[best])) {
        best = i;
        best_obj = obj;
      }
    }
    if (best < 0)
      break;
    const int p = ids[best];
    top[n] = p;
    top_score[n] = score[best];
    shown[p] = 1;
    c->page[vt_calib_category(sh, p)]++;
    c->n_page++;
  }
  return n;
}

#endif
