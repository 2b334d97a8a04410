/* The learned product ranker of the page step (kernels/decode.h vt_ranker_model): the features of
 * one candidate and the model's score, shared by kernels/cpu/page.c and kernels/cuda/page.cu so
 * both compute them from one text. train/cascade.py (LearnedRanker) is the specification.
 *
 * Every operation is an IEEE add, multiply, divide or compare, in a fixed order, with contraction
 * into FMA ruled out (plain C11 does not contract; CUDA spells each operation __fadd_rn /
 * __fmul_rn / __fdiv_rn): the CPU, the GPU and the numpy reference get the same bits from the
 * same inputs. No transcendental function is used (the counts' saturation is x / (x + c), not a
 * logarithm), so no libm can differ.
 */
#ifndef VITRINE_KERNELS_RANKER_H
#define VITRINE_KERNELS_RANKER_H

#include "kernels/decode.h"

#ifdef __CUDACC__
#define VT_RK_FN static __device__ __forceinline__
#define VT_RK_ADD(a, b) __fadd_rn((a), (b))
#define VT_RK_MUL(a, b) __fmul_rn((a), (b))
#define VT_RK_DIV(a, b) __fdiv_rn((a), (b))
#else
#define VT_RK_FN static inline
#define VT_RK_ADD(a, b) ((a) + (b))
#define VT_RK_MUL(a, b) ((a) * (b))
#define VT_RK_DIV(a, b) ((a) / (b))
#endif

/* The rank of keyword kw among the section's keywords (0 = its best); keywords of a section are
 * distinct phrases. */
VT_RK_FN int vt__keyword_rank(const vt_section *sec, int32_t kw) {
  for (int k = 0; k < sec->n_keywords; k++)
    if (sec->keyword[k] == kw)
      return k;
  return 0;
}

/* x (VT_RANKER_FEATURES,): the features of candidate p in the order of VT_RANKER_FEATURE_NAMES.
 * dot: user . emb[p]; again, cooc, recent: the history's features of p (vt_page_assemble);
 * kw_rank: the rank of the keyword that first retrieved p, section: the section's index. */
VT_RK_FN void vt__ranker_features(float *x, const vt_ranker_model *m, float dot, float again,
                                  float cooc, float recent, float log_pop,
                                  const vt_section *sec, int kw_rank, int section) {
  x[0] = dot;
  x[1] = again;
  x[2] = cooc;
  x[3] = VT_RK_DIV(cooc, VT_RK_ADD(cooc, m->cooc_half));
  x[4] = log_pop;
  x[5] = again > 0.0f ? 1.0f : 0.0f;
  x[6] = recent;
  x[7] = sec->keyword_score[kw_rank];
  x[8] = (float)kw_rank;
  x[9] = sec->theme_score;
  x[10] = (float)section;
}

/* The model's score of features x: hidden 0: b2 + sum_i w2[i] x[i]; hidden H > 0:
 * b2 + sum_j w2[j] relu(b1[j] + sum_i w1[j, i] x[i]); sums left to right. */
VT_RK_FN float vt__ranker_score(const vt_ranker_model *m, const float *x) {
  const int F = VT_RANKER_FEATURES, H = m->hidden;
  float s = m->b2;
  if (H == 0) {
    for (int i = 0; i < F; i++)
      s = VT_RK_ADD(s, VT_RK_MUL(m->w2[i], x[i]));
    return s;
  }
  for (int j = 0; j < H; j++) {
    float h = m->b1[j];
    for (int i = 0; i < F; i++)
      h = VT_RK_ADD(h, VT_RK_MUL(m->w1[j * F + i], x[i]));
    s = VT_RK_ADD(s, VT_RK_MUL(m->w2[j], h > 0.0f ? h : 0.0f));
  }
  return s;
}

#endif
