/* The batched cascade (see engine.h). Shapes: B requests, N = sum of (events + 1) rows, C model
 * width, F FFN width, NQ memory tokens per request, V vocabulary, R retrieval width, L code
 * levels, W beam rows of a decode step. */
#include "engine.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <time.h>

#include "calendar.h"
#include "kernels/backend.h"

/* ---- arena: chunks kept across batches ------------------------------------------------------ */
typedef struct chunk {
  struct chunk *next;
  size_t cap, used;
  max_align_t data[];
} chunk;

typedef struct arena {
  chunk *head, *cur;
  size_t total;
} arena;

static void arena_reset(arena *a) {
  for (chunk *c = a->head; c; c = c->next)
    c->used = 0;
  a->cur = a->head;
}

static void *arena_alloc(arena *a, size_t bytes) {
  bytes = (bytes + 63) & ~(size_t)63;
  for (chunk *c = a->cur; c; c = c->next) {
    if (c->cap - c->used >= bytes) {
      void *p = (char *)c->data + c->used;
      c->used += bytes;
      a->cur = c;
      return p;
    }
  }
  size_t cap = bytes > ((size_t)4 << 20) ? bytes : ((size_t)4 << 20);
  chunk *c = malloc(sizeof *c + cap);
  if (!c)
    return NULL;
  c->cap = cap;
  c->used = bytes;
  c->next = NULL;
  /* append after the current chunk's list tail so later resets reuse it */
  chunk **tail = &a->head;
  while (*tail)
    tail = &(*tail)->next;
  *tail = c;
  a->cur = c;
  a->total += cap;
  return c->data;
}

static void arena_free(arena *a) {
  chunk *c = a->head;
  while (c) {
    chunk *n = c->next;
    free(c);
    c = n;
  }
  memset(a, 0, sizeof *a);
}

#define ALLOC(ptr, count)                                                                        \
  do {                                                                                           \
    (ptr) = arena_alloc(&e->arena, (size_t)(count) * sizeof *(ptr) + 1);                        \
    if (!(ptr))                                                                                  \
      return vt_fail(err, VT_ENOMEM, "out of memory (engine arena)");                            \
  } while (0)

struct vt_engine {
  const vt_backend *be; /* every kernel call goes through the backend table */
  const vt_bundle *b;
  const vt_catalog *c;
  arena arena;
  int max_theme_len, max_keyword_len; /* words */
  float *again, *cooc;                /* (P) dense history features, zeroed between requests */
  int32_t *touched;                   /* (P) products whose features are non-zero */
  uint8_t *seen, *shown, *marked;     /* (P) per section / per page / touched marks */
  vt_profile prof;
};

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

vt_profile *vt_engine_profile(vt_engine *e) { return &e->prof; }

static int max_phrase_len(const vt_phrases *p) {
  int m = 0;
  for (int i = 0; i < p->n; i++)
    if (p->tok_off[i + 1] - p->tok_off[i] > m)
      m = p->tok_off[i + 1] - p->tok_off[i];
  return m;
}

int vt_engine_create(vt_engine **out, const vt_bundle *b, const vt_catalog *c, vt_err *err) {
  *out = NULL;
  vt_engine *e = calloc(1, sizeof *e);
  if (!e)
    return vt_fail(err, VT_ENOMEM, "out of memory");
  e->be = vt_backend_cpu();
  e->b = b;
  e->c = c;
  e->max_theme_len = max_phrase_len(&b->themes);
  e->max_keyword_len = max_phrase_len(&b->keywords);
  /* <bos> theme <sep> keyword <eos> must fit the position table */
  if (3 + e->max_theme_len + e->max_keyword_len > b->cfg.max_dec_len) {
    int rc = vt_fail(err, VT_EFORMAT,
                     "%s: a %d-word theme and a %d-word keyword do not fit max_dec_len %d",
                     b->dir, e->max_theme_len, e->max_keyword_len, b->cfg.max_dec_len);
    free(e);
    return rc;
  }
  size_t P = (size_t)c->n_products;
  e->again = calloc(P + 1, sizeof *e->again);
  e->cooc = calloc(P + 1, sizeof *e->cooc);
  e->touched = calloc(P + 1, sizeof *e->touched);
  e->seen = calloc(P + 1, 1);
  e->shown = calloc(P + 1, 1);
  e->marked = calloc(P + 1, 1);
  if (!e->again || !e->cooc || !e->touched || !e->seen || !e->shown || !e->marked) {
    vt_engine_free(e);
    return vt_fail(err, VT_ENOMEM, "out of memory");
  }
  *out = e;
  return VT_OK;
}

void vt_engine_free(vt_engine *e) {
  if (!e)
    return;
  arena_free(&e->arena);
  free(e->again);
  free(e->cooc);
  free(e->touched);
  free(e->seen);
  free(e->shown);
  free(e->marked);
  free(e);
}

size_t vt_engine_arena_bytes(const vt_engine *e) { return e->arena.total; }

/* ---- encoder --------------------------------------------------------------------------------- */
typedef struct batch {
  int B, N;
  int32_t *off;   /* (B+1) */
  float *mem;     /* (B*NQ, C) */
  float *user;    /* (B, R) */
  float **xkv;    /* per decoder layer: (B*NQ, 2C) cross-attention keys | values of the memory */
} batch;

static void trace_rows(vt_trace_fn trace, void *ctx, const batch *bt, const char *name,
                       const float *x, int C) {
  for (int b = 0; b < bt->B; b++)
    trace(ctx, b, name, x + (size_t)bt->off[b] * C, bt->off[b + 1] - bt->off[b], C);
}

static int encode(vt_engine *e, const vt_request *reqs, int B, batch *bt, vt_trace_fn trace,
                  void *tctx, vt_err *err) {
  const vt_bundle *b = e->b;
  const vt_config *cfg = &b->cfg;
  const vt_weights *w = &b->w;
  const int C = cfg->d_model, F = cfg->d_ff, L = cfg->code_levels, MQ = cfg->max_query_tokens,
            NH = cfg->n_heads, NQ = cfg->n_queries, R = cfg->d_retrieval, P = cfg->t2v_dim;
  bt->B = B;
  ALLOC(bt->off, B + 1);
  bt->off[0] = 0;
  for (int i = 0; i < B; i++)
    bt->off[i + 1] = bt->off[i] + reqs[i].n_events + 1;
  const int N = bt->N = bt->off[B];
  int32_t *codes, *action, *qtok, *region;
  float *x, *cal;
  int64_t *ts;
  ALLOC(codes, (size_t)N * L);
  ALLOC(action, N);
  ALLOC(qtok, (size_t)N * MQ);
  ALLOC(region, N);
  ALLOC(x, N);
  ALLOC(cal, (size_t)N * VT_N_CAL);
  ALLOC(ts, N);
  memset(qtok, 0, (size_t)N * MQ * sizeof *qtok);
  for (int i = 0; i < B; i++) {
    const vt_request *r = &reqs[i];
    for (int n = 0; n <= r->n_events; n++) {
      const int row = bt->off[i] + n;
      const vt_event *ev = n ? &r->events[n - 1] : NULL;
      const int64_t t = ev ? ev->ts : r->now;
      int item = ev ? ev->item : VT_ITEM_NONE;
      for (int l = 0; l < L; l++)
        codes[(size_t)row * L + l] = item >= 0 ? e->c->codes[(size_t)item * L + l]
                                     : item == VT_ITEM_UNKNOWN ? cfg->codebook
                                                               : cfg->codebook + 1;
      action[row] = ev ? ev->action : VT_ACTION_CONTEXT;
      region[row] = ev ? -1 : r->region;
      if (ev)
        for (int q = 0; q < ev->n_query && q < MQ; q++)
          qtok[(size_t)row * MQ + q] = ev->query[q];
      ts[row] = t;
      int64_t ago = r->now - t;
      x[row] = (float)log1p((double)(ago > 0 ? ago : 0));
      double cf[VT_N_CAL];
      vt_calendar_features(t, cf);
      for (int k = 0; k < VT_N_CAL; k++)
        cal[(size_t)row * VT_N_CAL + k] = (float)cf[k];
    }
  }
  float *X, *H, *A, *QKV, *FF;
  ALLOC(X, (size_t)N * C);
  ALLOC(H, (size_t)N * C);
  ALLOC(A, (size_t)N * C);
  ALLOC(QKV, (size_t)N * 3 * C);
  ALLOC(FF, (size_t)N * F);
  e->be->event_embed(X, codes, action, qtok, x, cal, region, w->code_emb, w->action_emb,
                 w->region_emb, w->tok_emb, w->t2v_w, w->t2v_b, w->time_w, w->time_b, w->ln_emb_w,
                 w->ln_emb_b, N, C, L, MQ, P);
  if (trace)
    trace_rows(trace, tctx, bt, "event_emb", X, C);
  for (int l = 0; l < cfg->n_enc_layers; l++) {
    const vt_enc_layer *ly = &w->enc[l];
    e->be->layernorm(H, X, ly->ln1_w, ly->ln1_b, N, C);
    e->be->matmul(QKV, H, ly->qkv_w, ly->qkv_b, N, C, 3 * C, VT_ACT_NONE);
    e->be->attention(A, QKV, ts, bt->off, ly->time_bias, B, C, NH);
    e->be->matmul(H, A, ly->proj_w, ly->proj_b, N, C, C, VT_ACT_NONE);
    e->be->residual_layernorm(X, A, H, ly->ln2_w, ly->ln2_b, N, C); /* X += attn; A = LN2(X) */
    e->be->matmul(FF, A, ly->fc1_w, ly->fc1_b, N, C, F, VT_ACT_GELU);
    e->be->matmul(H, FF, ly->fc2_w, ly->fc2_b, N, F, C, VT_ACT_NONE);
    e->be->add(X, H, N * C);
    if (trace) {
      char name[16];
      snprintf(name, sizeof name, "enc%d", l);
      trace_rows(trace, tctx, bt, name, X, C);
    }
  }
  float *enc = A;
  e->be->layernorm(enc, X, w->ln_enc_w, w->ln_enc_b, N, C);
  /* Query-Former: NQ learned queries per request cross-attend to the request's events */
  const int M = B * NQ;
  float *q, *hq, *qp, *aq, *fq, *kv;
  int32_t *qoff;
  ALLOC(q, (size_t)M * C);
  ALLOC(hq, (size_t)M * C);
  ALLOC(qp, (size_t)M * C);
  ALLOC(aq, (size_t)M * C);
  ALLOC(fq, (size_t)M * F);
  ALLOC(kv, (size_t)N * 2 * C);
  ALLOC(qoff, B + 1);
  for (int i = 0; i < B; i++)
    memcpy(q + (size_t)i * NQ * C, w->queries, (size_t)NQ * C * sizeof *q);
  for (int i = 0; i <= B; i++)
    qoff[i] = i * NQ;
  e->be->rmsnorm(hq, q, w->qf_rms1_w, M, C);
  e->be->matmul(qp, hq, w->qf_q_w, w->qf_q_b, M, C, C, VT_ACT_NONE);
  e->be->matmul(kv, enc, w->qf_kv_w, w->qf_kv_b, N, C, 2 * C, VT_ACT_NONE);
  e->be->cross_attention(aq, qp, kv, qoff, bt->off, B, C, NH);
  e->be->matmul(hq, aq, w->qf_proj_w, w->qf_proj_b, M, C, C, VT_ACT_NONE);
  e->be->add(q, hq, M * C);
  e->be->rmsnorm(hq, q, w->qf_rms2_w, M, C);
  e->be->matmul(fq, hq, w->qf_fc1_w, w->qf_fc1_b, M, C, F, VT_ACT_GELU);
  e->be->matmul(hq, fq, w->qf_fc2_w, w->qf_fc2_b, M, F, C, VT_ACT_NONE);
  e->be->add(q, hq, M * C);
  ALLOC(bt->mem, (size_t)M * C);
  e->be->layernorm(bt->mem, q, w->ln_mem_w, w->ln_mem_b, M, C);
  /* the retrieval user vector: W_user mean(memory) + b */
  float *mean;
  ALLOC(mean, (size_t)B * C);
  for (int i = 0; i < B; i++)
    for (int c = 0; c < C; c++) {
      float s = 0.0f;
      for (int k = 0; k < NQ; k++)
        s += bt->mem[((size_t)i * NQ + k) * C + c];
      mean[(size_t)i * C + c] = s / (float)NQ;
    }
  ALLOC(bt->user, (size_t)B * R);
  e->be->matmul(bt->user, mean, w->user_w, w->user_b, B, C, R, VT_ACT_NONE);
  if (trace)
    for (int i = 0; i < B; i++) {
      trace(tctx, i, "memory", bt->mem + (size_t)i * NQ * C, NQ, C);
      trace(tctx, i, "user", bt->user + (size_t)i * R, 1, R);
    }
  ALLOC(bt->xkv, cfg->n_dec_layers);
  for (int j = 0; j < cfg->n_dec_layers; j++) {
    ALLOC(bt->xkv[j], (size_t)M * 2 * C);
    e->be->matmul(bt->xkv[j], bt->mem, w->dec[j].ca_kv_w, w->dec[j].ca_kv_b, M, C, 2 * C,
              VT_ACT_NONE);
  }
  return VT_OK;
}

/* ---- beam search over groups ----------------------------------------------------------------- */
/* A group is one beam search: a request's themes (stage 1) or one section's keywords (stage 2). */
typedef struct group {
  int req;
  const vt_trie *trie;
  int width, n_best;
  int row0, n_rows; /* its rows in the current step */
  int pos;          /* position of the tokens fed this step */
  int first;        /* the first feed (the end of the prefix): always followed by a selection */
  int done;
  int n_fin, fin_cap;
  float *fin_score;
  int32_t *fin_phrase, *fin_len, *fin_slots; /* fin_slots (fin_cap, maxT) */
} group;

typedef struct rows {
  int32_t *token, *node, *slots; /* slots (cap, maxT) */
  float *score;
} rows;

typedef struct decoder {
  int maxT, n_slots, slot_cap, row_cap;
  float **kpool, **vpool; /* per layer (slot_cap, C) */
  rows cur, next;
  float *Y, *H, *Q, *A, *QKV, *FF, *h; /* (row_cap, ...) */
  int32_t *sel_parent, *sel_token, *sel_node, *sel_phrase;
  float *sel_score, *scratch;
} decoder;

static int rows_alloc(vt_engine *e, rows *r, int cap, int maxT, vt_err *err) {
  ALLOC(r->token, cap);
  ALLOC(r->node, cap);
  ALLOC(r->score, cap);
  ALLOC(r->slots, (size_t)cap * maxT);
  return VT_OK;
}

static int decoder_alloc(vt_engine *e, decoder *d, int row_cap, int slot_cap, int max_width,
                         vt_err *err) {
  const vt_config *cfg = &e->b->cfg;
  const int C = cfg->d_model;
  d->maxT = cfg->max_dec_len;
  d->row_cap = row_cap;
  d->slot_cap = slot_cap;
  d->n_slots = 0;
  ALLOC(d->kpool, cfg->n_dec_layers);
  ALLOC(d->vpool, cfg->n_dec_layers);
  for (int j = 0; j < cfg->n_dec_layers; j++) {
    ALLOC(d->kpool[j], (size_t)slot_cap * C);
    ALLOC(d->vpool[j], (size_t)slot_cap * C);
  }
  int rc;
  if ((rc = rows_alloc(e, &d->cur, row_cap, d->maxT, err)) ||
      (rc = rows_alloc(e, &d->next, row_cap, d->maxT, err)))
    return rc;
  ALLOC(d->Y, (size_t)row_cap * C);
  ALLOC(d->H, (size_t)row_cap * C);
  ALLOC(d->Q, (size_t)row_cap * C);
  ALLOC(d->A, (size_t)row_cap * C);
  ALLOC(d->h, (size_t)row_cap * C);
  ALLOC(d->QKV, (size_t)row_cap * 3 * C);
  ALLOC(d->FF, (size_t)row_cap * cfg->d_ff);
  ALLOC(d->sel_parent, max_width);
  ALLOC(d->sel_token, max_width);
  ALLOC(d->sel_node, max_width);
  ALLOC(d->sel_phrase, max_width);
  ALLOC(d->sel_score, max_width);
  /* beam step scratch: 2 floats + 1 int per candidate; candidates <= width x widest node */
  int widest = 1;
  const vt_trie *tries[2] = {&e->b->theme_trie, &e->b->keyword_trie};
  for (int t = 0; t < 2; t++)
    for (int n = 0; n < tries[t]->n_nodes; n++)
      if (tries[t]->indptr[n + 1] - tries[t]->indptr[n] > widest)
        widest = tries[t]->indptr[n + 1] - tries[t]->indptr[n];
  ALLOC(d->scratch, (size_t)3 * max_width * widest + 16);
  return VT_OK;
}

/* Feeds every live row's token at its group's position through the decoder: d->h = final hidden
 * states (rows, C). Each row gets a new pool slot for this position. */
static void decoder_forward(vt_engine *e, decoder *d, group *g, int ng, const batch *bt,
                            int nrows) {
  const vt_config *cfg = &e->b->cfg;
  const vt_weights *w = &e->b->w;
  const int C = cfg->d_model, F = cfg->d_ff, NH = cfg->n_heads, NQ = cfg->n_queries;
  const int maxT = d->maxT;
  rows *r = &d->cur;
  for (int gi = 0; gi < ng; gi++) {
    if (g[gi].done)
      continue;
    for (int k = g[gi].row0; k < g[gi].row0 + g[gi].n_rows; k++) {
      const float *te = w->tok_emb + (size_t)r->token[k] * C;
      const float *pe = w->pos_emb + (size_t)g[gi].pos * C;
      for (int c = 0; c < C; c++)
        d->Y[(size_t)k * C + c] = te[c] + pe[c];
      r->slots[(size_t)k * maxT + g[gi].pos] = d->n_slots++;
    }
  }
  int32_t qo[2], ko[2];
  for (int j = 0; j < cfg->n_dec_layers; j++) {
    const vt_dec_layer *ly = &w->dec[j];
    e->be->layernorm(d->H, d->Y, ly->ln1_w, ly->ln1_b, nrows, C);
    e->be->matmul(d->QKV, d->H, ly->sa_qkv_w, ly->sa_qkv_b, nrows, C, 3 * C, VT_ACT_NONE);
    for (int gi = 0; gi < ng; gi++) {
      if (g[gi].done)
        continue;
      for (int k = g[gi].row0; k < g[gi].row0 + g[gi].n_rows; k++) {
        const float *src = d->QKV + (size_t)k * 3 * C;
        const int s = r->slots[(size_t)k * maxT + g[gi].pos];
        memcpy(d->Q + (size_t)k * C, src, (size_t)C * sizeof(float));
        memcpy(d->kpool[j] + (size_t)s * C, src + C, (size_t)C * sizeof(float));
        memcpy(d->vpool[j] + (size_t)s * C, src + 2 * C, (size_t)C * sizeof(float));
      }
    }
    for (int gi = 0; gi < ng; gi++) {
      if (g[gi].done)
        continue;
      const size_t r0 = (size_t)g[gi].row0;
      e->be->decoder_attention(d->A + r0 * C, d->Q + r0 * C, d->kpool[j], d->vpool[j],
                           r->slots + r0 * maxT, g[gi].n_rows, g[gi].pos, maxT, C, NH);
    }
    e->be->matmul(d->H, d->A, ly->sa_proj_w, ly->sa_proj_b, nrows, C, C, VT_ACT_NONE);
    e->be->residual_layernorm(d->Y, d->A, d->H, ly->ln2_w, ly->ln2_b, nrows, C);
    e->be->matmul(d->Q, d->A, ly->ca_q_w, ly->ca_q_b, nrows, C, C, VT_ACT_NONE);
    for (int gi = 0; gi < ng; gi++) {
      if (g[gi].done)
        continue;
      const size_t r0 = (size_t)g[gi].row0;
      qo[0] = 0;
      qo[1] = g[gi].n_rows;
      ko[0] = 0;
      ko[1] = NQ;
      e->be->cross_attention(d->A + r0 * C, d->Q + r0 * C,
                         bt->xkv[j] + (size_t)g[gi].req * NQ * 2 * C, qo, ko, 1, C, NH);
    }
    e->be->matmul(d->H, d->A, ly->ca_proj_w, ly->ca_proj_b, nrows, C, C, VT_ACT_NONE);
    e->be->residual_layernorm(d->Y, d->A, d->H, ly->ln3_w, ly->ln3_b, nrows, C);
    e->be->matmul(d->FF, d->A, ly->fc1_w, ly->fc1_b, nrows, C, F, VT_ACT_GELU);
    e->be->matmul(d->H, d->FF, ly->fc2_w, ly->fc2_b, nrows, F, C, VT_ACT_NONE);
    e->be->add(d->Y, d->H, nrows * C);
  }
  e->be->layernorm(d->h, d->Y, w->ln_dec_w, w->ln_dec_b, nrows, C);
}

/* Beam selection for every group after a forward pass; builds d->next and swaps it in.
 * Returns the number of live rows. */
static int select_step(vt_engine *e, decoder *d, group *g, int ng) {
  const vt_bundle *b = e->b;
  const int C = b->cfg.d_model, maxT = d->maxT;
  int nn = 0;
  for (int gi = 0; gi < ng; gi++) {
    group *gp = &g[gi];
    if (gp->done)
      continue;
    const int r0 = gp->row0;
    if (!gp->first && gp->pos + 1 >= b->cfg.max_dec_len) { /* as the reference: no more steps */
      gp->done = 1;
      continue;
    }
    gp->first = 0;
    const vt_trie *t = gp->trie;
    int ns = e->be->beam_step(d->sel_parent, d->sel_token, d->sel_node, d->sel_score, d->sel_phrase,
                          d->h + (size_t)r0 * C, d->cur.node + r0, d->cur.score + r0, gp->n_rows,
                          b->w.tok_emb, t->indptr, t->token, t->child, t->phrase, C, gp->width,
                          d->scratch);
    int live0 = nn, best_live = -1;
    for (int s = 0; s < ns; s++) {
      const int parent = r0 + d->sel_parent[s];
      if (d->sel_phrase[s] >= 0) {
        if (gp->n_fin < gp->fin_cap) {
          const int f = gp->n_fin++;
          gp->fin_score[f] = d->sel_score[s];
          gp->fin_phrase[f] = d->sel_phrase[s];
          gp->fin_len[f] = gp->pos + 1;
          memcpy(gp->fin_slots + (size_t)f * maxT, d->cur.slots + (size_t)parent * maxT,
                 (size_t)(gp->pos + 1) * sizeof(int32_t));
        }
      } else {
        if (best_live < 0)
          best_live = s;
        d->next.token[nn] = d->sel_token[s];
        d->next.node[nn] = d->sel_node[s];
        d->next.score[nn] = d->sel_score[s];
        memcpy(d->next.slots + (size_t)nn * maxT, d->cur.slots + (size_t)parent * maxT,
               (size_t)(gp->pos + 1) * sizeof(int32_t));
        nn++;
      }
    }
    /* exact early stop: n_best finished and no live beam can overtake the n_best-th */
    if (gp->n_fin >= gp->n_best && nn > live0) {
      float kth = 0.0f;
      int above = 0;
      /* the n_best-th largest finished score */
      for (int f = 0; f < gp->n_fin; f++) {
        int larger = 0;
        for (int f2 = 0; f2 < gp->n_fin; f2++)
          larger += gp->fin_score[f2] > gp->fin_score[f] ||
                    (gp->fin_score[f2] == gp->fin_score[f] && f2 < f);
        if (larger == gp->n_best - 1) {
          kth = gp->fin_score[f];
          above = 1;
        }
      }
      if (above && d->sel_score[best_live] < kth)
        nn = live0;
    }
    gp->row0 = live0;
    gp->n_rows = nn - live0;
    if (gp->n_rows == 0)
      gp->done = 1;
    else
      gp->pos++;
  }
  rows tmp = d->cur;
  d->cur = d->next;
  d->next = tmp;
  return nn;
}

static int run_groups(vt_engine *e, decoder *d, group *g, int ng, const batch *bt, int nrows) {
  while (nrows > 0) {
    double t0 = now_ns();
    decoder_forward(e, d, g, ng, bt, nrows);
    double t1 = now_ns();
    nrows = select_step(e, d, g, ng);
    e->prof.decode_ns += t1 - t0;
    e->prof.beam_ns += now_ns() - t1;
    e->prof.decode_steps++;
  }
  return VT_OK;
}

/* Finished hypotheses ranked by (score desc, phrase asc): writes the order of the best n. */
static int rank_finished(const group *g, int32_t *order, int n) {
  int k = 0;
  uint8_t used[1024] = {0};
  for (; k < n && k < g->n_fin; k++) {
    int best = -1;
    for (int f = 0; f < g->n_fin && f < 1024; f++) {
      if (used[f])
        continue;
      if (best < 0 || g->fin_score[f] > g->fin_score[best] ||
          (g->fin_score[f] == g->fin_score[best] && g->fin_phrase[f] < g->fin_phrase[best]))
        best = f;
    }
    used[best] = 1;
    order[k] = best;
  }
  return k;
}

static int group_alloc(vt_engine *e, group *g, int width, int steps, vt_err *err) {
  g->fin_cap = width * steps;
  if (g->fin_cap > 1024)
    g->fin_cap = 1024;
  ALLOC(g->fin_score, g->fin_cap);
  ALLOC(g->fin_phrase, g->fin_cap);
  ALLOC(g->fin_len, g->fin_cap);
  ALLOC(g->fin_slots, (size_t)g->fin_cap * e->b->cfg.max_dec_len);
  g->n_fin = 0;
  return VT_OK;
}

/* ---- retrieval and ranking ------------------------------------------------------------------ */
static void history_features(vt_engine *e, const vt_request *r, int *n_touched) {
  const vt_catalog *c = e->c;
  const float decay = e->b->rank_decay;
  float wgt = 1.0f;
  int nt = 0;
  for (int k = r->n_events - 1; k >= 0; k--) {
    const int p = r->events[k].item;
    if (p < 0)
      continue;
    if (!e->marked[p]) {
      e->marked[p] = 1;
      e->touched[nt++] = p;
    }
    e->again[p] = e->again[p] + wgt;
    for (int i = c->rel_off[p]; i < c->rel_off[p + 1]; i++) {
      const int q = c->rel_idx[i];
      if (!e->marked[q]) {
        e->marked[q] = 1;
        e->touched[nt++] = q;
      }
      const float add = wgt * c->rel_w[i];
      e->cooc[q] = e->cooc[q] + add;
    }
    wgt = wgt * decay;
  }
  *n_touched = nt;
}

static int retrieve(vt_engine *e, const vt_request *r, vt_section *sec, const float *u,
                    vt_err *err) {
  const vt_catalog *c = e->c;
  const vt_bundle *b = e->b;
  const int R = c->d_retrieval;
  const int season = vt_season_of(r->now, b->regions[r->region].season_offset,
                                   b->regions[r->region].fixed_season);
  int n = 0;
  for (int k = 0; k < sec->n_keywords; k++) {
    const int kw = sec->keyword[k];
    n += c->kw_off[kw + 1] - c->kw_off[kw];
  }
  int32_t *cand, *cred, *ids, *scratch;
  float *dot, *score, *top_score;
  ALLOC(cand, n);
  ALLOC(cred, n);
  ALLOC(ids, n);
  ALLOC(scratch, n);
  ALLOC(dot, n);
  ALLOC(score, n);
  ALLOC(top_score, n);
  int nc = 0;
  for (int k = 0; k < sec->n_keywords; k++) {
    const int kw = sec->keyword[k];
    for (int i = c->kw_off[kw]; i < c->kw_off[kw + 1]; i++) {
      const int p = c->kw_prod[i];
      if (e->seen[p])
        continue;
      e->seen[p] = 1;
      int excluded = 0;
      for (int x = 0; x < r->n_exclude; x++)
        excluded |= r->exclude[x] == p;
      if (excluded || c->stock[p] <= 0 || !(c->regions[p] >> r->region & 1u) ||
          !(c->seasons[p] >> season & 1u))
        continue;
      cand[nc] = p;
      cred[nc] = kw;
      nc++;
    }
  }
  for (int k = 0; k < sec->n_keywords; k++) { /* clear the per-section marks */
    const int kw = sec->keyword[k];
    for (int i = c->kw_off[kw]; i < c->kw_off[kw + 1]; i++)
      e->seen[c->kw_prod[i]] = 0;
  }
  e->be->retrieval_scores(dot, u, c->emb, cand, nc, R);
  const float wa = b->rank_again, wc = b->rank_cooc, wp = b->rank_popularity;
  int m = 0;
  for (int i = 0; i < nc; i++) {
    const int p = cand[i];
    if (e->shown[p])
      continue;
    float s = dot[i] + wa * e->again[p];
    s = s + wc * e->cooc[p];
    s = s + wp * c->log_pop[p];
    score[m] = s;
    ids[m] = p; /* top-k breaks ties on the id: the lower product index wins */
    m++;
  }
  int32_t *top;
  ALLOC(top, m);
  const int k = e->be->topk(top, top_score, score, ids, m, r->products_per_section, scratch);
  sec->n_products = k;
  for (int i = 0; i < k; i++) {
    const int p = top[i];
    int kw = -1; /* the keyword that first retrieved p in this section */
    for (int j = 0; j < nc && kw < 0; j++)
      if (cand[j] == p)
        kw = cred[j];
    sec->products[i].product = p;
    sec->products[i].keyword = kw;
    sec->products[i].score = top_score[i];
    e->shown[p] = 1;
  }
  return VT_OK;
}

/* ---- the cascade ----------------------------------------------------------------------------- */
int vt_engine_run(vt_engine *e, const vt_request *reqs, int B, vt_storefront *out,
                  vt_trace_fn trace, void *tctx, vt_err *err) {
  const vt_bundle *b = e->b;
  const vt_config *cfg = &b->cfg;
  const int C = cfg->d_model, V = cfg->vocab_size, maxT = cfg->max_dec_len;
  arena_reset(&e->arena);
  batch bt;
  double t0 = now_ns();
  int rc = encode(e, reqs, B, &bt, trace, tctx, err);
  if (rc)
    return rc;
  e->prof.encode_ns += now_ns() - t0;
  e->prof.batches++;
  e->prof.requests += B;
  /* stage 1: themes */
  int rows1 = 0, slots1 = 0, wmax = 1, total_sections = 0, rows2 = 0, slots2 = 0;
  for (int i = 0; i < B; i++) {
    const int w1 = b->theme_beam > reqs[i].sections ? b->theme_beam : reqs[i].sections;
    const int w2 = b->keyword_beam > reqs[i].keywords_per_section
                       ? b->keyword_beam
                       : reqs[i].keywords_per_section;
    rows1 += w1;
    slots1 += 1 + w1 * (e->max_theme_len + 1);
    rows2 += reqs[i].sections * w2;
    slots2 += reqs[i].sections * w2 * (e->max_keyword_len + 2);
    total_sections += reqs[i].sections;
    wmax = w1 > wmax ? w1 : wmax;
    wmax = w2 > wmax ? w2 : wmax;
  }
  decoder d;
  const int row_cap = rows1 > rows2 ? rows1 : rows2;
  if ((rc = decoder_alloc(e, &d, row_cap + B + total_sections, slots1 + slots2 + B, wmax, err)))
    return rc;
  group *g1;
  ALLOC(g1, B);
  for (int i = 0; i < B; i++) {
    group *g = &g1[i];
    memset(g, 0, sizeof *g);
    g->req = i;
    g->trie = &b->theme_trie;
    g->width = b->theme_beam > reqs[i].sections ? b->theme_beam : reqs[i].sections;
    g->n_best = reqs[i].sections;
    g->row0 = i;
    g->n_rows = 1;
    g->pos = 0;
    g->first = 1;
    if ((rc = group_alloc(e, g, g->width, e->max_theme_len + 2, err)))
      return rc;
    d.cur.token[i] = VT_TOK_BOS;
    d.cur.node[i] = 0;
    d.cur.score[i] = 0.0f;
  }
  if (trace) { /* the first theme step's full-vocabulary logits */
    decoder_forward(e, &d, g1, B, &bt, B);
    float *logits;
    ALLOC(logits, V);
    for (int i = 0; i < B; i++) {
      e->be->matmul(logits, d.h + (size_t)i * C, b->w.tok_emb, NULL, 1, C, V, VT_ACT_NONE);
      trace(tctx, i, "first_logits", logits, 1, V);
    }
    int n = select_step(e, &d, g1, B);
    run_groups(e, &d, g1, B, &bt, n);
  } else {
    run_groups(e, &d, g1, B, &bt, B);
  }
  /* stage 2: keywords, one group per (request, section), starting from the theme's cache */
  group *g2;
  ALLOC(g2, total_sections);
  int ng = 0, nrows = 0;
  for (int i = 0; i < B; i++) {
    int32_t order[VT_MAX_SECTIONS];
    const int ns = rank_finished(&g1[i], order, reqs[i].sections);
    out[i].n_sections = ns;
    out[i].dropped_events = reqs[i].dropped;
    for (int s = 0; s < ns; s++) {
      const int f = order[s];
      vt_section *sec = &out[i].sections[s];
      sec->theme = g1[i].fin_phrase[f];
      sec->theme_score = g1[i].fin_score[f];
      group *g = &g2[ng++];
      memset(g, 0, sizeof *g);
      g->req = i;
      g->trie = &b->keyword_trie;
      g->width = b->keyword_beam > reqs[i].keywords_per_section ? b->keyword_beam
                                                                : reqs[i].keywords_per_section;
      g->n_best = reqs[i].keywords_per_section;
      g->row0 = nrows;
      g->n_rows = 1;
      g->pos = g1[i].fin_len[f];
      g->first = 1;
      if ((rc = group_alloc(e, g, g->width, e->max_keyword_len + 2, err)))
        return rc;
      d.cur.token[nrows] = VT_TOK_SEP;
      d.cur.node[nrows] = 0;
      d.cur.score[nrows] = 0.0f;
      memcpy(d.cur.slots + (size_t)nrows * maxT, g1[i].fin_slots + (size_t)f * maxT,
             (size_t)g->pos * sizeof(int32_t));
      nrows++;
    }
  }
  run_groups(e, &d, g2, ng, &bt, nrows);
  /* stage 3: retrieval, filters, ranking, de-duplication across a page's sections */
  t0 = now_ns();
  int gi = 0;
  for (int i = 0; i < B; i++) {
    int nt = 0;
    history_features(e, &reqs[i], &nt);
    for (int s = 0; s < out[i].n_sections; s++, gi++) {
      vt_section *sec = &out[i].sections[s];
      int32_t order[VT_MAX_KEYWORDS];
      const int nk = rank_finished(&g2[gi], order, reqs[i].keywords_per_section);
      sec->n_keywords = nk;
      for (int k = 0; k < nk; k++) {
        sec->keyword[k] = g2[gi].fin_phrase[order[k]];
        sec->keyword_score[k] = g2[gi].fin_score[order[k]];
      }
      if ((rc = retrieve(e, &reqs[i], sec, bt.user + (size_t)i * cfg->d_retrieval, err)))
        return rc;
    }
    for (int k = 0; k < nt; k++) {
      e->again[e->touched[k]] = 0.0f;
      e->cooc[e->touched[k]] = 0.0f;
      e->marked[e->touched[k]] = 0;
    }
    for (int s = 0; s < out[i].n_sections; s++)
      for (int k = 0; k < out[i].sections[s].n_products; k++)
        e->shown[out[i].sections[s].products[k].product] = 0;
  }
  e->prof.retrieve_ns += now_ns() - t0;
  return VT_OK;
}
