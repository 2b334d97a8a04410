/* JSON request lines -> serialized vitrine.v1.RecommendRequest (see requests.h). The mapping is
 * the one of docs/SERVER.md, the inverse of what serve/server.c builds from a protobuf. */
#include "requests.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "vitrine/v1/storefront.pb-c.h"

static const char *const ACTIONS[] = {"view", "search", "cart", "purchase"};
static const Vitrine__V1__Action ACTION_ENUM[] = {
    VITRINE__V1__ACTION__ACTION_VIEW, VITRINE__V1__ACTION__ACTION_SEARCH,
    VITRINE__V1__ACTION__ACTION_CART, VITRINE__V1__ACTION__ACTION_PURCHASE};

static int failf(char *err, size_t cap, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, cap, fmt, ap);
  va_end(ap);
  return -1;
}

/* An integral JSON number within [lo, hi] into *out; -1 when absent, not a number, not integral
 * or out of range. (cJSON keeps numbers as doubles: integers up to 2^53 are exact.) */
static int json_int(const cJSON *o, const char *key, double lo, double hi, int64_t *out) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!cJSON_IsNumber(v))
    return -1;
  double d = v->valuedouble;
  if (!isfinite(d) || d != floor(d) || d < lo || d > hi)
    return -1;
  *out = (int64_t)d;
  return 0;
}

/* Everything one line's protobuf points into; freed after packing. */
typedef struct line_msg {
  Vitrine__V1__RecommendRequest req;
  Vitrine__V1__Event *ev;   /* (n_events) */
  Vitrine__V1__Event **evp; /* (n_events) */
  char **exclude;           /* (n_exclude), pointers into the cJSON tree */
} line_msg;

/* Fills m from the JSON object root (whose strings it points into). 0, or -1 with err naming
 * the field. */
static int to_proto(line_msg *m, const cJSON *root, char *err, size_t cap) {
  vitrine__v1__recommend_request__init(&m->req);
  if (!cJSON_IsObject(root))
    return failf(err, cap, "the request must be a JSON object");
  int64_t v;
  /* int64 on the wire: any integral time is sent; the server refuses negative ones */
  if (json_int(root, "now", -9007199254740992.0, 9007199254740992.0, &v))
    return failf(err, cap, "now: missing or not an integer (Unix seconds)");
  m->req.now = v;
  const cJSON *region = cJSON_GetObjectItemCaseSensitive(root, "region");
  if (!cJSON_IsString(region))
    return failf(err, cap, "region: missing or not a string");
  m->req.region = region->valuestring;
  /* `vitrine recommend` reads a shopper_id that is not a string as "" */
  const cJSON *sid = cJSON_GetObjectItemCaseSensitive(root, "shopper_id");
  if (cJSON_IsString(sid))
    m->req.shopper_id = sid->valuestring;
  static const char *const counts[] = {"sections", "keywords_per_section",
                                       "products_per_section"};
  int32_t *dst[] = {&m->req.sections, &m->req.keywords_per_section,
                    &m->req.products_per_section};
  for (int i = 0; i < 3; i++) {
    if (json_int(root, counts[i], INT32_MIN, INT32_MAX, &v))
      return failf(err, cap, "%s: missing or not an integer (int32)", counts[i]);
    *dst[i] = (int32_t)v;
  }
  const cJSON *events = cJSON_GetObjectItemCaseSensitive(root, "events");
  if (events && !cJSON_IsArray(events))
    return failf(err, cap, "events must be a list");
  int n_ev = events ? cJSON_GetArraySize(events) : 0;
  m->ev = calloc((size_t)n_ev + 1, sizeof *m->ev);
  m->evp = calloc((size_t)n_ev + 1, sizeof *m->evp);
  if (!m->ev || !m->evp)
    return failf(err, cap, "out of memory for %d events", n_ev);
  int i = 0;
  const cJSON *e;
  cJSON_ArrayForEach(e, events) {
    Vitrine__V1__Event *pe = &m->ev[i];
    vitrine__v1__event__init(pe);
    m->evp[i] = pe;
    if (!cJSON_IsObject(e))
      return failf(err, cap, "events[%d] must be an object", i);
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(e, "action");
    int a = -1;
    for (int k = 0; cJSON_IsString(act) && k < 4; k++)
      if (strcmp(act->valuestring, ACTIONS[k]) == 0)
        a = k;
    if (a < 0)
      return failf(err, cap, "events[%d].action must be one of view, search, cart, purchase", i);
    pe->action = ACTION_ENUM[a];
    if (json_int(e, "ts", -9007199254740992.0, 9007199254740992.0, &v))
      return failf(err, cap, "events[%d].ts: missing or not an integer (Unix seconds)", i);
    pe->ts = v;
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(e, "item");
    if (item && !cJSON_IsNull(item)) {
      if (!cJSON_IsString(item))
        return failf(err, cap, "events[%d].item must be a string or null", i);
      if (!item->valuestring[0])
        return failf(err, cap,
                     "events[%d].item is \"\", which the protobuf form cannot carry (an empty "
                     "item means \"no product\"; use null or leave it out)",
                     i);
      pe->item = item->valuestring;
    }
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(e, "query");
    if (q && !cJSON_IsNull(q)) {
      if (!cJSON_IsString(q))
        return failf(err, cap, "events[%d].query must be a string or null", i);
      pe->query = q->valuestring;
    }
    i++;
  }
  m->req.n_events = (size_t)n_ev;
  m->req.events = m->evp;
  const cJSON *ex = cJSON_GetObjectItemCaseSensitive(root, "exclude");
  if (ex && !cJSON_IsArray(ex))
    return failf(err, cap, "exclude must be a list of product ids");
  int n_ex = ex ? cJSON_GetArraySize(ex) : 0;
  m->exclude = calloc((size_t)n_ex + 1, sizeof *m->exclude);
  if (!m->exclude)
    return failf(err, cap, "out of memory for %d excluded ids", n_ex);
  i = 0;
  cJSON_ArrayForEach(e, ex) {
    if (!cJSON_IsString(e))
      return failf(err, cap, "exclude[%d] must be a string", i);
    m->exclude[i++] = e->valuestring;
  }
  m->req.n_exclude = (size_t)n_ex;
  m->req.exclude = m->exclude;
  return 0;
}

/* Appends one packed message to r. */
static int push(vb_requests *r, int *cap_n, const line_msg *m) {
  if (r->n == *cap_n) {
    int nc = *cap_n ? 2 * *cap_n : 64;
    grpc_slice *p = realloc(r->msg, (size_t)nc * sizeof *p);
    if (!p)
      return -1;
    r->msg = p;
    *cap_n = nc;
  }
  size_t len = protobuf_c_message_get_packed_size(&m->req.base);
  uint8_t *buf = malloc(len ? len : 1);
  if (!buf)
    return -1;
  protobuf_c_message_pack(&m->req.base, buf);
  r->msg[r->n++] = grpc_slice_new(buf, len, free);
  r->bytes += len;
  return 0;
}

int vb_requests_load(vb_requests *out, const char *path, char *err, size_t cap) {
  memset(out, 0, sizeof *out);
  FILE *f = fopen(path, "r");
  if (!f)
    return failf(err, cap, "%s: %s", path, strerror(errno));
  char *line = NULL;
  size_t line_cap = 0;
  ssize_t len;
  long lineno = 0;
  int cap_n = 0, rc = 0;
  while ((len = getline(&line, &line_cap, f)) >= 0) {
    lineno++;
    size_t k = 0;
    while (k < (size_t)len && (line[k] == ' ' || line[k] == '\t' || line[k] == '\r' ||
                               line[k] == '\n'))
      k++;
    if (k == (size_t)len)
      continue; /* blank line */
    char why[512] = "";
    if (memchr(line, 0, (size_t)len)) {
      rc = failf(err, cap, "%s:%ld: the line contains a NUL byte", path, lineno);
      break;
    }
    /* the whole line must be one JSON value (trailing text is refused) */
    cJSON *root = cJSON_ParseWithOpts(line, NULL, 1);
    line_msg m = {0};
    if (!root)
      snprintf(why, sizeof why, "not valid JSON");
    else if (to_proto(&m, root, why, sizeof why) == 0 && push(out, &cap_n, &m))
      snprintf(why, sizeof why, "out of memory");
    free(m.ev);
    free(m.evp);
    free(m.exclude);
    cJSON_Delete(root);
    if (why[0]) {
      rc = failf(err, cap, "%s:%ld: %s", path, lineno, why);
      break;
    }
  }
  if (rc == 0 && ferror(f))
    rc = failf(err, cap, "%s: read error", path);
  if (rc == 0 && out->n == 0)
    rc = failf(err, cap, "%s: no requests (the file has no non-blank line)", path);
  free(line);
  fclose(f);
  if (rc)
    vb_requests_free(out);
  return rc;
}

void vb_requests_free(vb_requests *r) {
  for (int i = 0; i < r->n; i++)
    grpc_slice_unref(r->msg[i]);
  free(r->msg);
  memset(r, 0, sizeof *r);
}
