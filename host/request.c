/* Request parsing and validation, storefront JSON. Mirrors train/data.py (validate_request,
 * featurize_one's tokenisation) so both engines refuse and accept the same requests. */
#include "request.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

static const char *const ACTIONS[VT_N_ACTIONS] = {"view", "search", "cart", "purchase"};

/* An integral JSON number within [lo, hi] (cJSON keeps numbers as doubles; |v| < 2^53 exact). */
static int get_int(const cJSON *o, const char *key, int64_t lo, int64_t hi, int64_t *out) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!cJSON_IsNumber(v))
    return -1;
  double d = v->valuedouble;
  if (!isfinite(d) || d != floor(d) || d < (double)lo || d > (double)hi)
    return -1;
  *out = (int64_t)d;
  return 0;
}

/* Python's str.lower().split() on ASCII, then vocabulary lookup: up to max tokens. */
static int tokenize(const vt_bundle *b, const char *s, int32_t *out, int max) {
  char word[256];
  int n = 0;
  while (*s && n < max) {
    while (*s && isspace((unsigned char)*s))
      s++;
    if (!*s)
      break;
    size_t len = 0;
    int too_long = 0;
    while (*s && !isspace((unsigned char)*s)) {
      if (len < sizeof word)
        word[len++] = (char)tolower((unsigned char)*s);
      else
        too_long = 1;
      s++;
    }
    out[n++] = too_long ? VT_TOK_UNK : vt_vocab_lookup(b, word, len);
  }
  return n;
}

static int cmp_event_pos(const void *a, const void *b, void *ctx) {
  const vt_event *ev = ctx;
  int i = *(const int *)a, j = *(const int *)b;
  if (ev[i].ts != ev[j].ts)
    return ev[i].ts < ev[j].ts ? -1 : 1;
  return (i > j) - (i < j);
}

int vt_request_parse(vt_request *r, const char *json, size_t len, const vt_bundle *b,
                     const vt_catalog *c, vt_err *err) {
  memset(r, 0, sizeof *r);
  int rc = VT_EINVAL;
  vt_event *all = NULL;
  int *order = NULL;
  cJSON *root = cJSON_ParseWithLength(json, len);
  if (!root) {
    rc = vt_fail(err, VT_EINVAL, "request is not valid JSON");
    goto fail;
  }
  if (!cJSON_IsObject(root)) {
    rc = vt_fail(err, VT_EINVAL, "request must be an object");
    goto fail;
  }
  int64_t v;
  if (get_int(root, "now", 0, INT64_C(1) << 53, &v)) {
    rc = vt_fail(err, VT_EINVAL, "now must be a Unix time in seconds >= 0");
    goto fail;
  }
  r->now = v;
  const cJSON *reg = cJSON_GetObjectItemCaseSensitive(root, "region");
  r->region = -1;
  for (int i = 0; cJSON_IsString(reg) && i < b->n_regions; i++)
    if (strcmp(reg->valuestring, b->regions[i].name) == 0)
      r->region = i;
  if (r->region < 0) {
    rc = vt_fail(err, VT_EINVAL, "unknown region %s%.64s%s", cJSON_IsString(reg) ? "'" : "",
                 cJSON_IsString(reg) ? reg->valuestring : "(missing or not a string)",
                 cJSON_IsString(reg) ? "'" : "");
    goto fail;
  }
  struct {
    const char *key;
    int lim, *dst;
  } counts[] = {{"sections", b->max_sections, &r->sections},
                {"keywords_per_section", b->max_keywords_per_section, &r->keywords_per_section},
                {"products_per_section", b->max_products_per_section, &r->products_per_section}};
  for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
    if (get_int(root, counts[i].key, 1, counts[i].lim, &v)) {
      rc = vt_fail(err, VT_EINVAL, "%s must be an integer in 1..%d", counts[i].key, counts[i].lim);
      goto fail;
    }
    *counts[i].dst = (int)v;
  }
  if (r->sections > b->themes.n) {
    rc = vt_fail(err, VT_EINVAL, "sections must be at most %d (the number of themes)",
                 b->themes.n);
    goto fail;
  }
  const cJSON *sid = cJSON_GetObjectItemCaseSensitive(root, "shopper_id");
  r->shopper_id = strdup(cJSON_IsString(sid) ? sid->valuestring : "");
  if (!r->shopper_id) {
    rc = vt_fail(err, VT_ENOMEM, "out of memory");
    goto fail;
  }
  const cJSON *events = cJSON_GetObjectItemCaseSensitive(root, "events");
  int n_all = 0;
  if (events && !cJSON_IsArray(events)) {
    rc = vt_fail(err, VT_EINVAL, "events must be a list");
    goto fail;
  }
  n_all = cJSON_GetArraySize(events);
  all = calloc(n_all ? (size_t)n_all : 1, sizeof *all);
  if (!all) {
    rc = vt_fail(err, VT_ENOMEM, "out of memory for %d events", n_all);
    goto fail;
  }
  int i = 0;
  const cJSON *e;
  cJSON_ArrayForEach(e, events) {
    vt_event *ev = &all[i];
    if (!cJSON_IsObject(e)) {
      rc = vt_fail(err, VT_EINVAL, "events[%d] must be an object", i);
      goto fail;
    }
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(e, "action");
    ev->action = -1;
    for (int a = 0; cJSON_IsString(act) && a < VT_N_ACTIONS; a++)
      if (strcmp(act->valuestring, ACTIONS[a]) == 0)
        ev->action = a;
    if (ev->action < 0) {
      rc = vt_fail(err, VT_EINVAL, "events[%d].action must be one of view, search, cart, purchase",
                   i);
      goto fail;
    }
    if (get_int(e, "ts", 0, INT64_C(1) << 53, &v)) {
      rc = vt_fail(err, VT_EINVAL, "events[%d].ts must be a Unix time in seconds >= 0", i);
      goto fail;
    }
    ev->ts = v;
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(e, "query");
    if (q && !cJSON_IsNull(q)) {
      if (!cJSON_IsString(q) || strlen(q->valuestring) > (size_t)b->max_query_bytes) {
        rc = vt_fail(err, VT_EINVAL, "events[%d].query must be a string of at most %d bytes", i,
                     b->max_query_bytes);
        goto fail;
      }
      int mq = b->cfg.max_query_tokens < VT_MAX_QUERY_TOKENS ? b->cfg.max_query_tokens
                                                              : VT_MAX_QUERY_TOKENS;
      ev->n_query = tokenize(b, q->valuestring, ev->query, mq);
    }
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(e, "item");
    ev->item = VT_ITEM_NONE;
    if (it && !cJSON_IsNull(it)) {
      if (!cJSON_IsString(it)) {
        rc = vt_fail(err, VT_EINVAL, "events[%d].item must be a string", i);
        goto fail;
      }
      int p = vt_catalog_find(c, it->valuestring, strlen(it->valuestring));
      ev->item = p >= 0 ? p : VT_ITEM_UNKNOWN;
    }
    i++;
  }
  /* stable sort by ts: order positions by (ts, position) */
  order = malloc((n_all ? (size_t)n_all : 1) * sizeof *order);
  if (!order) {
    rc = vt_fail(err, VT_ENOMEM, "out of memory for %d events", n_all);
    goto fail;
  }
  for (int k = 0; k < n_all; k++)
    order[k] = k;
  qsort_r(order, (size_t)n_all, sizeof *order, cmp_event_pos, all);
  int keep = n_all < b->cfg.max_events ? n_all : b->cfg.max_events;
  r->dropped = n_all - keep;
  r->n_events = keep;
  r->events = malloc((keep ? (size_t)keep : 1) * sizeof *r->events);
  if (!r->events) {
    rc = vt_fail(err, VT_ENOMEM, "out of memory");
    goto fail;
  }
  for (int k = 0; k < keep; k++)
    r->events[k] = all[order[r->dropped + k]];
  const cJSON *ex = cJSON_GetObjectItemCaseSensitive(root, "exclude");
  if (ex && !cJSON_IsArray(ex)) {
    rc = vt_fail(err, VT_EINVAL, "exclude must be a list of product ids");
    goto fail;
  }
  int n_ex = cJSON_GetArraySize(ex);
  r->exclude = malloc((n_ex ? (size_t)n_ex : 1) * sizeof *r->exclude);
  if (!r->exclude) {
    rc = vt_fail(err, VT_ENOMEM, "out of memory");
    goto fail;
  }
  int k = 0;
  cJSON_ArrayForEach(e, ex) {
    if (!cJSON_IsString(e)) {
      rc = vt_fail(err, VT_EINVAL, "exclude[%d] must be a string", k);
      goto fail;
    }
    int p = vt_catalog_find(c, e->valuestring, strlen(e->valuestring));
    if (p >= 0)
      r->exclude[r->n_exclude++] = p;
    k++;
  }
  free(all);
  free(order);
  cJSON_Delete(root);
  return VT_OK;
fail:
  free(all);
  free(order);
  cJSON_Delete(root);
  vt_request_free(r);
  return rc;
}

void vt_request_free(vt_request *r) {
  free(r->shopper_id);
  free(r->events);
  free(r->exclude);
  memset(r, 0, sizeof *r);
}

static cJSON *phrase_json(int id, const char *text, float score) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddNumberToObject(o, "id", id);
  cJSON_AddStringToObject(o, "text", text);
  cJSON_AddNumberToObject(o, "score", score);
  return o;
}

char *vt_storefront_json(const vt_storefront *s, const vt_bundle *b, const vt_catalog *c,
                         int pretty) {
  cJSON *root = cJSON_CreateObject();
  cJSON *secs = cJSON_AddArrayToObject(root, "sections");
  for (int i = 0; i < s->n_sections; i++) {
    const vt_section *sec = &s->sections[i];
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "theme",
                          phrase_json(sec->theme, b->themes.text[sec->theme], sec->theme_score));
    cJSON *kws = cJSON_AddArrayToObject(o, "keywords");
    for (int k = 0; k < sec->n_keywords; k++)
      cJSON_AddItemToArray(kws, phrase_json(sec->keyword[k], b->keywords.text[sec->keyword[k]],
                                            sec->keyword_score[k]));
    cJSON *ps = cJSON_AddArrayToObject(o, "products");
    for (int k = 0; k < sec->n_products; k++) {
      const vt_hit *h = &sec->products[k];
      cJSON *p = cJSON_CreateObject();
      cJSON_AddStringToObject(p, "id", c->ids[h->product]);
      cJSON_AddNumberToObject(p, "index", h->product);
      cJSON_AddNumberToObject(p, "score", h->score);
      cJSON_AddNumberToObject(p, "keyword", h->keyword);
      cJSON_AddItemToArray(ps, p);
    }
    cJSON_AddItemToArray(secs, o);
  }
  cJSON_AddNumberToObject(root, "dropped_events", s->dropped_events);
  char *out = pretty ? cJSON_Print(root) : cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  return out;
}
