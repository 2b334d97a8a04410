/* Retrieval scoring and top-k selection.
 *
 * vt_retrieval_scores: out (n,) = emb[idx] (n, R) . u (R,), a gather then a float dot per
 * candidate (the reference's emb[cands] @ u). emb (P, R) is the catalogue's product vectors.
 *
 * vt_topk: the best k of n (score, id) pairs, best first, under the total order
 *   better(a, b) = score_a > score_b, or equal scores and id_a < id_b,
 * which is Python's sort on (-score, id) in Cascade.pick. A NaN score ranks after every number
 * and, as a last resort, equal (score, id) pairs keep their input order, so the result never
 * depends on the selection algorithm. Algorithm: heap selection in O(n log k) on candidate
 * positions held in scratch (n ints; k' of them used): a heap of the k' best seen so far with the
 * worst at the root, each further candidate replacing the root when better; then the heap is
 * popped worst first into the output from the back.
 */
#include <math.h>
#include <stddef.h>

#include "kernels/ops.h"

void vt_retrieval_scores(float *out, const float *u, const float *emb, const int32_t *idx, int n,
                         int R) {
  for (int i = 0; i < n; i++) {
    const float *e = emb + (size_t)idx[i] * R; // (R,)
    float s = 0.0f;
    for (int r = 0; r < R; r++) {
      s += e[r] * u[r];
    }
    out[i] = s;
  }
}

/* Is candidate a (input position) ranked strictly before candidate b? */
static inline int better(const float *score, const int32_t *id, int a, int b) {
  float sa = score[a], sb = score[b];
  int na = isnan(sa), nb = isnan(sb);
  if (na != nb) {
    return nb; // a number beats a NaN
  }
  if (!na && sa != sb) {
    return sa > sb;
  }
  if (id[a] != id[b]) {
    return id[a] < id[b];
  }
  return a < b;
}

/* Restores the heap property below position i of heap (n,): the worst candidate at the root. */
static void sift_down(int32_t *heap, int n, int i, const float *score, const int32_t *id) {
  for (;;) {
    int worst = i, l = 2 * i + 1, r = 2 * i + 2;
    if (l < n && better(score, id, heap[worst], heap[l])) {
      worst = l;
    }
    if (r < n && better(score, id, heap[worst], heap[r])) {
      worst = r;
    }
    if (worst == i) {
      return;
    }
    int32_t t = heap[i];
    heap[i] = heap[worst];
    heap[worst] = t;
    i = worst;
  }
}

int vt_topk(int32_t *out_id, float *out_score, const float *score, const int32_t *id, int n, int k,
            int32_t *scratch) {
  const int kk = k < n ? k : n;
  if (kk <= 0) {
    return 0;
  }
  int32_t *heap = scratch; // (kk,) positions into score / id
  for (int i = 0; i < kk; i++) {
    heap[i] = i;
  }
  for (int i = kk / 2 - 1; i >= 0; i--) {
    sift_down(heap, kk, i, score, id);
  }
  for (int i = kk; i < n; i++) {
    if (better(score, id, i, heap[0])) {
      heap[0] = i;
      sift_down(heap, kk, 0, score, id);
    }
  }
  // pop the worst each time: it fills the output from the back
  for (int m = kk; m > 0; m--) {
    int32_t p = heap[0];
    out_id[m - 1] = id[p];
    out_score[m - 1] = score[p];
    heap[0] = heap[m - 1];
    sift_down(heap, m - 1, 0, score, id);
  }
  return kk;
}
