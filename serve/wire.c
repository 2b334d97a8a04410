/* Requests from the wire (see wire.h). Two passes over a RecommendRequest: the first checks the
 * framing of everything (nested events too), counts the repeated fields and keeps the last value
 * of each scalar; the second writes the JSON form. */
#include "wire.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/text.h"
#include "pbwire.h"
#include "strbuf.h"

static const char *const ACTION_NAMES[] = {NULL, "view", "search", "cart", "purchase"};

/* A JSON string of exactly these bytes: quote, backslash and control characters escaped (a NUL
 * as \u0000), every other byte as it is, so vt_request_parse sees what the client sent. */
static void put_string(vt_strbuf *b, const uint8_t *s, size_t n) {
  vt_strbuf_put(b, "\"", 1);
  size_t run = 0;
  for (size_t i = 0; i < n; i++) {
    uint8_t c = s[i];
    if (c >= 0x20 && c != '"' && c != '\\')
      continue;
    vt_strbuf_put(b, (const char *)s + run, i - run);
    if (c == '"' || c == '\\') {
      char e[2] = {'\\', (char)c};
      vt_strbuf_put(b, e, 2);
    } else {
      vt_strbuf_printf(b, "\\u%04x", c);
    }
    run = i + 1;
  }
  vt_strbuf_put(b, (const char *)s + run, n - run);
  vt_strbuf_put(b, "\"", 1);
}

/* ---- decoding ---- */
typedef struct str {
  const uint8_t *p;
  size_t n;
} str;

typedef struct wire_event {
  str item, query;
  uint64_t action, ts;
} wire_event;

static int malformed(vt_err *err, const char *what, const char *why) {
  return vt_fail(err, VT_EINVAL, "request is not a vitrine.v1.%s: malformed protobuf (%s)", what,
                 why);
}

/* The wire type a known field must have. */
static int want_type(const vt_pb_field *f, int wt, const char *name, const char *what,
                     vt_err *err) {
  if (f->wire_type == wt)
    return 0;
  char why[160];
  snprintf(why, sizeof why, "field %u, %s, sent with wire type %d; it is %s", f->number, name,
           f->wire_type, wt == VT_PB_LEN ? "length-delimited (2)" : "a varint (0)");
  return malformed(err, what, why);
}

/* One Event: framing, types, the last value of each field. */
static int decode_event(const uint8_t *p, size_t n, size_t idx, wire_event *e, vt_err *err) {
  size_t i = 0;
  vt_pb_field f;
  const char *why = NULL;
  int rc;
  char name[48];
  memset(e, 0, sizeof *e);
  while ((rc = vt_pb_read(p, n, &i, &f, &why)) == 1) {
    switch (f.number) {
    case 1:
    case 4:
      snprintf(name, sizeof name, "events[%zu].%s", idx, f.number == 1 ? "item" : "query");
      if (want_type(&f, VT_PB_LEN, name, "RecommendRequest", err))
        return VT_EINVAL;
      *(f.number == 1 ? &e->item : &e->query) = (str){f.data, f.len};
      break;
    case 2:
    case 3:
      snprintf(name, sizeof name, "events[%zu].%s", idx, f.number == 2 ? "action" : "ts");
      if (want_type(&f, VT_PB_VARINT, name, "RecommendRequest", err))
        return VT_EINVAL;
      *(f.number == 2 ? &e->action : &e->ts) = f.value;
      break;
    default:
      break; /* unknown: skipped */
    }
  }
  if (rc < 0) {
    char w[128];
    snprintf(w, sizeof w, "events[%zu]: %s", idx, why);
    return malformed(err, "RecommendRequest", w);
  }
  return VT_OK;
}

int vt_wire_peek_priority(const uint8_t *p, size_t n) {
  size_t i = 0;
  vt_pb_field f;
  int prio = 0;
  while (vt_pb_read(p, n, &i, &f, NULL) == 1)
    if (f.number == 9 && f.wire_type == VT_PB_VARINT)
      prio = (int32_t)(uint32_t)f.value == 1; /* the last one counts, as in a full parse */
  return prio;
}

int vt_wire_recommend(vt_wire_request *out, const uint8_t *p, size_t n,
                      const vt_wire_limits *lim, vt_err *err) {
  memset(out, 0, sizeof *out);
  size_t i = 0, n_ev = 0, n_ex = 0;
  vt_pb_field f;
  const char *why = NULL;
  int rc;
  int has[10] = {0};
  uint64_t num[10] = {0};
  str s[10];
  memset(s, 0, sizeof s);
  static const char *const NAMES[10] = {NULL,       "events",   "now",
                                        "region",   "shopper_id", "sections",
                                        "keywords_per_section", "products_per_section",
                                        "exclude",  "priority"};
  /* pass 1: framing and types of every field, counts, last values */
  while ((rc = vt_pb_read(p, n, &i, &f, &why)) == 1) {
    if (f.number > 9)
      continue; /* unknown: skipped */
    int len_field = f.number == 1 || f.number == 3 || f.number == 4 || f.number == 8;
    if (want_type(&f, len_field ? VT_PB_LEN : VT_PB_VARINT, NAMES[f.number], "RecommendRequest",
                  err))
      return VT_EINVAL;
    has[f.number] = 1;
    if (f.number == 1) {
      wire_event e;
      if (decode_event(f.data, f.len, n_ev, &e, err))
        return VT_EINVAL;
      n_ev++;
    } else if (f.number == 8) {
      n_ex++;
    } else if (len_field) {
      s[f.number] = (str){f.data, f.len};
    } else {
      num[f.number] = f.value;
    }
  }
  if (rc < 0) {
    char w[96];
    snprintf(w, sizeof w, "%s at byte %zu of %zu", why, i, n);
    return malformed(err, "RecommendRequest", w);
  }
  out->shopper = s[4].p;
  out->shopper_len = s[4].n;
  /* what only the wire form can exceed: checked before anything is built */
  if (n_ev > (size_t)lim->max_events)
    return vt_fail(err, VT_EINVAL, "events: %zu events, more than the maximum of %d per request",
                   n_ev, lim->max_events);
  if (n_ex > (size_t)lim->max_events)
    return vt_fail(err, VT_EINVAL, "exclude: %zu ids, more than the maximum of %d per request",
                   n_ex, lim->max_events);
  if (s[4].n > (size_t)lim->max_id_bytes)
    return vt_fail(err, VT_EINVAL, "shopper_id is %zu bytes, more than %d", s[4].n,
                   lim->max_id_bytes);
  if (s[3].n > (size_t)lim->max_id_bytes)
    return vt_fail(err, VT_EINVAL, "region is %zu bytes, more than %d", s[3].n,
                   lim->max_id_bytes);
  int32_t prio = (int32_t)(uint32_t)num[9]; /* an enum is an int32 */
  if (prio != 0 && prio != 1)
    return vt_fail(err, VT_EINVAL,
                   "priority must be PRIORITY_NORMAL (0) or PRIORITY_HIGH (1), not %" PRId32,
                   prio);
  out->priority = prio;

  /* pass 2: the JSON form; proto3's unset (zero, empty) values are left out */
  vt_strbuf b = {0};
  vt_strbuf_put(&b, "{", 1);
  int first = 1;
#define SEP()                                                                                      \
  do {                                                                                             \
    if (!first)                                                                                    \
      vt_strbuf_put(&b, ",", 1);                                                                   \
    first = 0;                                                                                     \
  } while (0)
  if (num[2]) {
    SEP();
    vt_strbuf_printf(&b, "\"now\":%" PRId64, (int64_t)num[2]);
  }
  for (int k = 3; k <= 4; k++)
    if (s[k].n) {
      SEP();
      vt_strbuf_printf(&b, "\"%s\":", NAMES[k]);
      put_string(&b, s[k].p, s[k].n);
    }
  for (int k = 5; k <= 7; k++)
    if ((int32_t)(uint32_t)num[k]) {
      SEP();
      vt_strbuf_printf(&b, "\"%s\":%" PRId32, NAMES[k], (int32_t)(uint32_t)num[k]);
    }
  if (has[1]) {
    SEP();
    vt_strbuf_put(&b, "\"events\":[", 10);
  }
  size_t ev = 0, ex = 0;
  i = 0;
  while (vt_pb_read(p, n, &i, &f, NULL) == 1 && !b.oom) {
    if (f.number != 1)
      continue;
    wire_event e;
    decode_event(f.data, f.len, ev, &e, NULL); /* checked in pass 1 */
    if (e.item.n > (size_t)lim->max_id_bytes) {
      free(b.p);
      return vt_fail(err, VT_EINVAL, "events[%zu].item is %zu bytes, more than %d", ev, e.item.n,
                     lim->max_id_bytes);
    }
    vt_strbuf_put(&b, ev ? ",{" : "{", ev ? 2 : 1);
    int efirst = 1;
    int32_t a = (int32_t)(uint32_t)e.action;
    if (a >= 1 && a <= 4)
      vt_strbuf_printf(&b, "\"action\":\"%s\"", ACTION_NAMES[a]);
    else if (a != 0) /* not an action: refused by vt_request_parse, naming the event */
      vt_strbuf_printf(&b, "\"action\":%" PRId32, a);
    efirst = a == 0;
    if (e.ts) {
      vt_strbuf_printf(&b, "%s\"ts\":%" PRId64, efirst ? "" : ",", (int64_t)e.ts);
      efirst = 0;
    }
    if (e.item.n) {
      vt_strbuf_put(&b, efirst ? "\"item\":" : ",\"item\":", efirst ? 7 : 8);
      put_string(&b, e.item.p, e.item.n);
      efirst = 0;
    }
    if (e.query.n) {
      vt_strbuf_put(&b, efirst ? "\"query\":" : ",\"query\":", efirst ? 8 : 9);
      put_string(&b, e.query.p, e.query.n);
    }
    vt_strbuf_put(&b, "}", 1);
    ev++;
  }
  if (has[1])
    vt_strbuf_put(&b, "]", 1);
  if (has[8]) {
    SEP();
    vt_strbuf_put(&b, "\"exclude\":[", 11);
    i = 0;
    while (vt_pb_read(p, n, &i, &f, NULL) == 1 && !b.oom) {
      if (f.number != 8)
        continue;
      if (f.len > (size_t)lim->max_id_bytes) {
        free(b.p);
        return vt_fail(err, VT_EINVAL, "exclude[%zu] is %zu bytes, more than %d", ex, f.len,
                       lim->max_id_bytes);
      }
      if (ex++)
        vt_strbuf_put(&b, ",", 1);
      put_string(&b, f.data, f.len);
    }
    vt_strbuf_put(&b, "]", 1);
  }
#undef SEP
  vt_strbuf_put(&b, "}", 1);
  if (b.oom) {
    free(b.p);
    return vt_fail(err, VT_ENOMEM, "out of memory for a %zu-byte request", n);
  }
  out->json = b.p;
  out->json_len = b.n;
  return VT_OK;
}

void vt_wire_request_free(vt_wire_request *r) {
  free(r->json);
  memset(r, 0, sizeof *r);
}

int vt_wire_getinfo(const uint8_t *p, size_t n, vt_err *err) {
  size_t i = 0;
  vt_pb_field f;
  const char *why = NULL;
  int rc;
  while ((rc = vt_pb_read(p, n, &i, &f, &why)) == 1) {
  }
  if (rc < 0) {
    char w[96];
    snprintf(w, sizeof w, "%s at byte %zu of %zu", why, i, n);
    return malformed(err, "GetInfoRequest", w);
  }
  return VT_OK;
}

int vt_wire_health(const uint8_t *p, size_t n, const char **service, size_t *len, vt_err *err) {
  size_t i = 0, at;
  vt_pb_field f;
  const char *why = NULL;
  int rc;
  *service = "";
  *len = 0;
  while ((rc = vt_pb_read(p, n, &i, &f, &why)) == 1) {
    if (f.number != 1)
      continue;
    if (f.wire_type != VT_PB_LEN) {
      why = "field 1, service, is not length-delimited";
      rc = -1;
      break;
    }
    *service = (const char *)f.data;
    *len = f.len;
  }
  if (rc < 0) {
    char w[96];
    snprintf(w, sizeof w, "%s at byte %zu of %zu", why, i, n);
    return vt_fail(err, VT_EINVAL,
                   "request is not a grpc.health.v1.HealthCheckRequest: malformed protobuf (%s)",
                   w);
  }
  switch (vt_utf8_check(*service, *len, &at)) {
  case VT_TEXT_NUL:
    return vt_fail(err, VT_EINVAL, "service contains a NUL character (at byte %zu)", at);
  case VT_TEXT_BAD_UTF8:
    return vt_fail(err, VT_EINVAL, "service is not valid UTF-8 (at byte %zu)", at);
  default:
    return VT_OK;
  }
}
