/* The table, the progress line and the output files of vitrine-bench (see report.h). */
#include "report.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>
#include <grpc/status.h>

void vb_step_name(char *buf, size_t cap, const vb_result *r) {
  if (r->mode == VB_CLOSED)
    snprintf(buf, cap, "c=%d", r->concurrency);
  else if (r->rate >= 100)
    snprintf(buf, cap, "r=%.0f", r->rate);
  else
    snprintf(buf, cap, "r=%.3g", r->rate);
}

/* ---- the table ---- */

void vb_table_header(FILE *f) {
  fprintf(f, "%-9s %9s %8s %8s %8s %8s %8s %8s  %9s %9s %6s  %-10s %s\n", "step", "ok/s",
          "p50", "p90", "p95", "p99", "p99.9", "max", "srv queue", "compute", "batch",
          "windows", "notes");
  fprintf(f, "%-9s %9s %8s %8s %8s %8s %8s %8s  %9s %9s %6s\n", "", "", "ms", "ms", "ms", "ms",
          "ms", "ms", "p50 ms", "p50 ms", "mean");
  fflush(f);
}

/* "NAME n, NAME n" of the nonzero counts, into buf. */
static void status_list(char *buf, size_t cap, const long *counts) {
  size_t n = 0;
  buf[0] = 0;
  for (int s = 1; s < VB_N_STATUS && n < cap; s++)
    if (counts[s])
      n += (size_t)snprintf(buf + n, cap - n, "%s%s %ld", n ? ", " : "", vb_status_name(s),
                            counts[s]);
}

void vb_table_row(FILE *f, const vb_result *r) {
  char name[32], notes[768], list[512];
  size_t n = 0;
  vb_step_name(name, sizeof name, r);
  notes[0] = 0;
  if (r->errors) {
    status_list(list, sizeof list, r->err);
    n += (size_t)snprintf(notes + n, sizeof notes - n, "ERRORS %.1f%%: %s; ",
                          100.0 * r->error_rate, list);
  }
  if (r->discarded_errors && n < sizeof notes) {
    status_list(list, sizeof list, r->err_discarded);
    n += (size_t)snprintf(notes + n, sizeof notes - n, "outside the windows: %s; ", list);
  }
  if (r->mode == VB_OPEN && n < sizeof notes) {
    n += (size_t)snprintf(notes + n, sizeof notes - n,
                          "sent %.1f/s (scheduled %.1f/s), lag p99 %.2f ms; ", r->sent_per_s,
                          r->scheduled_per_s, r->lag_ms.p99);
    if (r->dropped && n < sizeof notes)
      n += (size_t)snprintf(notes + n, sizeof notes - n, "DROPPED %ld (in-flight cap); ",
                            r->dropped);
    if (r->behind && n < sizeof notes)
      n += (size_t)snprintf(notes + n, sizeof notes - n,
                            "GENERATOR BEHIND (could not keep the schedule); ");
  }
  if (n >= 2 && n < sizeof notes)
    notes[n - 2] = 0; /* the last "; " */
  char win[24], line[1536];
  snprintf(win, sizeof win, "%d %s", r->windows, r->stable ? "stable" : "UNSTABLE");
  const vb_dist *l = &r->latency_ms;
  int k = snprintf(line, sizeof line, "%-9s %9.1f %8.2f %8.2f %8.2f %8.2f %8.2f %8.2f  ", name,
                   r->ok_per_s, l->p50, l->p90, l->p95, l->p99, l->p999, l->max);
  if (r->compute_us.n) /* the server's split, when its answers carry Timing */
    k += snprintf(line + k, sizeof line - (size_t)k, "%9.3f %9.3f %6.2f", r->queue_us.p50 * 1e-3,
                  r->compute_us.p50 * 1e-3, r->batch.mean);
  else
    k += snprintf(line + k, sizeof line - (size_t)k, "%9s %9s %6s", "-", "-", "-");
  snprintf(line + k, sizeof line - (size_t)k, "  %-10s %s", win, notes);
  size_t end = strlen(line);
  while (end > 0 && line[end - 1] == ' ')
    line[--end] = 0;
  fprintf(f, "%s\n", line);
  fflush(f);
}

/* ---- progress (stderr) ---- */

void vb_progress_cb(void *arg, const vb_step_data *d, int window, int closed, int64_t elapsed_ns,
                    long in_flight) {
  vb_progress *p = arg;
  if (p->quiet)
    return;
  const vb_step_spec *s = &d->spec;
  if (closed > 0) { /* a measured window ended */
    const vb_window *w = &d->win[closed];
    char cmp[96] = "";
    if (closed >= 2) {
      const vb_window *v = &d->win[closed - 1];
      double mt = fmax(w->ok_per_s, v->ok_per_s), mp = fmax(w->p99_ms, v->p99_ms);
      snprintf(cmp, sizeof cmp, " (vs the previous: %.1f%%, %.1f%%; tolerance %.0f%%)",
               mt > 0 ? 100 * fabs(w->ok_per_s - v->ok_per_s) / mt : 0.0,
               mp > 0 ? 100 * fabs(w->p99_ms - v->p99_ms) / mp : 0.0, 100 * s->tolerance);
    }
    fprintf(stderr, "%s[%s] window %d: %.1f ok/s, p99 %.2f ms%s, %ld in flight%s",
            p->tty ? "\r\033[K" : "", p->name, closed, w->ok_per_s, w->p99_ms, cmp, in_flight,
            p->tty ? "" : "\n");
  } else if (closed < 0 && p->tty) {
    const vb_window *w = &d->win[window];
    double at = (double)(elapsed_ns - w->start) * 1e-9, len = (double)(w->end - w->start) * 1e-9;
    if (window == 0)
      fprintf(stderr, "\r\033[K[%s] warm-up %.1f/%.1f s, %ld in flight", p->name, at, len,
              in_flight);
    else
      fprintf(stderr, "\r\033[K[%s] window %d (at most %d) %.1f/%.1f s, %ld in flight",
              p->name, window, s->max_windows, at, len, in_flight);
  }
  fflush(stderr);
}

void vb_progress_end(vb_progress *p) {
  if (!p->quiet && p->tty) {
    fputs("\r\033[K", stderr);
    fflush(stderr);
  }
}

/* ---- results.json ---- */

/* A double rounded to 6 significant digits (readable files; far below the noise). */
static double r6(double v) {
  char b[32];
  snprintf(b, sizeof b, "%.6g", v);
  return strtod(b, NULL);
}

static cJSON *dist_json(const vb_dist *d, int full) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddNumberToObject(o, "n", (double)d->n);
  cJSON_AddNumberToObject(o, "mean", r6(d->mean));
  if (full)
    cJSON_AddNumberToObject(o, "min", r6(d->min));
  cJSON_AddNumberToObject(o, "p50", r6(d->p50));
  if (full) {
    cJSON_AddNumberToObject(o, "p90", r6(d->p90));
    cJSON_AddNumberToObject(o, "p95", r6(d->p95));
  }
  cJSON_AddNumberToObject(o, "p99", r6(d->p99));
  if (full)
    cJSON_AddNumberToObject(o, "p99_9", r6(d->p999));
  cJSON_AddNumberToObject(o, "max", r6(d->max));
  return o;
}

static cJSON *status_json(const long *counts) {
  cJSON *o = cJSON_CreateObject();
  for (int s = 1; s < VB_N_STATUS; s++)
    if (counts[s])
      cJSON_AddNumberToObject(o, vb_status_name(s), (double)counts[s]);
  return o;
}

static cJSON *step_json(const vb_result *r) {
  static const char *const ARRIVALS[] = {"constant", "poisson"};
  char name[32];
  vb_step_name(name, sizeof name, r);
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "step", name);
  cJSON_AddStringToObject(o, "mode", r->mode == VB_CLOSED ? "closed" : "open");
  if (r->mode == VB_CLOSED) {
    cJSON_AddNumberToObject(o, "concurrency", r->concurrency);
  } else {
    cJSON_AddNumberToObject(o, "rate", r6(r->rate));
    cJSON_AddStringToObject(o, "arrivals", ARRIVALS[r->arrivals]);
  }
  cJSON_AddNumberToObject(o, "windows", r->windows);
  cJSON_AddBoolToObject(o, "stable", r->stable);
  cJSON *rw = cJSON_AddArrayToObject(o, "result_windows");
  cJSON_AddItemToArray(rw, cJSON_CreateNumber(r->first));
  cJSON_AddItemToArray(rw, cJSON_CreateNumber(r->last));
  cJSON_AddNumberToObject(o, "duration_s", r6(r->duration_s));
  cJSON_AddNumberToObject(o, "ok", (double)r->ok);
  cJSON_AddNumberToObject(o, "ok_per_s", r6(r->ok_per_s));
  cJSON_AddNumberToObject(o, "calls", (double)r->calls);
  cJSON_AddNumberToObject(o, "calls_ok", (double)r->ok_sched);
  cJSON_AddNumberToObject(o, "errors", (double)r->errors);
  cJSON_AddNumberToObject(o, "error_rate", r6(r->error_rate));
  cJSON_AddItemToObject(o, "errors_by_status", status_json(r->err));
  cJSON_AddNumberToObject(o, "discarded_errors", (double)r->discarded_errors);
  cJSON_AddItemToObject(o, "discarded_errors_by_status", status_json(r->err_discarded));
  cJSON_AddItemToObject(o, "latency_ms", dist_json(&r->latency_ms, 1));
  if (r->mode == VB_OPEN) {
    cJSON *g = cJSON_AddObjectToObject(o, "generator");
    cJSON_AddNumberToObject(g, "target_per_s", r6(r->rate));
    cJSON_AddNumberToObject(g, "scheduled", (double)r->scheduled);
    cJSON_AddNumberToObject(g, "scheduled_per_s", r6(r->scheduled_per_s));
    cJSON_AddNumberToObject(g, "issued", (double)r->issued);
    cJSON_AddNumberToObject(g, "issued_per_s", r6(r->issued_per_s));
    cJSON_AddNumberToObject(g, "sent", (double)r->sent);
    cJSON_AddNumberToObject(g, "sent_per_s", r6(r->sent_per_s));
    cJSON_AddNumberToObject(g, "dropped", (double)r->dropped);
    cJSON_AddBoolToObject(g, "behind", r->behind);
    cJSON_AddItemToObject(g, "lag_ms", dist_json(&r->lag_ms, 0));
  }
  cJSON *sv = cJSON_AddObjectToObject(o, "server");
  cJSON_AddNumberToObject(sv, "answers_with_timing", (double)r->compute_us.n);
  cJSON_AddItemToObject(sv, "queue_us", dist_json(&r->queue_us, 0));
  cJSON_AddItemToObject(sv, "compute_us", dist_json(&r->compute_us, 0));
  cJSON_AddItemToObject(sv, "total_us", dist_json(&r->total_us, 0));
  cJSON_AddItemToObject(sv, "batch_size", dist_json(&r->batch, 0));
  cJSON_AddNumberToObject(o, "max_in_flight", (double)r->max_in_flight);
  cJSON *wh = cJSON_AddArrayToObject(o, "window_history");
  for (int w = 1; w <= r->windows; w++) {
    cJSON *x = cJSON_CreateObject();
    cJSON_AddNumberToObject(x, "window", w);
    cJSON_AddNumberToObject(x, "ok_per_s", r6(r->window_ok_per_s[w]));
    cJSON_AddNumberToObject(x, "p99_ms", r6(r->window_p99_ms[w]));
    cJSON_AddItemToArray(wh, x);
  }
  cJSON *h = cJSON_AddObjectToObject(o, "histogram");
  cJSON_AddStringToObject(h, "unit", "us");
  cJSON_AddStringToObject(h, "of", "OK latencies of the result windows");
  cJSON_AddNumberToObject(h, "buckets_per_decade", VB_HIST_PER_DECADE);
  cJSON *b = cJSON_AddArrayToObject(h, "buckets");
  for (int i = 0; i < VB_HIST_BUCKETS; i++)
    if (r->hist[i]) {
      cJSON *x = cJSON_CreateArray();
      cJSON_AddItemToArray(x, cJSON_CreateNumber(r6(i == 0 ? 0 : vb_hist_lo(i))));
      cJSON_AddItemToArray(x, cJSON_CreateNumber(r6(vb_hist_lo(i + 1))));
      cJSON_AddItemToArray(x, cJSON_CreateNumber((double)r->hist[i]));
      cJSON_AddItemToArray(b, x);
    }
  return o;
}

static cJSON *run_json(const vb_run_info *run) {
  cJSON *p = cJSON_CreateObject();
  cJSON_AddStringToObject(p, "target", run->target);
  cJSON_AddStringToObject(p, "requests", run->requests_path);
  cJSON_AddNumberToObject(p, "n_requests", run->n_requests);
  cJSON_AddNumberToObject(p, "request_bytes_mean", r6(run->request_bytes_mean));
  if (run->concurrency_arg)
    cJSON_AddStringToObject(p, "concurrency", run->concurrency_arg);
  if (run->rate_arg) {
    cJSON_AddStringToObject(p, "rate", run->rate_arg);
    cJSON_AddStringToObject(p, "arrivals", run->arrivals);
  }
  cJSON_AddNumberToObject(p, "seed", (double)run->seed);
  cJSON_AddNumberToObject(p, "warmup_s", run->warmup_s);
  cJSON_AddNumberToObject(p, "window_s", run->window_s);
  cJSON_AddNumberToObject(p, "max_windows", run->max_windows);
  cJSON_AddNumberToObject(p, "tolerance", run->tolerance);
  cJSON_AddNumberToObject(p, "timeout_ms", (double)run->timeout_ms);
  cJSON_AddNumberToObject(p, "max_outstanding", run->max_outstanding);
  cJSON_AddNumberToObject(p, "connections", run->connections);
  cJSON_AddNumberToObject(p, "drain_s", run->drain_s);
  cJSON_AddNumberToObject(p, "max_lag_ms", run->max_lag_ms);
  cJSON_AddStringToObject(p, "started_at", run->started_at);
  cJSON_AddStringToObject(p, "client_host", run->host);
  cJSON_AddNumberToObject(p, "client_cpus", (double)run->cpus);
  return p;
}

static int write_file(const char *dir, const char *name, const char *text, char *err,
                      size_t cap) {
  char path[4096], tmp[4200];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "w");
  if (!f) {
    snprintf(err, cap, "%s: %s", tmp, strerror(errno));
    return -1;
  }
  int bad = fputs(text, f) < 0;
  bad |= fclose(f) != 0;
  if (bad || rename(tmp, path) != 0) {
    snprintf(err, cap, "%s: cannot write", path);
    return -1;
  }
  return 0;
}

/* mkdir -p */
static int make_dirs(const char *dir, char *err, size_t cap) {
  char p[4096];
  snprintf(p, sizeof p, "%s", dir);
  for (char *s = p + 1;; s++) {
    if (*s == '/' || !*s) {
      char c = *s;
      *s = 0;
      if (mkdir(p, 0777) != 0 && errno != EEXIST) {
        snprintf(err, cap, "%s: %s", p, strerror(errno));
        return -1;
      }
      *s = c;
      if (!c)
        return 0;
    }
  }
}

/* A growing string for the CSV. */
typedef struct sbuf {
  char *p;
  size_t n, cap;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
    va_end(ap);
    if (k < 0)
      return;
    if (b->p && b->n + (size_t)k < b->cap) {
      b->n += (size_t)k;
      return;
    }
    size_t nc = (b->cap + (size_t)k + 1) * 2;
    char *q = realloc(b->p, nc);
    if (!q)
      return;
    b->p = q;
    b->cap = nc;
  }
}

static char *results_csv(const vb_run_info *run, const vb_result *res, int n) {
  sbuf b = {0};
  char label[512]; /* quoted CSV field: " doubled */
  size_t k = 0;
  for (const char *p = run->label; *p && k + 3 < sizeof label; p++) {
    if (*p == '"')
      label[k++] = '"';
    label[k++] = *p;
  }
  label[k] = 0;
  sb_printf(&b, "label,step,mode,concurrency,rate,arrivals,windows,stable,duration_s,ok,"
                "ok_per_s,calls,errors,error_rate,errors_by_status,discarded_errors,"
                "lat_mean_ms,lat_min_ms,lat_p50_ms,lat_p90_ms,lat_p95_ms,lat_p99_ms,"
                "lat_p99_9_ms,lat_max_ms,scheduled_per_s,issued_per_s,sent_per_s,dropped,"
                "behind,lag_p50_ms,lag_p99_ms,lag_max_ms,srv_queue_mean_us,srv_queue_p50_us,"
                "srv_queue_p99_us,srv_compute_mean_us,srv_compute_p50_us,srv_compute_p99_us,"
                "srv_total_mean_us,srv_total_p50_us,srv_total_p99_us,batch_mean,batch_p50,"
                "batch_p99,max_in_flight\n");
  for (int i = 0; i < n; i++) {
    const vb_result *r = &res[i];
    char name[32], errs[512] = "";
    size_t e = 0;
    vb_step_name(name, sizeof name, r);
    for (int s = 1; s < VB_N_STATUS && e < sizeof errs; s++)
      if (r->err[s])
        e += (size_t)snprintf(errs + e, sizeof errs - e, "%s%s=%ld", e ? ";" : "",
                              vb_status_name(s), r->err[s]);
    int open = r->mode == VB_OPEN;
    const vb_dist *l = &r->latency_ms;
    /* the label is quoted (a user string); no other field has a comma or a quote */
    sb_printf(&b, "\"%s\",%s,%s,", label, name, open ? "open" : "closed");
    if (open)
      sb_printf(&b, ",%.6g,%s,", r->rate, r->arrivals == VB_POISSON ? "poisson" : "constant");
    else
      sb_printf(&b, "%d,,,", r->concurrency);
    sb_printf(&b, "%d,%d,%.6g,%ld,%.6g,%ld,%ld,%.6g,%s,%ld,", r->windows, r->stable,
              r->duration_s, r->ok, r->ok_per_s, r->calls, r->errors, r->error_rate, errs,
              r->discarded_errors);
    sb_printf(&b, "%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,", l->mean, l->min, l->p50, l->p90,
              l->p95, l->p99, l->p999, l->max);
    if (open)
      sb_printf(&b, "%.6g,%.6g,%.6g,%ld,%d,%.6g,%.6g,%.6g,", r->scheduled_per_s, r->issued_per_s,
                r->sent_per_s, r->dropped, r->behind, r->lag_ms.p50, r->lag_ms.p99,
                r->lag_ms.max);
    else
      sb_printf(&b, ",,,,,,,,");
    if (r->compute_us.n)
      sb_printf(&b, "%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,",
                r->queue_us.mean, r->queue_us.p50, r->queue_us.p99, r->compute_us.mean,
                r->compute_us.p50, r->compute_us.p99, r->total_us.mean, r->total_us.p50,
                r->total_us.p99, r->batch.mean, r->batch.p50, r->batch.p99);
    else
      sb_printf(&b, ",,,,,,,,,,,,");
    sb_printf(&b, "%ld\n", r->max_in_flight);
  }
  return b.p;
}

int vb_write_results(const char *dir, const vb_run_info *run, const vb_result *res, int n,
                     char *err, size_t cap) {
  if (make_dirs(dir, err, cap))
    return -1;
  cJSON *root = cJSON_CreateObject();
  cJSON_AddStringToObject(root, "tool", "vitrine-bench");
  cJSON_AddNumberToObject(root, "format_version", 1);
  cJSON_AddStringToObject(root, "label", run->label);
  cJSON_AddItemToObject(root, "params", run_json(run));
  cJSON *info = run->server_info_json ? cJSON_Parse(run->server_info_json) : NULL;
  cJSON_AddItemToObject(root, "server", info ? info : cJSON_CreateNull());
  cJSON_AddStringToObject(root, "percentiles",
                          "exact: nearest rank over every OK answer's latency (sorted samples)");
  cJSON_AddStringToObject(root, "latency",
                          "from the call's intended send time (open loop: its scheduled time; "
                          "closed loop: when it was sent) to its answer");
  cJSON *steps = cJSON_AddArrayToObject(root, "steps");
  for (int i = 0; i < n; i++)
    cJSON_AddItemToArray(steps, step_json(&res[i]));
  char *json = cJSON_Print(root);
  cJSON_Delete(root);
  char *csv = results_csv(run, res, n);
  int rc = -1;
  if (!json || !csv)
    snprintf(err, cap, "out of memory");
  else if (write_file(dir, "results.json", json, err, cap) == 0 &&
           write_file(dir, "results.csv", csv, err, cap) == 0)
    rc = 0;
  free(json);
  free(csv);
  return rc;
}

int vb_write_records(const char *dir, int step, const vb_step_data *d, char *err, size_t cap) {
  if (make_dirs(dir, err, cap))
    return -1;
  char path[4200];
  snprintf(path, sizeof path, "%s/records-%d.csv", dir, step);
  FILE *f = fopen(path, "w");
  if (!f) {
    snprintf(err, cap, "%s: %s", path, strerror(errno));
    return -1;
  }
  fprintf(f, "# t0_monotonic_ns=%lld\n", (long long)d->t0_ns);
  fprintf(f, "intended_ns,sent_ns,done_ns,status,batch,queue_us,compute_us,total_us\n");
  for (size_t i = 0; i < d->n_rec; i++) {
    const vb_record *r = &d->rec[i];
    fprintf(f, "%lld,%lld,%lld,%s,%d,%lld,%lld,%lld\n", (long long)r->intended,
            (long long)r->sent, (long long)r->done, vb_status_name(r->status), (int)r->batch,
            (long long)r->queue_us, (long long)r->compute_us, (long long)r->total_us);
  }
  int bad = ferror(f);
  if (fclose(f) != 0 || bad) {
    snprintf(err, cap, "%s: write failed", path);
    return -1;
  }
  return 0;
}
