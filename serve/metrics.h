/* Prometheus metrics for `vitrine serve`: counters, gauges and histograms kept in memory and served
 * as Prometheus text (version 0.0.4) over HTTP on its own port (GET /metrics; serve/httpd.h: slow
 * and excess connections are closed so that scrapes keep working).
 * Every function is thread-safe. */
#ifndef VITRINE_SERVE_METRICS_H
#define VITRINE_SERVE_METRICS_H

#include "engine/status.h"

typedef struct vt_metrics vt_metrics;

/* The methods requests are counted by. */
enum {
  VT_M_RECOMMEND = 0,
  VT_M_GETINFO,
  VT_M_HEALTH_CHECK,
  VT_M_HEALTH_WATCH,
  VT_M_UNKNOWN,
  VT_M_COUNT
};

vt_metrics *vt_metrics_create(void); /* NULL when out of memory */
void vt_metrics_free(vt_metrics *m); /* stops the HTTP endpoint first */

/* One finished call: method (VT_M_*) and its gRPC status code (0..16). */
void vt_metrics_request(vt_metrics *m, int method, int code);
/* Durations of one answered Recommend, in seconds. */
void vt_metrics_durations(vt_metrics *m, double queue_s, double compute_s, double total_s);
/* One engine batch of n requests, run by worker w (0..63). */
void vt_metrics_batch(vt_metrics *m, int w, int n);
/* Gauges. */
void vt_metrics_queue_depth(vt_metrics *m, long depth);
void vt_metrics_inflight_add(vt_metrics *m, long delta);
long vt_metrics_inflight(vt_metrics *m);
void vt_metrics_serving(vt_metrics *m, int serving);
/* The versions of vitrine_model_info (rules: "" without a rules file). */
void vt_metrics_versions(vt_metrics *m, const char *model, const char *catalog,
                         const char *rules);
/* A catalogue reload: ok 1 or 0. */
void vt_metrics_reload(vt_metrics *m, int ok);
/* A TLS handshake the server refused (a plaintext client, an untrusted or missing certificate). */
void vt_metrics_tls_refused(vt_metrics *m);

/* The audit log (serve/audit.h): records written, dropped because the ring was full or the record
 * was larger than a whole file may be, and failed writes (deltas). */
void vt_metrics_audit(vt_metrics *m, long written, long ring_full, long too_large, long errors);

/* The whole exposition as text (malloc'd, NUL-terminated; NULL when out of memory). */
char *vt_metrics_render(vt_metrics *m);

/* Serves GET /metrics on host:port (host: an IPv4 address, port 0: any free port); *bound gets
 * the port. VT_EIO when it cannot listen. */
int vt_metrics_listen(vt_metrics *m, const char *host, int port, int *bound, vt_err *err);

#endif
