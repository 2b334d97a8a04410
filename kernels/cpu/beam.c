/* One step of constrained beam search over a CSR trie (Cascade.beam_search in train/cascade.py).
 *
 * Shapes: h (nbeams, C) the beams' final hidden states; node, score (nbeams,); tok_emb (V, C);
 * the trie: indptr (nodes+1,), token / child (entries,), phrase (nodes,); outputs (width,).
 *
 * Algorithm, per live beam b in rank order:
 *   1. logits of its valid children only: logit_e = h[b] . tok_emb[token[e]] (OpenBLAS sdot:
 *      vectorised, which at a root of 30k children made the step 4x faster than a scalar loop), into
 *      scratch (the beam's child count floats);
 *   2. log-softmax in float32 as PyTorch writes it: logp = x - max - log(sum exp(x - max));
 *   3. candidate score = score[b] + logp, offered to the running top-`width` list.
 * The top list lives in the output arrays themselves, kept sorted best first. Candidates are
 * offered in the reference's listing order (beam by beam, children by ascending token), and a
 * new one is inserted after every kept candidate whose score is >= its own, so among equal scores
 * the earlier-listed one stays ahead: exactly the order of a stable sort on descending score,
 * without materialising or sorting all candidates (O(candidates) compares, plus O(width) per
 * insertion).
 * Scratch: this implementation uses only max-children-per-beam floats, within the header's
 * bound.
 */
#include <cblas.h>
#include <float.h>
#include <math.h>
#include <stddef.h>

#include "kernels/ops.h"

int vt_beam_step(int32_t *out_parent, int32_t *out_token, int32_t *out_node, float *out_score,
                 int32_t *out_phrase, const float *h, const int32_t *node, const float *score,
                 int nbeams, const float *tok_emb, const int32_t *indptr, const int32_t *token,
                 const int32_t *child, const int32_t *phrase, int C, int width, float *scratch) {
  if (width <= 0) {
    return 0;
  }
  int nsel = 0; // candidates in the top list so far, <= width
  for (int b = 0; b < nbeams; b++) {
    const float *hb = h + (size_t)b * C; // (C,)
    const int e0 = indptr[node[b]], ne = indptr[node[b] + 1] - e0;
    if (ne <= 0) {
      continue; // a node without children offers no candidate
    }
    float *logit = scratch; // (ne,)
    float mx = -FLT_MAX;
    for (int i = 0; i < ne; i++) {
      const float *w = tok_emb + (size_t)token[e0 + i] * C; // (C,)
      const float s = cblas_sdot(C, hb, 1, w, 1);
      logit[i] = s;
      mx = s > mx ? s : mx;
    }
    float sum = 0.0f;
    for (int i = 0; i < ne; i++) {
      sum += expf(logit[i] - mx);
    }
    const float lse = logf(sum);
    for (int i = 0; i < ne; i++) {
      const float cand = score[b] + (logit[i] - mx - lse);
      // position: after every kept candidate at least as good (earlier listing wins ties);
      // a NaN ranks last, as in torch.sort, so any number moves ahead of one
      int pos = nsel;
      while (pos > 0 &&
             (cand > out_score[pos - 1] || (isnan(out_score[pos - 1]) && !isnan(cand)))) {
        pos--;
      }
      if (pos >= width) {
        continue; // not better than the width-th kept candidate
      }
      const int last = nsel < width ? nsel : width - 1; // the entry pushed off the end, if full
      for (int j = last; j > pos; j--) {
        out_parent[j] = out_parent[j - 1];
        out_token[j] = out_token[j - 1];
        out_node[j] = out_node[j - 1];
        out_score[j] = out_score[j - 1];
        out_phrase[j] = out_phrase[j - 1];
      }
      const int e = e0 + i;
      out_parent[pos] = b;
      out_token[pos] = token[e];
      out_node[pos] = child[e];
      out_score[pos] = cand;
      out_phrase[pos] = phrase[child[e]];
      if (nsel < width) {
        nsel++;
      }
    }
  }
  return nsel;
}
