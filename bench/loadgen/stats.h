/* A step's numbers, computed from its records (loadgen.h).
 *
 * Latency percentiles are exact: every OK answer's latency is kept and sorted, and the p-th
 * percentile is the nearest-rank value (the smallest sample with at least p% of the samples at
 * or below it). The histogram written to the output files is derived from the same samples, in
 * log-spaced buckets (20 per decade: each bucket 12% wide), for plots only.
 *
 * Which calls count (the step's result is over its stable windows, first..last):
 *   - throughput: OK answers that COMPLETED inside the windows, per second of window time;
 *   - latency, errors, server timing: calls SCHEDULED inside the windows (open loop: intended
 *     send time; closed loop: send time), wherever they completed, the drain included. Latency
 *     runs from the intended send time, so a call the generator sent late, or one that waited
 *     behind a stalled server, is charged the whole wait (no coordinated omission).
 *   - errors outside the windows (warm-up, earlier windows, after) are counted apart
 *     ("discarded"), never dropped silently. */
#ifndef VITRINE_BENCH_STATS_H
#define VITRINE_BENCH_STATS_H

#include "loadgen.h"

/* The nearest-rank p-th percentile (0 < p <= 100) of n sorted values; 0 when n is 0. */
double vb_percentile(const double *sorted, size_t n, double p);

typedef struct vb_dist {
  long n;
  double mean, min, p50, p90, p95, p99, p999, max;
} vb_dist;
/* The distribution of v (sorted in place). */
void vb_dist_of(vb_dist *d, double *v, size_t n);

#define VB_HIST_PER_DECADE 20
#define VB_HIST_BUCKETS 200 /* 1 us .. 10^10 us */
/* The bucket of a latency in microseconds, and a bucket's lower bound. */
int vb_hist_bucket(double us);
double vb_hist_lo(int bucket);

typedef struct vb_result {
  int mode, concurrency, arrivals;
  double rate; /* open loop target, calls/s */
  int windows, stable, first, last;
  double duration_s;         /* of the windows the result is over */
  long ok;                   /* OK answers completed in the windows */
  double ok_per_s;
  long calls;                /* calls scheduled in the windows and sent */
  long ok_sched;             /* of which OK */
  vb_dist latency_ms;        /* OK answers, from the intended send time */
  long errors;               /* calls scheduled in the windows that did not end OK */
  double error_rate;         /* errors / calls */
  long err[VB_N_STATUS];     /* by status */
  long discarded_errors;     /* errors of calls outside the windows */
  long err_discarded[VB_N_STATUS];
  /* open loop */
  long scheduled, issued, sent, dropped;
  double scheduled_per_s, issued_per_s, sent_per_s;
  vb_dist lag_ms;            /* send time - intended time, of the calls sent */
  int behind;                /* the generator could not keep the schedule (see vb_summarize) */
  /* server side: the Timing of OK answers */
  vb_dist queue_us, compute_us, total_us, batch;
  long max_in_flight;
  long hist[VB_HIST_BUCKETS]; /* OK latencies, us */
  double window_ok_per_s[VB_MAX_WINDOWS + 1], window_p99_ms[VB_MAX_WINDOWS + 1]; /* 1..windows */
} vb_result;

/* max_lag_ms: an open-loop step whose send lag p99 exceeds it is flagged `behind`, as is one that
 * issued fewer than 97% of its scheduled calls. 0, or -1 when out of memory. */
int vb_summarize(const vb_step_data *d, double max_lag_ms, vb_result *r);

#endif
