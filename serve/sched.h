/* The dynamic-batching scheduler of `vitrine serve`.
 *
 * Requests wait in one bounded queue with two priority levels (high first, FIFO within a level).
 * W engine workers (one per device; on the CPU, one per --workers) pull batches from it: a worker
 * that is free takes up to max_batch requests as soon as max_batch are waiting or the oldest has
 * waited max_delay_us, so batches go to whichever engine is least loaded (an idle one) without a
 * dispatcher guessing. Before compute, a request whose deadline has passed or whose call was
 * cancelled is dropped and finished with VT_JOB_EXPIRED / VT_JOB_CANCELLED; a full queue refuses
 * a new request at once (vt_sched_submit answers VT_SCHED_FULL) instead of growing, and so does a
 * queue whose work ahead of a request would outlast its deadline (VT_SCHED_LATE): under overload
 * the excess is refused on arrival instead of expiring in the queue after its wait.
 *
 * The catalogue can be replaced while serving: a "generation" is a catalogue with one engine per
 * worker built for it. Each request is parsed against the generation current when it arrived and
 * runs on that generation's engines (a batch never mixes generations); a generation is freed when
 * its last request and the scheduler have let go of it, so a reload drops no request. */
#ifndef VITRINE_SERVE_SCHED_H
#define VITRINE_SERVE_SCHED_H

#include <stdatomic.h>
#include <stdint.h>

#include "engine/bundle.h"
#include "engine/catalog.h"
#include "engine/engine.h"
#include "metrics.h"
#include "engine/request.h"

typedef struct vt_gen {
  const vt_bundle *b; /* shared, not owned */
  vt_catalog *c;      /* owned */
  int n_engines;
  vt_engine **engines; /* one per worker, owned */
  atomic_int refs;
} vt_gen;

/* Loads nothing: builds one engine per model (device) for catalogue c (taking ownership of c,
 * also on failure; its tables are placed on every device before the generation exists, so a
 * reload swaps all devices at once) and runs a warm-up batch through each (delay_us, for tests,
 * is added to the first one). graphs: the engines replay their decode from CUDA graphs.
 * refs starts at 1. */
int vt_gen_create(vt_gen **out, const vt_bundle *b, vt_model *const *models, int n, vt_catalog *c,
                  int delay_us, int graphs, vt_err *err);
void vt_gen_ref(vt_gen *g);
void vt_gen_unref(vt_gen *g); /* frees at zero */

enum { VT_PRIO_HIGH = 0, VT_PRIO_NORMAL = 1, VT_N_PRIOS = 2 };
enum { VT_JOB_OK = 0, VT_JOB_EXPIRED, VT_JOB_CANCELLED, VT_JOB_FAILED, VT_JOB_SHUTDOWN };

typedef struct vt_job vt_job;
/* Called once per submitted job, on a worker thread (or on the thread calling vt_sched_free, or
 * for an expired or cancelled job that a full queue lets go of, on the thread calling
 * vt_sched_submit), with the job's status and, for VT_JOB_OK, its storefront (valid during the
 * call only). */
typedef void (*vt_job_done_fn)(vt_job *j, const vt_storefront *s);

struct vt_job {
  /* set by the submitter */
  vt_request req;      /* parsed against gen->c */
  vt_gen *gen;         /* the submitter's reference */
  int priority;        /* VT_PRIO_* */
  int64_t deadline_ns; /* monotonic (vt_now_ns); INT64_MAX: none */
  atomic_int cancelled;
  vt_job_done_fn done;
  /* set by the scheduler before done() */
  int64_t enqueued_ns, started_ns, finished_ns;
  int status, batch_size;
  char msg[256];
  vt_job *next;
};

typedef struct vt_sched_opts {
  int workers, max_batch, max_delay_us, capacity;
  int max_queue_ms; /* refuse a job the work ahead would keep waiting longer (0: no limit) */
  int compute_delay_us; /* testing: added to every batch's compute (0: none) */
} vt_sched_opts;

typedef struct vt_sched vt_sched;

int64_t vt_now_ns(void); /* CLOCK_MONOTONIC */

/* Starts the workers on generation g (the scheduler takes the caller's reference). */
int vt_sched_create(vt_sched **out, const vt_sched_opts *o, vt_gen *g, vt_metrics *m,
                    vt_err *err);
/* The current generation, with a reference for the caller. */
vt_gen *vt_sched_gen(vt_sched *s);
/* Makes g current (taking the caller's reference); requests already queued keep theirs. */
void vt_sched_publish(vt_sched *s, vt_gen *g);

enum { VT_SCHED_FULL = 1, VT_SCHED_CLOSED = 2, VT_SCHED_LATE = 3 };
/* Queues j: 0, VT_SCHED_FULL (capacity reached), VT_SCHED_LATE (the jobs ahead of it and j
 * itself, at the recent compute time per request shared by the workers, would take more than 3/4
 * of the time its deadline leaves, the rest being the margin for the estimate's error; j->msg says
 * how long: only when a queue exists and a batch has been timed; also when the wait alone would
 * exceed max_queue_ms, deadline or not) or VT_SCHED_CLOSED (stopping).
 * On non-zero the job was not taken and done() will not be called. A full queue first finishes
 * the expired and cancelled jobs it holds (VT_JOB_EXPIRED / VT_JOB_CANCELLED, done() called
 * here), so only calls someone still waits for count against the capacity. */
int vt_sched_submit(vt_sched *s, vt_job *j);
/* The same decision for a job not built yet (priority, deadline_ns as in vt_job), queueing
 * nothing: the server asks before it decodes a request, so that under overload a refusal costs
 * no parsing. msg (cap bytes) is set for VT_SCHED_LATE. vt_sched_submit decides again. */
int vt_sched_admit(vt_sched *s, int priority, int64_t deadline_ns, char *msg, size_t cap);
long vt_sched_depth(vt_sched *s);
/* Waits until nothing is queued or running: 0, or -1 after timeout_ms. */
int vt_sched_wait_idle(vt_sched *s, long timeout_ms);
/* Refuses new jobs, lets the workers finish their batches, joins them and finishes whatever is
 * still queued with VT_JOB_SHUTDOWN. Then frees everything. */
void vt_sched_free(vt_sched *s);

#endif
