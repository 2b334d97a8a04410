/* Shared by the CPU search and page steps (internal to kernels/cpu/). */
#ifndef VITRINE_KERNELS_CPU_RANK_H
#define VITRINE_KERNELS_CPU_RANK_H

#include <stdint.h>

#include "kernels/decode.h"

/* The order of the best min(n, n_fin) finished hypotheses (n_fin <= VT_MAX_FINISHED): higher
 * score first, then the lower phrase id (phrases of one search are distinct), leaving out the
 * phrases `block` (NULL: none; vt_shelf.kw_block, vt_theme_rules.block) marks for (region,
 * season), and for a place k that `restricted` has, the phrases allow[phrase] has no bit k for
 * (vt_theme_rules). Writes positions into order, returns the count (short when nothing fits a
 * place: the places after it stay empty). Selection by repeated passes: n is a handful of
 * sections or keywords. */
static inline int vt__rank_finished(int32_t *order, const float *score, const int32_t *phrase,
                                    int n_fin, int n, const uint32_t *block, int region,
                                    int season, const uint32_t *allow, uint32_t restricted) {
  uint64_t taken[VT_MAX_FINISHED / 64] = {0};
  int k = 0;
  for (; k < n; k++) {
    int best = -1;
    for (int f = 0; f < n_fin; f++) {
      if (taken[f / 64] >> (f % 64) & 1u)
        continue;
      if (block && block[(size_t)phrase[f] * 4 + (size_t)season] >> region & 1u)
        continue;
      if (restricted >> k & 1u && !(allow[phrase[f]] >> k & 1u))
        continue;
      if (best < 0 || score[f] > score[best] ||
          (score[f] == score[best] && phrase[f] < phrase[best]))
        best = f;
    }
    if (best < 0)
      break;
    order[k] = best;
    taken[best / 64] |= (uint64_t)1 << (best % 64);
  }
  return k;
}

#endif
