/* The batched cascade (see engine.h). Shapes: B requests, N = sum of (events + 1) rows, C model
 * width, F FFN width, NQ memory tokens per request, V vocabulary, R retrieval width, L code
 * levels; decode rows: cap (a stage's row capacity), G searches ("groups").
 *
 * A batch's buffers are laid out in the engine's arena by plan(), in four parts:
 *   state   decode and page state, sized by the bucketed batch shape only (so the decode's
 *           buffers sit at the same addresses for every batch of a shape: a CUDA graph of it
 *           replays);
 *   inputs  what the host prepares: page parameters, history and exclusions, the first step's
 *           rows and searches; uploaded with
 *   events  the encoder's inputs (ragged: their size follows N);
 *   work    the encoder's scratch.
 * [inputs | events] is one upload, [counts | storefronts] (inside state) one download.
 * On the CPU the arena is host memory: the host writes the inputs in place and the page step
 * writes the caller's storefronts directly. */
#include "engine.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "calendar.h"
#include "rules.h"

#define GRAPH_CACHE 16 /* decode graphs kept per engine, one per bucketed batch shape */

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

/* The backend's message for a failed op: names the op and the device. */
static int op_fail(vt_backend *be, vt_err *err, const char *what) {
  const char *why = be->error(be);
  return vt_fail(err, VT_EINTERNAL, "%s: %s failed: %s", be->name, what,
                 why && *why ? why : "(no message)");
}

#define OP(call, what)                                                                           \
  do {                                                                                           \
    if ((call) < 0)                                                                              \
      return op_fail(be, err, what);                                                             \
  } while (0)

/* ---- layouts: one function places buffers, run once to measure and once to assign ------------ */
typedef struct lay {
  char *base; /* NULL: measure only */
  size_t off;
} lay;

static void *take(lay *l, size_t bytes) {
  l->off = (l->off + 255) & ~(size_t)255;
  void *p = l->base ? l->base + l->off : NULL;
  l->off += bytes ? bytes : 1;
  return p;
}

#define TAKE(l, ptr, count) ((ptr) = take((l), (size_t)(count) * sizeof *(ptr)))

/* ---- the model on a backend ------------------------------------------------------------------ */
struct vt_model {
  vt_backend *be;
  const vt_bundle *b;
  vt_weights w;                            /* where be computes */
  vt_trie_csr theme_trie, keyword_trie;    /* where be computes */
  int theme_root, theme_branch;            /* children of the root, most children of another node */
  int keyword_root, keyword_branch;
  void *buf;                               /* the device copy (NULL on the CPU) */
};

vt_backend *vt_model_backend(const vt_model *m) { return m->be; }

static void trie_stats(const vt_trie *t, int *root, int *branch) {
  *root = t->indptr[1] - t->indptr[0];
  *branch = 1;
  for (int n = 1; n < t->n_nodes; n++)
    if (t->indptr[n + 1] - t->indptr[n] > *branch)
      *branch = t->indptr[n + 1] - t->indptr[n];
}

/* A trie's arrays where they are. */
static vt_trie_csr csr_of(const vt_trie *t) {
  return (vt_trie_csr){t->indptr, t->token, t->child, t->phrase};
}

/* One trie's four arrays placed at l (and copied to h's image when h has a base); *dst points at
 * them when l has a base. */
static void trie_layout(const vt_trie *t, lay *l, lay *h, vt_trie_csr *dst) {
  const int32_t *arr[4] = {t->indptr, t->token, t->child, t->phrase};
  const size_t cnt[4] = {(size_t)t->n_nodes + 1, (size_t)t->n_edges, (size_t)t->n_edges,
                         (size_t)t->n_nodes};
  const int32_t *dp[4];
  for (int a = 0; a < 4; a++) {
    int32_t *hp = take(h, cnt[a] * 4);
    dp[a] = take(l, cnt[a] * 4);
    if (h->base)
      memcpy(hp, arr[a], cnt[a] * 4);
  }
  if (l->base)
    *dst = (vt_trie_csr){dp[0], dp[1], dp[2], dp[3]};
}

/* The weights and tries in one buffer: measures (base NULL) or fills w / tries with pointers into
 * base and, when host is not NULL, copies the data into host (a staging image of base). */
static size_t model_layout(const vt_bundle *b, char *base, char *host, vt_weights *w,
                           vt_trie_csr *tt, vt_trie_csr *kt) {
  lay l = {base, 0}, h = {host, 0};
  const float **slots = (const float **)w;
  for (int i = 0; i < b->n_wref; i++) {
    const size_t bytes = (size_t)b->wref[i].numel * sizeof(float);
    float *d = take(&l, bytes), *hp = take(&h, bytes);
    if (base)
      slots[b->wref[i].slot] = d;
    if (host)
      memcpy(hp, b->wref[i].data, bytes);
  }
  trie_layout(&b->theme_trie, &l, &h, tt);
  trie_layout(&b->keyword_trie, &l, &h, kt);
  return l.off;
}

/* One image on every device: fill(ctx, stage) writes it into page-locked staging memory of
 * `bytes`; it is uploaded to bufs[0] on bes[0] and copied from there to the others (the backend's
 * broadcast: NCCL between CUDA devices where it is available). what: for messages. */
static int place_everywhere(vt_backend *const *bes, void *const *bufs, int n, size_t bytes,
                            void (*fill)(void *ctx, char *stage), void *ctx, const char *what,
                            vt_err *err) {
  char *stage = bes[0]->host_alloc(bes[0], bytes);
  if (!stage)
    return vt_fail(err, VT_ENOMEM, "out of memory (%zu bytes to stage the %s)", bytes, what);
  fill(ctx, stage);
  int rc = VT_OK;
  if (bes[0]->upload(bes[0], bufs[0], stage, bytes) || bes[0]->sync(bes[0]))
    rc = vt_fail(err, VT_EINTERNAL, "%s: uploading the %s: %s", bes[0]->name, what,
                 bes[0]->error(bes[0]));
  else if (n > 1 && bes[0]->broadcast(bes, bufs, n, bytes))
    rc = vt_fail(err, VT_EINTERNAL, "copying the %s from %s to the other devices: %s", what,
                 bes[0]->name, bes[0]->error(bes[0]));
  bes[0]->host_free(bes[0], stage);
  return rc;
}

static void fill_model(void *ctx, char *stage) {
  const vt_bundle *b = ctx;
  vt_weights w = b->w;
  vt_trie_csr t1, t2;
  model_layout(b, stage, stage, &w, &t1, &t2);
}

void vt_model_free(vt_model *m) {
  if (!m)
    return;
  if (m->buf)
    m->be->free(m->be, m->buf);
  vt_backend_close(m->be);
  free(m);
}

int vt_models_create(vt_model **out, vt_backend *const *bes, int n, const vt_bundle *b,
                     vt_err *err) {
  int rc = VT_OK;
  void *copies[64];
  for (int i = 0; i < n; i++)
    out[i] = NULL;
  if (n < 1 || n > 64) {
    rc = vt_fail(err, VT_EINVAL, "between 1 and 64 backends, not %d", n);
    goto fail;
  }
  for (int i = 0; i < n; i++) {
    vt_model *m = calloc(1, sizeof *m);
    if (!m) {
      rc = vt_fail(err, VT_ENOMEM, "out of memory");
      goto fail;
    }
    m->be = bes[i];
    m->b = b;
    out[i] = m;
    trie_stats(&b->theme_trie, &m->theme_root, &m->theme_branch);
    trie_stats(&b->keyword_trie, &m->keyword_root, &m->keyword_branch);
    if (bes[i]->host_memory) { /* the CPU computes on the bundle's own mapping */
      m->w = b->w;
      m->theme_trie = csr_of(&b->theme_trie);
      m->keyword_trie = csr_of(&b->keyword_trie);
    }
  }
  if (bes[0]->host_memory)
    return VT_OK;
  /* devices: one image of weights and tries, uploaded to the first, broadcast to the rest */
  const size_t bytes = model_layout(b, NULL, NULL, NULL, NULL, NULL);
  for (int i = 0; i < n; i++) {
    vt_model *m = out[i];
    if (!(m->buf = m->be->alloc(m->be, bytes))) {
      rc = vt_fail(err, VT_ENOMEM, "%s: cannot allocate %zu bytes for the weights: %s",
                   m->be->name, bytes, m->be->error(m->be));
      goto fail;
    }
    m->w = b->w;
    model_layout(b, m->buf, NULL, &m->w, &m->theme_trie, &m->keyword_trie);
    copies[i] = m->buf;
  }
  if ((rc = place_everywhere(bes, copies, n, bytes, fill_model, (void *)b, "weights", err)))
    goto fail;
  return VT_OK;
fail:
  for (int i = 0; i < n; i++) {
    if (out[i])
      vt_model_free(out[i]);
    else if (bes[i])
      vt_backend_close(bes[i]);
    out[i] = NULL;
  }
  return rc;
}

/* ---- the engine -------------------------------------------------------------------------------- */
typedef struct dims {
  int B, N;           /* requests and event rows of this batch (exact) */
  int Bc;             /* request capacity of the decode and page steps (B, bucketed on a device) */
  int cap1, cap2;     /* row capacities of the theme and keyword steps */
  int G2;             /* keyword searches (sum of sections, bucketed on a device) */
  int wmax1, wmax2;   /* widest beam of each stage */
  int steps1, steps2; /* decode steps of each stage on a device (the CPU stops when done) */
  int slot_cap;       /* KV-pool slots */
  int fin1, fin2;     /* finished hypotheses kept per search */
  int sel1, sel2;     /* candidates a beam step may score at once */
  int n_hist, n_excl; /* history products and exclusions of the batch */
  int max_cands;      /* products one section's keywords can retrieve */
  int trace;          /* first_logits buffer */
} dims;

/* A batch's buffers (see the file comment). */
typedef struct bufs {
  /* state */
  float *mem, *user, *xkv[VT_MAX_LAYERS]; /* (Bc*NQ, C), (Bc, R), (Bc*NQ, 2C) */
  float *kpool[VT_MAX_LAYERS], *vpool[VT_MAX_LAYERS]; /* (slot_cap, C) */
  float *Y, *H, *Q, *A, *h, *QKV, *FF;                 /* (capmax, C / 3C / F) */
  vt_beam_rows rows[2];
  vt_beam_groups g1, g2;
  vt_beam_picks picks;
  void *sel_scratch;
  float *logits; /* (B, V) traced first-step logits */
  int32_t *counts;    /* (2,) rows left after the theme and keyword stages (0, or a bug) */
  vt_storefront *out; /* (Bc) right after counts: the download */
  /* inputs */
  vt_page_req *req;
  int32_t *hist, *excl, *slot_base;
  /* events */
  int32_t *off, *codes, *action, *qtok, *region;
  float *x, *cal;
  int64_t *ts;
  /* work */
  float *X, *EH, *EA, *EQKV, *EFF, *q, *hq, *qp, *aq, *fq, *kv, *mean;
  int32_t *qoff;
  size_t in0, in1, dl_bytes, state_bytes;
} bufs;

typedef struct graph {
  dims key; /* N, B and trace zeroed: the decode does not depend on them */
  void *g;
  long used;
} graph;

struct vt_engine {
  vt_model *m;
  int owns_model;
  vt_backend *be;
  const vt_bundle *b;
  const vt_catalog *c;
  vt_shelf shelf;
  vt_trie_csr theme_trie, keyword_trie; /* the model's, or the rules' pruned ones (engine/rules.h) */
  vt_theme_rules theme_rules;           /* the rules' theme tables (none: all 0) */
  void *shelf_buf;        /* the device copy of the catalogue tables (NULL on the CPU) */
  int max_theme_len, max_keyword_len; /* words */
  int max_kw_products;    /* the longest keyword -> products list */
  char *arena;            /* where be computes */
  size_t arena_cap;
  char *stage;            /* host staging of inputs and events, then of the download */
  size_t stage_cap;
  void *page_scratch;
  size_t page_scratch_cap;
  int page_dirty;         /* a failed batch may have left the page scratch's marks set */
  int use_graphs, profiling;
  graph graphs[GRAPH_CACHE];
  long graph_clock;
  vt_profile prof;
};

/* Forgets every captured graph: they hold the addresses of buffers about to move. */
static void graphs_drop(vt_engine *e) {
  for (int i = 0; i < GRAPH_CACHE; i++)
    if (e->graphs[i].g) {
      e->be->graph_free(e->be, e->graphs[i].g);
      e->graphs[i].g = NULL;
    }
}

vt_profile *vt_engine_profile(vt_engine *e) { return &e->prof; }
void vt_engine_set_graphs(vt_engine *e, int on) { e->use_graphs = on && e->be->capture_begin; }
void vt_engine_set_profiling(vt_engine *e, int on) { e->profiling = on; }
const char *vt_engine_device(const vt_engine *e) { return e->be->name; }

size_t vt_engine_arena_bytes(const vt_engine *e) {
  size_t shelf = 0;
  if (e->shelf_buf) {
    const vt_catalog *c = e->c;
    shelf = (size_t)c->n_products * (size_t)c->d_retrieval * 4; /* the bulk: embeddings */
  }
  return e->arena_cap + e->page_scratch_cap + shelf;
}

static int max_phrase_len(const vt_phrases *p) {
  int m = 0;
  for (int i = 0; i < p->n; i++)
    if (p->tok_off[i + 1] - p->tok_off[i] > m)
      m = p->tok_off[i + 1] - p->tok_off[i];
  return m;
}

/* n bytes of src (when it exists) placed at l (and copied to h's image when h has a base); *dst
 * points there when l has a base. */
static void table_layout(const uint32_t *src, size_t n, lay *l, lay *h, const uint32_t **dst) {
  if (!src)
    return;
  void *hp = take(h, n), *d = take(l, n);
  if (h->base)
    memcpy(hp, src, n);
  if (l->base)
    *dst = d;
}

/* The rules' tables (engine/rules.h) that exist, after the catalogue's: the pruned tries (as
 * model_layout places the bundle's), the page op's (region, season) blocks and the theme ones. */
static void rules_layout(const vt_catalog *c, int n_keywords, lay *l, lay *h, vt_shelf *s,
                         vt_trie_csr *tt, vt_trie_csr *kt, vt_theme_rules *tr) {
  const vt_rules *r = c->rules;
  vt_shelf s0;
  vt_theme_rules tr0;
  if (!r)
    return;
  if (!l->base) { /* measuring: nothing is assigned */
    s = &s0;
    tr = &tr0;
  }
  table_layout(r->theme_block, (size_t)r->n_themes * 16, l, h, &tr->block);
  table_layout(r->theme_allow, (size_t)r->n_themes * 4, l, h, &tr->allow);
  table_layout(r->kw_block, (size_t)n_keywords * 16, l, h, &s->kw_block);
  table_layout(r->prod_block, (size_t)c->n_products * 16, l, h, &s->prod_block);
  if (r->theme_trie.n_nodes) /* else nothing denied: the model's trie */
    trie_layout(&r->theme_trie, l, h, tt);
  if (r->keyword_trie.n_nodes)
    trie_layout(&r->keyword_trie, l, h, kt);
}

/* The catalogue's tables in one buffer (as model_layout), and the rules' tries after them. */
static size_t shelf_layout(const vt_catalog *c, int n_keywords, char *base, char *host,
                           vt_shelf *s, vt_trie_csr *tt, vt_trie_csr *kt, vt_theme_rules *tr) {
  const size_t P = (size_t)c->n_products, R = (size_t)c->d_retrieval;
  const void *src[] = {c->kw_off, c->kw_prod, c->stock,   c->regions, c->seasons, c->emb,
                       c->log_pop, c->rel_off, c->rel_idx, c->rel_w,   c->codes};
  const size_t bytes[] = {((size_t)n_keywords + 1) * 4,
                          (size_t)c->kw_off[n_keywords] * 4,
                          P * 4,
                          P * 4,
                          P,
                          P * R * 4,
                          P * 4,
                          (P + 1) * 4,
                          (size_t)c->rel_off[P] * 4,
                          (size_t)c->rel_off[P] * 4,
                          P * (size_t)c->code_levels * 4};
  void *dst[11];
  lay l = {base, 0}, h = {host, 0};
  for (int k = 0; k < 11; k++) {
    dst[k] = take(&l, bytes[k]);
    void *hp = take(&h, bytes[k]);
    if (host && bytes[k])
      memcpy(hp, src[k], bytes[k]);
  }
  if (base)
    *s = (vt_shelf){.n_products = c->n_products,
                    .d_retrieval = c->d_retrieval,
                    .kw_off = dst[0],
                    .kw_prod = dst[1],
                    .stock = dst[2],
                    .regions = dst[3],
                    .seasons = dst[4],
                    .emb = dst[5],
                    .log_pop = dst[6],
                    .rel_off = dst[7],
                    .rel_idx = dst[8],
                    .rel_w = dst[9],
                    .codes = dst[10],
                    .code_levels = c->code_levels};
  rules_layout(c, n_keywords, &l, &h, s, tt, kt, tr);
  return l.off;
}

void vt_engine_free(vt_engine *e) {
  if (!e)
    return;
  vt_backend *be = e->be;
  graphs_drop(e);
  if (e->arena)
    be->free(be, e->arena);
  if (e->stage && !be->host_memory)
    be->host_free(be, e->stage);
  if (e->page_scratch)
    be->free(be, e->page_scratch);
  if (e->shelf_buf)
    be->free(be, e->shelf_buf);
  if (e->owns_model)
    vt_model_free(e->m);
  free(e);
}

static int engine_new(vt_engine **out, vt_model *m, const vt_catalog *c, vt_err *err) {
  const vt_bundle *b = m->b;
  *out = NULL;
  vt_engine *e = calloc(1, sizeof *e);
  if (!e)
    return vt_fail(err, VT_ENOMEM, "out of memory");
  e->m = m;
  e->be = m->be;
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
  for (int k = 0; k < b->keywords.n; k++)
    if (c->kw_off[k + 1] - c->kw_off[k] > e->max_kw_products)
      e->max_kw_products = c->kw_off[k + 1] - c->kw_off[k];
  /* the catalogue's own arrays; a device engine points these at its copy (vt_engines_create) */
  e->shelf = (vt_shelf){.n_products = c->n_products,
                        .d_retrieval = c->d_retrieval,
                        .kw_off = c->kw_off,
                        .kw_prod = c->kw_prod,
                        .stock = c->stock,
                        .regions = c->regions,
                        .seasons = c->seasons,
                        .emb = c->emb,
                        .log_pop = c->log_pop,
                        .rel_off = c->rel_off,
                        .rel_idx = c->rel_idx,
                        .rel_w = c->rel_w,
                        .kw_block = c->rules ? c->rules->kw_block : NULL,
                        .prod_block = c->rules ? c->rules->prod_block : NULL,
                        .codes = c->codes,
                        .code_levels = c->code_levels};
  /* the rules' pruned tries where they prune (host copies: a device engine moves them), else
   * the model's */
  const vt_rules *r = c->rules;
  e->theme_trie = r && r->theme_trie.n_nodes ? csr_of(&r->theme_trie) : m->theme_trie;
  e->keyword_trie = r && r->keyword_trie.n_nodes ? csr_of(&r->keyword_trie) : m->keyword_trie;
  if (r)
    e->theme_rules = (vt_theme_rules){r->theme_block, r->theme_allow, r->restricted};
  *out = e;
  return VT_OK;
}

static void fill_shelf(void *ctx, char *stage) {
  const vt_engine *e = ctx;
  vt_shelf s;
  vt_trie_csr tt, kt;
  vt_theme_rules tr;
  shelf_layout(e->c, e->b->keywords.n, stage, stage, &s, &tt, &kt, &tr);
}

int vt_engines_create(vt_engine **out, vt_model *const *models, int n, const vt_catalog *c,
                      vt_err *err) {
  int rc = VT_OK;
  void *copies[64];
  vt_backend *bes[64];
  for (int i = 0; i < n; i++)
    out[i] = NULL;
  if (n < 1 || n > 64)
    return vt_fail(err, VT_EINVAL, "between 1 and 64 engines, not %d", n);
  for (int i = 0; i < n; i++)
    if ((rc = engine_new(&out[i], models[i], c, err)))
      goto fail;
  if (out[0]->be->host_memory)
    return VT_OK;
  const int nk = models[0]->b->keywords.n;
  const size_t bytes = shelf_layout(c, nk, NULL, NULL, NULL, NULL, NULL, NULL);
  for (int i = 0; i < n; i++) {
    vt_engine *e = out[i];
    if (!(e->shelf_buf = e->be->alloc(e->be, bytes))) {
      rc = vt_fail(err, VT_ENOMEM, "%s: cannot allocate %zu bytes for the catalogue: %s",
                   e->be->name, bytes, e->be->error(e->be));
      goto fail;
    }
    shelf_layout(c, nk, e->shelf_buf, NULL, &e->shelf, &e->theme_trie, &e->keyword_trie,
                 &e->theme_rules);
    copies[i] = e->shelf_buf;
    bes[i] = e->be;
  }
  if ((rc = place_everywhere(bes, copies, n, bytes, fill_shelf, (void *)out[0], "catalogue",
                             err)))
    goto fail;
  return VT_OK;
fail:
  for (int i = 0; i < n; i++) {
    vt_engine_free(out[i]);
    out[i] = NULL;
  }
  return rc;
}

int vt_engine_create(vt_engine **out, const vt_bundle *b, const vt_catalog *c, vt_err *err) {
  return vt_engine_create_on(out, b, c, "cpu", err);
}

int vt_engine_create_on(vt_engine **out, const vt_bundle *b, const vt_catalog *c,
                        const char *device, vt_err *err) {
  *out = NULL;
  char why[256];
  vt_backend *be;
  if (vt_backend_open(&be, device, why, sizeof why))
    return vt_fail(err, VT_EINVAL, "%s", why);
  vt_model *m;
  int rc = vt_models_create(&m, &be, 1, b, err);
  if (rc)
    return rc;
  if ((rc = vt_engines_create(out, &m, 1, c, err))) {
    vt_model_free(m);
    return rc;
  }
  (*out)->owns_model = 1;
  return VT_OK;
}

/* ---- planning a batch ---------------------------------------------------------------------- */
static int bucket(int n) {
  int b = 1;
  while (b < n)
    b <<= 1;
  return b;
}

static int min_i(int a, int b) { return a < b ? a : b; }
static int max_i(int a, int b) { return a > b ? a : b; }

static void batch_dims(const vt_engine *e, const vt_request *reqs, int B, int trace, dims *d) {
  const vt_bundle *b = e->b;
  const vt_model *m = e->m;
  const int dev = !e->be->host_memory;
  memset(d, 0, sizeof *d);
  d->B = B;
  d->trace = trace;
  int kw_max = 1;
  for (int i = 0; i < B; i++) {
    const vt_request *r = &reqs[i];
    const int w1 = max_i(b->theme_beam, r->sections), w2 = max_i(b->keyword_beam,
                                                                  r->keywords_per_section);
    d->N += r->n_events + 1;
    d->cap1 += w1;
    d->G2 += r->sections;
    d->cap2 += r->sections * w2;
    d->wmax1 = max_i(d->wmax1, w1);
    d->wmax2 = max_i(d->wmax2, w2);
    for (int k = 0; k < r->n_events; k++)
      d->n_hist += r->events[k].item >= 0;
    d->n_excl += r->n_exclude;
    kw_max = max_i(kw_max, r->keywords_per_section);
  }
  d->Bc = B;
  d->max_cands = kw_max * max_i(e->max_kw_products, 1);
  if (dev) { /* bucketed, so batches of similar shape share buffers' places and graphs */
    d->Bc = bucket(B);
    d->cap1 = bucket(d->cap1);
    d->G2 = bucket(d->G2);
    d->cap2 = bucket(d->cap2);
    d->wmax1 = bucket(d->wmax1);
    d->wmax2 = bucket(d->wmax2);
    d->n_hist = bucket(d->n_hist);
    d->n_excl = bucket(d->n_excl);
    d->max_cands = bucket(d->max_cands);
  }
  d->steps1 = e->max_theme_len + 1; /* a phrase's words, then its terminator */
  d->steps2 = e->max_keyword_len + 1;
  d->slot_cap = d->Bc + d->cap1 * (d->steps1 - 1) + d->G2 + d->cap2 * (d->steps2 - 1);
  d->fin1 = min_i(d->wmax1 * (d->steps1 + 1), VT_MAX_FINISHED);
  d->fin2 = min_i(d->wmax2 * (d->steps2 + 1), VT_MAX_FINISHED);
  /* a beam step scores the children of its rows: at the root first (one row per search),
   * deeper nodes after */
  d->sel1 = max_i(d->Bc * m->theme_root, d->cap1 * m->theme_branch);
  d->sel2 = max_i(d->G2 * m->keyword_root, d->cap2 * m->keyword_branch);
}

static void take_rows(lay *l, vt_beam_rows *r, int cap, int maxT, int small) {
  /* small: the per-row arrays (and n) only; the slot table separately */
  if (small) {
    TAKE(l, r->token, cap);
    TAKE(l, r->node, cap);
    TAKE(l, r->score, cap);
    TAKE(l, r->pos, cap);
    TAKE(l, r->mem, cap);
    TAKE(l, r->n, 1);
  } else {
    TAKE(l, r->slots, (size_t)cap * maxT);
  }
}

static void take_groups(lay *l, vt_beam_groups *g, int G, int fin_cap, int maxT, int slots) {
  TAKE(l, g->width, G);
  TAKE(l, g->n_best, G);
  TAKE(l, g->row0, G);
  TAKE(l, g->n_rows, G);
  TAKE(l, g->pos, G);
  TAKE(l, g->state, G);
  TAKE(l, g->n_fin, G);
  g->fin_cap = fin_cap;
  TAKE(l, g->fin_score, (size_t)G * fin_cap);
  TAKE(l, g->fin_phrase, (size_t)G * fin_cap);
  TAKE(l, g->fin_len, (size_t)G * fin_cap);
  if (slots)
    TAKE(l, g->fin_slots, (size_t)G * fin_cap * maxT);
  else if (l->base)
    g->fin_slots = NULL;
}

/* Places a batch's buffers at base (NULL: measures). Returns the arena bytes needed. */
static size_t plan(const vt_engine *e, const dims *d, char *base, bufs *u) {
  const vt_config *cfg = &e->b->cfg;
  const int C = cfg->d_model, F = cfg->d_ff, NQ = cfg->n_queries, R = cfg->d_retrieval,
            L = cfg->code_levels, MQ = cfg->max_query_tokens, maxT = cfg->max_dec_len;
  const int capmax = max_i(d->cap1, d->cap2), wmax = max_i(d->wmax1, d->wmax2);
  const int Gmax = max_i(d->Bc, d->G2), M = d->B * NQ, N = d->N;
  lay l = {base, 0};
  /* state */
  TAKE(&l, u->mem, (size_t)d->Bc * NQ * C);
  TAKE(&l, u->user, (size_t)d->Bc * R);
  for (int j = 0; j < cfg->n_dec_layers; j++) {
    TAKE(&l, u->xkv[j], (size_t)d->Bc * NQ * 2 * C);
    TAKE(&l, u->kpool[j], (size_t)d->slot_cap * C);
    TAKE(&l, u->vpool[j], (size_t)d->slot_cap * C);
  }
  TAKE(&l, u->Y, (size_t)capmax * C);
  TAKE(&l, u->H, (size_t)capmax * C);
  TAKE(&l, u->Q, (size_t)capmax * C);
  TAKE(&l, u->A, (size_t)capmax * C);
  TAKE(&l, u->h, (size_t)capmax * C);
  TAKE(&l, u->QKV, (size_t)capmax * 3 * C);
  TAKE(&l, u->FF, (size_t)capmax * F);
  take_rows(&l, &u->rows[0], capmax, maxT, 0);
  take_rows(&l, &u->rows[1], capmax, maxT, 0);
  take_rows(&l, &u->rows[1], capmax, maxT, 1);
  take_groups(&l, &u->g2, d->G2, d->fin2, maxT, 0);
  TAKE(&l, u->g1.fin_score, (size_t)d->Bc * d->fin1);
  TAKE(&l, u->g1.fin_phrase, (size_t)d->Bc * d->fin1);
  TAKE(&l, u->g1.fin_len, (size_t)d->Bc * d->fin1);
  TAKE(&l, u->g1.fin_slots, (size_t)d->Bc * d->fin1 * maxT);
  u->g1.fin_cap = d->fin1;
  TAKE(&l, u->picks.parent, (size_t)Gmax * wmax);
  TAKE(&l, u->picks.token, (size_t)Gmax * wmax);
  TAKE(&l, u->picks.node, (size_t)Gmax * wmax);
  TAKE(&l, u->picks.phrase, (size_t)Gmax * wmax);
  TAKE(&l, u->picks.score, (size_t)Gmax * wmax);
  TAKE(&l, u->picks.n, Gmax);
  u->sel_scratch = take(&l, vt_beam_select_scratch(capmax, max_i(d->sel1, d->sel2)));
  if (d->trace)
    TAKE(&l, u->logits, (size_t)d->B * cfg->vocab_size);
  TAKE(&l, u->counts, 2);
  /* the storefronts right after the counts, so both come back in one download */
  u->out = (vt_storefront *)(void *)(l.base ? l.base + l.off : NULL);
  l.off += (size_t)d->Bc * sizeof(vt_storefront);
  u->dl_bytes = (size_t)d->B * sizeof(vt_storefront) + (size_t)((char *)u->out - (char *)u->counts);
  u->state_bytes = l.off;
  /* inputs */
  u->in0 = l.off = (l.off + 255) & ~(size_t)255;
  TAKE(&l, u->req, d->Bc);
  TAKE(&l, u->hist, d->n_hist);
  TAKE(&l, u->excl, d->n_excl);
  TAKE(&l, u->slot_base, 1);
  take_rows(&l, &u->rows[0], capmax, maxT, 1);
  TAKE(&l, u->g1.width, d->Bc);
  TAKE(&l, u->g1.n_best, d->Bc);
  TAKE(&l, u->g1.row0, d->Bc);
  TAKE(&l, u->g1.n_rows, d->Bc);
  TAKE(&l, u->g1.pos, d->Bc);
  TAKE(&l, u->g1.state, d->Bc);
  TAKE(&l, u->g1.n_fin, d->Bc);
  /* events */
  TAKE(&l, u->off, d->B + 1);
  TAKE(&l, u->codes, (size_t)N * L);
  TAKE(&l, u->action, N);
  TAKE(&l, u->qtok, (size_t)N * MQ);
  TAKE(&l, u->region, N);
  TAKE(&l, u->x, N);
  TAKE(&l, u->cal, (size_t)N * VT_N_CAL);
  TAKE(&l, u->ts, N);
  TAKE(&l, u->qoff, d->B + 1);
  u->in1 = l.off;
  /* work */
  TAKE(&l, u->X, (size_t)N * C);
  TAKE(&l, u->EH, (size_t)N * C);
  TAKE(&l, u->EA, (size_t)N * C);
  TAKE(&l, u->EQKV, (size_t)N * 3 * C);
  TAKE(&l, u->EFF, (size_t)N * F);
  TAKE(&l, u->q, (size_t)M * C);
  TAKE(&l, u->hq, (size_t)M * C);
  TAKE(&l, u->qp, (size_t)M * C);
  TAKE(&l, u->aq, (size_t)M * C);
  TAKE(&l, u->fq, (size_t)M * F);
  TAKE(&l, u->kv, (size_t)N * 2 * C);
  TAKE(&l, u->mean, (size_t)d->B * C);
  return l.off;
}

/* Grows the arena, the staging buffer and the page scratch to what d needs. */
static int reserve(vt_engine *e, const dims *d, bufs *u, vt_err *err) {
  vt_backend *be = e->be;
  const size_t need = plan(e, d, NULL, u);
  if (need > e->arena_cap) {
    graphs_drop(e);
    if (e->arena)
      be->free(be, e->arena);
    const size_t cap = need + need / 4;
    if (!(e->arena = be->alloc(be, cap))) {
      e->arena_cap = 0;
      return vt_fail(err, VT_ENOMEM, "%s: cannot allocate a %zu-byte arena: %s", be->name, cap,
                     be->error(be));
    }
    e->arena_cap = cap;
    if (be->host_memory) {
      e->stage = e->arena;
      e->stage_cap = cap;
    }
  }
  plan(e, d, e->arena, u);
  if (!be->host_memory) {
    const size_t sneed = u->in1 - u->in0 > u->dl_bytes ? u->in1 - u->in0 : u->dl_bytes;
    if (sneed > e->stage_cap) {
      if (e->stage)
        be->host_free(be, e->stage);
      const size_t cap = sneed + sneed / 4;
      if (!(e->stage = be->host_alloc(be, cap))) {
        e->stage_cap = 0;
        return vt_fail(err, VT_ENOMEM, "cannot allocate a %zu-byte staging buffer", cap);
      }
      e->stage_cap = cap;
    }
  }
  const size_t pneed = be->page_scratch(e->c->n_products, d->max_cands, d->Bc);
  if (pneed > e->page_scratch_cap || e->page_dirty) {
    if (pneed > e->page_scratch_cap) {
      graphs_drop(e);
      if (e->page_scratch)
        be->free(be, e->page_scratch);
      if (!(e->page_scratch = be->alloc(be, pneed))) {
        e->page_scratch_cap = 0;
        return vt_fail(err, VT_ENOMEM, "%s: cannot allocate %zu bytes of page scratch: %s",
                       be->name, pneed, be->error(be));
      }
      e->page_scratch_cap = pneed;
    }
    if (be->zero(be, e->page_scratch, e->page_scratch_cap))
      return op_fail(be, err, "zeroing the page scratch");
    e->page_dirty = 0;
  }
  return VT_OK;
}

/* Where the host writes buffer p of the inputs | events region: the staging image of that region
 * on a device, p itself on the CPU. */
static void *host_of(const vt_engine *e, const bufs *u, const void *p) {
  if (e->be->host_memory)
    return (void *)p;
  return e->stage + ((const char *)p - e->arena - u->in0);
}

#define HOST(e, u, p) host_of((e), (u), (p))

/* Writes the inputs and events into the staging image. */
static void featurise(vt_engine *e, const vt_request *reqs, const dims *d, const bufs *u) {
  const vt_bundle *b = e->b;
  const vt_config *cfg = &b->cfg;
  const int L = cfg->code_levels, MQ = cfg->max_query_tokens, B = d->B;
  vt_page_req *req = HOST(e, u, u->req);
  int32_t *hist = HOST(e, u, u->hist), *excl = HOST(e, u, u->excl);
  memset(req, 0, (size_t)d->Bc * sizeof *req);
  int nh = 0, nx = 0, group0 = 0;
  for (int i = 0; i < B; i++) {
    const vt_request *r = &reqs[i];
    vt_page_req *p = &req[i];
    p->sections = r->sections;
    p->keywords = r->keywords_per_section;
    p->products = r->products_per_section;
    p->kw_width = max_i(b->keyword_beam, r->keywords_per_section);
    p->group0 = group0;
    group0 += r->sections;
    p->region = r->region;
    p->season = vt_rules_season(e->c->rules, b, r->region, r->now); /* rules, else calendar */
    p->hist0 = nh;
    for (int k = 0; k < r->n_events; k++)
      if (r->events[k].item >= 0)
        hist[nh++] = r->events[k].item;
    p->n_hist = nh - p->hist0;
    p->excl0 = nx;
    memcpy(excl + nx, r->exclude, (size_t)r->n_exclude * sizeof *excl);
    nx += r->n_exclude;
    p->n_excl = r->n_exclude;
  }
  *(int32_t *)HOST(e, u, u->slot_base) = 0;
  /* the first step: one <bos> row per request, one theme search per request */
  const vt_beam_rows r0 = u->rows[0];
  int32_t *tok = HOST(e, u, r0.token), *node = HOST(e, u, r0.node), *pos = HOST(e, u, r0.pos),
          *mem = HOST(e, u, r0.mem);
  float *score = HOST(e, u, r0.score);
  int32_t *gw = HOST(e, u, u->g1.width), *gb = HOST(e, u, u->g1.n_best),
          *g0 = HOST(e, u, u->g1.row0), *gn = HOST(e, u, u->g1.n_rows),
          *gp = HOST(e, u, u->g1.pos), *gs = HOST(e, u, u->g1.state),
          *gf = HOST(e, u, u->g1.n_fin);
  for (int i = 0; i < d->Bc; i++) {
    const int real = i < B;
    if (real) {
      tok[i] = VT_TOK_BOS;
      node[i] = 0;
      score[i] = 0.0f;
      pos[i] = 0;
      mem[i] = i;
    }
    gw[i] = real ? max_i(b->theme_beam, reqs[i].sections) : 1;
    gb[i] = real ? reqs[i].sections : 0;
    g0[i] = real ? i : 0;
    gn[i] = real;
    gp[i] = 0;
    gs[i] = real ? VT_GROUP_FIRST : VT_GROUP_DONE;
    gf[i] = 0;
  }
  *(int32_t *)HOST(e, u, r0.n) = B;
  /* the encoder's rows: the context token, then the events */
  int32_t *off = HOST(e, u, u->off), *codes = HOST(e, u, u->codes),
          *action = HOST(e, u, u->action), *qtok = HOST(e, u, u->qtok),
          *region = HOST(e, u, u->region);
  float *x = HOST(e, u, u->x), *cal = HOST(e, u, u->cal);
  int64_t *ts = HOST(e, u, u->ts);
  int32_t *qoff = HOST(e, u, u->qoff);
  off[0] = 0;
  for (int i = 0; i < B; i++)
    off[i + 1] = off[i] + reqs[i].n_events + 1;
  for (int i = 0; i <= B; i++)
    qoff[i] = i * cfg->n_queries;
  memset(qtok, 0, (size_t)d->N * MQ * sizeof *qtok);
  for (int i = 0; i < B; i++) {
    const vt_request *r = &reqs[i];
    for (int n = 0; n <= r->n_events; n++) {
      const int row = off[i] + n;
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
}

/* ---- encoder --------------------------------------------------------------------------------- */
/* Downloads n floats at p (where be computes) for a trace; NULL after a failure. */
static float *fetch(vt_engine *e, const float *p, size_t n) {
  if (e->be->host_memory)
    return (float *)p;
  float *h = malloc(n * sizeof *h + 1);
  if (h && e->be->download(e->be, h, p, n * sizeof *h)) {
    free(h);
    h = NULL;
  }
  return h;
}

static int trace_rows(vt_engine *e, vt_trace_fn trace, void *ctx, const vt_request *reqs, int B,
                      const char *name, const float *x, int C, vt_err *err) {
  int N = 0;
  for (int i = 0; i < B; i++)
    N += reqs[i].n_events + 1;
  float *h = fetch(e, x, (size_t)N * C);
  if (!h)
    return op_fail(e->be, err, "downloading a traced tensor");
  for (int b = 0, row = 0; b < B; row += reqs[b].n_events + 1, b++)
    trace(ctx, b, name, h + (size_t)row * C, reqs[b].n_events + 1, C);
  if (h != x)
    free(h);
  return VT_OK;
}

static int encode(vt_engine *e, const vt_request *reqs, const dims *d, const bufs *u,
                  vt_trace_fn trace, void *tctx, vt_err *err) {
  vt_backend *be = e->be;
  const vt_config *cfg = &e->b->cfg;
  const vt_weights *w = &e->m->w;
  const int C = cfg->d_model, F = cfg->d_ff, L = cfg->code_levels, MQ = cfg->max_query_tokens,
            NH = cfg->n_heads, NQ = cfg->n_queries, R = cfg->d_retrieval, P = cfg->t2v_dim;
  const int B = d->B, N = d->N, M = B * NQ;
  float *X = u->X, *H = u->EH, *A = u->EA, *QKV = u->EQKV, *FF = u->EFF;
  int rc;
  OP(be->event_embed(be, X, u->codes, u->action, u->qtok, u->x, u->cal, u->region, w->code_emb,
                     w->action_emb, w->region_emb, w->tok_emb, w->t2v_w, w->t2v_b, w->time_w,
                     w->time_b, w->ln_emb_w, w->ln_emb_b, N, C, L, MQ, P),
     "event_embed");
  if (trace && (rc = trace_rows(e, trace, tctx, reqs, B, "event_emb", X, C, err)))
    return rc;
  for (int l = 0; l < cfg->n_enc_layers; l++) {
    const vt_enc_layer *ly = &w->enc[l];
    OP(be->layernorm(be, H, X, ly->ln1_w, ly->ln1_b, N, C), "layernorm");
    OP(be->matmul(be, QKV, H, ly->qkv_w, ly->qkv_b, N, C, 3 * C, VT_ACT_NONE), "matmul");
    OP(be->attention(be, A, QKV, u->ts, u->off, ly->time_bias, B, C, NH), "attention");
    OP(be->matmul(be, H, A, ly->proj_w, ly->proj_b, N, C, C, VT_ACT_NONE), "matmul");
    /* X += attn; A = LN2(X) */
    OP(be->residual_layernorm(be, X, A, H, ly->ln2_w, ly->ln2_b, N, C), "residual_layernorm");
    OP(be->matmul(be, FF, A, ly->fc1_w, ly->fc1_b, N, C, F, VT_ACT_GELU), "matmul");
    OP(be->matmul(be, H, FF, ly->fc2_w, ly->fc2_b, N, F, C, VT_ACT_NONE), "matmul");
    OP(be->add(be, X, H, N * C), "add");
    if (trace) {
      char name[16];
      snprintf(name, sizeof name, "enc%d", l);
      if ((rc = trace_rows(e, trace, tctx, reqs, B, name, X, C, err)))
        return rc;
    }
  }
  float *enc = A;
  OP(be->layernorm(be, enc, X, w->ln_enc_w, w->ln_enc_b, N, C), "layernorm");
  /* Query-Former: NQ learned queries per request cross-attend to the request's events */
  const int32_t *qoff = u->qoff;
  OP(be->repeat_rows(be, u->q, w->queries, NQ, B, C), "repeat_rows");
  OP(be->rmsnorm(be, u->hq, u->q, w->qf_rms1_w, M, C), "rmsnorm");
  OP(be->matmul(be, u->qp, u->hq, w->qf_q_w, w->qf_q_b, M, C, C, VT_ACT_NONE), "matmul");
  OP(be->matmul(be, u->kv, enc, w->qf_kv_w, w->qf_kv_b, N, C, 2 * C, VT_ACT_NONE), "matmul");
  OP(be->cross_attention(be, u->aq, u->qp, u->kv, qoff, u->off, B, C, NH), "cross_attention");
  OP(be->matmul(be, u->hq, u->aq, w->qf_proj_w, w->qf_proj_b, M, C, C, VT_ACT_NONE), "matmul");
  OP(be->add(be, u->q, u->hq, M * C), "add");
  OP(be->rmsnorm(be, u->hq, u->q, w->qf_rms2_w, M, C), "rmsnorm");
  OP(be->matmul(be, u->fq, u->hq, w->qf_fc1_w, w->qf_fc1_b, M, C, F, VT_ACT_GELU), "matmul");
  OP(be->matmul(be, u->hq, u->fq, w->qf_fc2_w, w->qf_fc2_b, M, F, C, VT_ACT_NONE), "matmul");
  OP(be->add(be, u->q, u->hq, M * C), "add");
  OP(be->layernorm(be, u->mem, u->q, w->ln_mem_w, w->ln_mem_b, M, C), "layernorm");
  /* the retrieval user vector: W_user mean(memory) + b */
  OP(be->mean_rows(be, u->mean, u->mem, B, NQ, C), "mean_rows");
  OP(be->matmul(be, u->user, u->mean, w->user_w, w->user_b, B, C, R, VT_ACT_NONE), "matmul");
  if (trace) {
    float *hm = fetch(e, u->mem, (size_t)M * C), *hu = hm ? fetch(e, u->user, (size_t)B * R) : NULL;
    if (!hm || !hu) {
      if (hm != u->mem)
        free(hm);
      return op_fail(be, err, "downloading a traced tensor");
    }
    for (int i = 0; i < B; i++) {
      trace(tctx, i, "memory", hm + (size_t)i * NQ * C, NQ, C);
      trace(tctx, i, "user", hu + (size_t)i * R, 1, R);
    }
    if (hm != u->mem) {
      free(hm);
      free(hu);
    }
  }
  for (int j = 0; j < cfg->n_dec_layers; j++)
    OP(be->matmul(be, u->xkv[j], u->mem, w->dec[j].ca_kv_w, w->dec[j].ca_kv_b, M, C, 2 * C,
                  VT_ACT_NONE),
       "matmul");
  return VT_OK;
}

/* ---- decoding ---------------------------------------------------------------------------------- */
/* One decoder step of a stage: rows cur (n live of cap) -> picks -> rows next. */
static int decode_step(vt_engine *e, const bufs *u, vt_beam_rows cur, vt_beam_rows next,
                       vt_beam_groups g, int G, int cap, int n, int wmax, vt_trie_csr trie,
                       float *first_logits, vt_err *err) {
  vt_backend *be = e->be;
  const vt_config *cfg = &e->b->cfg;
  const vt_weights *w = &e->m->w;
  const int C = cfg->d_model, F = cfg->d_ff, NH = cfg->n_heads, NQ = cfg->n_queries,
            maxT = cfg->max_dec_len;
  const int timed = e->profiling || be->host_memory; /* a CPU backend needs no wait */
  const double t0 = timed ? now_ns() : 0;
  OP(be->beam_feed(be, u->Y, cur, u->slot_base, w->tok_emb, w->pos_emb, cap, C, maxT),
     "beam_feed");
  for (int j = 0; j < cfg->n_dec_layers; j++) {
    const vt_dec_layer *ly = &w->dec[j];
    OP(be->layernorm(be, u->H, u->Y, ly->ln1_w, ly->ln1_b, n, C), "layernorm");
    OP(be->matmul(be, u->QKV, u->H, ly->sa_qkv_w, ly->sa_qkv_b, n, C, 3 * C, VT_ACT_NONE),
       "matmul");
    OP(be->kv_append(be, u->Q, u->kpool[j], u->vpool[j], u->QKV, cur, cap, C, maxT),
       "kv_append");
    OP(be->dec_self_attention(be, u->A, u->Q, u->kpool[j], u->vpool[j], cur, cap, maxT, C, NH),
       "dec_self_attention");
    OP(be->matmul(be, u->H, u->A, ly->sa_proj_w, ly->sa_proj_b, n, C, C, VT_ACT_NONE), "matmul");
    OP(be->residual_layernorm(be, u->Y, u->A, u->H, ly->ln2_w, ly->ln2_b, n, C),
       "residual_layernorm");
    OP(be->matmul(be, u->Q, u->A, ly->ca_q_w, ly->ca_q_b, n, C, C, VT_ACT_NONE), "matmul");
    OP(be->dec_cross_attention(be, u->A, u->Q, u->xkv[j], cur, cap, NQ, C, NH),
       "dec_cross_attention");
    OP(be->matmul(be, u->H, u->A, ly->ca_proj_w, ly->ca_proj_b, n, C, C, VT_ACT_NONE), "matmul");
    OP(be->residual_layernorm(be, u->Y, u->A, u->H, ly->ln3_w, ly->ln3_b, n, C),
       "residual_layernorm");
    OP(be->matmul(be, u->FF, u->A, ly->fc1_w, ly->fc1_b, n, C, F, VT_ACT_GELU), "matmul");
    OP(be->matmul(be, u->H, u->FF, ly->fc2_w, ly->fc2_b, n, F, C, VT_ACT_NONE), "matmul");
    OP(be->add(be, u->Y, u->H, n * C), "add");
  }
  OP(be->layernorm(be, u->h, u->Y, w->ln_dec_w, w->ln_dec_b, n, C), "layernorm");
  if (first_logits) /* the first theme step's full-vocabulary logits, for the trace */
    OP(be->matmul(be, first_logits, u->h, w->tok_emb, NULL, n, C, cfg->vocab_size, VT_ACT_NONE),
       "matmul");
  double t1 = 0;
  if (timed) {
    OP(be->sync(be), "sync");
    t1 = now_ns();
  }
  OP(be->beam_select(be, u->picks, u->h, cur, g, G, cap, wmax, w->tok_emb, trie, C,
                     u->sel_scratch),
     "beam_select");
  OP(be->beam_advance(be, next, g, u->slot_base, u->picks, cur, G, wmax, maxT, cfg->max_dec_len),
     "beam_advance");
  if (timed) {
    OP(be->sync(be), "sync");
    const double t2 = now_ns();
    e->prof.decode_ns += t1 - t0;
    e->prof.beam_ns += t2 - t1;
  }
  e->prof.decode_steps++;
  return VT_OK;
}

/* A stage's beam searches to the end. rows[which] holds the first rows; returns (in *which) the
 * buffer the last step wrote. On the CPU the loop reads the live count and stops when nothing is
 * left; on a device it runs `steps` steps over the whole capacity (the first step over G rows:
 * every search starts from one row). */
static int decode_stage(vt_engine *e, const bufs *u, int *which, vt_beam_groups g, int G, int cap,
                        int steps, int wmax, vt_trie_csr trie, float *first_logits,
                        vt_err *err) {
  int rc;
  for (int s = 0; e->be->host_memory || s < steps; s++) {
    const vt_beam_rows cur = u->rows[*which], next = u->rows[!*which];
    int n = s == 0 && G < cap ? G : cap;
    if (e->be->host_memory && (n = *cur.n) == 0)
      break;
    if ((rc = decode_step(e, u, cur, next, g, G, cap, n, wmax, trie, s ? NULL : first_logits,
                          err)))
      return rc;
    *which = !*which;
  }
  return VT_OK;
}

/* Stage 1, the hand-over, stage 2 and the page: everything after the encoder, on buffers whose
 * places depend only on the bucketed shape (what a CUDA graph captures). */
static int decode_and_page(vt_engine *e, const dims *d, const bufs *u, float *first_logits,
                           vt_err *err) {
  vt_backend *be = e->be;
  const vt_bundle *b = e->b;
  const int maxT = b->cfg.max_dec_len;
  int rc, which = 0;
  vt_beam_groups g1 = u->g1;
  if ((rc = decode_stage(e, u, &which, g1, d->Bc, d->cap1, d->steps1, d->wmax1,
                         e->theme_trie, first_logits, err)))
    return rc;
  /* rows left after the last step (0, else the step count is wrong), before rows[0] is reused */
  OP(be->copy(be, u->counts, u->rows[which].n, sizeof(int32_t)), "copy");
  OP(be->themes_to_keywords(be, u->out, u->rows[0], u->g2, g1, u->req, e->theme_rules, d->Bc,
                            d->G2, maxT, VT_TOK_SEP),
     "themes_to_keywords");
  which = 0;
  if ((rc = decode_stage(e, u, &which, u->g2, d->G2, d->cap2, d->steps2, d->wmax2,
                         e->keyword_trie, NULL, err)))
    return rc;
  OP(be->copy(be, u->counts + 1, u->rows[which].n, sizeof(int32_t)), "copy");
  const int timed = e->profiling || be->host_memory;
  const double t0 = timed ? now_ns() : 0;
  const vt_ranker rk = {b->rank_again, b->rank_cooc, b->rank_popularity, b->rank_decay,
                        b->rank_calibration};
  e->page_dirty = 1;
  OP(be->page_assemble(be, u->out, u->req, u->hist, u->excl, u->user, u->g2, e->shelf, rk,
                       b->rank_model, d->Bc, d->max_cands, e->page_scratch),
     "page_assemble");
  e->page_dirty = 0;
  if (timed) {
    OP(be->sync(be), "sync");
    e->prof.retrieve_ns += now_ns() - t0;
  }
  return VT_OK;
}

/* The cached graph of shape d, capturing it at its first use; NULL when graphs are off. */
static int graph_for(vt_engine *e, const dims *d, const bufs *u, void **out, vt_err *err) {
  *out = NULL;
  if (!e->use_graphs || d->trace || e->profiling)
    return VT_OK;
  vt_backend *be = e->be;
  dims key = *d;
  key.B = key.N = key.trace = 0;
  graph *slot = &e->graphs[0];
  for (int i = 0; i < GRAPH_CACHE; i++) {
    graph *g = &e->graphs[i];
    if (g->g && memcmp(&g->key, &key, sizeof key) == 0) {
      g->used = ++e->graph_clock;
      *out = g->g;
      return VT_OK;
    }
    if (!g->g || (slot->g && g->used < slot->used))
      slot = g; /* an empty slot, or the least recently used */
  }
  if (slot->g) {
    be->graph_free(be, slot->g);
    slot->g = NULL;
  }
  OP(be->capture_begin(be), "capture_begin");
  int rc = decode_and_page(e, d, u, NULL, err);
  void *g = NULL;
  const int crc = be->capture_end(be, &g); /* ends the capture also after a failure */
  if (rc)
    return rc;
  if (crc < 0)
    return op_fail(be, err, "capture_end");
  slot->key = key;
  slot->g = g;
  slot->used = ++e->graph_clock;
  *out = g;
  return VT_OK;
}

/* ---- the cascade ----------------------------------------------------------------------------- */
int vt_engine_run(vt_engine *e, const vt_request *reqs, int B, vt_storefront *out,
                  vt_trace_fn trace, void *tctx, vt_err *err) {
  vt_backend *be = e->be;
  const vt_config *cfg = &e->b->cfg;
  if (B < 1)
    return vt_fail(err, VT_EINVAL, "a batch needs at least one request");
  for (int i = 0; i < B; i++)
    if (reqs[i].sections > VT_MAX_SECTIONS || reqs[i].keywords_per_section > VT_MAX_KEYWORDS ||
        reqs[i].products_per_section > VT_MAX_PRODUCTS)
      return vt_fail(err, VT_EINVAL, "request %d asks for more than the engine's limits", i);
  dims d;
  bufs u;
  batch_dims(e, reqs, B, trace != NULL, &d);
  int rc = reserve(e, &d, &u, err);
  if (rc)
    return rc;
  if (be->host_memory)
    u.out = out; /* the page step writes the caller's storefronts */
  const double t0 = now_ns();
  featurise(e, reqs, &d, &u);
  if (!be->host_memory)
    OP(be->upload(be, e->arena + u.in0, e->stage, u.in1 - u.in0), "upload");
  if ((rc = encode(e, reqs, &d, &u, trace, tctx, err)))
    return rc;
  if (e->profiling && (rc = be->sync(be)) < 0)
    return op_fail(be, err, "sync");
  e->prof.encode_ns += now_ns() - t0;
  e->prof.batches++;
  e->prof.requests += B;
  void *g;
  if ((rc = graph_for(e, &d, &u, &g, err)))
    return rc;
  if (g) {
    e->page_dirty = 1;
    OP(be->replay(be, g), "replay");
    e->page_dirty = 0;
  } else if ((rc = decode_and_page(e, &d, &u, trace ? u.logits : NULL, err))) {
    return rc;
  }
  if (trace) {
    float *h = fetch(e, u.logits, (size_t)B * cfg->vocab_size);
    if (!h)
      return op_fail(be, err, "downloading a traced tensor");
    for (int i = 0; i < B; i++)
      trace(tctx, i, "first_logits", h + (size_t)i * cfg->vocab_size, 1, cfg->vocab_size);
    if (h != u.logits)
      free(h);
  }
  const int32_t *counts = u.counts;
  if (!be->host_memory) { /* the one download: [counts | storefronts] */
    if (be->download(be, e->stage, u.counts, u.dl_bytes)) {
      e->page_dirty = 1; /* an asynchronous failure: the page step may not have finished */
      return op_fail(be, err, "download");
    }
    counts = (const int32_t *)(void *)e->stage;
    memcpy(out, e->stage + ((char *)u.out - (char *)u.counts), (size_t)B * sizeof *out);
    if (counts[0] || counts[1])
      return vt_fail(err, VT_EINTERNAL,
                     "%s: %d theme and %d keyword beams were still live after the last step",
                     be->name, counts[0], counts[1]);
  }
  for (int i = 0; i < B; i++)
    out[i].dropped_events = reqs[i].dropped;
  return VT_OK;
}
