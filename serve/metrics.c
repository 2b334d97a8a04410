/* Prometheus metrics: one mutex guards everything (a few increments per request); the HTTP
 * endpoint renders a snapshot under it. */
#include "metrics.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "httpd.h"
#include "strbuf.h"

#define N_CODES 17
#define VT_METRICS_MAX_WORKERS 64
static const char *const CODE_NAMES[N_CODES] = {
    "OK",        "CANCELLED",         "UNKNOWN",        "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
static const char *const METHOD_NAMES[VT_M_COUNT] = {
    "/vitrine.v1.Storefront/Recommend", "/vitrine.v1.Storefront/GetInfo",
    "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch", "other"};

#define N_TIME_BUCKETS 16
static const double TIME_BUCKETS[N_TIME_BUCKETS] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                                    0.01,   0.025,   0.05,   0.1,   0.25,   0.5,
                                                    1,      2.5,     5,      10};
#define N_BATCH_BUCKETS 9
static const double BATCH_BUCKETS[N_BATCH_BUCKETS] = {1, 2, 4, 8, 16, 32, 64, 128, 256};

typedef struct hist {
  const double *bounds;
  int n;
  long counts[N_TIME_BUCKETS + 1]; /* per bucket (not cumulative), last: +Inf */
  double sum;
  long count;
} hist;

struct vt_metrics {
  pthread_mutex_t mu;
  long requests[VT_M_COUNT][N_CODES];
  hist queue, compute, total, batch;
  long queue_depth, inflight, reloads_ok, reloads_failed, tls_refused;
  long audit_written, audit_ring_full, audit_too_large, audit_errors;
  long worker_batches[VT_METRICS_MAX_WORKERS];
  int n_workers; /* highest worker seen + 1 */
  int serving;
  char model[128], catalog[128], rules[128];
  vt_httpd *http;
};

static void hist_init(hist *h, const double *bounds, int n) {
  memset(h, 0, sizeof *h);
  h->bounds = bounds;
  h->n = n;
}

static void hist_observe(hist *h, double v) {
  int i = 0;
  while (i < h->n && v > h->bounds[i])
    i++;
  h->counts[i]++;
  h->sum += v;
  h->count++;
}

vt_metrics *vt_metrics_create(void) {
  vt_metrics *m = calloc(1, sizeof *m);
  if (!m)
    return NULL;
  pthread_mutex_init(&m->mu, NULL);
  hist_init(&m->queue, TIME_BUCKETS, N_TIME_BUCKETS);
  hist_init(&m->compute, TIME_BUCKETS, N_TIME_BUCKETS);
  hist_init(&m->total, TIME_BUCKETS, N_TIME_BUCKETS);
  hist_init(&m->batch, BATCH_BUCKETS, N_BATCH_BUCKETS);
  return m;
}

void vt_metrics_free(vt_metrics *m) {
  if (!m)
    return;
  vt_httpd_stop(m->http);
  pthread_mutex_destroy(&m->mu);
  free(m);
}

void vt_metrics_request(vt_metrics *m, int method, int code) {
  if (method < 0 || method >= VT_M_COUNT)
    method = VT_M_UNKNOWN;
  if (code < 0 || code >= N_CODES)
    code = 2;
  pthread_mutex_lock(&m->mu);
  m->requests[method][code]++;
  pthread_mutex_unlock(&m->mu);
}

void vt_metrics_durations(vt_metrics *m, double queue_s, double compute_s, double total_s) {
  pthread_mutex_lock(&m->mu);
  hist_observe(&m->queue, queue_s);
  hist_observe(&m->compute, compute_s);
  hist_observe(&m->total, total_s);
  pthread_mutex_unlock(&m->mu);
}

void vt_metrics_batch(vt_metrics *m, int w, int n) {
  pthread_mutex_lock(&m->mu);
  hist_observe(&m->batch, n);
  if (w >= 0 && w < VT_METRICS_MAX_WORKERS) {
    m->worker_batches[w]++;
    if (w >= m->n_workers)
      m->n_workers = w + 1;
  }
  pthread_mutex_unlock(&m->mu);
}

void vt_metrics_queue_depth(vt_metrics *m, long depth) {
  pthread_mutex_lock(&m->mu);
  m->queue_depth = depth;
  pthread_mutex_unlock(&m->mu);
}

void vt_metrics_inflight_add(vt_metrics *m, long delta) {
  pthread_mutex_lock(&m->mu);
  m->inflight += delta;
  pthread_mutex_unlock(&m->mu);
}

long vt_metrics_inflight(vt_metrics *m) {
  pthread_mutex_lock(&m->mu);
  long v = m->inflight;
  pthread_mutex_unlock(&m->mu);
  return v;
}

void vt_metrics_serving(vt_metrics *m, int serving) {
  pthread_mutex_lock(&m->mu);
  m->serving = serving;
  pthread_mutex_unlock(&m->mu);
}

void vt_metrics_versions(vt_metrics *m, const char *model, const char *catalog,
                         const char *rules) {
  pthread_mutex_lock(&m->mu);
  snprintf(m->model, sizeof m->model, "%s", model ? model : "");
  snprintf(m->catalog, sizeof m->catalog, "%s", catalog ? catalog : "");
  snprintf(m->rules, sizeof m->rules, "%s", rules ? rules : "");
  pthread_mutex_unlock(&m->mu);
}

void vt_metrics_reload(vt_metrics *m, int ok) {
  pthread_mutex_lock(&m->mu);
  if (ok)
    m->reloads_ok++;
  else
    m->reloads_failed++;
  pthread_mutex_unlock(&m->mu);
}

void vt_metrics_tls_refused(vt_metrics *m) {
  pthread_mutex_lock(&m->mu);
  m->tls_refused++;
  pthread_mutex_unlock(&m->mu);
}

void vt_metrics_audit(vt_metrics *m, long written, long ring_full, long too_large, long errors) {
  pthread_mutex_lock(&m->mu);
  m->audit_written += written;
  m->audit_ring_full += ring_full;
  m->audit_too_large += too_large;
  m->audit_errors += errors;
  pthread_mutex_unlock(&m->mu);
}

/* ---- rendering ---- */
/* A label value with \, " and newline escaped, as the text format requires. */
static void label_escape(char *out, size_t cap, const char *s) {
  size_t n = 0;
  for (; *s && n + 3 < cap; s++) {
    if (*s == '\\' || *s == '"') {
      out[n++] = '\\';
      out[n++] = *s;
    } else if (*s == '\n') {
      out[n++] = '\\';
      out[n++] = 'n';
    } else {
      out[n++] = *s;
    }
  }
  out[n] = 0;
}

static void render_hist(vt_strbuf *b, const char *name, const char *help, const hist *h) {
  vt_strbuf_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
  long cum = 0;
  for (int i = 0; i < h->n; i++) {
    cum += h->counts[i];
    vt_strbuf_printf(b, "%s_bucket{le=\"%g\"} %ld\n", name, h->bounds[i], cum);
  }
  cum += h->counts[h->n];
  vt_strbuf_printf(b, "%s_bucket{le=\"+Inf\"} %ld\n%s_sum %.9g\n%s_count %ld\n", name, cum, name,
                   h->sum, name, h->count);
}

char *vt_metrics_render(vt_metrics *m) {
  vt_strbuf b = {0};
  pthread_mutex_lock(&m->mu);
  vt_strbuf_printf(&b,
                   "# HELP vitrine_requests_total Finished gRPC calls by method and status code.\n"
                   "# TYPE vitrine_requests_total counter\n");
  for (int i = 0; i < VT_M_COUNT; i++)
    for (int c = 0; c < N_CODES; c++)
      if (m->requests[i][c] || (i == VT_M_RECOMMEND && c == 0))
        vt_strbuf_printf(&b, "vitrine_requests_total{method=\"%s\",code=\"%s\"} %ld\n",
                         METHOD_NAMES[i], CODE_NAMES[c], m->requests[i][c]);
  render_hist(&b, "vitrine_queue_duration_seconds",
              "Time a Recommend waited from acceptance to the start of its batch.", &m->queue);
  render_hist(&b, "vitrine_compute_duration_seconds",
              "Engine time of the batch a Recommend ran in.", &m->compute);
  render_hist(&b, "vitrine_request_duration_seconds",
              "Time from a Recommend's arrival to its answer being encoded.", &m->total);
  render_hist(&b, "vitrine_batch_size", "Requests per engine batch.", &m->batch);
  vt_strbuf_printf(
      &b,
      "# HELP vitrine_queue_depth Requests waiting in the scheduler's queue.\n"
      "# TYPE vitrine_queue_depth gauge\nvitrine_queue_depth %ld\n"
      "# HELP vitrine_inflight_requests Recommend calls accepted and not yet answered.\n"
      "# TYPE vitrine_inflight_requests gauge\nvitrine_inflight_requests %ld\n"
      "# HELP vitrine_serving 1 when health reports SERVING.\n"
      "# TYPE vitrine_serving gauge\nvitrine_serving %d\n"
      "# HELP vitrine_catalog_reloads_total Catalogue reloads by result.\n"
      "# TYPE vitrine_catalog_reloads_total counter\n"
      "vitrine_catalog_reloads_total{result=\"ok\"} %ld\n"
      "vitrine_catalog_reloads_total{result=\"failed\"} %ld\n"
      "# HELP vitrine_tls_handshakes_refused_total TLS handshakes the gRPC port refused.\n"
      "# TYPE vitrine_tls_handshakes_refused_total counter\n"
      "vitrine_tls_handshakes_refused_total %ld\n",
      m->queue_depth, m->inflight, m->serving, m->reloads_ok, m->reloads_failed, m->tls_refused);
  vt_strbuf_printf(
      &b,
      "# HELP vitrine_audit_records_written_total Audit log records written "
      "(--audit-log).\n"
      "# TYPE vitrine_audit_records_written_total counter\n"
      "vitrine_audit_records_written_total %ld\n"
      "# HELP vitrine_audit_records_dropped_total Sampled audit records not written: the "
      "ring was full (the writer fell behind), or one record was larger than "
      "--audit-max-bytes.\n"
      "# TYPE vitrine_audit_records_dropped_total counter\n"
      "vitrine_audit_records_dropped_total{reason=\"ring_full\"} %ld\n"
      "vitrine_audit_records_dropped_total{reason=\"too_large\"} %ld\n"
      "# HELP vitrine_audit_write_errors_total Audit records lost to a failed open, write "
      "or rotation.\n"
      "# TYPE vitrine_audit_write_errors_total counter\n"
      "vitrine_audit_write_errors_total %ld\n",
      m->audit_written, m->audit_ring_full, m->audit_too_large, m->audit_errors);
  vt_strbuf_printf(&b, "# HELP vitrine_worker_batches_total Batches run by each engine worker.\n"
                       "# TYPE vitrine_worker_batches_total counter\n");
  for (int w = 0; w < m->n_workers; w++)
    vt_strbuf_printf(&b, "vitrine_worker_batches_total{worker=\"%d\"} %ld\n", w,
                     m->worker_batches[w]);
  char model[300], catalog[300], rules[300];
  label_escape(model, sizeof model, m->model);
  label_escape(catalog, sizeof catalog, m->catalog);
  label_escape(rules, sizeof rules, m->rules);
  vt_strbuf_printf(
      &b,
      "# HELP vitrine_model_info The loaded model, catalogue and rules versions (value 1; "
      "rules_version empty without a rules file).\n"
      "# TYPE vitrine_model_info gauge\n"
      "vitrine_model_info{model_version=\"%s\",catalog_version=\"%s\","
      "rules_version=\"%s\"} 1\n",
      model, catalog, rules);
  pthread_mutex_unlock(&m->mu);
  if (b.oom) {
    free(b.p);
    return NULL;
  }
  return b.p;
}

/* ---- HTTP (serve/httpd.c: deadlines from the accept, a capped table that closes its oldest
 * connection, so slow or idle clients never block a scrape) ---- */
static char *render_cb(void *arg) { return vt_metrics_render(arg); }

/* /readyz: what the gRPC health service says for readiness (vitrine_serving). */
static int ready_cb(void *arg) {
  vt_metrics *m = arg;
  pthread_mutex_lock(&m->mu);
  int r = m->serving == 1;
  pthread_mutex_unlock(&m->mu);
  return r;
}

int vt_metrics_listen(vt_metrics *m, const char *host, int port, int *bound, vt_err *err) {
  return vt_httpd_start(&m->http, host, port, "text/plain; version=0.0.4; charset=utf-8",
                        render_cb, ready_cb, m, bound, err);
}
