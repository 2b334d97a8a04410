/* The dynamic-batching scheduler (see sched.h). One mutex and two condition variables: `work`
 * wakes workers (a job arrived, or stopping), `idle` wakes vt_sched_wait_idle. */
#include "sched.h"

#include "kernels/ops.h"
#include "server.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

int64_t vt_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- generations ---- */

/* A small valid request (the first region, one view of the first product) for warm-up. */
static int warmup_request(vt_request *r, const vt_bundle *b, const vt_catalog *c, vt_err *err) {
  cJSON *root = cJSON_CreateObject();
  cJSON *evs = cJSON_AddArrayToObject(root, "events");
  cJSON *ev = cJSON_CreateObject();
  cJSON_AddStringToObject(ev, "action", "view");
  cJSON_AddNumberToObject(ev, "ts", 1700000000);
  if (c->n_products > 0)
    cJSON_AddStringToObject(ev, "item", c->ids[0]);
  cJSON_AddItemToArray(evs, ev);
  cJSON_AddNumberToObject(root, "now", 1700003600);
  cJSON_AddStringToObject(root, "region", b->n_regions > 0 ? b->regions[0].name : "");
  cJSON_AddNumberToObject(root, "sections", 1);
  cJSON_AddNumberToObject(root, "keywords_per_section", 1);
  cJSON_AddNumberToObject(root, "products_per_section", 1);
  char *json = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  if (!json)
    return vt_fail(err, VT_ENOMEM, "out of memory");
  int rc = vt_request_parse(r, json, strlen(json), b, c, err);
  free(json);
  return rc;
}

static void sleep_us(long us);

int vt_gen_create(vt_gen **out, const vt_bundle *b, vt_model *const *models, int n, vt_catalog *c,
                  int delay_us, int graphs, vt_err *err) {
  *out = NULL;
  vt_gen *g = calloc(1, sizeof *g);
  vt_engine **e = calloc((size_t)(n > 0 ? n : 1), sizeof *e);
  vt_storefront *s = calloc(1, sizeof *s);
  vt_request r;
  memset(&r, 0, sizeof r);
  int rc = VT_OK;
  if (!g || !e || !s) {
    rc = vt_fail(err, VT_ENOMEM, "out of memory");
    goto fail;
  }
  g->b = b;
  g->c = c;
  g->n_engines = n;
  g->engines = e;
  atomic_init(&g->refs, 1);
  if ((rc = warmup_request(&r, b, c, err)))
    goto fail;
  if (delay_us > 0)
    sleep_us(delay_us);
  if ((rc = vt_engines_create(e, models, n, c, err)))
    goto fail;
  for (int i = 0; i < n; i++) {
    vt_engine_set_graphs(e[i], graphs);
    if ((rc = vt_engine_run(e[i], &r, 1, s, NULL, NULL, err)))
      goto fail;
  }
  vt_request_free(&r);
  free(s);
  *out = g;
  return VT_OK;
fail:
  vt_request_free(&r);
  free(s);
  for (int i = 0; e && i < n; i++)
    vt_engine_free(e[i]);
  free(e);
  free(g);
  vt_catalog_free(c);
  return rc;
}

void vt_gen_ref(vt_gen *g) { atomic_fetch_add(&g->refs, 1); }

void vt_gen_unref(vt_gen *g) {
  if (!g || atomic_fetch_sub(&g->refs, 1) != 1)
    return;
  for (int i = 0; i < g->n_engines; i++)
    vt_engine_free(g->engines[i]);
  free(g->engines);
  vt_catalog_free(g->c);
  free(g);
}

/* ---- the scheduler ---- */
typedef struct worker {
  struct vt_sched *s;
  int id;
  pthread_t thread;
  int started;
  vt_request *reqs;   /* (max_batch) shallow copies for vt_engine_run */
  vt_storefront *out; /* (max_batch) */
  vt_job **batch;     /* (max_batch) */
} worker;

struct vt_sched {
  vt_sched_opts o;
  vt_metrics *m;
  pthread_mutex_t mu;
  pthread_cond_t work, idle;
  vt_job *head[VT_N_PRIOS], *tail[VT_N_PRIOS];
  long depth;
  int running, stopping;
  int64_t req_ns; /* compute time per request of recent batches (moving average; 0: none yet) */
  vt_gen *gen;
  worker *w;
};

static void push(vt_sched *s, vt_job *j) {
  int p = j->priority;
  j->next = NULL;
  if (s->tail[p])
    s->tail[p]->next = j;
  else
    s->head[p] = j;
  s->tail[p] = j;
  s->depth++;
}

/* The oldest queued job's enqueue time. */
static int64_t oldest_ns(const vt_sched *s) {
  int64_t t = INT64_MAX;
  for (int p = 0; p < VT_N_PRIOS; p++)
    if (s->head[p] && s->head[p]->enqueued_ns < t)
      t = s->head[p]->enqueued_ns;
  return t;
}

/* VT_JOB_EXPIRED or VT_JOB_CANCELLED for a job nobody waits for any more, else VT_JOB_OK. */
static int job_dead(vt_job *j, int64_t now) {
  return j->deadline_ns <= now           ? VT_JOB_EXPIRED
         : atomic_load(&j->cancelled) ? VT_JOB_CANCELLED
                                      : VT_JOB_OK;
}

/* Takes j (whose predecessor in queue p is prev, or NULL) out of the queue. */
static void unlink_job(vt_sched *s, int p, vt_job *prev, vt_job *j) {
  if (prev)
    prev->next = j->next;
  else
    s->head[p] = j->next;
  if (s->tail[p] == j)
    s->tail[p] = prev;
  s->depth--;
  j->next = NULL;
}

/* Takes up to max_batch live jobs of one generation (that of the first job in priority order)
 * into batch; expired and cancelled jobs it meets go to *dropped. Returns the batch size. */
static int take(vt_sched *s, vt_job **batch, vt_job **dropped, int64_t now) {
  int n = 0;
  vt_gen *gen = NULL;
  for (int p = 0; p < VT_N_PRIOS && n < s->o.max_batch; p++) {
    vt_job *prev = NULL, *j = s->head[p];
    while (j && n < s->o.max_batch) {
      vt_job *next = j->next;
      /* an expired call is also cancelled by gRPC: the deadline is checked first */
      int dead = job_dead(j, now);
      if (!dead && gen && j->gen != gen) { /* another generation: leave it for the next batch */
        prev = j;
        j = next;
        continue;
      }
      unlink_job(s, p, prev, j);
      if (dead) {
        j->status = dead;
        j->next = *dropped;
        *dropped = j;
      } else {
        gen = j->gen;
        batch[n++] = j;
      }
      j = next;
    }
  }
  return n;
}

static void finish_dropped(vt_job *d, int64_t now) {
  while (d) {
    vt_job *next = d->next;
    d->started_ns = d->finished_ns = now;
    d->batch_size = 0;
    snprintf(d->msg, sizeof d->msg, "%s",
             d->status == VT_JOB_CANCELLED ? "the call was cancelled before compute"
             : d->status == VT_JOB_EXPIRED ? "the deadline passed before compute"
                                           : "the server is shutting down");
    d->done(d, NULL);
    d = next;
  }
}

static void sleep_us(long us) {
  struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
  while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
  }
}

static void abs_deadline(struct timespec *ts, int64_t mono_ns) {
  ts->tv_sec = (time_t)(mono_ns / 1000000000);
  ts->tv_nsec = (long)(mono_ns % 1000000000);
}

/* when the batch is due: the oldest job's enqueue time plus max_delay; INT64_MAX, not an overflow,
 * once another worker has emptied the queue (oldest_ns is INT64_MAX then) */
static int64_t batch_due_ns(const vt_sched *s) {
  int64_t t = oldest_ns(s), d = (int64_t)s->o.max_delay_us * 1000;
  return t > INT64_MAX - d ? INT64_MAX : t + d;
}

static void *worker_main(void *arg) {
  worker *w = arg;
  vt_sched *s = w->s;
  pthread_mutex_lock(&s->mu);
  for (;;) {
    while (!s->stopping && s->depth == 0)
      pthread_cond_wait(&s->work, &s->mu);
    if (s->stopping)
      break;
    /* let the batch fill: until max_batch wait or the oldest has waited max_delay */
    int64_t due = batch_due_ns(s);
    while (!s->stopping && s->depth > 0 && s->depth < s->o.max_batch && vt_now_ns() < due) {
      struct timespec ts;
      abs_deadline(&ts, due);
      pthread_cond_timedwait(&s->work, &s->mu, &ts);
      due = batch_due_ns(s);
    }
    if (s->stopping)
      break;
    if (s->depth == 0)
      continue; /* another worker took them */
    vt_job *dropped = NULL;
    int64_t now = vt_now_ns();
    int n = take(s, w->batch, &dropped, now);
    s->running++;
    if (s->m)
      vt_metrics_queue_depth(s->m, s->depth);
    if (s->depth > 0)
      pthread_cond_signal(&s->work); /* more for another worker */
    pthread_mutex_unlock(&s->mu);

    finish_dropped(dropped, now);
    if (n > 0) {
      vt_gen *g = w->batch[0]->gen;
      for (int i = 0; i < n; i++) {
        w->reqs[i] = w->batch[i]->req;
        w->batch[i]->started_ns = now;
      }
      if (s->o.compute_delay_us > 0)
        sleep_us(s->o.compute_delay_us);
      vt_err err = {0};
      int rc = vt_engine_run(g->engines[w->id], w->reqs, n, w->out, NULL, NULL, &err);
      int64_t fin = vt_now_ns();
      if (s->m)
        vt_metrics_batch(s->m, w->id, n);
      for (int i = 0; i < n; i++) {
        vt_job *j = w->batch[i];
        j->finished_ns = fin;
        j->batch_size = n;
        j->status = rc ? VT_JOB_FAILED : VT_JOB_OK;
        if (rc)
          snprintf(j->msg, sizeof j->msg, "engine: %.240s", err.msg);
        j->done(j, rc ? NULL : &w->out[i]);
      }
    }
    pthread_mutex_lock(&s->mu);
    if (n > 0) { /* a moving average over about 8 batches */
      int64_t per = (vt_now_ns() - now) / n;
      s->req_ns = s->req_ns ? (7 * s->req_ns + per) / 8 : per;
    }
    s->running--;
    if (s->depth == 0 && s->running == 0)
      pthread_cond_broadcast(&s->idle);
  }
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

int vt_sched_create(vt_sched **out, const vt_sched_opts *o, vt_gen *g, vt_metrics *m,
                    vt_err *err) {
  *out = NULL;
  if (o->workers < 1 || o->workers > g->n_engines || o->max_batch < 1 || o->capacity < 1 ||
      o->max_delay_us < 0)
    return vt_fail(err, VT_EINVAL, "scheduler: bad options");
  vt_sched *s = calloc(1, sizeof *s);
  if (!s)
    return vt_fail(err, VT_ENOMEM, "out of memory");
  /* the workers are the parallelism: each CPU engine's SGEMMs run on its own thread. Left at its
   * default, OpenBLAS would add a thread per core that spins between calls (measured: half the
   * server's CPU under load, taken from the gRPC threads); OPENBLAS_NUM_THREADS overrides. */
  const char *bt = getenv("OPENBLAS_NUM_THREADS");
  if (!bt || !*bt)
    vt_blas_set_threads(1);
  char nw[16], nb[16];
  snprintf(nw, sizeof nw, "%d", o->workers);
  snprintf(nb, sizeof nb, "%d", vt_blas_threads());
  vt_log("info", "engine_threads", "workers", nw, "blas_threads_per_worker", nb, NULL);
  s->o = *o;
  s->m = m;
  s->gen = g;
  pthread_mutex_init(&s->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&s->work, &ca);
  pthread_cond_init(&s->idle, &ca);
  pthread_condattr_destroy(&ca);
  s->w = calloc((size_t)o->workers, sizeof *s->w);
  if (!s->w) {
    vt_sched_free(s);
    return vt_fail(err, VT_ENOMEM, "out of memory");
  }
  for (int i = 0; i < o->workers; i++) {
    worker *w = &s->w[i];
    w->s = s;
    w->id = i;
    w->reqs = calloc((size_t)o->max_batch, sizeof *w->reqs);
    w->out = calloc((size_t)o->max_batch, sizeof *w->out);
    w->batch = calloc((size_t)o->max_batch, sizeof *w->batch);
    if (!w->reqs || !w->out || !w->batch) {
      vt_sched_free(s);
      return vt_fail(err, VT_ENOMEM, "out of memory for batches of %d", o->max_batch);
    }
    if (pthread_create(&w->thread, NULL, worker_main, w)) {
      vt_sched_free(s);
      return vt_fail(err, VT_ENOMEM, "cannot start worker %d", i);
    }
    w->started = 1;
    char name[32]; /* as top -H and /proc/PID/task/TID/comm show it (15 bytes at most) */
    snprintf(name, sizeof name, "vt-engine-%d", i);
    name[15] = 0;
    pthread_setname_np(w->thread, name);
  }
  *out = s;
  return VT_OK;
}

vt_gen *vt_sched_gen(vt_sched *s) {
  pthread_mutex_lock(&s->mu);
  vt_gen *g = s->gen;
  vt_gen_ref(g);
  pthread_mutex_unlock(&s->mu);
  return g;
}

void vt_sched_publish(vt_sched *s, vt_gen *g) {
  pthread_mutex_lock(&s->mu);
  vt_gen *old = s->gen;
  s->gen = g;
  pthread_mutex_unlock(&s->mu);
  vt_gen_unref(old);
}

/* Unlinks every expired or cancelled job (s->mu held) into *dropped, oldest first per level. */
static void purge_dead(vt_sched *s, vt_job **dropped, int64_t now) {
  for (int p = 0; p < VT_N_PRIOS; p++) {
    vt_job *prev = NULL, *j = s->head[p];
    while (j) {
      vt_job *next = j->next;
      int dead = job_dead(j, now);
      if (dead) {
        unlink_job(s, p, prev, j);
        j->status = dead;
        j->next = *dropped;
        *dropped = j;
      } else {
        prev = j;
      }
      j = next;
    }
  }
}

/* The share of the time left before a deadline that the estimated wait and compute of a new job
 * may fill: the estimate is an average, so the rest is the margin that keeps the accepted calls'
 * tail (not only their mean) inside the deadline under overload. */
#define ADMIT_NUM 3
#define ADMIT_DEN 4

/* Whether a job of this priority and deadline may join the queue now (s->mu held): 0 or a
 * VT_SCHED_* refusal, with msg (cap bytes) saying why for VT_SCHED_LATE. A full queue first
 * unlinks the calls nobody waits for any more into *dropped: they never count against its
 * capacity. */
static int admission(vt_sched *s, int priority, int64_t deadline_ns, int64_t now,
                     vt_job **dropped, char *msg, size_t cap) {
  if (s->stopping)
    return VT_SCHED_CLOSED;
  if (s->depth >= s->o.capacity)
    purge_dead(s, dropped, now);
  if (s->depth >= s->o.capacity)
    return VT_SCHED_FULL;
  /* the work ahead of the job: every queued job, or for a high-priority one only the high ones */
  long ahead = s->depth;
  if (priority == VT_PRIO_HIGH) {
    ahead = 0;
    for (const vt_job *q = s->head[VT_PRIO_HIGH]; q; q = q->next)
      ahead++;
  }
  if (ahead == 0 || s->req_ns == 0)
    return 0; /* nothing to estimate from */
  int64_t wait = s->req_ns * ahead / s->o.workers;
  if (s->o.max_queue_ms > 0 && wait > (int64_t)s->o.max_queue_ms * 1000000) {
    snprintf(msg, cap,
             "overloaded: the %ld requests queued ahead would keep this one waiting about %lld ms, "
             "more than --max-queue-ms %d; nothing was computed, retry with backoff",
             ahead, (long long)(wait / 1000000), s->o.max_queue_ms);
    return VT_SCHED_LATE;
  }
  if (deadline_ns == INT64_MAX || now >= deadline_ns)
    return 0; /* (a call already past its deadline expires as before) */
  int64_t left = deadline_ns - now;
  int64_t need = wait + s->req_ns / s->o.workers; /* the wait, then its own compute */
  if (need <= left / ADMIT_DEN * ADMIT_NUM)
    return 0;
  snprintf(msg, cap,
           "overloaded: the %ld requests queued ahead and this one take about %lld ms, more than "
           "%d/%d of the %lld ms left before the deadline; nothing was computed, retry with backoff",
           ahead, (long long)(need / 1000000), ADMIT_NUM, ADMIT_DEN,
           (long long)(left / 1000000));
  return VT_SCHED_LATE;
}

int vt_sched_admit(vt_sched *s, int priority, int64_t deadline_ns, char *msg, size_t cap) {
  vt_job *dropped = NULL;
  int64_t now = vt_now_ns();
  pthread_mutex_lock(&s->mu);
  int rc = admission(s, priority, deadline_ns, now, &dropped, msg, cap);
  if (s->m && dropped)
    vt_metrics_queue_depth(s->m, s->depth);
  pthread_mutex_unlock(&s->mu);
  finish_dropped(dropped, now);
  return rc;
}

int vt_sched_submit(vt_sched *s, vt_job *j) {
  vt_job *dropped = NULL;
  int64_t now = vt_now_ns();
  if (j->priority < 0 || j->priority >= VT_N_PRIOS)
    j->priority = VT_PRIO_NORMAL;
  pthread_mutex_lock(&s->mu);
  int rc = admission(s, j->priority, j->deadline_ns, now, &dropped, j->msg, sizeof j->msg);
  if (rc == 0) {
    j->enqueued_ns = vt_now_ns();
    j->status = VT_JOB_OK;
    j->msg[0] = 0;
    push(s, j);
    pthread_cond_signal(&s->work);
  }
  if (s->m && (rc == 0 || dropped))
    vt_metrics_queue_depth(s->m, s->depth);
  pthread_mutex_unlock(&s->mu);
  finish_dropped(dropped, now);
  return rc;
}

long vt_sched_depth(vt_sched *s) {
  pthread_mutex_lock(&s->mu);
  long d = s->depth;
  pthread_mutex_unlock(&s->mu);
  return d;
}

int vt_sched_wait_idle(vt_sched *s, long timeout_ms) {
  int64_t due = vt_now_ns() + (int64_t)timeout_ms * 1000000;
  pthread_mutex_lock(&s->mu);
  int rc = 0;
  while (s->depth > 0 || s->running > 0) {
    if (vt_now_ns() >= due) {
      rc = -1;
      break;
    }
    struct timespec ts;
    abs_deadline(&ts, due);
    pthread_cond_timedwait(&s->idle, &s->mu, &ts);
  }
  pthread_mutex_unlock(&s->mu);
  return rc;
}

void vt_sched_free(vt_sched *s) {
  if (!s)
    return;
  pthread_mutex_lock(&s->mu);
  s->stopping = 1;
  pthread_cond_broadcast(&s->work);
  pthread_mutex_unlock(&s->mu);
  for (int i = 0; s->w && i < s->o.workers; i++) {
    if (s->w[i].started)
      pthread_join(s->w[i].thread, NULL);
    free(s->w[i].reqs);
    free(s->w[i].out);
    free(s->w[i].batch);
  }
  free(s->w);
  /* whatever is still queued: finished as shutting down */
  vt_job *left = NULL;
  for (int p = 0; p < VT_N_PRIOS; p++)
    while (s->head[p]) {
      vt_job *j = s->head[p];
      s->head[p] = j->next;
      j->status = VT_JOB_SHUTDOWN;
      j->next = left;
      left = j;
    }
  s->depth = 0;
  if (s->m)
    vt_metrics_queue_depth(s->m, 0);
  finish_dropped(left, vt_now_ns());
  vt_gen_unref(s->gen);
  pthread_cond_destroy(&s->work);
  pthread_cond_destroy(&s->idle);
  pthread_mutex_destroy(&s->mu);
  free(s);
}
