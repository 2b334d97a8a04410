/* Request parsing and validation, storefront JSON. Mirrors train/data.py (validate_request,
 * featurize_one's tokenisation: train/vocab.py's words) so both engines refuse and accept the
 * same requests and read the same tokens. */
#include "request.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "text.h"

static const char *const ACTIONS[VT_N_ACTIONS] = {"view", "search", "cart", "purchase"};

#define MAX_UNIX_S "9007199254740991" /* 2^53 - 1: every integer up to it is exact in a double */
static const double MAX_UNIX = 9007199254740991.0;

/* A count in 1..hi: 0 when it is, else a message naming key. Absent and 0 are one case: a
 * protobuf client cannot send 0 (proto3 leaves it out), so both read as "missing". */
static int get_count(const cJSON *o, const char *key, int hi, int *out, vt_err *err) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!v || cJSON_IsNull(v) || (cJSON_IsNumber(v) && v->valuedouble == 0))
    return vt_fail(err, VT_EINVAL, "%s is missing or 0: it must be an integer in 1..%d", key, hi);
  double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
  if (!isfinite(d) || d != floor(d) || d < 1 || d > hi)
    return vt_fail(err, VT_EINVAL, "%s must be an integer in 1..%d", key, hi);
  *out = (int)d;
  return 0;
}

/* A Unix time in seconds, 1..2^53 - 1, named field: 0 or a message that says what is wrong. */
static int get_time(const cJSON *o, const char *key, const char *field, int64_t *out,
                    vt_err *err) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!v || cJSON_IsNull(v) || (cJSON_IsNumber(v) && v->valuedouble == 0))
    return vt_fail(err, VT_EINVAL,
                   "%s is missing or 0: a Unix time in seconds, 1.." MAX_UNIX_S ", is required",
                   field);
  double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
  if (!isfinite(d) || d != floor(d))
    return vt_fail(err, VT_EINVAL,
                   "%s must be an integer: a Unix time in seconds, 1.." MAX_UNIX_S, field);
  if (d < 0)
    return vt_fail(err, VT_EINVAL,
                   "%s is negative: a Unix time in seconds, 1.." MAX_UNIX_S ", is required", field);
  if (d > MAX_UNIX)
    return vt_fail(err, VT_EINVAL,
                   "%s is above " MAX_UNIX_S " (2^53 - 1), the largest Unix time accepted", field);
  *out = (int64_t)d;
  return 0;
}

/* A string from the request must be UTF-8 without NUL characters (as proto3 strings and JSON
 * text are): 0, or a message naming field. */
static int check_text(const char *s, const char *field, vt_err *err) {
  size_t at;
  switch (vt_utf8_check(s, strlen(s), &at)) {
  case VT_TEXT_NUL:
    return vt_fail(err, VT_EINVAL, "%s contains a NUL character (at byte %zu)", field, at);
  case VT_TEXT_BAD_UTF8:
    return vt_fail(err, VT_EINVAL, "%s is not valid UTF-8 (at byte %zu)", field, at);
  default:
    return 0;
  }
}

/* An object must not have a key twice (cJSON would take the first, Python's json the last). */
static int check_unique_keys(const cJSON *o, const char *what, vt_err *err) {
  for (const cJSON *a = o->child; a; a = a->next)
    for (const cJSON *b2 = a->next; b2; b2 = b2->next)
      if (a->string && b2->string && strcmp(a->string, b2->string) == 0) {
        char k[64];
        vt_text_escape(k, sizeof k, a->string, strlen(a->string));
        return vt_fail(err, VT_EINVAL, "%s has the key '%s' twice", what, k);
      }
  return 0;
}

/* The bundle's regions as "'eu', 'us', ..." (for messages). */
static void region_list(const vt_bundle *b, char *out, size_t cap) {
  size_t n = 0;
  out[0] = 0;
  for (int i = 0; i < b->n_regions && n + 1 < cap; i++) {
    char e[80];
    vt_text_escape(e, sizeof e, b->regions[i].name, strlen(b->regions[i].name));
    int k = snprintf(out + n, cap - n, "%s'%s'", i ? ", " : "", e);
    if (k < 0 || (size_t)k >= cap - n) {
      snprintf(out + (n > cap - 5 ? cap - 5 : n), 5, " ...");
      return;
    }
    n += (size_t)k;
  }
}

/* The JSON text with every NUL character inside a string -- the escape \u0000, which cJSON
 * would turn into a NUL that silently ends the C string -- replaced by C0 80 (the overlong form,
 * which vt_utf8_check reports as a NUL), NUL-terminated. NULL when out of memory; *bad set when
 * the text has a raw control character inside a string or a raw NUL anywhere (not JSON). */
static char *unnul(const char *json, size_t len, size_t *out_len, int *bad) {
  char *o = malloc(len + 1);
  if (!o)
    return NULL;
  size_t n = 0;
  int in_str = 0;
  *bad = 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char ch = (unsigned char)json[i];
    if (ch == 0 || (in_str && ch < 0x20)) {
      *bad = 1;
      break;
    }
    if (in_str && ch == '\\' && i + 1 < len) {
      if (json[i + 1] == 'u' && i + 5 < len && memcmp(json + i + 2, "0000", 4) == 0) {
        o[n++] = (char)0xC0;
        o[n++] = (char)0x80;
        i += 5;
      } else {
        o[n++] = json[i++];
        o[n++] = json[i];
      }
      continue;
    }
    if (ch == '"')
      in_str = !in_str;
    o[n++] = (char)ch;
  }
  o[n] = 0;
  *out_len = n;
  return o;
}

typedef struct tok_ctx {
  const vt_bundle *b;
  int32_t *out;
  int n, max, oom;
} tok_ctx;

static int tok_word(const char *w, size_t len, void *arg) {
  tok_ctx *t = arg;
  char small[256] = {0}, *low = len <= sizeof small ? small : malloc(len);
  if (!low) {
    t->oom = 1;
    return 1;
  }
  for (size_t k = 0; k < len; k++)
    low[k] = w[k] >= 'A' && w[k] <= 'Z' ? (char)(w[k] - 'A' + 'a') : w[k];
  t->out[t->n++] = vt_vocab_lookup(t->b, low, len);
  if (low != small)
    free(low);
  return t->n == t->max;
}

int vt_request_tokenize(const vt_bundle *b, const char *s, size_t n, int32_t *out, int max) {
  tok_ctx t = {b, out, 0, max, 0};
  if (max > 0)
    vt_words(s, n, tok_word, &t);
  return t.oom ? -1 : t.n;
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
  cJSON *root = NULL;
  char field[64];
  size_t tlen;
  int bad;
  char *text = unnul(json, len, &tlen, &bad);
  if (!text) {
    rc = vt_fail(err, VT_ENOMEM, "out of memory");
    goto fail;
  }
  /* the terminating NUL is part of the length: text after the value is refused */
  root = bad ? NULL : cJSON_ParseWithLengthOpts(text, tlen + 1, NULL, 1);
  free(text);
  if (!root) {
    rc = vt_fail(err, VT_EINVAL, "request is not valid JSON");
    goto fail;
  }
  if (!cJSON_IsObject(root)) {
    rc = vt_fail(err, VT_EINVAL, "request must be an object");
    goto fail;
  }
  if (!root->child) {
    rc = vt_fail(err, VT_EINVAL, "empty request: now, region, sections, keywords_per_section "
                                 "and products_per_section are required");
    goto fail;
  }
  if ((rc = check_unique_keys(root, "the request", err)))
    goto fail;
  rc = VT_EINVAL;
  if (get_time(root, "now", "now", &r->now, err))
    goto fail;
  const cJSON *reg = cJSON_GetObjectItemCaseSensitive(root, "region");
  r->region = -1;
  if (reg && !cJSON_IsNull(reg) && !cJSON_IsString(reg)) {
    rc = vt_fail(err, VT_EINVAL, "region must be a string");
    goto fail;
  }
  if (cJSON_IsString(reg) && check_text(reg->valuestring, "region", err))
    goto fail;
  for (int i = 0; cJSON_IsString(reg) && i < b->n_regions; i++)
    if (strcmp(reg->valuestring, b->regions[i].name) == 0)
      r->region = i;
  if (r->region < 0) {
    char list[256], name[128];
    region_list(b, list, sizeof list);
    if (!cJSON_IsString(reg) || !reg->valuestring[0]) {
      rc = vt_fail(err, VT_EINVAL, "region is missing: one of %s", list);
    } else {
      vt_text_escape(name, sizeof name, reg->valuestring, strlen(reg->valuestring));
      rc = vt_fail(err, VT_EINVAL, "unknown region '%s': one of %s", name, list);
    }
    goto fail;
  }
  if (get_count(root, "sections", b->max_sections, &r->sections, err) ||
      get_count(root, "keywords_per_section", b->max_keywords_per_section,
                &r->keywords_per_section, err) ||
      get_count(root, "products_per_section", b->max_products_per_section,
                &r->products_per_section, err))
    goto fail;
  if (r->sections > b->themes.n) {
    rc = vt_fail(err, VT_EINVAL, "sections must be at most %d (the number of themes)",
                 b->themes.n);
    goto fail;
  }
  const cJSON *sid = cJSON_GetObjectItemCaseSensitive(root, "shopper_id");
  if (sid && !cJSON_IsNull(sid) && !cJSON_IsString(sid)) {
    rc = vt_fail(err, VT_EINVAL, "shopper_id must be a string");
    goto fail;
  }
  if (cJSON_IsString(sid) && check_text(sid->valuestring, "shopper_id", err))
    goto fail;
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
  n_all = cJSON_IsArray(events) ? cJSON_GetArraySize(events) : 0;
  all = calloc(n_all ? (size_t)n_all : 1, sizeof *all);
  if (!all) {
    rc = vt_fail(err, VT_ENOMEM, "out of memory for %d events", n_all);
    goto fail;
  }
  int i = 0;
  const cJSON *e, *ev_list = cJSON_IsArray(events) ? events : NULL;
  cJSON_ArrayForEach(e, ev_list) {
    vt_event *ev = &all[i];
    if (!cJSON_IsObject(e)) {
      rc = vt_fail(err, VT_EINVAL, "events[%d] must be an object", i);
      goto fail;
    }
    snprintf(field, sizeof field, "events[%d]", i);
    if ((rc = check_unique_keys(e, field, err)))
      goto fail;
    rc = VT_EINVAL;
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(e, "action");
    ev->action = -1;
    for (int a = 0; cJSON_IsString(act) && a < VT_N_ACTIONS; a++)
      if (strcmp(act->valuestring, ACTIONS[a]) == 0)
        ev->action = a;
    if (ev->action < 0) {
      rc = vt_fail(err, VT_EINVAL, "events[%d].action %s one of view, search, cart, purchase",
                   i, !act || cJSON_IsNull(act) ? "is missing: it must be" : "must be");
      goto fail;
    }
    snprintf(field, sizeof field, "events[%d].ts", i);
    if (get_time(e, "ts", field, &ev->ts, err))
      goto fail;
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(e, "query");
    if (q && !cJSON_IsNull(q)) {
      if (!cJSON_IsString(q) || strlen(q->valuestring) > (size_t)b->max_query_bytes) {
        rc = vt_fail(err, VT_EINVAL, "events[%d].query must be a string of at most %d bytes", i,
                     b->max_query_bytes);
        goto fail;
      }
      snprintf(field, sizeof field, "events[%d].query", i);
      if (check_text(q->valuestring, field, err))
        goto fail;
      int mq = b->cfg.max_query_tokens < VT_MAX_QUERY_TOKENS ? b->cfg.max_query_tokens
                                                              : VT_MAX_QUERY_TOKENS;
      ev->n_query = vt_request_tokenize(b, q->valuestring, strlen(q->valuestring), ev->query, mq);
      if (ev->n_query < 0) {
        rc = vt_fail(err, VT_ENOMEM, "out of memory");
        goto fail;
      }
    }
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(e, "item");
    ev->item = VT_ITEM_NONE;
    if (it && !cJSON_IsNull(it)) {
      if (!cJSON_IsString(it)) {
        rc = vt_fail(err, VT_EINVAL, "events[%d].item must be a string", i);
        goto fail;
      }
      snprintf(field, sizeof field, "events[%d].item", i);
      if (check_text(it->valuestring, field, err))
        goto fail;
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
  int n_ex = cJSON_IsArray(ex) ? cJSON_GetArraySize(ex) : 0;
  r->exclude = malloc((n_ex ? (size_t)n_ex : 1) * sizeof *r->exclude);
  if (!r->exclude) {
    rc = vt_fail(err, VT_ENOMEM, "out of memory");
    goto fail;
  }
  int k = 0;
  const cJSON *ex_list = cJSON_IsArray(ex) ? ex : NULL;
  cJSON_ArrayForEach(e, ex_list) {
    if (!cJSON_IsString(e)) {
      rc = vt_fail(err, VT_EINVAL, "exclude[%d] must be a string", k);
      goto fail;
    }
    snprintf(field, sizeof field, "exclude[%d]", k);
    if (check_text(e->valuestring, field, err))
      goto fail;
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
