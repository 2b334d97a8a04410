/* The cascade's search and page ops (kernels/decode.h) through the backend table, against the
 * CPU reference functions, on each backend this binary has: the CPU table, and "cuda:0" where a
 * device answers (a real card, or the CUDA emulator in test_decode_ops_emu).
 *
 * Inputs are built so that sums do not depend on their order (small dyadic values: every dot
 * product is exact in float), so ids, parents, nodes, phrases, slots and counts must agree exactly
 * and scores to ~1e-6 (the log-softmax's exp and log); the page step's scores are bit-identical
 * by construction (kernels/cuda/page.cu). Outputs are prefilled with a sentinel, so an element
 * a backend forgets to write, or writes where it must not (rows past the live count), differs.
 * Each decode step starts both backends from the same state (the reference's), so a step's
 * difference is reported at that step, not later. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/bundle.h"
#include "kernels/backend.h"

#ifdef VT_CUDA_EMU
#include "vt_emu.h"
#endif

static uint64_t rng_state;

static uint32_t rnd(void) {
  rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
  return (uint32_t)(rng_state >> 33);
}

static int rint_(int n) { return (int)(rnd() % (uint32_t)n); }

/* k / 8 for k in -8 .. 8: products and sums of a few dozen stay exact in float */
static float dyadic(void) { return (float)(rint_(17) - 8) / 8.0f; }

static void *xcalloc(size_t n, size_t s) {
  void *p = calloc(n ? n : 1, s);
  cr_assert_not_null(p);
  return p;
}

/* ---- device mirrors of host arrays --------------------------------------------------------- */
typedef struct mirror {
  vt_backend *be;
  void *dev[256];
  int n;
} mirror;

static void *dput(mirror *m, const void *h, size_t bytes) {
  void *d = m->be->alloc(m->be, bytes ? bytes : 1);
  cr_assert_not_null(d, "%s: alloc: %s", m->be->name, m->be->error(m->be));
  if (bytes)
    cr_assert_eq(m->be->upload(m->be, d, h, bytes), 0, "%s", m->be->error(m->be));
  cr_assert_eq(m->be->sync(m->be), 0, "%s", m->be->error(m->be));
  cr_assert_lt(m->n, 256);
  m->dev[m->n++] = d;
  return d;
}

static void dget(mirror *m, void *h, const void *d, size_t bytes) {
  if (bytes)
    cr_assert_eq(m->be->download(m->be, h, d, bytes), 0, "%s: download: %s", m->be->name,
                 m->be->error(m->be));
}

static void mirror_free(mirror *m) {
  for (int i = 0; i < m->n; i++)
    m->be->free(m->be, m->dev[i]);
  m->n = 0;
}

/* ---- beam state on the host, and its copy where the backend computes --------------------- */
typedef struct state {
  int cap, G, maxT, fin_cap, wmax;
  vt_beam_rows rows[2];
  vt_beam_groups g;
  vt_beam_picks picks;
  int32_t *slot_base;
} state;

static void rows_alloc(vt_beam_rows *r, int cap, int maxT) {
  r->token = xcalloc(cap, 4);
  r->node = xcalloc(cap, 4);
  r->score = xcalloc(cap, 4);
  r->pos = xcalloc(cap, 4);
  r->mem = xcalloc(cap, 4);
  r->slots = xcalloc((size_t)cap * maxT, 4);
  r->n = xcalloc(1, 4);
}

static void state_alloc(state *s, int cap, int G, int maxT, int fin_cap, int wmax, int slots) {
  memset(s, 0, sizeof *s);
  s->cap = cap, s->G = G, s->maxT = maxT, s->fin_cap = fin_cap, s->wmax = wmax;
  rows_alloc(&s->rows[0], cap, maxT);
  rows_alloc(&s->rows[1], cap, maxT);
  vt_beam_groups *g = &s->g;
  g->width = xcalloc(G, 4), g->n_best = xcalloc(G, 4), g->row0 = xcalloc(G, 4);
  g->n_rows = xcalloc(G, 4), g->pos = xcalloc(G, 4), g->state = xcalloc(G, 4);
  g->n_fin = xcalloc(G, 4);
  g->fin_cap = fin_cap;
  g->fin_score = xcalloc((size_t)G * fin_cap, 4);
  g->fin_phrase = xcalloc((size_t)G * fin_cap, 4);
  g->fin_len = xcalloc((size_t)G * fin_cap, 4);
  g->fin_slots = slots ? xcalloc((size_t)G * fin_cap * maxT, 4) : NULL;
  vt_beam_picks *p = &s->picks;
  p->parent = xcalloc((size_t)G * wmax, 4), p->token = xcalloc((size_t)G * wmax, 4);
  p->node = xcalloc((size_t)G * wmax, 4), p->phrase = xcalloc((size_t)G * wmax, 4);
  p->score = xcalloc((size_t)G * wmax, 4), p->n = xcalloc(G, 4);
  s->slot_base = xcalloc(1, 4);
}

static void rows_free(vt_beam_rows *r) {
  free(r->token), free(r->node), free(r->score), free(r->pos), free(r->mem), free(r->slots);
  free(r->n);
}

static void state_free(state *s) {
  rows_free(&s->rows[0]);
  rows_free(&s->rows[1]);
  vt_beam_groups *g = &s->g;
  free(g->width), free(g->n_best), free(g->row0), free(g->n_rows), free(g->pos), free(g->state);
  free(g->n_fin), free(g->fin_score), free(g->fin_phrase), free(g->fin_len), free(g->fin_slots);
  vt_beam_picks *p = &s->picks;
  free(p->parent), free(p->token), free(p->node), free(p->phrase), free(p->score), free(p->n);
  free(s->slot_base);
}

/* Copies of every array of host state h into dev (where m's backend computes), same shapes. */
#define MIRROR(field, count) (d->field = dput(m, h->field, (size_t)(count) * sizeof *h->field))
static void rows_mirror(mirror *m, vt_beam_rows *d, const vt_beam_rows *h, int cap, int maxT) {
  MIRROR(token, cap), MIRROR(node, cap), MIRROR(score, cap), MIRROR(pos, cap), MIRROR(mem, cap);
  MIRROR(slots, (size_t)cap * maxT), MIRROR(n, 1);
}

static void state_mirror(mirror *m, state *d, const state *h) {
  *d = *h;
  rows_mirror(m, &d->rows[0], &h->rows[0], h->cap, h->maxT);
  rows_mirror(m, &d->rows[1], &h->rows[1], h->cap, h->maxT);
  const int G = h->G, F = h->fin_cap, W = h->wmax;
  MIRROR(g.width, G), MIRROR(g.n_best, G), MIRROR(g.row0, G), MIRROR(g.n_rows, G);
  MIRROR(g.pos, G), MIRROR(g.state, G), MIRROR(g.n_fin, G);
  MIRROR(g.fin_score, (size_t)G * F), MIRROR(g.fin_phrase, (size_t)G * F);
  MIRROR(g.fin_len, (size_t)G * F);
  if (h->g.fin_slots)
    MIRROR(g.fin_slots, (size_t)G * F * h->maxT);
  MIRROR(picks.parent, (size_t)G * W), MIRROR(picks.token, (size_t)G * W);
  MIRROR(picks.node, (size_t)G * W), MIRROR(picks.phrase, (size_t)G * W);
  MIRROR(picks.score, (size_t)G * W), MIRROR(picks.n, G);
  MIRROR(slot_base, 1);
}
#undef MIRROR

static void expect_ints(mirror *m, const int32_t *want, const int32_t *dev, size_t n,
                        const char *what, int step) {
  int32_t *got = xcalloc(n, 4);
  dget(m, got, dev, n * 4);
  for (size_t i = 0; i < n; i++)
    cr_assert_eq(got[i], want[i], "%s, step %d: %s[%zu] = %d, want %d", m->be->name, step, what, i,
                 got[i], want[i]);
  free(got);
}

static void expect_floats(mirror *m, const float *want, const float *dev, size_t n, double tol,
                          const char *what, int step) {
  float *got = xcalloc(n, 4);
  dget(m, got, dev, n * 4);
  for (size_t i = 0; i < n; i++) {
    if (isnan(want[i]) && isnan(got[i]))
      continue;
    cr_assert(fabs((double)got[i] - want[i]) <= tol * (1.0 + fabs(want[i])),
              "%s, step %d: %s[%zu] = %.9g, want %.9g", m->be->name, step, what, i, got[i],
              want[i]);
  }
  free(got);
}

/* The live part of backend m's state (dev) equals the host reference h: rows 0 .. n-1 (slots up
 * to each row's position), every group's fields, its first n_fin finished hypotheses (slots up
 * to their length) and its first picks.n picks. What lies beyond a live count is dead and may
 * differ (the CPU writes live picks into the next rows before an early stop drops them). */
static void expect_state(mirror *m, const state *h, const state *d, int which, int step) {
  const int G = h->G, F = h->fin_cap, W = h->wmax, T = h->maxT;
  const vt_beam_rows *hr = &h->rows[which], *dr = &d->rows[which];
  const int n = *hr->n;
  expect_ints(m, hr->n, dr->n, 1, "rows.n", step);
  expect_ints(m, hr->token, dr->token, n, "rows.token", step);
  expect_ints(m, hr->node, dr->node, n, "rows.node", step);
  expect_floats(m, hr->score, dr->score, n, 1e-6, "rows.score", step);
  expect_ints(m, hr->pos, dr->pos, n, "rows.pos", step);
  expect_ints(m, hr->mem, dr->mem, n, "rows.mem", step);
  for (int r = 0; r < n; r++)
    expect_ints(m, hr->slots + (size_t)r * T, dr->slots + (size_t)r * T, (size_t)hr->pos[r] + 1,
                "rows.slots", step);
  expect_ints(m, h->g.row0, d->g.row0, G, "groups.row0", step);
  expect_ints(m, h->g.n_rows, d->g.n_rows, G, "groups.n_rows", step);
  expect_ints(m, h->g.pos, d->g.pos, G, "groups.pos", step);
  expect_ints(m, h->g.state, d->g.state, G, "groups.state", step);
  expect_ints(m, h->g.n_fin, d->g.n_fin, G, "groups.n_fin", step);
  expect_ints(m, h->picks.n, d->picks.n, G, "picks.n", step);
  for (int g = 0; g < G; g++) {
    const size_t f0 = (size_t)g * F, p0 = (size_t)g * W;
    const int nf = h->g.n_fin[g], np = h->picks.n[g];
    expect_floats(m, h->g.fin_score + f0, d->g.fin_score + f0, nf, 1e-6, "fin_score", step);
    expect_ints(m, h->g.fin_phrase + f0, d->g.fin_phrase + f0, nf, "fin_phrase", step);
    expect_ints(m, h->g.fin_len + f0, d->g.fin_len + f0, nf, "fin_len", step);
    for (int f = 0; h->g.fin_slots && f < nf; f++)
      expect_ints(m, h->g.fin_slots + (f0 + f) * T, d->g.fin_slots + (f0 + f) * T,
                  (size_t)h->g.fin_len[f0 + f], "fin_slots", step);
    expect_ints(m, h->picks.parent + p0, d->picks.parent + p0, np, "picks.parent", step);
    expect_ints(m, h->picks.token + p0, d->picks.token + p0, np, "picks.token", step);
    expect_ints(m, h->picks.node + p0, d->picks.node + p0, np, "picks.node", step);
    expect_ints(m, h->picks.phrase + p0, d->picks.phrase + p0, np, "picks.phrase", step);
    expect_floats(m, h->picks.score + p0, d->picks.score + p0, np, 1e-6, "picks.score", step);
  }
  expect_ints(m, h->slot_base, d->slot_base, 1, "slot_base", step);
}

/* ---- a random phrase table and its trie ----------------------------------------------------- */
typedef struct phrases {
  vt_phrases p;
  vt_trie t;
  int V;
} phrases;

static void phrases_make(phrases *ph, int n, int V, int maxlen) {
  memset(ph, 0, sizeof *ph);
  ph->V = V;
  ph->p.tok_off = xcalloc((size_t)n + 1, 4);
  ph->p.tok = xcalloc((size_t)n * maxlen, 4);
  int k = 0;
  for (int i = 0; i < n; i++) {
    for (;;) { /* distinct phrases: a duplicate is redrawn */
      const int len = 1 + rint_(maxlen);
      for (int d = 0; d < len; d++)
        ph->p.tok[k + d] = VT_N_SPECIALS + rint_(V - VT_N_SPECIALS);
      int dup = 0;
      for (int j = 0; j < i && !dup; j++)
        dup = ph->p.tok_off[j + 1] - ph->p.tok_off[j] == len &&
              !memcmp(ph->p.tok + ph->p.tok_off[j], ph->p.tok + k, (size_t)len * 4);
      if (!dup) {
        k += len;
        break;
      }
    }
    ph->p.tok_off[i + 1] = k;
  }
  ph->p.n = n;
  vt_err err = {0};
  cr_assert_eq(vt_trie_build(&ph->t, &ph->p, VT_TOK_EOS, &err), 0, "%s", err.msg);
}

static void phrases_free(phrases *ph) {
  vt_trie_free(&ph->t);
  free(ph->p.tok_off);
  free(ph->p.tok);
}

/* ---- the backends -------------------------------------------------------------------------- */
typedef void (*case_fn)(vt_backend *be, int seed);

static void on_cpu(case_fn f, int seeds) {
  vt_backend *be;
  char err[256];
  cr_assert_eq(vt_backend_open(&be, "cpu", err, sizeof err), 0, "%s", err);
  for (int s = 0; s < seeds; s++)
    f(be, s);
  vt_backend_close(be);
}

/* On a device; under the emulator in the three orders its threads can run in between barriers
 * (a missing barrier changes the answer in at least one). */
static void on_cuda(case_fn f, int seeds) {
  vt_backend *be;
  char err[256];
  if (vt_backend_open(&be, "cuda:0", err, sizeof err))
    cr_skip_test("no CUDA backend here: %s", err);
#ifdef VT_CUDA_EMU
  uint64_t seed0;
  const int order0 = vt_emu_get_order(&seed0);
  const int orders[3] = {VT_EMU_FORWARD, VT_EMU_REVERSE, VT_EMU_SHUFFLE};
  for (int o = 0; o < 3; o++) {
    vt_emu_set_order(orders[o], 7);
    for (int s = 0; s < seeds; s++)
      f(be, s);
  }
  vt_emu_set_order(order0, seed0);
#else
  for (int s = 0; s < seeds; s++)
    f(be, s);
#endif
  vt_backend_close(be);
}

#define ON_BOTH(name, fn, seeds)                                                                 \
  Test(decode_ops, name##_cpu) { on_cpu(fn, seeds); }                                            \
  Test(decode_ops, name##_cuda) { on_cuda(fn, seeds); }

/* ---- feed, KV append and the decoder's attentions ------------------------------------------ */
static void rows_case(vt_backend *be, int seed) {
  rng_state = 1000 + (uint64_t)seed;
  const int cap = 2 + rint_(20), n = seed == 0 ? 0 : seed == 1 ? cap : rint_(cap + 1);
  const int maxT = 3 + rint_(6), NH = 1 + rint_(3), HS = 1 + rint_(9), C = NH * HS;
  const int V = 12, NQ = 1 + rint_(5), B = 1 + rint_(4), S = cap * maxT + 7;
  float *tok_emb = xcalloc((size_t)V * C, 4), *pos_emb = xcalloc((size_t)maxT * C, 4);
  for (int i = 0; i < V * C; i++)
    tok_emb[i] = dyadic();
  for (int i = 0; i < maxT * C; i++)
    pos_emb[i] = dyadic();
  vt_beam_rows r;
  rows_alloc(&r, cap, maxT);
  *r.n = n;
  for (int i = 0; i < cap; i++) {
    r.token[i] = rint_(V);
    r.pos[i] = rint_(maxT);
    r.mem[i] = rint_(B);
    r.score[i] = dyadic();
    for (int t = 0; t < maxT; t++) /* distinct slots per row: rows do not share a pool row */
      r.slots[(size_t)i * maxT + t] = i * maxT + t;
  }
  const int32_t base = 3;
  float *QKV = xcalloc((size_t)cap * 3 * C, 4), *kpool = xcalloc((size_t)S * C, 4),
        *vpool = xcalloc((size_t)S * C, 4), *xkv = xcalloc((size_t)B * NQ * 2 * C, 4);
  for (int i = 0; i < cap * 3 * C; i++)
    QKV[i] = dyadic();
  for (int i = 0; i < S * C; i++)
    kpool[i] = dyadic(), vpool[i] = dyadic();
  for (int i = 0; i < B * NQ * 2 * C; i++)
    xkv[i] = dyadic();
  float *sentinel = xcalloc((size_t)cap * C, 4);
  for (int i = 0; i < cap * C; i++)
    sentinel[i] = NAN;
  /* the reference */
  vt_beam_rows ref;
  rows_alloc(&ref, cap, maxT);
  memcpy(ref.slots, r.slots, (size_t)cap * maxT * 4);
  float *Y = xcalloc((size_t)cap * C, 4), *Q = xcalloc((size_t)cap * C, 4);
  float *kp = xcalloc((size_t)S * C, 4), *vp = xcalloc((size_t)S * C, 4);
  float *A1 = xcalloc((size_t)cap * C, 4), *A2 = xcalloc((size_t)cap * C, 4);
  memcpy(Y, sentinel, (size_t)cap * C * 4), memcpy(Q, sentinel, (size_t)cap * C * 4);
  memcpy(A1, sentinel, (size_t)cap * C * 4), memcpy(A2, sentinel, (size_t)cap * C * 4);
  memcpy(kp, kpool, (size_t)S * C * 4), memcpy(vp, vpool, (size_t)S * C * 4);
  vt_beam_rows hr = r;
  hr.slots = ref.slots;
  vt_beam_feed(Y, hr, &base, tok_emb, pos_emb, cap, C, maxT);
  vt_kv_append(Q, kp, vp, QKV, hr, cap, C, maxT);
  vt_dec_self_attention(A1, Q, kp, vp, hr, cap, maxT, C, NH);
  vt_dec_cross_attention(A2, Q, xkv, hr, cap, NQ, C, NH);
  /* the backend */
  mirror m = {.be = be};
  vt_beam_rows dr;
  rows_mirror(&m, &dr, &r, cap, maxT);
  float *dY = dput(&m, sentinel, (size_t)cap * C * 4), *dQ = dput(&m, sentinel, (size_t)cap * C * 4);
  float *dA1 = dput(&m, sentinel, (size_t)cap * C * 4), *dA2 = dput(&m, sentinel, (size_t)cap * C * 4);
  float *dkp = dput(&m, kpool, (size_t)S * C * 4), *dvp = dput(&m, vpool, (size_t)S * C * 4);
  float *dQKV = dput(&m, QKV, (size_t)cap * 3 * C * 4), *dxkv = dput(&m, xkv, (size_t)B * NQ * 2 * C * 4);
  float *dtok = dput(&m, tok_emb, (size_t)V * C * 4), *dpos = dput(&m, pos_emb, (size_t)maxT * C * 4);
  int32_t *dbase = dput(&m, &base, 4);
  cr_assert_eq(be->beam_feed(be, dY, dr, dbase, dtok, dpos, cap, C, maxT), 0, "%s", be->error(be));
  cr_assert_eq(be->kv_append(be, dQ, dkp, dvp, dQKV, dr, cap, C, maxT), 0, "%s", be->error(be));
  cr_assert_eq(be->dec_self_attention(be, dA1, dQ, dkp, dvp, dr, cap, maxT, C, NH), 0, "%s",
               be->error(be));
  cr_assert_eq(be->dec_cross_attention(be, dA2, dQ, dxkv, dr, cap, NQ, C, NH), 0, "%s",
               be->error(be));
  expect_floats(&m, Y, dY, (size_t)cap * C, 0, "beam_feed Y", seed);
  expect_ints(&m, ref.slots, dr.slots, (size_t)cap * maxT, "beam_feed slots", seed);
  expect_floats(&m, Q, dQ, (size_t)cap * C, 0, "kv_append Q", seed);
  expect_floats(&m, kp, dkp, (size_t)S * C, 0, "kv_append kpool", seed);
  expect_floats(&m, vp, dvp, (size_t)S * C, 0, "kv_append vpool", seed);
  expect_floats(&m, A1, dA1, (size_t)cap * C, 1e-5, "dec_self_attention", seed);
  expect_floats(&m, A2, dA2, (size_t)cap * C, 1e-5, "dec_cross_attention", seed);
  /* rows past the live count are left alone: their outputs are still the sentinel */
  for (int i = n * C; i < cap * C; i++)
    cr_assert(isnan(Y[i]) && isnan(Q[i]) && isnan(A1[i]) && isnan(A2[i]));
  mirror_free(&m);
  rows_free(&r);
  rows_free(&ref);
  free(tok_emb), free(pos_emb), free(QKV), free(kpool), free(vpool), free(xkv), free(sentinel);
  free(Y), free(Q), free(kp), free(vp), free(A1), free(A2);
}

ON_BOTH(rows_ops, rows_case, 12)

/* ---- beam select and advance over several groups, step by step ----------------------------- */
/* G searches over one trie: random widths and n_best, different start positions, some groups
 * already done; each step gets fresh hidden states (ties: in "tie" mode all zeros, so every
 * child of a beam has the same logit and equal candidates must resolve by listing order). */
static void search_case(vt_backend *be, int seed) {
  rng_state = 2000 + (uint64_t)seed;
  const int tie = seed % 3 == 2;
  phrases ph;
  const int V0 = 9 + rint_(8), len0 = 1 + rint_(4), n0 = 3 + rint_(30);
  /* no more phrases than there are distinct ones of that length */
  phrases_make(&ph, len0 == 1 && n0 > V0 - VT_N_SPECIALS ? V0 - VT_N_SPECIALS : n0, V0, len0);
  const int C = 8, V = ph.V, G = 1 + rint_(7), maxT = 12;
  int wmax = 1, cap = 0;
  int *width = xcalloc(G, 4);
  for (int g = 0; g < G; g++) {
    width[g] = 1 + rint_(6);
    wmax = width[g] > wmax ? width[g] : wmax;
    cap += width[g];
  }
  const int fin_cap = wmax * 8;
  state h, d;
  state_alloc(&h, cap, G, maxT, fin_cap, wmax, 1);
  float *tok_emb = xcalloc((size_t)V * C, 4), *hid = xcalloc((size_t)cap * C, 4);
  for (int i = 0; i < V * C; i++)
    tok_emb[i] = dyadic();
  int n = 0;
  for (int g = 0; g < G; g++) {
    h.g.width[g] = width[g];
    h.g.n_best[g] = 1 + rint_(width[g]);
    if (g == 1 && G > 2) { /* a finished search */
      h.g.state[g] = VT_GROUP_DONE;
      continue;
    }
    const int p0 = rint_(3);
    h.g.row0[g] = n;
    h.g.n_rows[g] = 1;
    h.g.pos[g] = p0;
    h.g.state[g] = VT_GROUP_FIRST;
    h.rows[0].token[n] = VT_TOK_SEP;
    h.rows[0].node[n] = 0;
    h.rows[0].score[n] = 0.0f;
    h.rows[0].pos[n] = p0;
    h.rows[0].mem[n] = g;
    for (int t = 0; t < p0; t++)
      h.rows[0].slots[(size_t)n * maxT + t] = 100 + g * 10 + t;
    n++;
  }
  *h.rows[0].n = n;
  *h.slot_base = 17;
  const size_t scratch_bytes = vt_beam_select_scratch(cap, cap * V);
  void *hs = xcalloc(scratch_bytes, 1);
  mirror m = {.be = be};
  void *ds = dput(&m, hs, scratch_bytes);
  float *dtok = dput(&m, tok_emb, (size_t)V * C * 4);
  const vt_trie *t = &ph.t;
  vt_trie_csr ht = {t->indptr, t->token, t->child, t->phrase};
  vt_trie_csr dt = {dput(&m, t->indptr, (size_t)(t->n_nodes + 1) * 4),
                    dput(&m, t->token, (size_t)t->n_edges * 4),
                    dput(&m, t->child, (size_t)t->n_edges * 4),
                    dput(&m, t->phrase, (size_t)t->n_nodes * 4)};
  int which = 0;
  for (int step = 0; step < 8 && *h.rows[which].n > 0; step++) {
    for (int i = 0; i < cap * C; i++)
      hid[i] = tie ? 0.0f : dyadic();
    mirror ms = {.be = be};
    state_mirror(&ms, &d, &h); /* both start the step from the reference's state */
    float *dh = dput(&ms, hid, (size_t)cap * C * 4);
    vt_beam_select(h.picks, hid, h.rows[which], h.g, G, cap, wmax, tok_emb, ht, C, hs);
    vt_beam_advance(h.rows[!which], h.g, h.slot_base, h.picks, h.rows[which], G, wmax, maxT,
                    maxT);
    cr_assert_eq(be->beam_select(be, d.picks, dh, d.rows[which], d.g, G, cap, wmax, dtok, dt, C,
                                 ds),
                 0, "%s", be->error(be));
    cr_assert_eq(be->beam_advance(be, d.rows[!which], d.g, d.slot_base, d.picks, d.rows[which], G,
                                  wmax, maxT, maxT),
                 0, "%s", be->error(be));
    which = !which;
    expect_state(&ms, &h, &d, which, step);
    mirror_free(&ms);
  }
  mirror_free(&m);
  state_free(&h);
  phrases_free(&ph);
  free(width), free(tok_emb), free(hid), free(hs);
}

ON_BOTH(search, search_case, 24)

/* ---- themes -> keywords ------------------------------------------------------------------ */
static void handover_case(vt_backend *be, int seed) {
  rng_state = 3000 + (uint64_t)seed;
  const int B = 1 + rint_(6), maxT = 10, fin_cap = 12;
  vt_page_req *req = xcalloc(B, sizeof *req);
  int G2 = 0;
  for (int i = 0; i < B; i++) {
    req[i].sections = rint_(5); /* 0 allowed: a padded request */
    req[i].keywords = 1 + rint_(4);
    req[i].kw_width = req[i].keywords + rint_(3);
    req[i].group0 = G2;
    G2 += req[i].sections;
  }
  const int G2c = G2 + rint_(3); /* spare searches, as a bucketed batch has */
  state s1, s2;
  state_alloc(&s1, 4, B, maxT, fin_cap, 4, 1);
  state_alloc(&s2, G2c + 1, G2c + 1, maxT, fin_cap, 4, 0);
  for (int i = 0; i < B; i++) {
    s1.g.n_fin[i] = rint_(fin_cap + 1); /* fewer finished themes than sections: done searches */
    for (int f = 0; f < s1.g.n_fin[i]; f++) {
      const size_t k = (size_t)i * fin_cap + f;
      s1.g.fin_score[k] = seed % 2 ? -(float)rint_(3) : dyadic(); /* many equal scores */
      s1.g.fin_phrase[k] = f * 7 + rint_(7);                      /* distinct */
      s1.g.fin_len[k] = 1 + rint_(maxT - 2);
      for (int t = 0; t < maxT; t++)
        s1.g.fin_slots[k * maxT + t] = rint_(1000);
    }
  }
  /* half the seeds: themes blocked in some (region, season) and sections restricted to some
   * themes (the rules' tables, engine/rules.h); drawn last, the rest of the case stays the same */
  const int NT = fin_cap * 7;
  uint32_t *block = NULL, *allow = NULL;
  vt_theme_rules tr = {0}, dtr = {0};
  if (seed % 4 >= 2) {
    block = xcalloc((size_t)NT * 4, 4);
    allow = xcalloc((size_t)NT, 4);
    for (int i = 0; i < B; i++) {
      req[i].region = rint_(2);
      req[i].season = rint_(4);
    }
    for (int k = 0; k < NT * 4; k++)
      block[k] = rint_(3) == 0 ? (uint32_t)(1 + rint_(3)) : 0u;
    for (int k = 0; k < NT; k++)
      allow[k] = (uint32_t)rint_(32);
    tr = (vt_theme_rules){block, allow, (uint32_t)rint_(32)};
  }
  vt_storefront *out = xcalloc(B, sizeof *out), *got = xcalloc(B, sizeof *got);
  memset(out, 0x7B, (size_t)B * sizeof *out);
  mirror m = {.be = be};
  state d1, d2;
  state_mirror(&m, &d1, &s1);
  state_mirror(&m, &d2, &s2);
  vt_storefront *dout = dput(&m, out, (size_t)B * sizeof *out);
  vt_page_req *dreq = dput(&m, req, (size_t)B * sizeof *req);
  if (block)
    dtr = (vt_theme_rules){dput(&m, block, (size_t)NT * 16), dput(&m, allow, (size_t)NT * 4),
                           tr.restricted};
  vt_beam_themes_to_keywords(out, s2.rows[0], s2.g, s1.g, req, tr, B, G2c, maxT, VT_TOK_SEP);
  cr_assert_eq(be->themes_to_keywords(be, dout, d2.rows[0], d2.g, d1.g, dreq, dtr, B, G2c, maxT,
                                      VT_TOK_SEP),
               0, "%s", be->error(be));
  for (int i = 0; block && i < B; i++) /* the sections leave out what the rules rule out */
    for (int s = 0; s < out[i].n_sections; s++) {
      const int t = out[i].sections[s].theme;
      cr_assert(!(block[(size_t)t * 4 + (size_t)req[i].season] >> req[i].region & 1u),
                "request %d section %d: theme %d is blocked", i, s, t);
      cr_assert(!(tr.restricted >> s & 1u) || (allow[t] >> s & 1u),
                "request %d section %d: theme %d is not allowed there", i, s, t);
    }
  dget(&m, got, dout, (size_t)B * sizeof *out);
  for (int i = 0; i < B; i++) {
    cr_assert_eq(got[i].n_sections, out[i].n_sections, "request %d", i);
    for (int s = 0; s < out[i].n_sections; s++) {
      cr_assert_eq(got[i].sections[s].theme, out[i].sections[s].theme);
      cr_assert_eq(got[i].sections[s].theme_score, out[i].sections[s].theme_score);
      cr_assert_eq(got[i].sections[s].n_keywords, 0);
      cr_assert_eq(got[i].sections[s].n_products, 0);
    }
  }
  const int n = *s2.rows[0].n;
  expect_ints(&m, s2.rows[0].n, d2.rows[0].n, 1, "rows2.n", seed);
  expect_ints(&m, s2.rows[0].token, d2.rows[0].token, n, "rows2.token", seed);
  expect_ints(&m, s2.rows[0].node, d2.rows[0].node, n, "rows2.node", seed);
  expect_floats(&m, s2.rows[0].score, d2.rows[0].score, n, 0, "rows2.score", seed);
  expect_ints(&m, s2.rows[0].pos, d2.rows[0].pos, n, "rows2.pos", seed);
  expect_ints(&m, s2.rows[0].mem, d2.rows[0].mem, n, "rows2.mem", seed);
  for (int r = 0; r < n; r++) /* the theme's slots (its length's worth) */
    expect_ints(&m, s2.rows[0].slots + (size_t)r * maxT, d2.rows[0].slots + (size_t)r * maxT,
                (size_t)s2.rows[0].pos[r], "rows2.slots", seed);
  expect_ints(&m, s2.g.state, d2.g.state, G2c, "g2.state", seed);
  expect_ints(&m, s2.g.n_rows, d2.g.n_rows, G2c, "g2.n_rows", seed);
  expect_ints(&m, s2.g.n_fin, d2.g.n_fin, G2c, "g2.n_fin", seed);
  for (int gi = 0; gi < G2c; gi++) { /* the live searches' row, width, wanted, position */
    int32_t v[4];
    if (!s2.g.n_rows[gi])
      continue;
    dget(&m, &v[0], d2.g.row0 + gi, 4), dget(&m, &v[1], d2.g.width + gi, 4);
    dget(&m, &v[2], d2.g.n_best + gi, 4), dget(&m, &v[3], d2.g.pos + gi, 4);
    cr_assert(v[0] == s2.g.row0[gi] && v[1] == s2.g.width[gi] && v[2] == s2.g.n_best[gi] &&
                  v[3] == s2.g.pos[gi],
              "%s: search %d", be->name, gi);
  }
  mirror_free(&m);
  state_free(&s1);
  state_free(&s2);
  free(req), free(out), free(got), free(block), free(allow);
}

ON_BOTH(handover, handover_case, 16)

/* ---- the page --------------------------------------------------------------------------- */
static void page_case(vt_backend *be, int seed) {
  rng_state = 4000 + (uint64_t)seed;
  const int P = 20 + rint_(60), R = 1 + rint_(12), NK = 4 + rint_(12), B = 1 + rint_(5);
  const int fin_cap = 10;
  /* the catalogue: keyword lists with shared products, stock, regions, seasons, related */
  int32_t *kw_off = xcalloc(NK + 1, 4), *kw_prod = xcalloc((size_t)NK * 12, 4);
  for (int k = 0; k < NK; k++) {
    const int len = rint_(12);
    for (int j = 0; j < len; j++)
      kw_prod[kw_off[k] + j] = rint_(P);
    kw_off[k + 1] = kw_off[k] + len;
  }
  int32_t *stock = xcalloc(P, 4), *rel_off = xcalloc(P + 1, 4), *rel_idx = xcalloc((size_t)P * 4, 4);
  uint32_t *regions = xcalloc(P, 4);
  uint8_t *seasons = xcalloc(P, 1);
  float *emb = xcalloc((size_t)P * R, 4), *log_pop = xcalloc(P, 4), *rel_w = xcalloc((size_t)P * 4, 4);
  for (int p = 0; p < P; p++) {
    stock[p] = rint_(5) ? 1 + rint_(3) : 0;
    regions[p] = rnd() & 3u;
    seasons[p] = (uint8_t)(rnd() & 15u);
    log_pop[p] = (float)rint_(9) / 4.0f;
    for (int r = 0; r < R; r++)
      emb[(size_t)p * R + r] = dyadic();
    const int nr = rint_(4);
    for (int j = 0; j < nr; j++) {
      rel_idx[rel_off[p] + j] = rint_(P);
      rel_w[rel_off[p] + j] = (float)(1 + rint_(8)) / 8.0f;
    }
    rel_off[p + 1] = rel_off[p] + nr;
  }
  /* the requests and their keyword searches' finished hypotheses */
  vt_page_req *req = xcalloc(B, sizeof *req);
  int32_t *hist = xcalloc((size_t)B * 8, 4), *excl = xcalloc((size_t)B * 4, 4);
  float *user = xcalloc((size_t)B * R, 4);
  int nh = 0, nx = 0, G2 = 0;
  for (int i = 0; i < B; i++) {
    vt_page_req *r = &req[i];
    r->sections = 1 + rint_(4);
    r->keywords = 1 + rint_(4);
    r->products = rint_(7);
    r->group0 = G2;
    G2 += r->sections;
    r->region = rint_(2);
    r->season = rint_(4);
    r->hist0 = nh;
    r->n_hist = rint_(8);
    for (int k = 0; k < r->n_hist; k++)
      hist[nh++] = rint_(P);
    r->excl0 = nx;
    r->n_excl = rint_(4);
    for (int k = 0; k < r->n_excl; k++)
      excl[nx++] = rint_(P);
    for (int k = 0; k < R; k++)
      user[(size_t)i * R + k] = dyadic();
  }
  state s2;
  state_alloc(&s2, 1, G2, 4, fin_cap, 1, 0);
  vt_storefront *out = xcalloc(B, sizeof *out), *got = xcalloc(B, sizeof *got);
  for (int i = 0; i < B; i++) {
    out[i].n_sections = req[i].sections - (seed % 2 ? rint_(2) : 0); /* fewer themes found */
    for (int s = 0; s < req[i].sections; s++) {
      const int gi = req[i].group0 + s;
      s2.g.n_fin[gi] = rint_((fin_cap < NK ? fin_cap : NK) + 1);
      int32_t perm[64];
      for (int k = 0; k < NK; k++)
        perm[k] = k;
      for (int f = 0; f < s2.g.n_fin[gi]; f++) { /* distinct keywords, often equal scores */
        const int j = f + rint_(NK - f);
        const int32_t t = perm[f];
        perm[f] = perm[j];
        perm[j] = t;
        s2.g.fin_phrase[(size_t)gi * fin_cap + f] = perm[f];
        s2.g.fin_score[(size_t)gi * fin_cap + f] = -(float)rint_(4) / 2.0f;
      }
    }
  }
  memcpy(got, out, (size_t)B * sizeof *out);
  /* half the seeds: keywords and products blocked in some (region, season) (the rules' tables,
   * engine/rules.h); drawn last, so the rest of the case is the same as without them */
  uint32_t *kw_block = NULL, *prod_block = NULL;
  if (seed % 4 >= 2) {
    kw_block = xcalloc((size_t)NK * 4, 4);
    prod_block = xcalloc((size_t)P * 4, 4);
    for (int k = 0; k < NK * 4; k++)
      kw_block[k] = rint_(3) == 0 ? (uint32_t)(1 + rint_(3)) : 0u;
    for (int k = 0; k < P * 4; k++)
      prod_block[k] = rint_(3) == 0 ? (uint32_t)(1 + rint_(3)) : 0u;
  }
  /* seeds 4..7 of every 8: the ranker's calibration on (kernels/calib.h), products in a few
   * categories (their first code) so that pages and histories share some; drawn last as well */
  const int L = 2;
  int32_t *codes = NULL;
  float calibration = 0.0f;
  if (seed % 8 >= 4) {
    codes = xcalloc((size_t)P * L, 4);
    for (int k = 0; k < P * L; k++)
      codes[k] = rint_(k % L ? VT_CALIB_CATEGORIES : 5);
    calibration = (float)(1 + rint_(8)) / 8.0f; /* 1/8 .. 1: pure calibration included */
  }
  vt_shelf hs = {P,       R,       kw_off,  kw_prod,  stock,      regions, seasons, emb,
                 log_pop, rel_off, rel_idx, rel_w,    kw_block,   prod_block, codes, L};
  const vt_ranker rk = {1.5f, 0.75f, 0.25f, 0.5f, calibration};
  /* a third of the seeds each: the weights' mix, a learned linear ranker, a learned MLP (drawn
   * last, so the rest of the case is the same whichever scores) */
  vt_ranker_model lm = {.hidden = seed % 3 - 1, .cooc_half = 0.375f, .b2 = dyadic()};
  for (int k = 0; k < VT_RANKER_MAX_HIDDEN * VT_RANKER_FEATURES; k++)
    lm.w1[k] = dyadic();
  for (int k = 0; k < VT_RANKER_MAX_HIDDEN; k++)
    lm.b1[k] = dyadic(), lm.w2[k] = dyadic();
  if (lm.hidden > 0)
    lm.hidden = 1 + rint_(VT_RANKER_MAX_HIDDEN);
  int max_cands = 0;
  for (int k = 0; k < NK; k++)
    max_cands = kw_off[k + 1] - kw_off[k] > max_cands ? kw_off[k + 1] - kw_off[k] : max_cands;
  max_cands *= 4;
  void *hscr = xcalloc(vt_page_scratch(P, max_cands, B), 1);
  vt_page_assemble(out, req, hist, excl, user, s2.g, hs, rk, lm, B, max_cands, hscr);
  mirror m = {.be = be};
  state d2;
  state_mirror(&m, &d2, &s2);
  const size_t sb = be->page_scratch(P, max_cands, B);
  void *zero = xcalloc(sb, 1);
  vt_shelf ds = {P,
                 R,
                 dput(&m, kw_off, (size_t)(NK + 1) * 4),
                 dput(&m, kw_prod, (size_t)kw_off[NK] * 4),
                 dput(&m, stock, (size_t)P * 4),
                 dput(&m, regions, (size_t)P * 4),
                 dput(&m, seasons, (size_t)P),
                 dput(&m, emb, (size_t)P * R * 4),
                 dput(&m, log_pop, (size_t)P * 4),
                 dput(&m, rel_off, (size_t)(P + 1) * 4),
                 dput(&m, rel_idx, (size_t)rel_off[P] * 4),
                 dput(&m, rel_w, (size_t)rel_off[P] * 4),
                 kw_block ? dput(&m, kw_block, (size_t)NK * 16) : NULL,
                 prod_block ? dput(&m, prod_block, (size_t)P * 16) : NULL,
                 codes ? dput(&m, codes, (size_t)P * L * 4) : NULL,
                 L};
  vt_storefront *dout = dput(&m, got, (size_t)B * sizeof *got);
  void *dscr = dput(&m, zero, sb);
  const vt_page_req *dreq = dput(&m, req, (size_t)B * sizeof *req);
  const int32_t *dhist = dput(&m, hist, (size_t)(nh ? nh : 1) * 4),
                *dexcl = dput(&m, excl, (size_t)(nx ? nx : 1) * 4);
  const float *duser = dput(&m, user, (size_t)B * R * 4);
  cr_assert_eq(be->page_assemble(be, dout, dreq, dhist, dexcl, duser, d2.g, ds, rk, lm, B,
                                 max_cands, dscr),
               0, "%s", be->error(be));
  /* twice on the same scratch: a mark or feature left behind by the first would change the
   * second (the scratch must be left as it was found, ready for the next batch) */
  for (int rep = 0; rep < 2; rep++) {
    if (rep == 1) {
      for (int i = 0; i < B; i++)
        got[i].n_sections = out[i].n_sections;
      cr_assert_eq(be->upload(be, dout, got, (size_t)B * sizeof *got), 0);
      cr_assert_eq(be->page_assemble(be, dout, dreq, dhist, dexcl, duser, d2.g, ds, rk, lm,
                                     B, max_cands, dscr),
                   0, "%s", be->error(be));
    }
    dget(&m, got, dout, (size_t)B * sizeof *got);
    for (int i = 0; i < B; i++) {
      cr_assert_eq(got[i].n_sections, out[i].n_sections);
      for (int s = 0; s < out[i].n_sections; s++) {
        const vt_section *w = &out[i].sections[s], *g = &got[i].sections[s];
        cr_assert_eq(g->n_keywords, w->n_keywords, "%s: request %d section %d", be->name, i, s);
        for (int k = 0; k < w->n_keywords; k++)
          cr_assert(g->keyword[k] == w->keyword[k] && g->keyword_score[k] == w->keyword_score[k],
                    "%s: request %d section %d keyword %d", be->name, i, s, k);
        cr_assert_eq(g->n_products, w->n_products, "%s: request %d section %d (run %d)",
                     be->name, i, s, rep);
        for (int k = 0; k < w->n_products; k++)
          cr_assert(g->products[k].product == w->products[k].product &&
                        g->products[k].keyword == w->products[k].keyword &&
                        g->products[k].score == w->products[k].score,
                    "%s: request %d section %d product %d: got %d (kw %d, %.9g), want %d (kw %d, "
                    "%.9g)",
                    be->name, i, s, k, g->products[k].product, g->products[k].keyword,
                    g->products[k].score, w->products[k].product, w->products[k].keyword,
                    w->products[k].score);
      }
    }
  }
  for (int i = 0; kw_block && i < B; i++) /* the answers leave the blocked ones out */
    for (int s = 0; s < out[i].n_sections; s++) {
      const vt_section *w = &out[i].sections[s];
      const size_t rs = (size_t)req[i].season;
      for (int k = 0; k < w->n_keywords; k++)
        cr_assert(!(kw_block[(size_t)w->keyword[k] * 4 + rs] >> req[i].region & 1u),
                  "request %d section %d: keyword %d is blocked", i, s, w->keyword[k]);
      for (int k = 0; k < w->n_products; k++)
        cr_assert(!(prod_block[(size_t)w->products[k].product * 4 + rs] >> req[i].region & 1u),
                  "request %d section %d: product %d is blocked", i, s, w->products[k].product);
    }
  mirror_free(&m);
  state_free(&s2);
  free(zero), free(hscr), free(out), free(got), free(req), free(hist), free(excl);
  free(user), free(kw_off), free(kw_prod), free(stock), free(rel_off), free(rel_idx), free(regions);
  free(seasons), free(emb), free(log_pop), free(rel_w), free(kw_block), free(prod_block);
  free(codes);
}

ON_BOTH(page, page_case, 24)

/* The calibration on a hand-built page (kernels/calib.h): six products of one keyword scored 6 ..
 * 1, the first three of category 1, the last three of category 0; the history one product of
 * category 0; a section of three. Worked by hand with a = 0.01:
 *   strength 0: the top three by score, 0 1 2 (all category 1);
 *   strength 1: only KL counts: category 0 costs 0 and category 1 log(100), so 3 4 5;
 *   strength 0.5: pick 1: 3 (0.5 * 3 - 0 beats 0.5 * 6 - 0.5 log 100); pick 2: 0 (0.5 * 6 -
 *   0.5 log(1 / 0.505) beats 0.5 * 2); pick 3: 1 (0.5 * 5 - 0.5 log(1 / 0.34) beats 0.5 * 2 -
 *   0.5 log(1 / 0.67)), so 3 0 1.
 * Without a history the page is the plain one at any strength. The scores are the products'. */
/* the weights' mix scores (no learned ranker) */
static const vt_ranker_model MIX = {.hidden = -1};

static void calib_page(int32_t *got, int n_hist, float strength) {
  int32_t kw_off[2] = {0, 6}, kw_prod[6] = {0, 1, 2, 3, 4, 5}, stock[6] = {1, 1, 1, 1, 1, 1};
  int32_t rel_off[7] = {0}, rel_idx[1] = {0}, codes[12] = {1, 7, 1, 8, 1, 9, 0, 7, 0, 8, 0, 9};
  uint32_t regions[6] = {1, 1, 1, 1, 1, 1};
  uint8_t seasons[6] = {15, 15, 15, 15, 15, 15};
  float emb[6] = {6, 5, 4, 3, 2, 1}, log_pop[6] = {0}, rel_w[1] = {0}, user[1] = {1};
  int32_t hist[1] = {4}, excl[1] = {0};
  vt_shelf sh = {6,       1,       kw_off,  kw_prod, stock, regions, seasons, emb,
                 log_pop, rel_off, rel_idx, rel_w,   NULL,  NULL,    codes,   2};
  const vt_ranker rk = {0.0f, 0.0f, 0.0f, 0.8f, strength};
  vt_page_req req = {.sections = 1, .keywords = 1, .products = 3, .hist0 = 0, .n_hist = n_hist};
  state s2;
  state_alloc(&s2, 1, 1, 4, 1, 1, 0);
  s2.g.n_fin[0] = 1;
  s2.g.fin_phrase[0] = 0;
  s2.g.fin_score[0] = -1.0f;
  vt_storefront out = {.n_sections = 1};
  void *scr = xcalloc(vt_page_scratch(6, 6, 1), 1);
  vt_page_assemble(&out, &req, hist, excl, user, s2.g, sh, rk, MIX, 1, 6, scr);
  cr_assert_eq(out.sections[0].n_products, 3);
  for (int k = 0; k < 3; k++) {
    got[k] = out.sections[0].products[k].product;
    cr_assert_eq(out.sections[0].products[k].score, emb[got[k]], "the product keeps its score");
  }
  state_free(&s2);
  free(scr);
}

Test(decode_ops, calibration_by_hand) {
  static const struct {
    int n_hist;
    float strength;
    int32_t want[3];
  } cases[] = {{1, 0.0f, {0, 1, 2}}, {1, 1.0f, {3, 4, 5}}, {1, 0.5f, {3, 0, 1}},
               {0, 1.0f, {0, 1, 2}}, {0, 0.5f, {0, 1, 2}}};
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    int32_t got[3];
    calib_page(got, cases[c].n_hist, cases[c].strength);
    for (int k = 0; k < 3; k++)
      cr_assert_eq(got[k], cases[c].want[k], "history %d, strength %g: product %d is %d, not %d",
                   cases[c].n_hist, (double)cases[c].strength, k, got[k], cases[c].want[k]);
  }
}

/* ---- the learned ranker's features, one at a time ------------------------------------------ */
/* A small hand-made page scored by a learned linear ranker that is one feature (w2 = e_i): every
 * product's score must be that feature as the test computes it here from its definition
 * (kernels/decode.h vt_ranker_model), so a feature computed wrongly, or put in another place,
 * fails; then a small MLP against the same features in double. */
enum { LR_P = 8, LR_R = 2, LR_NK = 4 };

typedef struct lr_world {
  int32_t kw_off[LR_NK + 1], kw_prod[16], stock[LR_P], rel_off[LR_P + 1], rel_idx[8];
  uint32_t regions[LR_P];
  uint8_t seasons[LR_P];
  float emb[LR_P * LR_R], log_pop[LR_P], rel_w[8], user[LR_R];
  int32_t hist[3];
  vt_page_req req;
  state s2;
  vt_shelf sh;
} lr_world;

static void lr_world_make(lr_world *w) {
  memset(w, 0, sizeof *w);
  /* keyword k's products: 0 -> {0,1,2}, 1 -> {2,3,4}, 2 -> {5,6}, 3 -> {7,1} */
  static const int32_t lists[LR_NK][3] = {{0, 1, 2}, {2, 3, 4}, {5, 6, -1}, {7, 1, -1}};
  for (int k = 0; k < LR_NK; k++) {
    int n = 0;
    for (int j = 0; j < 3 && lists[k][j] >= 0; j++)
      w->kw_prod[w->kw_off[k] + n++] = lists[k][j];
    w->kw_off[k + 1] = w->kw_off[k] + n;
  }
  for (int p = 0; p < LR_P; p++) {
    w->stock[p] = 1, w->regions[p] = 1, w->seasons[p] = 15;
    w->log_pop[p] = (float)p / 4.0f;
    for (int r = 0; r < LR_R; r++)
      w->emb[p * LR_R + r] = (float)((p * 3 + r * 5) % 7 - 3) / 4.0f;
  }
  w->user[0] = 0.5f, w->user[1] = -0.75f;
  /* related: 3 -> {5 (0.5)}, 0 -> {6 (0.25), 3 (1.0)} */
  for (int p = 0, n = 0; p < LR_P; p++) {
    if (p == 3)
      w->rel_idx[n] = 5, w->rel_w[n++] = 0.5f;
    if (p == 0)
      w->rel_idx[n] = 6, w->rel_w[n++] = 0.25f, w->rel_idx[n] = 3, w->rel_w[n++] = 1.0f;
    w->rel_off[p + 1] = n;
  }
  w->hist[0] = 3, w->hist[1] = 0, w->hist[2] = 3; /* oldest first */
  w->req = (vt_page_req){.sections = 2, .keywords = 2, .products = 64, .kw_width = 2,
                         .group0 = 0, .region = 0, .season = 0, .hist0 = 0, .n_hist = 3};
  state_alloc(&w->s2, 1, 2, 4, 4, 1, 0);
  /* section 0 finds keywords 1 (-0.5) and 0 (-0.25); section 1 keywords 2 (-1) and 3 (-1.5) */
  const int32_t ph[2][2] = {{1, 0}, {2, 3}};
  const float sc[2][2] = {{-0.5f, -0.25f}, {-1.0f, -1.5f}};
  for (int g = 0; g < 2; g++) {
    w->s2.g.n_fin[g] = 2;
    for (int f = 0; f < 2; f++)
      w->s2.g.fin_phrase[g * 4 + f] = ph[g][f], w->s2.g.fin_score[g * 4 + f] = sc[g][f];
  }
  w->sh = (vt_shelf){LR_P,        LR_R,      w->kw_off,  w->kw_prod, w->stock,
                     w->regions,  w->seasons, w->emb,     w->log_pop, w->rel_off,
                     w->rel_idx,  w->rel_w,   NULL,       NULL,       NULL,
                     0};
}

/* The features of product p in section s of the answer, from their definitions (decay 0.5). */
static void lr_expected(const lr_world *w, const vt_section *sec, int s, int p, float cooc_half,
                        double *x) {
  double again = 0, cooc = 0, dot = 0, recency = 0, wgt = 1;
  for (int k = 0; k < 3; k++, wgt *= 0.5) { /* k-th newest */
    const int h = w->hist[2 - k];
    int relates = h == p;
    again += h == p ? wgt : 0;
    for (int i = w->rel_off[h]; i < w->rel_off[h + 1]; i++)
      if (w->rel_idx[i] == p)
        cooc += wgt * w->rel_w[i], relates = 1;
    if (relates && recency == 0)
      recency = 1.0 / (1 + k);
  }
  for (int r = 0; r < LR_R; r++)
    dot += (double)w->user[r] * w->emb[p * LR_R + r];
  int rank = -1; /* the section's first keyword that retrieves p */
  for (int k = 0; k < sec->n_keywords && rank < 0; k++)
    for (int i = w->kw_off[sec->keyword[k]]; i < w->kw_off[sec->keyword[k] + 1]; i++)
      if (w->kw_prod[i] == p)
        rank = k;
  const double v[VT_RANKER_FEATURES] = {dot,
                                        again,
                                        cooc,
                                        cooc / (cooc + cooc_half),
                                        w->log_pop[p],
                                        again > 0,
                                        recency,
                                        sec->keyword_score[rank],
                                        rank,
                                        sec->theme_score,
                                        s};
  memcpy(x, v, sizeof v);
}

static void lr_run(lr_world *w, vt_storefront *out, vt_ranker_model lm) {
  memset(out, 0, sizeof *out);
  out->n_sections = 2;
  out->sections[0].theme_score = -0.125f, out->sections[1].theme_score = -0.75f;
  const vt_ranker rk = {100.0f, 100.0f, 100.0f, 0.5f, 0.0f}; /* the mix's weights: unused */
  void *scr = xcalloc(vt_page_scratch(LR_P, 16, 1), 1);
  vt_page_assemble(out, &w->req, w->hist, w->hist, w->user, w->s2.g, w->sh, rk, lm, 1, 16, scr);
  free(scr);
}

Test(decode_ops, learned_ranker_scores_each_feature_as_defined) {
  static const char *const names[] = VT_RANKER_FEATURE_NAMES;
  lr_world w;
  lr_world_make(&w);
  vt_storefront out;
  for (int f = 0; f < VT_RANKER_FEATURES; f++) {
    vt_ranker_model lm = {.hidden = 0, .cooc_half = 0.375f};
    lm.w2[f] = 1.0f;
    lr_run(&w, &out, lm);
    /* section 0: products 0..4; section 1: 5, 6, 7 (1 was shown in section 0) */
    cr_assert_eq(out.sections[0].n_products, 5, "%s", names[f]);
    cr_assert_eq(out.sections[1].n_products, 3, "%s", names[f]);
    cr_assert(out.sections[0].keyword[0] == 0 && out.sections[0].keyword[1] == 1);
    int features_nonzero = 0;
    for (int s = 0; s < 2; s++)
      for (int k = 0; k < out.sections[s].n_products; k++) {
        const vt_hit *h = &out.sections[s].products[k];
        double x[VT_RANKER_FEATURES];
        lr_expected(&w, &out.sections[s], s, h->product, lm.cooc_half, x);
        features_nonzero += x[f] != 0;
        cr_expect(fabs(h->score - x[f]) <= 1e-6 * (1 + fabs(x[f])),
                  "feature %s: section %d product %d scored %.9g, its %s is %.9g", names[f], s,
                  h->product, h->score, names[f], x[f]);
        if (k > 0) /* ranked by it, then the lower product */
          cr_expect(h[-1].score > h->score ||
                    (h[-1].score == h->score && h[-1].product < h->product));
      }
    cr_assert_gt(features_nonzero, 0, "the page does not exercise feature %s", names[f]);
  }
  /* one ReLU layer of 3 units over all features */
  vt_ranker_model lm = {.hidden = 3, .cooc_half = 0.375f, .b2 = 0.25f};
  for (int j = 0; j < 3; j++) {
    for (int i = 0; i < VT_RANKER_FEATURES; i++)
      lm.w1[j * VT_RANKER_FEATURES + i] = (float)((i * 7 + j * 3) % 9 - 4) / 4.0f;
    lm.b1[j] = (float)j / 2.0f - 0.5f;
    lm.w2[j] = (float)(j + 1) / 2.0f * (j == 1 ? -1.0f : 1.0f);
  }
  lr_run(&w, &out, lm);
  for (int s = 0; s < 2; s++)
    for (int k = 0; k < out.sections[s].n_products; k++) {
      const vt_hit *h = &out.sections[s].products[k];
      double x[VT_RANKER_FEATURES], want = lm.b2;
      lr_expected(&w, &out.sections[s], s, h->product, lm.cooc_half, x);
      for (int j = 0; j < 3; j++) {
        double a = lm.b1[j];
        for (int i = 0; i < VT_RANKER_FEATURES; i++)
          a += (double)lm.w1[j * VT_RANKER_FEATURES + i] * x[i];
        want += lm.w2[j] * (a > 0 ? a : 0);
      }
      cr_expect(fabs(h->score - want) <= 1e-5 * (1 + fabs(want)),
                "MLP: section %d product %d scored %.9g, want %.9g", s, h->product, h->score,
                want);
    }
  state_free(&w.s2);
}
