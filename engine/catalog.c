/* Catalogue loader (docs/BUNDLE.md): manifest.json, products.tsv and embeddings.safetensors,
 * checked against the bundle they are used with. Accepts what train/bundle.py's load_catalog
 * accepts and refuses a bad line as `products.tsv:LINE: problem`, as it does. */
#include "catalog.h"

#include "rules.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PATH_MAX_LEN VT_PATH_MAX
#define N_FIELDS 10

static const char *const products_header =
    "index\tid\tstock\tregions\tseasons\tkeywords\tcodes\tpopularity\trelated\ttitle";
static const char *const season_names[4] = {"winter", "spring", "summer", "autumn"};


static const char *json_repr(char *buf, size_t n, const cJSON *j) {
  char *s = j ? cJSON_PrintUnformatted(j) : NULL;
  snprintf(buf, n, "%s", s ? s : "null");
  free(s);
  return buf;
}

/* A JSON number equal to v (Python's ==, so 4.0 matches 4). */
static int json_is(const cJSON *j, long long v) {
  return cJSON_IsNumber(j) && j->valuedouble == (double)v;
}

/* The decimal integer written in s[0..len), in [min, max]: what the writer writes (an optional
 * sign, digits), nothing else. */
static int parse_int(const char *s, size_t len, long long min, long long max, long long *out) {
  char buf[32], *end;
  if (len == 0 || len >= sizeof buf) return 0;
  memcpy(buf, s, len);
  buf[len] = '\0';
  size_t i = buf[0] == '-' || buf[0] == '+';
  if (!buf[i]) return 0;
  for (size_t k = i; buf[k]; k++)
    if (buf[k] < '0' || buf[k] > '9') return 0;
  errno = 0;
  long long v = strtoll(buf, &end, 10);
  if (errno || *end || v < min || v > max) return 0;
  *out = v;
  return 1;
}

/* A related weight as Python reads it, float(np.float32(float(w))): the nearest double, then the
 * nearest float. (float)strtod is exactly that; strtof can differ by double rounding on inputs
 * the writer never makes. Hex floats, which Python's float() refuses, are refused. */
static int parse_weight(const char *s, size_t len, float *out) {
  char buf[64], *end;
  if (len == 0 || len >= sizeof buf || memchr(s, 'x', len) || memchr(s, 'X', len)) return 0;
  memcpy(buf, s, len);
  buf[len] = '\0';
  double d = strtod(buf, &end);
  if (end == buf || *end) return 0;
  *out = (float)d;
  return 1;
}

/* Comma-separated items of a field: the next one at *s (possibly empty); 0 past the last. */
static int next_item(const char **s, const char *end, const char **item, size_t *len) {
  if (*s > end) return 0;
  const char *c = memchr(*s, ',', (size_t)(end - *s));
  *item = *s;
  *len = (size_t)((c ? c : end) - *s);
  *s = c ? c + 1 : end + 1;
  return 1;
}

/* Growable int32/float arrays for the lists whose sizes are known only after parsing. */
struct vec {
  void *p;
  size_t n, cap, item;
};

static int vec_push(struct vec *v, const void *x) {
  if (v->n == v->cap) {
    size_t cap = v->cap ? v->cap * 2 : 1024;
    void *np = realloc(v->p, cap * v->item);
    if (!np) return 0;
    v->p = np;
    v->cap = cap;
  }
  memcpy((char *)v->p + v->n * v->item, x, v->item);
  v->n++;
  return 1;
}

static int check_manifest(vt_catalog *c, const cJSON *m, const vt_bundle *b, const char *mpath,
                          long long *n_products, vt_err *err) {
  char repr[256];
  const cJSON *rs = vt_json_get(m, "regions"), *r;
  int ok = cJSON_IsArray(rs) && cJSON_GetArraySize(rs) == b->n_regions, i = 0;
  if (ok)
    cJSON_ArrayForEach(r, rs) {
      if (!cJSON_IsString(r) || strcmp(r->valuestring, b->regions[i].name) != 0) ok = 0;
      i++;
    }
  if (!ok)
    return vt_fail(err, VT_EFORMAT, "%s: regions %s do not match the bundle's", mpath,
                   json_repr(repr, sizeof repr, rs));
  const cJSON *nk = vt_json_get(m, "n_keywords");
  if (!json_is(nk, b->keywords.n))
    return vt_fail(err, VT_EFORMAT, "%s: n_keywords %s, the bundle has %d keywords", mpath,
                   json_repr(repr, sizeof repr, nk), b->keywords.n);
  const cJSON *ks = vt_json_get(m, "keywords_sha256");
  if (!cJSON_IsString(ks) || strcmp(ks->valuestring, b->keywords_sha256) != 0)
    return vt_fail(err, VT_EFORMAT, "%s: keywords_sha256 does not match the bundle's keywords.tsv",
                   mpath);
  const cJSON *mv = vt_json_get(m, "model_version");
  if (!cJSON_IsString(mv) || strcmp(mv->valuestring, b->model_version) != 0)
    return vt_fail(err, VT_EFORMAT, "%s: embeddings were made by model %s, the bundle is %s",
                   mpath, cJSON_IsString(mv) ? mv->valuestring : json_repr(repr, sizeof repr, mv),
                   b->model_version);
  const struct {
    const char *name;
    int want;
  } dims[] = {{"code_levels", b->cfg.code_levels},
              {"codebook", b->cfg.codebook},
              {"d_retrieval", b->cfg.d_retrieval}};
  for (size_t k = 0; k < sizeof dims / sizeof dims[0]; k++) {
    const cJSON *j = vt_json_get(m, dims[k].name);
    if (!json_is(j, dims[k].want))
      return vt_fail(err, VT_EFORMAT, "%s: %s %s, the bundle's config says %d", mpath,
                     dims[k].name, json_repr(repr, sizeof repr, j), dims[k].want);
  }
  const cJSON *cv = vt_json_get(m, "catalog_version");
  if (!cJSON_IsString(cv))
    return vt_fail(err, VT_EFORMAT, "%s: catalog_version is not a string", mpath);
  const cJSON *np = vt_json_get(m, "n_products");
  if (!cJSON_IsNumber(np) || np->valuedouble != floor(np->valuedouble) || np->valuedouble < 0 ||
      np->valuedouble > INT32_MAX)
    return vt_fail(err, VT_EFORMAT, "%s: n_products %s is not a count", mpath,
                   json_repr(repr, sizeof repr, np));
  *n_products = (long long)np->valuedouble;
  c->model_version = strdup(mv->valuestring);
  c->catalog_version = strdup(cv->valuestring);
  if (!c->model_version || !c->catalog_version)
    return vt_fail(err, VT_ENOMEM, "%s: out of memory", mpath);
  return 0;
}

/* Per-product keyword lists, kept until the keyword -> products index is built. */
struct parsed {
  struct vec kw;    /* int32: product p's keywords are kw[kw_off[p] ..] */
  int32_t *kw_off;  /* (P + 1) */
  int32_t *kw_seen; /* (n_keywords): last product that listed the keyword, for duplicates */
  struct vec rel_idx, rel_w;
};

#define LINE_FAIL(...)                                         \
  do {                                                         \
    char why_[256];                                            \
    snprintf(why_, sizeof why_, __VA_ARGS__);                  \
    return vt_fail(err, VT_EFORMAT, "%s:%d: %s", path, ln, why_); \
  } while (0)

static int parse_line(vt_catalog *c, struct parsed *ps, const vt_bundle *b, char *line, int n,
                      const char *path, vt_err *err) {
  const int ln = n + 2, P = c->n_products, n_kw = b->keywords.n, L = b->cfg.code_levels,
            K = b->cfg.codebook;
  char *f[N_FIELDS], *s = line, want[16];
  const char *it, *end;
  size_t len;
  long long v;
  int nf = 0;

  for (;;) {
    char *tab = strchr(s, '\t');
    if (nf < N_FIELDS) f[nf] = s;
    nf++;
    if (!tab) break;
    *tab = '\0';
    s = tab + 1;
  }
  snprintf(want, sizeof want, "%d", n);
  if (nf != N_FIELDS || strcmp(f[0], want) != 0)
    LINE_FAIL("expected %d fields starting with index %d", N_FIELDS, n);

  /* keywords (empty items skipped, as Python's `if x`), then codes (none skipped) */
  const char *kw = f[5], *kw_end = f[5] + strlen(f[5]);
  size_t kw_first = ps->kw.n;
  while (next_item(&kw, kw_end, &it, &len)) {
    if (!len) continue;
    if (!parse_int(it, len, INT32_MIN, INT32_MAX, &v)) LINE_FAIL("bad keyword id '%.*s'", (int)len, it);
    int32_t k = (int32_t)v;
    if (!vec_push(&ps->kw, &k)) return vt_fail(err, VT_ENOMEM, "%s: out of memory", path);
  }
  int32_t codes[VT_MAX_LEVELS];
  int nc = 0, codes_ok = 1;
  const char *cs = f[6];
  end = f[6] + strlen(f[6]);
  while (next_item(&cs, end, &it, &len)) {
    if (!parse_int(it, len, INT32_MIN, INT32_MAX, &v)) LINE_FAIL("bad code '%.*s'", (int)len, it);
    if (nc < L) codes[nc] = (int32_t)v;
    if (v < 0 || v >= K) codes_ok = 0;
    nc++;
  }
  const int32_t *kws = (const int32_t *)ps->kw.p + kw_first;
  size_t nkw = ps->kw.n - kw_first;
  for (size_t i = 0; i < nkw; i++)
    if (kws[i] < 0 || kws[i] >= n_kw) LINE_FAIL("keyword id %d out of range", (int)kws[i]);
  if (nc != L || !codes_ok) LINE_FAIL("codes must be %d ints in 0..%d", L, K - 1);
  /* a keyword listed twice would list the product twice in its index; lists stay strictly
   * ascending instead */
  for (size_t i = 0; i < nkw; i++) {
    if (ps->kw_seen[kws[i]] == n) LINE_FAIL("keyword id %d listed twice", (int)kws[i]);
    ps->kw_seen[kws[i]] = n;
  }
  ps->kw_off[n + 1] = (int32_t)ps->kw.n;
  memcpy(&c->codes[(size_t)n * (size_t)L], codes, (size_t)L * sizeof *codes);

  uint32_t regions = 0;
  const char *rs = f[3];
  end = f[3] + strlen(f[3]);
  while (next_item(&rs, end, &it, &len)) {
    if (!len) continue;
    int r;
    for (r = 0; r < b->n_regions; r++)
      if (strlen(b->regions[r].name) == len && memcmp(b->regions[r].name, it, len) == 0) break;
    if (r == b->n_regions) LINE_FAIL("unknown region '%.*s'", (int)len, it);
    regions |= 1u << r;
  }
  c->regions[n] = regions;

  uint8_t seasons = 0;
  const char *ss = f[4];
  end = f[4] + strlen(f[4]);
  while (next_item(&ss, end, &it, &len)) {
    if (!len) continue;
    int k;
    for (k = 0; k < 4; k++)
      if (strlen(season_names[k]) == len && memcmp(season_names[k], it, len) == 0) break;
    if (k == 4) LINE_FAIL("unknown season '%.*s'", (int)len, it);
    seasons |= (uint8_t)(1u << k);
  }
  c->seasons[n] = seasons;

  if (!parse_int(f[2], strlen(f[2]), INT32_MIN, INT32_MAX, &v)) LINE_FAIL("bad stock '%s'", f[2]);
  c->stock[n] = (int32_t)v;
  if (!parse_int(f[7], strlen(f[7]), INT32_MIN, INT32_MAX, &v))
    LINE_FAIL("bad popularity '%s'", f[7]);
  if (v < 0) LINE_FAIL("popularity must be >= 0");
  c->popularity[n] = (int32_t)v;

  const char *rl = f[8];
  end = f[8] + strlen(f[8]);
  while (next_item(&rl, end, &it, &len)) {
    if (!len) continue;
    const char *colon = memchr(it, ':', len);
    float w;
    if (!colon || memchr(colon + 1, ':', len - (size_t)(colon + 1 - it)) ||
        !parse_int(it, (size_t)(colon - it), INT32_MIN, INT32_MAX, &v) ||
        !parse_weight(colon + 1, len - (size_t)(colon + 1 - it), &w))
      LINE_FAIL("bad related entry '%.*s'", (int)len, it);
    if (v < 0 || v >= P || !isfinite(w)) LINE_FAIL("related entry '%.*s' out of range", (int)len, it);
    int32_t idx = (int32_t)v;
    if (!vec_push(&ps->rel_idx, &idx) || !vec_push(&ps->rel_w, &w))
      return vt_fail(err, VT_ENOMEM, "%s: out of memory", path);
  }
  c->rel_off[n + 1] = (int32_t)ps->rel_idx.n;

  c->ids[n] = strdup(f[1]);
  c->titles[n] = strdup(f[9]);
  if (!c->ids[n] || !c->titles[n]) return vt_fail(err, VT_ENOMEM, "%s: out of memory", path);
  return 0;
}
#undef LINE_FAIL

static int load_products(vt_catalog *c, struct parsed *ps, const vt_bundle *b, const char *path,
                         vt_err *err) {
  vt_lines l;
  int rc;
  if ((rc = vt_lines_read(&l, path, err)) != 0) return rc;
  if (l.n < 1 || strcmp(l.line[0], products_header) != 0) {
    rc = vt_fail(err, VT_EFORMAT, "%s: missing or wrong header line", path);
    goto fail;
  }
  int P = l.n - 1, L = b->cfg.code_levels;
  c->n_products = P;
  c->ids = calloc((size_t)P + 1, sizeof *c->ids);
  c->titles = calloc((size_t)P + 1, sizeof *c->titles);
  c->stock = calloc((size_t)P + 1, sizeof *c->stock);
  c->regions = calloc((size_t)P + 1, sizeof *c->regions);
  c->seasons = calloc((size_t)P + 1, sizeof *c->seasons);
  c->codes = calloc((size_t)P * (size_t)L + 1, sizeof *c->codes);
  c->popularity = calloc((size_t)P + 1, sizeof *c->popularity);
  c->rel_off = calloc((size_t)P + 1, sizeof *c->rel_off);
  ps->kw_off = calloc((size_t)P + 1, sizeof *ps->kw_off);
  ps->kw_seen = malloc(((size_t)b->keywords.n + 1) * sizeof *ps->kw_seen);
  if (!c->ids || !c->titles || !c->stock || !c->regions || !c->seasons || !c->codes ||
      !c->popularity || !c->rel_off || !ps->kw_off || !ps->kw_seen) {
    rc = vt_fail(err, VT_ENOMEM, "%s: out of memory", path);
    goto fail;
  }
  for (int k = 0; k < b->keywords.n; k++) ps->kw_seen[k] = -1;
  for (int n = 0; n < P; n++)
    if ((rc = parse_line(c, ps, b, l.line[n + 1], n, path, err)) != 0) goto fail;
  rc = 0;
fail:
  vt_lines_free(&l);
  return rc;
}

/* Inverts the per-product keyword lists; products are visited in index order, so each keyword's
 * list comes out ascending. */
static int build_keyword_index(vt_catalog *c, const struct parsed *ps, int n_kw, const char *path,
                               vt_err *err) {
  const int32_t *kw = ps->kw.p;
  c->kw_off = calloc((size_t)n_kw + 1, sizeof *c->kw_off);
  c->kw_prod = malloc((ps->kw.n + 1) * sizeof *c->kw_prod);
  int32_t *fill = calloc((size_t)n_kw + 1, sizeof *fill);
  if (!c->kw_off || !c->kw_prod || !fill) {
    free(fill);
    return vt_fail(err, VT_ENOMEM, "%s: out of memory", path);
  }
  for (size_t i = 0; i < ps->kw.n; i++) c->kw_off[kw[i] + 1]++;
  for (int k = 0; k < n_kw; k++) c->kw_off[k + 1] += c->kw_off[k];
  for (int p = 0; p < c->n_products; p++)
    for (int32_t i = ps->kw_off[p]; i < ps->kw_off[p + 1]; i++)
      c->kw_prod[c->kw_off[kw[i]] + fill[kw[i]]++] = p;
  free(fill);
  return 0;
}

static uint32_t hash_bytes(const char *s, size_t n) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
  return h;
}

static int build_id_hash(vt_catalog *c, const char *path, vt_err *err) {
  int size = 8;
  while (size < 2 * c->n_products) size *= 2; /* at most half full */
  if (!(c->id_hash = malloc((size_t)size * sizeof *c->id_hash)))
    return vt_fail(err, VT_ENOMEM, "%s: out of memory", path);
  c->id_hash_size = size;
  memset(c->id_hash, 0xff, (size_t)size * sizeof *c->id_hash);
  for (int p = 0; p < c->n_products; p++) {
    size_t len = strlen(c->ids[p]);
    int prev = vt_catalog_find(c, c->ids[p], len);
    if (prev >= 0)
      return vt_fail(err, VT_EFORMAT, "%s:%d: duplicate product id %s (also on line %d)", path,
                     p + 2, c->ids[p], prev + 2);
    uint32_t h = hash_bytes(c->ids[p], len) & (uint32_t)(size - 1);
    while (c->id_hash[h] >= 0) h = (h + 1) & (uint32_t)(size - 1);
    c->id_hash[h] = p;
  }
  return 0;
}

static int load_embeddings(vt_catalog *c, const char *path, vt_err *err) {
  int rc;
  if ((rc = vt_st_open(&c->st, path, err)) != 0) return rc;
  const vt_tensor *t = vt_st_get(c->st, "product_embeddings");
  if (!t || t->ndim != 2 || t->shape[0] != c->n_products || t->shape[1] != c->d_retrieval)
    return vt_fail(err, VT_EFORMAT, "%s: product_embeddings must be (%d, %d)", path,
                   c->n_products, c->d_retrieval);
  /* in place when the file holds aligned float32 (what the writer makes); the mapping is
   * read-only, so emb must not be written through */
  if (t->dtype == VT_F32 && t->numel > 0 && !((uintptr_t)t->data & (sizeof(float) - 1)))
    c->emb = (float *)(uintptr_t)t->data;
  else if (!(c->emb = vt_tensor_to_f32(t)))
    return vt_fail(err, VT_ENOMEM, "%s: out of memory converting product_embeddings", path);
  for (int64_t i = 0; i < t->numel; i++)
    if (!isfinite(c->emb[i]))
      return vt_fail(err, VT_EFORMAT, "%s: product_embeddings has NaN or Inf values", path);
  return 0;
}

int vt_catalog_load(vt_catalog **out, const char *dir, const vt_bundle *b, vt_err *err) {
  static const char *const required[] = {"products.tsv", "embeddings.safetensors", NULL};
  char mpath[PATH_MAX_LEN], ppath[PATH_MAX_LEN], epath[PATH_MAX_LEN];
  struct parsed ps = {.kw = {.item = sizeof(int32_t)},
                      .rel_idx = {.item = sizeof(int32_t)},
                      .rel_w = {.item = sizeof(float)}};
  vt_catalog *c = NULL;
  cJSON *m = NULL;
  long long n_products = 0;
  int rc;

  *out = NULL;
  if ((rc = vt_path_join(mpath, dir, "manifest.json", err)) != 0 ||
      (rc = vt_path_join(ppath, dir, "products.tsv", err)) != 0 ||
      (rc = vt_path_join(epath, dir, "embeddings.safetensors", err)) != 0)
    goto fail;
  if (!(c = calloc(1, sizeof *c)) || !(c->dir = strdup(dir))) {
    rc = vt_fail(err, VT_ENOMEM, "%s: out of memory", dir);
    goto fail;
  }
  c->d_retrieval = b->cfg.d_retrieval;
  c->code_levels = b->cfg.code_levels;
  if ((rc = vt_manifest_read(&m, dir, "vitrine-catalog", required, err)) != 0 ||
      (rc = check_manifest(c, m, b, mpath, &n_products, err)) != 0 ||
      (rc = load_products(c, &ps, b, ppath, err)) != 0)
    goto fail;
  if (c->n_products != n_products) {
    rc = vt_fail(err, VT_EFORMAT, "%s: %d products, the manifest says %lld", ppath, c->n_products,
                 n_products);
    goto fail;
  }
  if ((rc = load_embeddings(c, epath, err)) != 0 || (rc = build_id_hash(c, ppath, err)) != 0 ||
      (rc = build_keyword_index(c, &ps, b->keywords.n, ppath, err)) != 0)
    goto fail;
  /* the related lists move from the parse buffers into the catalogue */
  c->rel_idx = ps.rel_idx.p;
  c->rel_w = ps.rel_w.p;
  ps.rel_idx.p = ps.rel_w.p = NULL;
  if (!c->rel_idx) c->rel_idx = malloc(sizeof *c->rel_idx); /* non-NULL even when empty */
  if (!c->rel_w) c->rel_w = malloc(sizeof *c->rel_w);
  if (!(c->log_pop = malloc(((size_t)c->n_products + 1) * sizeof *c->log_pop)) || !c->rel_idx ||
      !c->rel_w) {
    rc = vt_fail(err, VT_ENOMEM, "%s: out of memory", ppath);
    goto fail;
  }
  for (int p = 0; p < c->n_products; p++) c->log_pop[p] = (float)log1p((double)c->popularity[p]);
  vt_rules *rules;
  if ((rc = vt_rules_load(&rules, dir, b, c, err)) != 0)
    goto fail;
  vt_rules_apply(c, rules);
  *out = c;
  c = NULL;
  rc = 0;
fail:
  free(ps.kw.p);
  free(ps.kw_off);
  free(ps.kw_seen);
  free(ps.rel_idx.p);
  free(ps.rel_w.p);
  cJSON_Delete(m);
  vt_catalog_free(c);
  return rc;
}

void vt_catalog_free(vt_catalog *c) {
  if (!c) return;
  if (c->ids)
    for (int p = 0; p < c->n_products; p++) free(c->ids[p]);
  if (c->titles)
    for (int p = 0; p < c->n_products; p++) free(c->titles[p]);
  free(c->ids);
  free(c->titles);
  free(c->dir);
  free(c->catalog_version);
  free(c->model_version);
  free(c->stock);
  free(c->regions);
  free(c->seasons);
  free(c->codes);
  free(c->popularity);
  free(c->log_pop);
  free(c->kw_off);
  free(c->kw_prod);
  free(c->rel_off);
  free(c->rel_idx);
  free(c->rel_w);
  /* emb is either a converted copy or a view of the mapping */
  const char *map = c->st ? c->st->map : NULL;
  if (!(map && (const char *)c->emb >= map && (const char *)c->emb <= map + c->st->size))
    free(c->emb);
  free(c->id_hash);
  vt_st_close(c->st);
  vt_rules_free(c->rules);
  free(c);
}

int vt_catalog_find(const vt_catalog *c, const char *id, size_t len) {
  if (!c->id_hash) return -1;
  uint32_t mask = (uint32_t)c->id_hash_size - 1;
  for (uint32_t h = hash_bytes(id, len) & mask;; h = (h + 1) & mask) {
    int p = c->id_hash[h];
    if (p < 0) return -1;
    /* by length first: id is len bytes, not a C string */
    if (strlen(c->ids[p]) == len && memcmp(c->ids[p], id, len) == 0) return p;
  }
}
