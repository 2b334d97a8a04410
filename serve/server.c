/* The gRPC server on the C core (see server.h). */
#include "server.h"

#include <ctype.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/log.h>
#include <grpc/support/time.h>
#include <zlib.h>

#include "grpc/health/v1/health.pb-c.h"
#include "vitrine/v1/storefront.pb-c.h"

#include "engine/rules.h"
#include "engine/text.h"
#include "wire.h"

#define MAX_ID_BYTES 256 /* shopper, product ids and region */
#define CONTAINER(p, T, m) ((T *)(void *)((char *)(p) - offsetof(T, m)))

/* ---- logging ---- */
static int g_log_json;
static pthread_mutex_t g_log_mu = PTHREAD_MUTEX_INITIALIZER;

void vt_log_init(int json) { g_log_json = json; }

static int is_number(const char *s) {
  if (!*s)
    return 0;
  char *end;
  strtod(s, &end);
  return *end == 0 && !isspace((unsigned char)s[0]) && strcmp(s, "nan") && strcmp(s, "inf");
}

/* Keys whose values are numbers in JSON logs (ids that look like numbers stay strings). */
static int numeric_key(const char *k) {
  static const char *const keys[] = {"grpc_port", "metrics_port", "workers", "max_batch",
                                     "max_queue_delay_us", "startup_ms", "code", "queue_us",
                                     "compute_us", "total_us", "batch", "queued", "abandoned",
                                     "ms", "error_code"};
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
    if (strcmp(k, keys[i]) == 0)
      return 1;
  return 0;
}

/* Appends s to buf (cap bytes, *n used), escaped for JSON strings or quoted for text if needed;
 * at most LOG_VALUE_MAX bytes of it (a log line holds at most LOG_FIELDS_MAX fields, so the line
 * is never cut in the middle and stays valid JSON). Valid UTF-8 is kept; control characters, DEL
 * and every byte outside valid UTF-8 are escaped (a byte from a client never reaches the log as
 * it is: in JSON it appears as the text \xNN, so the line stays valid UTF-8 and JSON). */
#define LOG_VALUE_MAX 1024
#define LOG_FIELDS_MAX 24
static void put_str(char *buf, size_t cap, size_t *n, const char *s, int json, int quote) {
  if (quote && *n + 1 < cap)
    buf[(*n)++] = '"';
  size_t start = *n, len = strlen(s);
  for (size_t i = 0; i < len && *n + 8 < cap && *n - start < LOG_VALUE_MAX;) {
    unsigned char ch = (unsigned char)s[i];
    uint32_t cp;
    int k = vt_utf8_next(s + i, len - i, &cp);
    if (cp == 0xFFFD && k == 1 && ch >= 0x80) { /* not UTF-8 */
      *n += (size_t)snprintf(buf + *n, cap - *n, json ? "\\\\x%02x" : "\\x%02x", ch);
    } else if (ch == '"' || ch == '\\') {
      buf[(*n)++] = '\\';
      buf[(*n)++] = (char)ch;
    } else if (ch < 0x20 || ch == 0x7f) {
      *n += (size_t)snprintf(buf + *n, cap - *n, json ? "\\u%04x" : "\\x%02x", ch);
    } else {
      if (*n + (size_t)k + 8 >= cap)
        break;
      memcpy(buf + *n, s + i, (size_t)k);
      *n += (size_t)k;
    }
    i += (size_t)k;
  }
  if (quote && *n + 1 < cap)
    buf[(*n)++] = '"';
}

void vt_log(const char *level, const char *event, ...) {
  char line[LOG_FIELDS_MAX * (LOG_VALUE_MAX + 16) + 256];
  size_t n = 0, cap = sizeof line - 2;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  char when[96];
  snprintf(when, sizeof when, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
           tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
  if (g_log_json)
    n += (size_t)snprintf(line + n, cap - n, "{\"ts\":\"%s\",\"level\":\"%s\",\"event\":", when,
                          level);
  else
    n += (size_t)snprintf(line + n, cap - n, "%s %s ", when, level);
  put_str(line, cap, &n, event, g_log_json, g_log_json);
  va_list ap;
  va_start(ap, event);
  for (int f = 0; f < LOG_FIELDS_MAX; f++) {
    const char *k = va_arg(ap, const char *);
    if (!k)
      break;
    const char *v = va_arg(ap, const char *);
    if (!v)
      v = "";
    if (g_log_json) {
      if (n + 2 < cap)
        line[n++] = ',';
      put_str(line, cap, &n, k, 1, 1);
      if (n + 1 < cap)
        line[n++] = ':';
      if (numeric_key(k) && is_number(v))
        put_str(line, cap, &n, v, 1, 0);
      else
        put_str(line, cap, &n, v, 1, 1);
    } else {
      if (n + 2 < cap)
        line[n++] = ' ';
      put_str(line, cap, &n, k, 0, 0);
      if (n + 1 < cap)
        line[n++] = '=';
      int q = !*v || strpbrk(v, " \"=\t") != NULL;
      put_str(line, cap, &n, v, 0, q);
    }
  }
  va_end(ap);
  if (g_log_json)
    line[n++] = '}';
  line[n++] = '\n';
  pthread_mutex_lock(&g_log_mu);
  fwrite(line, 1, n, stderr);
  fflush(stderr);
  pthread_mutex_unlock(&g_log_mu);
}

/* ---- the server ---- */
typedef struct tag {
  void (*fn)(struct tag *t, int ok);
} tag;

/* LINGER: after SIGTERM, health NOT_SERVING (balancers take the server out) while calls are
 * still accepted and answered; DRAINING: new calls refused. */
enum { HEALTH_STARTING = 0, HEALTH_SERVING = 1, HEALTH_DRAINING = 2, HEALTH_LINGER = 3 };
/* Health service names: readiness ("" and the API's) and liveness (SERVING while the process
 * answers at all: starting, lingering and draining included). */
enum { SVC_UNKNOWN = 0, SVC_READY = 1, SVC_LIVE = 2 };

typedef struct cq_thread {
  struct vt_server *srv;
  grpc_completion_queue *cq;
  pthread_t thread;
  int started;
} cq_thread;

struct vt_server {
  vt_server_opts o;
  vt_sched *sched; /* guarded by mu; NULL until attached and once detached */
  vt_metrics *m;
  grpc_server *server;
  void *rm[VT_M_COUNT]; /* registered methods */
  int n_cq;
  cq_thread *cqs;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int health, shutdown_done;
  long live; /* calls not yet freed (guarded by mu) */
  struct call *watchers; /* open Health/Watch calls (guarded by mu) */
  int watch_ending;      /* stopping: watchers get their final status */
  tag shutdown_tag;
};

/* A call being answered. refs: one for the RECV_CLOSE_ON_SERVER batch, one for the answer (the
 * batch with the status), and for Watch one per outstanding message batch. */
typedef struct call {
  vt_server *srv;
  int method;
  grpc_call *c;
  grpc_completion_queue *cq;
  gpr_timespec deadline;
  grpc_metadata_array md;
  grpc_byte_buffer *payload;
  int64_t arrived_ns;
  atomic_int refs;
  tag close_tag, send_tag;
  int cancelled; /* RECV_CLOSE_ON_SERVER's output */
  grpc_op close_op, send_ops[3];
  grpc_byte_buffer *resp;
  grpc_slice details;
  int code;
  int counted_inflight;
  int count_at_close; /* code counted (and logged) when the call ends: CANCELLED if the client
                         had gone by then (an abandoned call is no bad request) */
  vt_job job;
  char shopper[64];
  int audited;           /* sampled for the audit log */
  char audit_digest[17]; /* of the request's bytes */
  int md_sent; /* initial metadata went out (Watch sends it with its first message) */
  /* Health/Watch (guarded by srv->mu) */
  struct call *w_prev, *w_next;
  int w_unknown, w_live, w_last, w_sending, w_closed, w_finished;
  tag w_tag;
  grpc_op w_ops[2];
  grpc_byte_buffer *w_msg;
} call;

/* An outstanding grpc_server_request_(registered_)call. */
typedef struct slot {
  tag t;
  vt_server *srv;
  cq_thread *cqt;
  int method; /* VT_M_UNKNOWN: unregistered (grpc_server_request_call) */
  grpc_call *c;
  gpr_timespec deadline;
  grpc_metadata_array md;
  grpc_byte_buffer *payload;
  grpc_call_details details;
} slot;

static void call_unref(call *k) {
  if (atomic_fetch_sub(&k->refs, 1) != 1)
    return;
  if (k->counted_inflight)
    vt_metrics_inflight_add(k->srv->m, -1);
  if (k->count_at_close) {
    int code = k->cancelled ? GRPC_STATUS_CANCELLED : k->code;
    vt_metrics_request(k->srv->m, k->method, code);
    if (k->srv->o.log_requests) {
      char c[16], *d = grpc_slice_to_c_string(k->details);
      snprintf(c, sizeof c, "%d", code);
      vt_log("info", "recommend", "shopper", "", "code", c, "message",
             code == GRPC_STATUS_CANCELLED ? "the call ended before its request message arrived"
                                           : d,
             NULL);
      gpr_free(d);
    }
  }
  grpc_metadata_array_destroy(&k->md);
  if (k->payload)
    grpc_byte_buffer_destroy(k->payload);
  if (k->resp)
    grpc_byte_buffer_destroy(k->resp);
  grpc_slice_unref(k->details);
  vt_request_free(&k->job.req);
  grpc_call_unref(k->c);
  vt_server *srv = k->srv;
  free(k);
  pthread_mutex_lock(&srv->mu);
  if (--srv->live == 0)
    pthread_cond_broadcast(&srv->cv);
  pthread_mutex_unlock(&srv->mu);
}

static void watch_pump(call *k);

static void on_close(tag *t, int ok) {
  (void)ok;
  call *k = CONTAINER(t, call, close_tag);
  if (k->cancelled)
    atomic_store(&k->job.cancelled, 1);
  if (k->method == VT_M_HEALTH_WATCH) {
    pthread_mutex_lock(&k->srv->mu);
    k->w_closed = 1;
    watch_pump(k);
    pthread_mutex_unlock(&k->srv->mu);
  }
  call_unref(k);
}

static void on_sent(tag *t, int ok) {
  (void)ok;
  call_unref(CONTAINER(t, call, send_tag));
}

/* Answers the call: status code with a message, and a message body if resp (taken). Any thread;
 * only once per call, after the close batch has been started. */
static void reply(call *k, int code, const char *msg, grpc_byte_buffer *resp) {
  k->code = code;
  k->resp = resp;
  k->details = grpc_slice_from_copied_string(msg ? msg : "");
  int n = 0;
  memset(k->send_ops, 0, sizeof k->send_ops);
  if (!k->md_sent) {
    k->send_ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
    k->send_ops[n++].data.send_initial_metadata.count = 0;
    k->md_sent = 1;
  }
  if (resp) {
    k->send_ops[n].op = GRPC_OP_SEND_MESSAGE;
    k->send_ops[n++].data.send_message.send_message = resp;
  }
  k->send_ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
  k->send_ops[n].data.send_status_from_server.trailing_metadata_count = 0;
  k->send_ops[n].data.send_status_from_server.status = (grpc_status_code)code;
  k->send_ops[n++].data.send_status_from_server.status_details = &k->details;
  /* answered: out of the in-flight gauge before the code is counted, so a scrape that sees the
   * code never still counts the call in flight */
  if (k->counted_inflight) {
    k->counted_inflight = 0;
    vt_metrics_inflight_add(k->srv->m, -1);
  }
  if (!k->count_at_close)
    vt_metrics_request(k->srv->m, k->method, code);
  grpc_call_error e = grpc_call_start_batch(k->c, k->send_ops, (size_t)n, &k->send_tag, NULL);
  if (e != GRPC_CALL_OK) {
    char ec[16];
    snprintf(ec, sizeof ec, "%d", (int)e);
    vt_log("error", "start_batch_failed", "error_code", ec, NULL);
    call_unref(k);
  }
}

/* A packed protobuf message as a byte buffer (NULL when out of memory). */
static grpc_byte_buffer *pack(const ProtobufCMessage *msg) {
  size_t len = protobuf_c_message_get_packed_size(msg);
  uint8_t *buf = malloc(len ? len : 1);
  if (!buf)
    return NULL;
  protobuf_c_message_pack(msg, buf);
  grpc_slice s = grpc_slice_new(buf, len, free);
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
  grpc_slice_unref(s);
  return bb;
}

/* A compressed request inflated by us, at most `limit` bytes: gRPC core 1.51 would inflate it
 * whole before its size check (a 260 KB gzip bomb costs 256 MiB), so the server turns gRPC's
 * decompression off (GRPC_ARG_ENABLE_PER_MESSAGE_DECOMPRESSION) and stops inflating as soon as
 * the limit is passed. 0 with *out set, or a gRPC status code with msg. */
static int inflate_payload(grpc_byte_buffer *bb, size_t limit, grpc_slice *out, char *msg,
                           size_t cap) {
  grpc_compression_algorithm alg = bb->data.raw.compression;
  const char *name = alg == GRPC_COMPRESS_GZIP ? "gzip" : "deflate";
  if (alg != GRPC_COMPRESS_GZIP && alg != GRPC_COMPRESS_DEFLATE) {
    snprintf(msg, cap, "the request's compression (algorithm %d) is not supported", (int)alg);
    return GRPC_STATUS_UNIMPLEMENTED;
  }
  z_stream zs;
  memset(&zs, 0, sizeof zs);
  /* what gRPC sends: "gzip" is a gzip stream, "deflate" a zlib stream */
  if (inflateInit2(&zs, alg == GRPC_COMPRESS_GZIP ? 15 + 16 : 15) != Z_OK) {
    snprintf(msg, cap, "out of memory");
    return GRPC_STATUS_RESOURCE_EXHAUSTED;
  }
  size_t size = limit < 65536 ? limit + 1 : 65536, used = 0;
  uint8_t *o = malloc(size);
  int code = 0, zrc = Z_OK;
  const grpc_slice_buffer *in = &bb->data.raw.slice_buffer;
  for (size_t si = 0; o && si < in->count && zrc != Z_STREAM_END && !code; si++) {
    zs.next_in = (Bytef *)GRPC_SLICE_START_PTR(in->slices[si]);
    zs.avail_in = (uInt)GRPC_SLICE_LENGTH(in->slices[si]);
    while (zs.avail_in > 0 && zrc != Z_STREAM_END) {
      if (used == size) { /* grow, never past limit + 1 (one byte over says "too big"); the
                           * check below has stopped the loop once used passed limit, so here
                           * size <= limit and the buffer can always grow */
        size_t ns = size * 2 < limit + 1 ? size * 2 : limit + 1;
        uint8_t *no = realloc(o, ns);
        if (!no) {
          snprintf(msg, cap, "out of memory inflating the request");
          code = GRPC_STATUS_RESOURCE_EXHAUSTED;
          break;
        }
        o = no;
        size = ns;
      }
      zs.next_out = o + used;
      zs.avail_out = (uInt)(size - used);
      zrc = inflate(&zs, Z_NO_FLUSH);
      used = size - zs.avail_out;
      if (zrc != Z_OK && zrc != Z_STREAM_END && zrc != Z_BUF_ERROR) {
        snprintf(msg, cap, "the %s-compressed request is corrupt (zlib: %s)", name,
                 zs.msg ? zs.msg : "error");
        code = GRPC_STATUS_INVALID_ARGUMENT;
        break;
      }
      if (used > limit) {
        snprintf(msg, cap,
                 "the %s-compressed request inflates to more than --max-message-bytes "
                 "(%zu bytes); refused without inflating the rest",
                 name, limit);
        code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        break;
      }
    }
    if (!code && zrc == Z_STREAM_END && (zs.avail_in > 0 || si + 1 < in->count)) {
      snprintf(msg, cap, "the %s-compressed request has bytes after its end", name);
      code = GRPC_STATUS_INVALID_ARGUMENT;
    }
  }
  if (!o && !code) {
    snprintf(msg, cap, "out of memory inflating the request");
    code = GRPC_STATUS_RESOURCE_EXHAUSTED;
  }
  if (!code && zrc != Z_STREAM_END) {
    snprintf(msg, cap, "the %s-compressed request is truncated", name);
    code = GRPC_STATUS_INVALID_ARGUMENT;
  }
  inflateEnd(&zs);
  if (code) {
    free(o);
    return code;
  }
  *out = grpc_slice_new(o, used, free);
  return 0;
}

/* The request payload as one slice (empty when absent), inflated if it came compressed. 0, or a
 * gRPC status code with msg (the caller answers it). */
static int payload_bytes(call *k, grpc_slice *out, char *msg, size_t cap) {
  *out = grpc_empty_slice();
  if (!k->payload)
    return 0;
  if (k->payload->type == GRPC_BB_RAW && k->payload->data.raw.compression != GRPC_COMPRESS_NONE)
    return inflate_payload(k->payload, (size_t)k->srv->o.max_message_bytes, out, msg, cap);
  grpc_byte_buffer_reader r;
  if (!grpc_byte_buffer_reader_init(&r, k->payload))
    return 0;
  *out = grpc_byte_buffer_reader_readall(&r);
  grpc_byte_buffer_reader_destroy(&r);
  return 0;
}

static const int JOB_CODE[] = {
    [VT_JOB_OK] = GRPC_STATUS_OK,
    [VT_JOB_EXPIRED] = GRPC_STATUS_DEADLINE_EXCEEDED,
    [VT_JOB_CANCELLED] = GRPC_STATUS_CANCELLED,
    [VT_JOB_FAILED] = GRPC_STATUS_INTERNAL,
    [VT_JOB_SHUTDOWN] = GRPC_STATUS_UNAVAILABLE,
};

/* A refusal before compute (bad input, overload, draining) with --log-requests: one line. */
static void log_refusal(call *k, int code, const char *msg) {
  if (!k->srv->o.log_requests)
    return;
  char c[16];
  snprintf(c, sizeof c, "%d", code);
  vt_log("info", "recommend", "shopper", k->shopper, "code", c, "message", msg, NULL);
}

static void log_request(call *k, int code, const char *msg) {
  if (!k->srv->o.log_requests)
    return;
  char c[16], q[32], comp[32], tot[32], bs[16];
  snprintf(c, sizeof c, "%d", code);
  snprintf(q, sizeof q, "%lld",
           (long long)((k->job.started_ns - k->job.enqueued_ns) / 1000));
  snprintf(comp, sizeof comp, "%lld",
           (long long)((k->job.finished_ns - k->job.started_ns) / 1000));
  snprintf(tot, sizeof tot, "%lld", (long long)((vt_now_ns() - k->arrived_ns) / 1000));
  snprintf(bs, sizeof bs, "%d", k->job.batch_size);
  vt_log("info", "recommend", "shopper", k->shopper, "code", c, "queue_us", q, "compute_us",
         comp, "total_us", tot, "batch", bs, "message", msg, NULL);
}

/* The scheduler finished a job (a worker thread): encode and send the answer. */
static void job_done(vt_job *j, const vt_storefront *s) {
  call *k = CONTAINER(j, call, job);
  vt_gen *g = j->gen;
  int code = JOB_CODE[j->status];
  if (code == GRPC_STATUS_OK && j->finished_ns > j->deadline_ns) {
    /* the deadline passed during compute: the caller has given up, say so */
    code = GRPC_STATUS_DEADLINE_EXCEEDED;
    snprintf(j->msg, sizeof j->msg, "the deadline passed during compute");
  }
  if (code == GRPC_STATUS_OK && s) {
    const vt_bundle *b = g->b;
    const vt_catalog *c = g->c;
    int64_t now = vt_now_ns();
    int np = 0, nk = 0;
    for (int i = 0; i < s->n_sections; i++) {
      np += s->sections[i].n_products;
      nk += s->sections[i].n_keywords;
    }
    Vitrine__V1__RecommendResponse r = VITRINE__V1__RECOMMEND_RESPONSE__INIT;
    Vitrine__V1__Timing t = VITRINE__V1__TIMING__INIT;
    Vitrine__V1__Section *secs = calloc((size_t)s->n_sections + 1, sizeof *secs);
    Vitrine__V1__Section **secp = calloc((size_t)s->n_sections + 1, sizeof *secp);
    Vitrine__V1__Phrase *ph = calloc((size_t)(s->n_sections + nk) + 1, sizeof *ph);
    Vitrine__V1__Phrase **php = calloc((size_t)nk + 1, sizeof *php);
    Vitrine__V1__Product *pr = calloc((size_t)np + 1, sizeof *pr);
    Vitrine__V1__Product **prp = calloc((size_t)np + 1, sizeof *prp);
    grpc_byte_buffer *bb = NULL;
    if (secs && secp && ph && php && pr && prp) {
      int ip = 0, ik = 0, iph = 0;
      for (int i = 0; i < s->n_sections; i++) {
        const vt_section *sec = &s->sections[i];
        Vitrine__V1__Section *o = &secs[i];
        vitrine__v1__section__init(o);
        secp[i] = o;
        Vitrine__V1__Phrase *th = &ph[iph++];
        vitrine__v1__phrase__init(th);
        th->id = sec->theme;
        th->text = b->themes.text[sec->theme];
        th->score = sec->theme_score;
        o->theme = th;
        o->keywords = &php[ik];
        o->n_keywords = (size_t)sec->n_keywords;
        for (int q = 0; q < sec->n_keywords; q++) {
          Vitrine__V1__Phrase *kw = &ph[iph++];
          vitrine__v1__phrase__init(kw);
          kw->id = sec->keyword[q];
          kw->text = b->keywords.text[sec->keyword[q]];
          kw->score = sec->keyword_score[q];
          php[ik++] = kw;
        }
        o->products = &prp[ip];
        o->n_products = (size_t)sec->n_products;
        for (int q = 0; q < sec->n_products; q++) {
          const vt_hit *h = &sec->products[q];
          Vitrine__V1__Product *p = &pr[ip];
          vitrine__v1__product__init(p);
          p->id = c->ids[h->product];
          p->index = h->product;
          p->score = h->score;
          p->keyword = h->keyword;
          p->keyword_text = b->keywords.text[h->keyword];
          prp[ip++] = p;
        }
      }
      r.sections = secp;
      r.n_sections = (size_t)s->n_sections;
      r.dropped_events = s->dropped_events;
      t.queue_us = (j->started_ns - j->enqueued_ns) / 1000;
      t.compute_us = (j->finished_ns - j->started_ns) / 1000;
      t.total_us = (now - k->arrived_ns) / 1000;
      t.batch_size = j->batch_size;
      r.timing = &t;
      r.model_version = b->model_version;
      r.catalog_version = c->catalog_version;
      r.rules_version = (char *)vt_rules_version(c->rules);
      bb = pack(&r.base);
      vt_metrics_durations(k->srv->m, (double)t.queue_us * 1e-6, (double)t.compute_us * 1e-6,
                           (double)t.total_us * 1e-6);
    }
    free(secs);
    free(secp);
    free(ph);
    free(php);
    free(pr);
    free(prp);
    if (!bb) {
      code = GRPC_STATUS_INTERNAL;
      snprintf(j->msg, sizeof j->msg, "out of memory encoding the answer");
    } else if (grpc_byte_buffer_length(bb) > (size_t)k->srv->o.max_message_bytes) {
      /* gRPC would refuse to send it (RESOURCE_EXHAUSTED) after we counted an OK: say it here,
       * counted and logged as what the client gets */
      code = GRPC_STATUS_RESOURCE_EXHAUSTED;
      snprintf(j->msg, sizeof j->msg,
               "the answer is %zu bytes, above --max-message-bytes %d: ask for fewer sections, "
               "keywords or products",
               grpc_byte_buffer_length(bb), k->srv->o.max_message_bytes);
      grpc_byte_buffer_destroy(bb);
      bb = NULL;
    }
    if (bb && k->audited) /* a copy into the log's ring; dropped (and counted) when it is full */
      vt_audit_submit(k->srv->o.audit, k->audit_digest, &j->req, g, s);
    vt_gen_unref(g);
    j->gen = NULL;
    log_request(k, code, code ? j->msg : "");
    reply(k, code, code ? j->msg : NULL, bb);
    return;
  }
  vt_gen_unref(g);
  j->gen = NULL;
  if (code == GRPC_STATUS_OK) {
    code = GRPC_STATUS_INTERNAL;
    snprintf(j->msg, sizeof j->msg, "no storefront");
  }
  if (code == GRPC_STATUS_INTERNAL)
    vt_log("error", "engine_failed", "shopper", k->shopper, "message", j->msg, NULL);
  log_request(k, code, j->msg);
  reply(k, code, j->msg, NULL);
}

/* Answers a call the scheduler did not take (VT_SCHED_*; for VT_SCHED_LATE k->job.msg says why). */
static void refuse_unavailable(call *k, int src) {
  const char *why =
      src == VT_SCHED_FULL
          ? "overloaded: the request queue is full; nothing was computed, retry with backoff"
      : src == VT_SCHED_LATE ? k->job.msg /* the wait ahead against the deadline */
                             : "the server is draining (shutting down): retry elsewhere";
  log_refusal(k, GRPC_STATUS_UNAVAILABLE, why);
  reply(k, GRPC_STATUS_UNAVAILABLE, why, NULL);
}

static void handle_recommend(call *k) {
  vt_server *srv = k->srv;
  char msg[512];
  pthread_mutex_lock(&srv->mu);
  int starting = srv->health == HEALTH_STARTING;
  int refuse = srv->health == HEALTH_DRAINING || !srv->sched;
  vt_gen *g = refuse ? NULL : vt_sched_gen(srv->sched);
  pthread_mutex_unlock(&srv->mu);
  if (refuse) {
    const char *why = starting
                          ? "the server is starting (loading and warming up the model): retry shortly"
                          : "the server is draining (shutting down): retry elsewhere";
    log_refusal(k, GRPC_STATUS_UNAVAILABLE, why);
    reply(k, GRPC_STATUS_UNAVAILABLE, why, NULL);
    return;
  }
  grpc_slice bytes;
  int code = payload_bytes(k, &bytes, msg, sizeof msg);
  const uint8_t *p = GRPC_SLICE_START_PTR(bytes);
  size_t n = GRPC_SLICE_LENGTH(bytes);
  vt_wire_request w = {0};
  if (code)
    goto refuse;
  code = GRPC_STATUS_INVALID_ARGUMENT;
  if (!k->payload) {
    /* the client went away before its message arrived (a deadline of a few ms, a cancel), or
     * sent none: an abandoned call is counted as such, not as a bad request */
    if (gpr_time_cmp(gpr_now(k->deadline.clock_type), k->deadline) >= 0) {
      code = GRPC_STATUS_DEADLINE_EXCEEDED;
      snprintf(msg, sizeof msg, "the deadline passed before the request message arrived");
    } else {
      snprintf(msg, sizeof msg, "no request message");
      k->count_at_close = 1;
    }
    goto refuse;
  }
  /* the deadline on our monotonic clock */
  if (gpr_time_cmp(k->deadline, gpr_inf_future(k->deadline.clock_type)) == 0) {
    k->job.deadline_ns = INT64_MAX;
  } else {
    gpr_timespec left = gpr_time_sub(k->deadline, gpr_now(k->deadline.clock_type));
    k->job.deadline_ns = vt_now_ns() + (int64_t)left.tv_sec * 1000000000 + left.tv_nsec;
  }
  /* admission before decoding: under overload a refusal must cost less than a request, or the
   * refusals take the cores from the work (the queue decides again when the job is submitted) */
  int prio = vt_wire_peek_priority(p, n) ? VT_PRIO_HIGH : VT_PRIO_NORMAL;
  pthread_mutex_lock(&srv->mu);
  int src = srv->sched ? vt_sched_admit(srv->sched, prio, k->job.deadline_ns, k->job.msg,
                                        sizeof k->job.msg)
                       : VT_SCHED_CLOSED;
  pthread_mutex_unlock(&srv->mu);
  if (src) {
    grpc_slice_unref(bytes);
    vt_gen_unref(g);
    refuse_unavailable(k, src);
    return;
  }
  vt_wire_limits lim = {srv->o.max_request_events, MAX_ID_BYTES};
  vt_err err = {0};
  int rc = vt_wire_recommend(&w, p, n, &lim, &err);
  /* the shopper for the log line, as sent (it may be what is wrong: vt_log escapes it) */
  size_t sl = w.shopper_len < sizeof k->shopper - 1 ? w.shopper_len : sizeof k->shopper - 1;
  if (sl)
    memcpy(k->shopper, w.shopper, sl);
  k->shopper[sl] = 0;
  if (!rc)
    rc = vt_request_parse(&k->job.req, w.json, w.json_len, g->b, g->c, &err);
  if (rc) {
    if (rc != VT_EINVAL)
      code = GRPC_STATUS_RESOURCE_EXHAUSTED;
    snprintf(msg, sizeof msg, "%s", err.msg);
    goto refuse;
  }
  k->job.priority = w.priority == 1 ? VT_PRIO_HIGH : VT_PRIO_NORMAL;
  if (vt_audit_sample(srv->o.audit)) { /* the digest here, while the bytes are at hand */
    k->audited = 1;
    vt_audit_digest(p, n, k->audit_digest);
  }
  vt_wire_request_free(&w);
  grpc_slice_unref(bytes);
  k->job.gen = g;
  k->job.done = job_done;
  k->counted_inflight = 1; /* before submit: the job may be answered and freed at once */
  vt_metrics_inflight_add(srv->m, 1);
  pthread_mutex_lock(&srv->mu);
  src = srv->sched ? vt_sched_submit(srv->sched, &k->job) : VT_SCHED_CLOSED;
  pthread_mutex_unlock(&srv->mu);
  if (src == 0)
    return; /* the job may be done (and k answered) already */
  k->counted_inflight = 0;
  vt_metrics_inflight_add(srv->m, -1);
  k->job.gen = NULL;
  vt_gen_unref(g);
  refuse_unavailable(k, src);
  return;
refuse:
  vt_wire_request_free(&w);
  grpc_slice_unref(bytes);
  vt_gen_unref(g);
  if (!k->count_at_close)
    log_refusal(k, code, msg);
  reply(k, code, msg, NULL);
}

static void handle_info(call *k) {
  vt_server *srv = k->srv;
  grpc_slice bytes;
  vt_err err = {0};
  int code = payload_bytes(k, &bytes, err.msg, sizeof err.msg);
  if (!code && vt_wire_getinfo(GRPC_SLICE_START_PTR(bytes), GRPC_SLICE_LENGTH(bytes), &err))
    code = GRPC_STATUS_INVALID_ARGUMENT;
  grpc_slice_unref(bytes);
  if (code) {
    reply(k, code, err.msg, NULL);
    return;
  }
  pthread_mutex_lock(&srv->mu);
  vt_gen *g = srv->sched ? vt_sched_gen(srv->sched) : NULL;
  pthread_mutex_unlock(&srv->mu);
  if (!g) {
    reply(k, GRPC_STATUS_UNAVAILABLE, "the server is starting or shutting down", NULL);
    return;
  }
  const vt_bundle *b = g->b;
  Vitrine__V1__GetInfoResponse r = VITRINE__V1__GET_INFO_RESPONSE__INIT;
  char **regions = calloc((size_t)b->n_regions + 1, sizeof *regions);
  for (int i = 0; regions && i < b->n_regions; i++)
    regions[i] = b->regions[i].name;
  r.model_version = b->model_version;
  r.catalog_version = g->c->catalog_version;
  r.rules_version = (char *)vt_rules_version(g->c->rules);
  r.products = g->c->n_products;
  r.themes = b->themes.n;
  r.keywords = b->keywords.n;
  r.regions = regions;
  r.n_regions = regions ? (size_t)b->n_regions : 0;
  r.max_sections = b->max_sections;
  r.max_keywords_per_section = b->max_keywords_per_section;
  r.max_products_per_section = b->max_products_per_section;
  r.max_query_bytes = b->max_query_bytes;
  r.max_model_events = b->cfg.max_events;
  r.max_request_events = srv->o.max_request_events;
  r.workers = g->n_engines;
  r.max_batch = srv->o.max_batch;
  grpc_byte_buffer *bb = pack(&r.base);
  free(regions);
  vt_gen_unref(g);
  if (bb)
    reply(k, GRPC_STATUS_OK, NULL, bb);
  else
    reply(k, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory", NULL);
}

static int health_status(int h) {
  return h == HEALTH_SERVING ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                             : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
}

/* ---- Health/Watch: a stream of statuses, one message per change. At most one SEND_MESSAGE
 * batch is outstanding per call (w_sending); when it completes the pump looks again. The call
 * ends (final status, which releases the answer's reference) when the client goes away or the
 * server stops. refs: close + answer, plus one per outstanding message. ---- */
static void on_watch_sent(tag *t, int ok) {
  (void)ok;
  call *k = CONTAINER(t, call, w_tag);
  pthread_mutex_lock(&k->srv->mu);
  grpc_byte_buffer_destroy(k->w_msg);
  k->w_msg = NULL;
  k->w_sending = 0;
  watch_pump(k);
  pthread_mutex_unlock(&k->srv->mu);
  call_unref(k);
}

/* srv->mu held. */
static void watch_pump(call *k) {
  vt_server *srv = k->srv;
  if (k->w_sending || k->w_finished)
    return;
  if (k->w_closed || srv->watch_ending) {
    k->w_finished = 1;
    if (k->w_prev)
      k->w_prev->w_next = k->w_next;
    else
      srv->watchers = k->w_next;
    if (k->w_next)
      k->w_next->w_prev = k->w_prev;
    k->w_prev = k->w_next = NULL;
    if (k->w_closed)
      reply(k, GRPC_STATUS_CANCELLED, "the client ended the stream", NULL);
    else
      reply(k, GRPC_STATUS_UNAVAILABLE, "the server is shutting down", NULL);
    return;
  }
  int want = k->w_unknown
                 ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN
             : k->w_live ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                         : health_status(srv->health);
  if (want == k->w_last)
    return;
  Grpc__Health__V1__HealthCheckResponse r = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  r.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)want;
  k->w_msg = pack(&r.base);
  if (!k->w_msg)
    return; /* out of memory: the next change tries again */
  int n = 0;
  memset(k->w_ops, 0, sizeof k->w_ops);
  if (!k->md_sent) {
    k->w_ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
    k->w_ops[n++].data.send_initial_metadata.count = 0;
    k->md_sent = 1;
  }
  k->w_ops[n].op = GRPC_OP_SEND_MESSAGE;
  k->w_ops[n++].data.send_message.send_message = k->w_msg;
  atomic_fetch_add(&k->refs, 1);
  if (grpc_call_start_batch(k->c, k->w_ops, (size_t)n, &k->w_tag, NULL) != GRPC_CALL_OK) {
    atomic_fetch_sub(&k->refs, 1);
    grpc_byte_buffer_destroy(k->w_msg);
    k->w_msg = NULL;
    return;
  }
  k->w_sending = 1;
  k->w_last = want;
}

/* The service a health request names: 1 with *known set (SVC_*), or 0 after refusing the call. */
static int health_service(call *k, int *known) {
  grpc_slice bytes;
  const char *svc = "";
  size_t len = 0;
  vt_err err = {0};
  int code = payload_bytes(k, &bytes, err.msg, sizeof err.msg);
  if (!code && vt_wire_health(GRPC_SLICE_START_PTR(bytes), GRPC_SLICE_LENGTH(bytes), &svc, &len,
                              &err))
    code = GRPC_STATUS_INVALID_ARGUMENT;
  *known = code ? SVC_UNKNOWN
         : len == 0 || (len == 21 && memcmp(svc, "vitrine.v1.Storefront", 21) == 0) ? SVC_READY
         : len == 8 && memcmp(svc, "liveness", 8) == 0                              ? SVC_LIVE
                                                                      : SVC_UNKNOWN;
  grpc_slice_unref(bytes);
  if (code)
    reply(k, code, err.msg, NULL);
  return !code;
}

static void handle_watch(call *k) {
  int known;
  if (!health_service(k, &known))
    return;
  /* an unknown service is answered SERVICE_UNKNOWN and the call kept open, as the protocol says */
  k->w_unknown = known == SVC_UNKNOWN;
  k->w_live = known == SVC_LIVE;
  k->w_last = -1;
  k->w_tag.fn = on_watch_sent;
  vt_server *srv = k->srv;
  pthread_mutex_lock(&srv->mu);
  k->w_next = srv->watchers;
  if (srv->watchers)
    srv->watchers->w_prev = k;
  srv->watchers = k;
  watch_pump(k);
  pthread_mutex_unlock(&srv->mu);
}

/* srv->mu held: every watcher looks at the (changed) status. */
static void watch_notify_all(vt_server *srv) {
  call *k = srv->watchers;
  while (k) {
    call *next = k->w_next; /* watch_pump may unlink k */
    watch_pump(k);
    k = next;
  }
}

static void handle_health(call *k) {
  int known;
  if (!health_service(k, &known))
    return;
  if (!known) {
    reply(k, GRPC_STATUS_NOT_FOUND,
          "unknown service: \"\" and \"vitrine.v1.Storefront\" (readiness) and \"liveness\" are "
          "known",
          NULL);
    return;
  }
  pthread_mutex_lock(&k->srv->mu);
  int h = k->srv->health;
  pthread_mutex_unlock(&k->srv->mu);
  Grpc__Health__V1__HealthCheckResponse r = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  r.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)(
      known == SVC_LIVE ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                        : health_status(h));
  grpc_byte_buffer *bb = pack(&r.base);
  if (bb)
    reply(k, GRPC_STATUS_OK, NULL, bb);
  else
    reply(k, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory", NULL);
}

static void request_slot(slot *s);

static void on_new_call(tag *t, int ok) {
  slot *s = CONTAINER(t, slot, t);
  vt_server *srv = s->srv;
  if (!ok) { /* the server is shutting down */
    grpc_metadata_array_destroy(&s->md);
    if (s->method == VT_M_UNKNOWN)
      grpc_call_details_destroy(&s->details);
    free(s);
    return;
  }
  call *k = calloc(1, sizeof *k);
  if (!k) {
    /* cannot answer without memory: cancel it */
    grpc_call_cancel_with_status(s->c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory", NULL);
    grpc_call_unref(s->c);
    grpc_metadata_array_destroy(&s->md);
    if (s->payload)
      grpc_byte_buffer_destroy(s->payload);
  } else {
    pthread_mutex_lock(&srv->mu);
    srv->live++;
    pthread_mutex_unlock(&srv->mu);
    k->srv = srv;
    k->method = s->method;
    k->c = s->c;
    k->cq = s->cqt->cq;
    k->deadline = s->deadline;
    k->md = s->md; /* moved */
    k->payload = s->payload;
    k->arrived_ns = vt_now_ns();
    k->details = grpc_empty_slice();
    k->close_tag.fn = on_close;
    k->send_tag.fn = on_sent;
    atomic_init(&k->job.cancelled, 0);
    atomic_init(&k->refs, 2);
    k->close_op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    k->close_op.data.recv_close_on_server.cancelled = &k->cancelled;
    if (grpc_call_start_batch(k->c, &k->close_op, 1, &k->close_tag, NULL) != GRPC_CALL_OK)
      atomic_fetch_sub(&k->refs, 1);
  }
  int method = s->method;
  if (method == VT_M_UNKNOWN) {
    grpc_call_details_destroy(&s->details);
  }
  /* re-arm the slot before the (possibly long) parsing */
  s->c = NULL;
  s->payload = NULL;
  grpc_metadata_array_init(&s->md);
  request_slot(s);
  if (!k)
    return;
  switch (method) {
  case VT_M_RECOMMEND:
    handle_recommend(k);
    break;
  case VT_M_GETINFO:
    handle_info(k);
    break;
  case VT_M_HEALTH_CHECK:
    handle_health(k);
    break;
  case VT_M_HEALTH_WATCH:
    handle_watch(k);
    break;
  default:
    reply(k, GRPC_STATUS_UNIMPLEMENTED, "unknown method", NULL);
  }
}

static void request_slot(slot *s) {
  vt_server *srv = s->srv;
  grpc_call_error e;
  if (s->method == VT_M_UNKNOWN) {
    grpc_call_details_init(&s->details);
    e = grpc_server_request_call(srv->server, &s->c, &s->details, &s->md, s->cqt->cq, s->cqt->cq,
                                 &s->t);
  } else {
    e = grpc_server_request_registered_call(srv->server, srv->rm[s->method], &s->c, &s->deadline,
                                            &s->md, &s->payload, s->cqt->cq, s->cqt->cq, &s->t);
  }
  if (e != GRPC_CALL_OK) {
    grpc_metadata_array_destroy(&s->md);
    if (s->method == VT_M_UNKNOWN)
      grpc_call_details_destroy(&s->details);
    free(s);
  }
}

static int add_slot(vt_server *srv, cq_thread *t, int method) {
  slot *s = calloc(1, sizeof *s);
  if (!s)
    return -1;
  s->t.fn = on_new_call;
  s->srv = srv;
  s->cqt = t;
  s->method = method;
  grpc_metadata_array_init(&s->md);
  request_slot(s);
  return 0;
}

static void *cq_main(void *arg) {
  cq_thread *t = arg;
  for (;;) {
    grpc_event ev = grpc_completion_queue_next(t->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN)
      break;
    if (ev.type == GRPC_OP_COMPLETE) {
      tag *tg = ev.tag;
      tg->fn(tg, ev.success);
    }
  }
  return NULL;
}

static void on_shutdown(tag *t, int ok) {
  (void)ok;
  vt_server *srv = CONTAINER(t, vt_server, shutdown_tag);
  pthread_mutex_lock(&srv->mu);
  srv->shutdown_done = 1;
  pthread_cond_broadcast(&srv->cv);
  pthread_mutex_unlock(&srv->mu);
}

static void server_free(vt_server *srv) {
  for (int i = 0; srv->cqs && i < srv->n_cq; i++)
    if (srv->cqs[i].cq)
      grpc_completion_queue_destroy(srv->cqs[i].cq);
  free(srv->cqs);
  if (srv->server)
    grpc_server_destroy(srv->server);
  pthread_cond_destroy(&srv->cv);
  pthread_mutex_destroy(&srv->mu);
  free(srv);
  grpc_shutdown();
}

/* gRPC's own log lines (errors by default) go through vt_log, so logs stay one format. A refused
 * TLS handshake is known only from gRPC's error line for it (ssl_transport_security.cc: "Handshake
 * failed with fatal error ..."): it is counted from there. */
static vt_metrics *g_log_metrics;

static void grpc_log(gpr_log_func_args *a) {
  if (g_log_metrics && a->message && strncmp(a->message, "Handshake failed", 16) == 0)
    vt_metrics_tls_refused(g_log_metrics);
  char where[300];
  snprintf(where, sizeof where, "%s:%d", a->file ? a->file : "?", a->line);
  vt_log(a->severity == GPR_LOG_SEVERITY_ERROR  ? "error"
         : a->severity == GPR_LOG_SEVERITY_INFO ? "info"
                                                : "debug",
         "grpc", "message", a->message, "source", where, NULL);
}

int vt_server_start(vt_server **out, const vt_server_opts *o, vt_metrics *m, int *port,
                    vt_err *err) {
  *out = NULL;
  g_log_metrics = m;
  gpr_set_log_function(grpc_log);
  grpc_init();
  vt_server *srv = calloc(1, sizeof *srv);
  if (!srv) {
    grpc_shutdown();
    return vt_fail(err, VT_ENOMEM, "out of memory");
  }
  srv->o = *o;
  srv->m = m;
  srv->n_cq = o->cq_threads < 1 ? 1 : o->cq_threads;
  srv->shutdown_tag.fn = on_shutdown;
  /* recursive: a Watch answered under mu may free its call, which takes mu */
  pthread_mutexattr_t ma;
  pthread_mutexattr_init(&ma);
  pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
  pthread_mutex_init(&srv->mu, &ma);
  pthread_mutexattr_destroy(&ma);
  pthread_cond_init(&srv->cv, NULL);
  /* --max-message-bytes bounds a request on the wire (gRPC's check) and inflated (ours: gRPC's
   * own decompression is off, see inflate_payload) */
  grpc_arg args[5];
  args[0].type = args[1].type = args[2].type = args[3].type = args[4].type = GRPC_ARG_INTEGER;
  args[0].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
  args[0].value.integer = o->max_message_bytes;
  args[1].key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
  args[1].value.integer = o->max_message_bytes;
  args[2].key = GRPC_ARG_ENABLE_PER_MESSAGE_DECOMPRESSION;
  args[2].value.integer = 0;
  /* --max-connection-age-ms: gRPC sends GOAWAY after it (with jitter), and the calls then in
   * flight get the drain timeout to finish */
  args[3].key = GRPC_ARG_MAX_CONNECTION_AGE_MS;
  args[3].value.integer = o->max_connection_age_ms;
  args[4].key = GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS;
  args[4].value.integer = o->drain_timeout_ms > 0 ? o->drain_timeout_ms : 1000;
  grpc_channel_args ca = {o->max_connection_age_ms > 0 ? 5 : 3, args};
  srv->server = grpc_server_create(&ca, NULL);
  srv->cqs = calloc((size_t)srv->n_cq, sizeof *srv->cqs);
  if (!srv->server || !srv->cqs) {
    server_free(srv);
    return vt_fail(err, VT_ENOMEM, "cannot create the gRPC server");
  }
  static const char *const paths[] = {"/vitrine.v1.Storefront/Recommend",
                                      "/vitrine.v1.Storefront/GetInfo",
                                      "/grpc.health.v1.Health/Check",
                                      "/grpc.health.v1.Health/Watch"};
  for (int i = 0; i < 4; i++)
    srv->rm[i] = grpc_server_register_method(srv->server, paths[i], NULL,
                                             GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
  for (int i = 0; i < srv->n_cq; i++) {
    srv->cqs[i].srv = srv;
    srv->cqs[i].cq = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(srv->server, srv->cqs[i].cq, NULL);
  }
  grpc_server_credentials *cred;
  if (o->tls_cert_pem) {
    /* TLS; with a client CA, mutual TLS: a client without a certificate that CA signed is
     * refused in the handshake */
    grpc_ssl_pem_key_cert_pair pair = {o->tls_key_pem, o->tls_cert_pem};
    cred = grpc_ssl_server_credentials_create_ex(
        o->tls_client_ca_pem, &pair, 1,
        o->tls_client_ca_pem ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                             : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
        NULL);
  } else {
    cred = grpc_insecure_server_credentials_create();
  }
  *port = cred ? grpc_server_add_http2_port(srv->server, o->listen, cred) : 0;
  if (cred)
    grpc_server_credentials_release(cred);
  if (*port <= 0) {
    server_free(srv);
    if (o->tls_cert_pem)
      return vt_fail(err, VT_EIO,
                     "cannot listen on %s with TLS: the address is taken or invalid, or the "
                     "certificate, key or client CA is not usable (gRPC's log line says which)",
                     o->listen);
    return vt_fail(err, VT_EIO, "cannot listen on %s", o->listen);
  }
  grpc_server_start(srv->server);
  static const int per_cq[VT_M_COUNT] = {[VT_M_RECOMMEND] = 32, [VT_M_GETINFO] = 2,
                                         [VT_M_HEALTH_CHECK] = 4, [VT_M_HEALTH_WATCH] = 2,
                                         [VT_M_UNKNOWN] = 2};
  for (int i = 0; i < srv->n_cq; i++)
    for (int mth = 0; mth < VT_M_COUNT; mth++)
      for (int k = 0; k < per_cq[mth]; k++)
        add_slot(srv, &srv->cqs[i], mth);
  for (int i = 0; i < srv->n_cq; i++) {
    if (pthread_create(&srv->cqs[i].thread, NULL, cq_main, &srv->cqs[i]) == 0) {
      srv->cqs[i].started = 1;
      char name[32];
      snprintf(name, sizeof name, "vt-cq-%d", i);
      name[15] = 0;
      pthread_setname_np(srv->cqs[i].thread, name);
    }
  }
  *out = srv;
  return VT_OK;
}

void vt_server_attach(vt_server *srv, vt_sched *s) {
  pthread_mutex_lock(&srv->mu);
  srv->sched = s;
  pthread_mutex_unlock(&srv->mu);
}

void vt_server_set_serving(vt_server *srv) {
  pthread_mutex_lock(&srv->mu);
  if (srv->health == HEALTH_STARTING)
    srv->health = HEALTH_SERVING;
  watch_notify_all(srv);
  pthread_mutex_unlock(&srv->mu);
  vt_metrics_serving(srv->m, 1);
}

void vt_server_linger(vt_server *srv) {
  pthread_mutex_lock(&srv->mu);
  if (srv->health == HEALTH_SERVING)
    srv->health = HEALTH_LINGER;
  watch_notify_all(srv);
  pthread_mutex_unlock(&srv->mu);
  vt_metrics_serving(srv->m, 0);
}

void vt_server_drain(vt_server *srv) {
  pthread_mutex_lock(&srv->mu);
  srv->health = HEALTH_DRAINING;
  watch_notify_all(srv);
  pthread_mutex_unlock(&srv->mu);
  vt_metrics_serving(srv->m, 0);
}

void vt_server_detach(vt_server *srv) {
  pthread_mutex_lock(&srv->mu);
  srv->sched = NULL;
  pthread_mutex_unlock(&srv->mu);
}

void vt_server_stop(vt_server *srv, long grace_ms) {
  if (!srv)
    return;
  pthread_mutex_lock(&srv->mu); /* end the Watch streams */
  srv->watch_ending = 1;
  watch_notify_all(srv);
  pthread_mutex_unlock(&srv->mu);
  grpc_server_shutdown_and_notify(srv->server, srv->cqs[0].cq, &srv->shutdown_tag);
  struct timespec due;
  clock_gettime(CLOCK_REALTIME, &due);
  due.tv_sec += grace_ms / 1000;
  due.tv_nsec += (grace_ms % 1000) * 1000000;
  if (due.tv_nsec >= 1000000000) {
    due.tv_sec++;
    due.tv_nsec -= 1000000000;
  }
  /* calls still open get grace_ms to finish; then idle connections (which would hold the
   * shutdown forever) and any call left are cancelled */
  pthread_mutex_lock(&srv->mu);
  while (!srv->shutdown_done && srv->live > 0)
    if (pthread_cond_timedwait(&srv->cv, &srv->mu, &due))
      break;
  if (!srv->shutdown_done) {
    pthread_mutex_unlock(&srv->mu);
    grpc_server_cancel_all_calls(srv->server);
    pthread_mutex_lock(&srv->mu);
    while (!srv->shutdown_done)
      pthread_cond_wait(&srv->cv, &srv->mu);
  }
  pthread_mutex_unlock(&srv->mu);
  for (int i = 0; i < srv->n_cq; i++)
    grpc_completion_queue_shutdown(srv->cqs[i].cq);
  for (int i = 0; i < srv->n_cq; i++)
    if (srv->cqs[i].started)
      pthread_join(srv->cqs[i].thread, NULL);
  server_free(srv);
}
