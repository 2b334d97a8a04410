/* The load generator of vitrine-bench, on the gRPC C core client API: one completion queue,
 * driven by the calling thread, and in open loop one sender thread that issues calls at their
 * scheduled times. Any number of calls are in flight at once (up to max_outstanding).
 *
 * A step is one load level: closed loop (exactly `concurrency` calls outstanding: each answer
 * sends the next request at once) or open loop (calls scheduled at `rate` per second, constant or
 * Poisson gaps, independent of the answers). Its timeline:
 *
 *   t0 |-- warm-up --|-- window 1 --|-- window 2 --| ... |-- window k --| stop, drain
 *
 * A window's results are known when it ends (answers that completed in it); after each window
 * from the second on, the step stops if the last two windows agree (throughput and p99 within the
 * tolerance) or the maximum number of windows has run. Then no new call is sent and the calls in
 * flight are awaited (at most drain_ns, then cancelled and counted as unfinished), so the slow
 * answers of the measured windows are not lost. Every call's times and status are recorded; the
 * numbers are computed from the records (stats.h). */
#ifndef VITRINE_BENCH_LOADGEN_H
#define VITRINE_BENCH_LOADGEN_H

#include <stddef.h>
#include <stdint.h>

#include "requests.h"

/* Statuses: the 17 gRPC codes, then the bench's own outcomes. */
enum {
  VB_UNFINISHED = 17,   /* still in flight when the drain time ran out: cancelled by the bench */
  VB_START_FAILED = 18, /* grpc_call_start_batch refused the call (a bench or library bug) */
  VB_N_STATUS = 19
};
/* "OK", "CANCELLED", ... "UNAUTHENTICATED", "UNFINISHED", "START_FAILED" */
const char *vb_status_name(int status);

enum { VB_CLOSED = 0, VB_OPEN = 1 };
enum { VB_CONSTANT = 0, VB_POISSON = 1 };

#define VB_MAX_WINDOWS 64

/* One load level and how to measure it. Times in nanoseconds. */
typedef struct vb_step_spec {
  int mode;          /* VB_CLOSED or VB_OPEN */
  int concurrency;   /* closed loop: calls kept outstanding */
  double rate;       /* open loop: calls per second */
  int arrivals;      /* open loop: VB_CONSTANT or VB_POISSON gaps */
  uint64_t seed;     /* open loop: the Poisson schedule's seed */
  int64_t warmup_ns; /* results discarded */
  int64_t window_ns; /* one measurement window */
  int max_windows;   /* >= 2 */
  double tolerance;  /* relative: windows agree when throughput and p99 differ by at most this */
  int64_t timeout_ns; /* per-call deadline from its send time; 0: none */
  int64_t drain_ns;   /* the longest wait for the calls in flight at the end */
} vb_step_spec;

/* One call, as recorded when its answer (or error) arrived. Times: ns since the step's t0. */
typedef struct vb_record {
  int64_t intended; /* when it was scheduled to go (open loop); the send time in closed loop */
  int64_t sent;     /* when grpc_call_start_batch was called */
  int64_t done;     /* when the completion queue returned it */
  int32_t status;   /* gRPC code or VB_UNFINISHED / VB_START_FAILED */
  int32_t batch;    /* the server's Timing.batch_size; -1 when the answer had no Timing */
  int64_t queue_us, compute_us, total_us; /* the server's Timing (OK answers) */
} vb_record;

/* A window as seen when it closed: the answers that completed in it. */
typedef struct vb_window {
  int64_t start, end;         /* ns since t0 */
  size_t rec_begin, rec_end;  /* its records (they are in completion order) */
  double ok_per_s, p99_ms;    /* the stability criterion's inputs */
} vb_window;

/* Everything one step produced. Window 0 is the warm-up, 1..n_windows the measured ones, and
 * index n_windows + 1 counts what was scheduled after the last window (before the stop). */
typedef struct vb_step_data {
  vb_step_spec spec;
  vb_record *rec;
  size_t n_rec, cap_rec;
  int n_windows;    /* measured windows run */
  int stable;       /* the last two agreed */
  int first, last;  /* the windows the step's result is computed over */
  vb_window win[VB_MAX_WINDOWS + 2];
  /* open loop, per window of the scheduled time (issued: of the time the sender got to it) */
  long scheduled[VB_MAX_WINDOWS + 2], issued[VB_MAX_WINDOWS + 2], dropped[VB_MAX_WINDOWS + 2];
  long max_in_flight;
  int64_t t0_ns; /* the step's t0 on CLOCK_MONOTONIC (to line its records up with other clocks) */
} vb_step_data;

typedef struct vb_client vb_client;

typedef struct vb_client_opts {
  const char *target;     /* host:port */
  int connections;        /* channels, each its own HTTP/2 connection; calls round-robin */
  int max_outstanding;    /* calls in flight at most (open loop: more are dropped, counted) */
} vb_client_opts;

/* Connects lazily (the first call). NULL with err set on failure. */
vb_client *vb_client_create(const vb_client_opts *o, const vb_requests *reqs, char *err,
                            size_t cap);
void vb_client_destroy(vb_client *c);

/* GetInfo, retried while the server answers UNAVAILABLE (starting) or cannot be reached, for at
 * most timeout_ms. Returns the gRPC status of the last try; *info_json (malloc'd JSON object
 * text, or NULL) gets the answer when OK; msg the status message otherwise. */
int vb_get_info(vb_client *c, long timeout_ms, char **info_json, char *msg, size_t cap);

/* Progress while a step runs: called about every 250 ms, and when a window closes (closed >= 0:
 * its index). elapsed_ns since t0; in_flight calls now. */
typedef void (*vb_progress_fn)(void *arg, const vb_step_data *d, int window, int closed,
                               int64_t elapsed_ns, long in_flight);

/* Runs one step. 0, or -1 with err set (the step could not run: out of memory, bad spec). */
int vb_run_step(vb_client *c, const vb_step_spec *spec, vb_step_data *out, vb_progress_fn fn,
                void *arg, char *err, size_t cap);
void vb_step_data_free(vb_step_data *d);

/* ns on CLOCK_MONOTONIC */
int64_t vb_now_ns(void);

#endif
