/* A step's numbers from its records (see stats.h). */
#include "stats.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/status.h>

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

double vb_percentile(const double *sorted, size_t n, double p) {
  if (n == 0)
    return 0;
  /* nearest rank: ceil(p/100 * n), 1-based */
  double r = ceil(p / 100.0 * (double)n - 1e-9);
  size_t i = r < 1 ? 0 : (size_t)r - 1;
  return sorted[i < n ? i : n - 1];
}

void vb_dist_of(vb_dist *d, double *v, size_t n) {
  memset(d, 0, sizeof *d);
  d->n = (long)n;
  if (n == 0)
    return;
  qsort(v, n, sizeof *v, cmp_double);
  double sum = 0;
  for (size_t i = 0; i < n; i++)
    sum += v[i];
  d->mean = sum / (double)n;
  d->min = v[0];
  d->max = v[n - 1];
  d->p50 = vb_percentile(v, n, 50);
  d->p90 = vb_percentile(v, n, 90);
  d->p95 = vb_percentile(v, n, 95);
  d->p99 = vb_percentile(v, n, 99);
  d->p999 = vb_percentile(v, n, 99.9);
}

int vb_hist_bucket(double us) {
  if (!(us >= 1))
    return 0;
  int b = (int)floor(log10(us) * VB_HIST_PER_DECADE);
  return b < VB_HIST_BUCKETS ? b : VB_HIST_BUCKETS - 1;
}

double vb_hist_lo(int bucket) { return pow(10.0, (double)bucket / VB_HIST_PER_DECADE); }

int vb_summarize(const vb_step_data *d, double max_lag_ms, vb_result *r) {
  memset(r, 0, sizeof *r);
  const vb_step_spec *s = &d->spec;
  r->mode = s->mode;
  r->concurrency = s->concurrency;
  r->rate = s->rate;
  r->arrivals = s->arrivals;
  r->windows = d->n_windows;
  r->stable = d->stable;
  r->first = d->first;
  r->last = d->last;
  r->max_in_flight = d->max_in_flight;
  for (int w = 1; w <= d->n_windows; w++) {
    r->window_ok_per_s[w] = d->win[w].ok_per_s;
    r->window_p99_ms[w] = d->win[w].p99_ms;
  }
  if (d->n_windows < 1)
    return 0;
  int64_t lo = d->win[d->first].start, hi = d->win[d->last].end;
  r->duration_s = (double)(hi - lo) * 1e-9;

  size_t n = d->n_rec;
  /* sample arrays: latency, send lag, and the server's queue, compute, total, batch size */
  double *buf[6] = {0};
  for (int k = 0; k < 6; k++)
    if (!(buf[k] = malloc((n ? n : 1) * sizeof(double)))) {
      for (int j = 0; j < k; j++)
        free(buf[j]);
      return -1;
    }
  double *lat = buf[0], *lag = buf[1], *q = buf[2], *c = buf[3], *t = buf[4], *b = buf[5];
  size_t n_lat = 0, n_lag = 0, n_timed = 0;
  for (size_t i = 0; i < n; i++) {
    const vb_record *x = &d->rec[i];
    int ok = x->status == GRPC_STATUS_OK;
    if (ok && x->done >= lo && x->done < hi)
      r->ok++;
    if (x->intended < lo || x->intended >= hi) {
      if (!ok) {
        r->discarded_errors++;
        r->err_discarded[x->status]++;
      }
      continue;
    }
    r->calls++;
    if (x->status != VB_START_FAILED)
      lag[n_lag++] = (double)(x->sent - x->intended) * 1e-6;
    if (!ok) {
      r->errors++;
      r->err[x->status]++;
      continue;
    }
    r->ok_sched++;
    double ms = (double)(x->done - x->intended) * 1e-6;
    lat[n_lat++] = ms;
    r->hist[vb_hist_bucket(ms * 1e3)]++;
    if (x->batch >= 0) {
      q[n_timed] = (double)x->queue_us;
      c[n_timed] = (double)x->compute_us;
      t[n_timed] = (double)x->total_us;
      b[n_timed] = (double)x->batch;
      n_timed++;
    }
  }
  r->ok_per_s = r->duration_s > 0 ? (double)r->ok / r->duration_s : 0;
  r->error_rate = r->calls ? (double)r->errors / (double)r->calls : 0;
  vb_dist_of(&r->latency_ms, lat, n_lat);
  vb_dist_of(&r->queue_us, q, n_timed);
  vb_dist_of(&r->compute_us, c, n_timed);
  vb_dist_of(&r->total_us, t, n_timed);
  vb_dist_of(&r->batch, b, n_timed);
  if (s->mode == VB_OPEN) {
    vb_dist_of(&r->lag_ms, lag, n_lag);
    for (int w = d->first; w <= d->last; w++) {
      r->scheduled += d->scheduled[w];
      r->issued += d->issued[w];
      r->dropped += d->dropped[w];
    }
    /* sent: calls actually started, by send time, in the windows */
    long sent_in = 0;
    for (size_t i = 0; i < n; i++)
      if (d->rec[i].status != VB_START_FAILED && d->rec[i].sent >= lo && d->rec[i].sent < hi)
        sent_in++;
    r->sent = sent_in;
    r->scheduled_per_s = (double)r->scheduled / r->duration_s;
    r->issued_per_s = (double)r->issued / r->duration_s;
    r->sent_per_s = (double)r->sent / r->duration_s;
    r->behind = (double)r->issued < 0.97 * (double)r->scheduled || r->lag_ms.p99 > max_lag_ms;
  }
  for (int k = 0; k < 6; k++)
    free(buf[k]);
  return 0;
}
