/* The load generator (see loadgen.h): gRPC C core client calls, one batch per call (send
 * metadata, message and half-close; receive metadata, message and status), all on one
 * completion queue. */
#include "loadgen.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "stats.h"
#include "vitrine/v1/storefront.pb-c.h"

#include "serve/pbwire.h"

static const char *const STATUS_NAMES[VB_N_STATUS] = {
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED", "UNFINISHED", "START_FAILED"};

const char *vb_status_name(int status) {
  return status >= 0 && status < VB_N_STATUS ? STATUS_NAMES[status] : "?";
}

int64_t vb_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A gpr deadline ns_from_now in the future (gRPC's monotonic clock has its own origin). */
static gpr_timespec deadline_in(int64_t ns_from_now) {
  if (ns_from_now < 0)
    ns_from_now = 0;
  return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_nanos(ns_from_now, GPR_TIMESPAN));
}

/* One call in flight: everything its batch points at lives here until the completion. */
typedef struct slot {
  grpc_call *call;
  grpc_byte_buffer *send, *recv;
  grpc_metadata_array md, trailing;
  grpc_status_code status;
  grpc_slice details;
  grpc_op ops[6];
  int64_t intended, sent; /* ns since t0 */
  int busy, cancelled;
} slot;

struct vb_client {
  vb_client_opts o;
  const vb_requests *reqs;
  grpc_channel **ch;    /* (connections) */
  void **rm_recommend;  /* (connections) registered method handles */
  void **rm_info;       /* (connections) */
  grpc_completion_queue *cq;
  slot *slots;          /* (max_outstanding) */
  int *free_stack, n_free;
  pthread_mutex_t mu;   /* free_stack, the round-robin indices, the step's counters */
  int next_req, next_ch;
};

vb_client *vb_client_create(const vb_client_opts *o, const vb_requests *reqs, char *err,
                            size_t cap) {
  grpc_init();
  vb_client *c = calloc(1, sizeof *c);
  if (!c)
    goto oom;
  c->o = *o;
  c->reqs = reqs;
  c->ch = calloc((size_t)o->connections, sizeof *c->ch);
  c->rm_recommend = calloc((size_t)o->connections, sizeof *c->rm_recommend);
  c->rm_info = calloc((size_t)o->connections, sizeof *c->rm_info);
  c->slots = calloc((size_t)o->max_outstanding, sizeof *c->slots);
  c->free_stack = calloc((size_t)o->max_outstanding, sizeof *c->free_stack);
  if (!c->ch || !c->rm_recommend || !c->rm_info || !c->slots || !c->free_stack)
    goto oom;
  pthread_mutex_init(&c->mu, NULL);
  for (int i = 0; i < o->max_outstanding; i++)
    c->free_stack[c->n_free++] = o->max_outstanding - 1 - i;
  /* a local subchannel pool gives each channel its own connection; no retries, so every
   * attempt the bench makes is one call the server sees; answers of any size; a target with
   * several addresses (a fleet) gets them round robin */
  grpc_arg args[4];
  memset(args, 0, sizeof args);
  args[0].type = args[1].type = args[2].type = GRPC_ARG_INTEGER;
  args[3].type = GRPC_ARG_STRING;
  args[3].key = GRPC_ARG_SERVICE_CONFIG;
  args[3].value.string = "{\"loadBalancingConfig\": [{\"round_robin\": {}}]}";
  args[0].key = GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL;
  args[0].value.integer = 1;
  args[1].key = GRPC_ARG_ENABLE_RETRIES;
  args[1].value.integer = 0;
  args[2].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
  args[2].value.integer = -1;
  grpc_channel_args ca = {4, args};
  grpc_channel_credentials *cred = grpc_insecure_credentials_create();
  for (int i = 0; i < o->connections; i++) {
    c->ch[i] = grpc_channel_create(o->target, cred, &ca);
    if (!c->ch[i]) {
      grpc_channel_credentials_release(cred);
      snprintf(err, cap, "cannot create a channel to %s", o->target);
      vb_client_destroy(c);
      return NULL;
    }
    c->rm_recommend[i] =
        grpc_channel_register_call(c->ch[i], "/vitrine.v1.Storefront/Recommend", NULL, NULL);
    c->rm_info[i] = grpc_channel_register_call(c->ch[i], "/vitrine.v1.Storefront/GetInfo", NULL,
                                               NULL);
  }
  grpc_channel_credentials_release(cred);
  c->cq = grpc_completion_queue_create_for_next(NULL);
  return c;
oom:
  snprintf(err, cap, "out of memory");
  vb_client_destroy(c);
  return NULL;
}

void vb_client_destroy(vb_client *c) {
  if (c) {
    if (c->cq) {
      grpc_completion_queue_shutdown(c->cq);
      while (grpc_completion_queue_next(c->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
             GRPC_QUEUE_SHUTDOWN)
        ;
      grpc_completion_queue_destroy(c->cq);
    }
    for (int i = 0; c->ch && i < c->o.connections; i++)
      if (c->ch[i])
        grpc_channel_destroy(c->ch[i]);
    if (c->slots)
      pthread_mutex_destroy(&c->mu);
    free(c->ch);
    free(c->rm_recommend);
    free(c->rm_info);
    free(c->slots);
    free(c->free_stack);
    free(c);
  }
  grpc_shutdown();
}

/* The batch of a unary call: send everything, receive everything. */
static void fill_ops(slot *s) {
  memset(s->ops, 0, sizeof s->ops);
  s->ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  s->ops[1].op = GRPC_OP_SEND_MESSAGE;
  s->ops[1].data.send_message.send_message = s->send;
  s->ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  s->ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  s->ops[3].data.recv_initial_metadata.recv_initial_metadata = &s->md;
  s->ops[4].op = GRPC_OP_RECV_MESSAGE;
  s->ops[4].data.recv_message.recv_message = &s->recv;
  s->ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  s->ops[5].data.recv_status_on_client.trailing_metadata = &s->trailing;
  s->ops[5].data.recv_status_on_client.status = &s->status;
  s->ops[5].data.recv_status_on_client.status_details = &s->details;
}

/* Frees what a finished (or never started) call holds; the slot is reusable after. */
static void slot_clear(slot *s) {
  if (s->call)
    grpc_call_unref(s->call);
  if (s->send)
    grpc_byte_buffer_destroy(s->send);
  if (s->recv)
    grpc_byte_buffer_destroy(s->recv);
  grpc_metadata_array_destroy(&s->md);
  grpc_metadata_array_destroy(&s->trailing);
  grpc_slice_unref(s->details);
  s->call = NULL;
  s->send = s->recv = NULL;
  s->busy = s->cancelled = 0;
}

/* ---- GetInfo ---- */

/* GetInfoResponse -> a JSON object (text, malloc'd). */
static char *info_json(const uint8_t *p, size_t n) {
  Vitrine__V1__GetInfoResponse *m = vitrine__v1__get_info_response__unpack(NULL, n, p);
  if (!m)
    return NULL;
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "model_version", m->model_version);
  cJSON_AddStringToObject(o, "catalog_version", m->catalog_version);
  cJSON_AddNumberToObject(o, "products", m->products);
  cJSON_AddNumberToObject(o, "themes", m->themes);
  cJSON_AddNumberToObject(o, "keywords", m->keywords);
  cJSON *r = cJSON_AddArrayToObject(o, "regions");
  for (size_t i = 0; i < m->n_regions; i++)
    cJSON_AddItemToArray(r, cJSON_CreateString(m->regions[i]));
  cJSON_AddNumberToObject(o, "max_sections", m->max_sections);
  cJSON_AddNumberToObject(o, "max_keywords_per_section", m->max_keywords_per_section);
  cJSON_AddNumberToObject(o, "max_products_per_section", m->max_products_per_section);
  cJSON_AddNumberToObject(o, "max_model_events", m->max_model_events);
  cJSON_AddNumberToObject(o, "max_request_events", m->max_request_events);
  cJSON_AddNumberToObject(o, "workers", m->workers);
  cJSON_AddNumberToObject(o, "max_batch", m->max_batch);
  vitrine__v1__get_info_response__free_unpacked(m, NULL);
  char *text = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  return text;
}

/* The payload of a byte buffer as one slice. */
static grpc_slice read_all(grpc_byte_buffer *bb) {
  grpc_byte_buffer_reader r;
  if (!bb || !grpc_byte_buffer_reader_init(&r, bb))
    return grpc_empty_slice();
  grpc_slice s = grpc_byte_buffer_reader_readall(&r);
  grpc_byte_buffer_reader_destroy(&r);
  return s;
}

int vb_get_info(vb_client *c, long timeout_ms, char **out, char *msg, size_t cap) {
  *out = NULL;
  msg[0] = 0;
  int64_t end = vb_now_ns() + (int64_t)timeout_ms * 1000000;
  int code = GRPC_STATUS_UNAVAILABLE;
  for (;;) {
    int64_t left = end - vb_now_ns();
    slot s = {0};
    s.details = grpc_empty_slice();
    grpc_metadata_array_init(&s.md);
    grpc_metadata_array_init(&s.trailing);
    grpc_slice empty = grpc_empty_slice();
    s.send = grpc_raw_byte_buffer_create(&empty, 1);
    /* wait_for_ready: a server still binding its port is waited for, up to the deadline */
    s.call = grpc_channel_create_registered_call(c->ch[0], NULL, GRPC_PROPAGATE_DEFAULTS, c->cq,
                                                 c->rm_info[0],
                                                 deadline_in(left < 2000000000 ? left : 2000000000),
                                                 NULL);
    fill_ops(&s);
    s.ops[0].flags = GRPC_INITIAL_METADATA_WAIT_FOR_READY;
    if (grpc_call_start_batch(s.call, s.ops, 6, &s, NULL) != GRPC_CALL_OK) {
      slot_clear(&s);
      snprintf(msg, cap, "cannot start a call");
      return GRPC_STATUS_INTERNAL;
    }
    grpc_event ev;
    do
      ev = grpc_completion_queue_next(c->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    while (ev.type != GRPC_OP_COMPLETE || ev.tag != &s);
    code = s.status;
    if (code == GRPC_STATUS_OK) {
      grpc_slice b = read_all(s.recv);
      *out = info_json(GRPC_SLICE_START_PTR(b), GRPC_SLICE_LENGTH(b));
      grpc_slice_unref(b);
      if (!*out) {
        code = GRPC_STATUS_INTERNAL;
        snprintf(msg, cap, "the answer is not a vitrine.v1.GetInfoResponse");
      }
    } else {
      char *d = grpc_slice_to_c_string(s.details);
      snprintf(msg, cap, "%s", d);
      gpr_free(d);
    }
    slot_clear(&s);
    if ((code != GRPC_STATUS_UNAVAILABLE && code != GRPC_STATUS_DEADLINE_EXCEEDED) ||
        vb_now_ns() + 100000000 > end)
      return code;
    struct timespec pause = {0, 100000000}; /* 100 ms: the server is starting */
    nanosleep(&pause, NULL);
  }
}

/* ---- a step ---- */

typedef struct step_ctx {
  vb_client *c;
  vb_step_data *d;
  int64_t t0;          /* absolute, ns */
  atomic_int stop;     /* no new calls */
  long in_flight;      /* guarded by c->mu */
  long start_failed[VB_MAX_WINDOWS + 2]; /* by scheduled window, guarded by c->mu */
  pthread_t sender;
  char err[256];
} step_ctx;

/* The window a time (ns since t0) falls in: 0 warm-up, 1..max_windows, max_windows + 1 after. */
static int window_of(const vb_step_spec *s, int64_t t) {
  if (t < s->warmup_ns)
    return 0;
  int64_t w = 1 + (t - s->warmup_ns) / s->window_ns;
  return w > s->max_windows ? s->max_windows + 1 : (int)w;
}

/* Sends one call scheduled for `intended` (ns since t0), or counts it dropped when
 * max_outstanding calls are in flight. Any thread. */
static void issue(step_ctx *x, int64_t intended) {
  vb_client *c = x->c;
  vb_step_data *d = x->d;
  int64_t now = vb_now_ns() - x->t0;
  pthread_mutex_lock(&c->mu);
  int w = window_of(&d->spec, intended);
  d->scheduled[w]++;
  d->issued[window_of(&d->spec, now)]++;
  if (c->n_free == 0) {
    d->dropped[w]++;
    pthread_mutex_unlock(&c->mu);
    return;
  }
  slot *s = &c->slots[c->free_stack[--c->n_free]];
  int ri = c->next_req;
  c->next_req = (c->next_req + 1) % c->reqs->n;
  int ci = c->next_ch;
  c->next_ch = (c->next_ch + 1) % c->o.connections;
  if (++x->in_flight > d->max_in_flight)
    d->max_in_flight = x->in_flight;
  pthread_mutex_unlock(&c->mu);

  s->busy = 1;
  s->intended = intended;
  s->details = grpc_empty_slice();
  grpc_metadata_array_init(&s->md);
  grpc_metadata_array_init(&s->trailing);
  s->send = grpc_raw_byte_buffer_create(&c->reqs->msg[ri], 1);
  s->call = grpc_channel_create_registered_call(
      c->ch[ci], NULL, GRPC_PROPAGATE_DEFAULTS, c->cq, c->rm_recommend[ci],
      d->spec.timeout_ns > 0 ? deadline_in(d->spec.timeout_ns)
                             : gpr_inf_future(GPR_CLOCK_REALTIME),
      NULL);
  fill_ops(s);
  s->sent = vb_now_ns() - x->t0;
  if (!s->call || grpc_call_start_batch(s->call, s->ops, 6, s, NULL) != GRPC_CALL_OK) {
    slot_clear(s);
    pthread_mutex_lock(&c->mu);
    x->start_failed[w]++;
    x->in_flight--;
    c->free_stack[c->n_free++] = (int)(s - c->slots);
    pthread_mutex_unlock(&c->mu);
  }
}

/* Reads Timing (field 3 of RecommendResponse) out of an answer without decoding the rest.
 * 0, or -1 when the answer has no Timing or is not protobuf. */
static int answer_timing(const uint8_t *p, size_t n, vb_record *r) {
  size_t i = 0, len;
  uint64_t field;
  const uint8_t *data;
  while (vt_pb_next_field(p, n, &i, &field, &data, &len) == 1) {
    if (field != 3 || !data)
      continue;
    Vitrine__V1__Timing *t = vitrine__v1__timing__unpack(NULL, len, data);
    if (!t)
      return -1;
    r->queue_us = t->queue_us;
    r->compute_us = t->compute_us;
    r->total_us = t->total_us;
    r->batch = t->batch_size;
    vitrine__v1__timing__free_unpacked(t, NULL);
    return 0;
  }
  return -1;
}

static int push_record(vb_step_data *d, const vb_record *r) {
  if (d->n_rec == d->cap_rec) {
    size_t nc = d->cap_rec ? 2 * d->cap_rec : 4096;
    vb_record *p = realloc(d->rec, nc * sizeof *p);
    if (!p)
      return -1;
    d->rec = p;
    d->cap_rec = nc;
  }
  d->rec[d->n_rec++] = *r;
  return 0;
}

/* A call finished: record it and free its slot. Main thread. */
static int complete(step_ctx *x, slot *s, int64_t done) {
  vb_record r = {s->intended, s->sent, done, (int32_t)s->status, -1, 0, 0, 0};
  if (s->cancelled && s->status == GRPC_STATUS_CANCELLED)
    r.status = VB_UNFINISHED; /* the bench gave up on it (an answer that won the race stays) */
  if (r.status == GRPC_STATUS_OK) {
    grpc_slice b = read_all(s->recv);
    if (answer_timing(GRPC_SLICE_START_PTR(b), GRPC_SLICE_LENGTH(b), &r))
      r.batch = -1;
    grpc_slice_unref(b);
  }
  slot_clear(s);
  vb_client *c = x->c;
  pthread_mutex_lock(&c->mu);
  c->free_stack[c->n_free++] = (int)(s - c->slots);
  x->in_flight--;
  pthread_mutex_unlock(&c->mu);
  return push_record(x->d, &r);
}

static uint64_t splitmix64(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static void sleep_until(int64_t abs_ns) {
  struct timespec ts = {(time_t)(abs_ns / 1000000000), (long)(abs_ns % 1000000000)};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
    ;
}

/* Open loop: issues calls at their scheduled times until told to stop. A late sender does not
 * skip or re-time calls: it sends the overdue ones at once, and each keeps its scheduled time as
 * the start of its latency. */
static void *sender_main(void *arg) {
  step_ctx *x = arg;
  const vb_step_spec *s = &x->d->spec;
  uint64_t rng = s->seed;
  double gap_mean_ns = 1e9 / s->rate, t = 0;
  for (;;) {
    int64_t due = x->t0 + (int64_t)llround(t);
    for (;;) { /* sleep in slices so that a stop is seen within 20 ms */
      if (atomic_load(&x->stop))
        return NULL;
      int64_t now = vb_now_ns();
      if (now >= due)
        break;
      sleep_until(due - now > 20000000 ? now + 20000000 : due);
    }
    issue(x, due - x->t0);
    if (s->arrivals == VB_POISSON) {
      double u = (double)(splitmix64(&rng) >> 11) * 0x1.0p-53; /* [0, 1) */
      t += -log1p(-u) * gap_mean_ns;
    } else {
      t += gap_mean_ns;
    }
  }
}

static long in_flight(step_ctx *x) {
  pthread_mutex_lock(&x->c->mu);
  long n = x->in_flight;
  pthread_mutex_unlock(&x->c->mu);
  return n;
}

static double rel_diff(double a, double b) {
  double m = fmax(fabs(a), fabs(b));
  return m > 0 ? fabs(a - b) / m : 0;
}

/* Window w ended: its throughput and p99 (answers completed in it). */
static int close_window(step_ctx *x, int w) {
  vb_step_data *d = x->d;
  vb_window *win = &d->win[w];
  win->rec_end = d->n_rec;
  size_t n = win->rec_end - win->rec_begin, k = 0;
  double *lat = malloc((n ? n : 1) * sizeof *lat);
  if (!lat)
    return -1;
  for (size_t i = win->rec_begin; i < win->rec_end; i++)
    if (d->rec[i].status == GRPC_STATUS_OK)
      lat[k++] = (double)(d->rec[i].done - d->rec[i].intended) * 1e-6;
  vb_dist dist;
  vb_dist_of(&dist, lat, k);
  free(lat);
  win->ok_per_s = (double)k / ((double)(win->end - win->start) * 1e-9);
  win->p99_ms = dist.p99;
  return 0;
}

int vb_run_step(vb_client *c, const vb_step_spec *spec, vb_step_data *d, vb_progress_fn fn,
                void *arg, char *err, size_t cap) {
  memset(d, 0, sizeof *d);
  d->spec = *spec;
  if (spec->max_windows < 2 || spec->max_windows > VB_MAX_WINDOWS || spec->window_ns <= 0 ||
      (spec->mode == VB_CLOSED &&
       (spec->concurrency < 1 || spec->concurrency > c->o.max_outstanding)) ||
      (spec->mode == VB_OPEN && !(spec->rate > 0))) {
    snprintf(err, cap, "bad step: concurrency must be 1..max-outstanding (%d), rate > 0, "
             "2..%d windows", c->o.max_outstanding, VB_MAX_WINDOWS);
    return -1;
  }
  step_ctx *x = calloc(1, sizeof *x);
  if (!x) {
    snprintf(err, cap, "out of memory");
    return -1;
  }
  x->c = c;
  x->d = d;
  atomic_init(&x->stop, 0);
  c->next_req = 0; /* every step sends the file from its first request */
  c->next_ch = 0;
  int rc = 0, w = 0;
  x->t0 = vb_now_ns();
  d->t0_ns = x->t0;
  d->win[0].start = 0;
  d->win[0].end = spec->warmup_ns;
  if (spec->mode == VB_CLOSED) {
    for (int i = 0; i < spec->concurrency; i++)
      issue(x, vb_now_ns() - x->t0);
  } else if (pthread_create(&x->sender, NULL, sender_main, x) != 0) {
    snprintf(err, cap, "cannot start the sender thread");
    free(x);
    return -1;
  }
  int64_t next_tick = 0;
  /* measure, until the windows agree or the last window has run. Each pass waits for a
   * completion or the next deadline (window end, progress tick), closes the windows that have
   * ended, then records the completion: its done time is after those ends, so a window's
   * records are exactly those appended while it was the current one. */
  while (!atomic_load(&x->stop)) {
    int64_t now = vb_now_ns() - x->t0;
    int64_t wake = d->win[w].end < next_tick ? d->win[w].end : next_tick;
    grpc_event ev = wake > now ? grpc_completion_queue_next(c->cq, deadline_in(wake - now), NULL)
                               : (grpc_event){.type = GRPC_QUEUE_TIMEOUT};
    now = vb_now_ns() - x->t0;
    while (!atomic_load(&x->stop) && now >= d->win[w].end) {
      if (w > 0 && close_window(x, w)) {
        rc = -1;
        snprintf(err, cap, "out of memory");
        atomic_store(&x->stop, 1);
        break;
      }
      if (fn)
        fn(arg, d, w, w, now, in_flight(x));
      if (w >= 2 && rel_diff(d->win[w - 1].ok_per_s, d->win[w].ok_per_s) <= spec->tolerance &&
          rel_diff(d->win[w - 1].p99_ms, d->win[w].p99_ms) <= spec->tolerance)
        d->stable = 1;
      if (d->stable || w == spec->max_windows) {
        d->n_windows = w;
        d->first = w - 1;
        d->last = w;
        atomic_store(&x->stop, 1);
        break;
      }
      w++;
      d->win[w].start = d->win[w - 1].end;
      d->win[w].end = d->win[w].start + spec->window_ns;
      d->win[w].rec_begin = d->n_rec;
    }
    if (ev.type == GRPC_OP_COMPLETE) {
      if (complete(x, ev.tag, now)) {
        rc = -1;
        snprintf(err, cap, "out of memory");
        atomic_store(&x->stop, 1);
      } else if (spec->mode == VB_CLOSED && !atomic_load(&x->stop)) {
        issue(x, vb_now_ns() - x->t0);
      }
    }
    if (now >= next_tick) {
      if (fn)
        fn(arg, d, w, -1, now, in_flight(x));
      next_tick = now + 250000000;
    }
  }
  if (spec->mode == VB_OPEN)
    pthread_join(x->sender, NULL);
  /* drain: the calls in flight belong to the measured windows; wait for them, then cancel */
  int64_t drain_end = vb_now_ns() + spec->drain_ns;
  int cancelled = 0;
  for (;;) {
    if (in_flight(x) == 0)
      break;
    int64_t now = vb_now_ns();
    if (now >= drain_end && !cancelled) {
      for (int i = 0; i < c->o.max_outstanding; i++)
        if (c->slots[i].busy) {
          c->slots[i].cancelled = 1;
          grpc_call_cancel(c->slots[i].call, NULL);
        }
      cancelled = 1;
    }
    grpc_event ev = grpc_completion_queue_next(
        c->cq, deadline_in(cancelled ? 250000000 : drain_end - now), NULL);
    if (ev.type == GRPC_OP_COMPLETE && complete(x, ev.tag, vb_now_ns() - x->t0) && rc == 0) {
      rc = -1;
      snprintf(err, cap, "out of memory");
    }
  }
  for (int i = 0; i <= VB_MAX_WINDOWS + 1; i++)
    if (x->start_failed[i]) {
      /* a call gRPC refused to start: recorded as such, at its scheduled time */
      int64_t t = i == 0 ? 0 : spec->warmup_ns + (int64_t)(i - 1) * spec->window_ns;
      for (long k = 0; k < x->start_failed[i]; k++) {
        vb_record r = {t, t, t, VB_START_FAILED, -1, 0, 0, 0};
        push_record(d, &r);
      }
    }
  free(x);
  return rc;
}

void vb_step_data_free(vb_step_data *d) {
  free(d->rec);
  memset(d, 0, sizeof *d);
}
