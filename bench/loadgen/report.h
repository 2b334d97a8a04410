/* What vitrine-bench shows and writes: the table on stdout (one row per step, as it finishes),
 * the progress line on stderr, and results.json / results.csv under --out. */
#ifndef VITRINE_BENCH_REPORT_H
#define VITRINE_BENCH_REPORT_H

#include <stdio.h>

#include "loadgen.h"
#include "stats.h"

/* The run's parameters, as given (and resolved), for the output files. */
typedef struct vb_run_info {
  const char *label, *target, *requests_path;
  int n_requests;
  double request_bytes_mean;
  const char *concurrency_arg, *rate_arg; /* as given, or NULL */
  const char *arrivals;
  unsigned long long seed;
  double warmup_s, window_s, tolerance, drain_s, max_lag_ms;
  int max_windows, max_outstanding, connections;
  long timeout_ms;
  const char *server_info_json; /* GetInfo's answer as a JSON object, or NULL */
  char started_at[32];          /* UTC, ISO 8601 */
  char host[64];
  long cpus;
} vb_run_info;

/* "c=8" or "r=250" */
void vb_step_name(char *buf, size_t cap, const vb_result *r);

void vb_table_header(FILE *f);
void vb_table_row(FILE *f, const vb_result *r);

/* The loadgen progress callback; arg: a vb_progress. */
typedef struct vb_progress {
  int quiet, tty;
  char name[32]; /* the step's name */
} vb_progress;
void vb_progress_cb(void *arg, const vb_step_data *d, int window, int closed, int64_t elapsed_ns,
                    long in_flight);
/* Clears the progress line (a terminal) when a step is done. */
void vb_progress_end(vb_progress *p);

/* Writes dir/results.json and dir/results.csv (every step so far). 0, or -1 with err. */
int vb_write_results(const char *dir, const vb_run_info *run, const vb_result *res, int n,
                     char *err, size_t cap);
/* Writes dir/records-<step>.csv (step: 1, 2, ... in the order run): every call of the step, one
 * line each (intended, sent and done times in ns since the step's t0, the status's name, the
 * server's batch size and timing), after a line `# t0_monotonic_ns=<t0>` that places t0 on
 * CLOCK_MONOTONIC. For analyses the summary cannot give (bench/soak.py's overload). 0, or -1. */
int vb_write_records(const char *dir, int step, const vb_step_data *d, char *err, size_t cap);

#endif
