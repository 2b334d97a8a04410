/* `vitrine serve`: options (flags and VITRINE_* environment variables), loading, warm-up, the
 * gRPC server, the metrics endpoint, and the lifecycle driven by signals on the main thread:
 * SIGHUP (or, with --watch-catalog-ms, a change of the catalogue's files or its rules.txt, or a
 * deny on the review page of --review-listen) reloads the catalogue and its rules together;
 * SIGTERM/SIGINT linger (health NOT_SERVING, still answering), then drain and exit 0. */
#include "serve.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "audit.h"
#include "engine/bundle.h"
#include "engine/catalog.h"
#include "metrics.h"
#include "engine/device.h"
#include "review.h"
#include "engine/rules.h"
#include "sched.h"
#include "server.h"

typedef struct opt {
  const char *flag, *env, *arg, *help;
  const char *sval; /* string options */
  long ival;        /* integer options (arg "N") */
  long lo, hi;
} opt;

enum {
  O_BUNDLE, O_CATALOG, O_LISTEN, O_METRICS, O_WORKERS, O_CQ, O_BATCH, O_DELAY, O_CAPACITY,
  O_MAXQ, O_EVENTS, O_MSG, O_DRAIN, O_LINGER, O_LOGFMT, O_LOGREQ, O_CDELAY, O_DEVICE, O_GRAPHS,
  O_TLS_CERT, O_TLS_KEY, O_TLS_CA, O_WATCH, O_MAXAGE, O_AUDIT, O_AUDIT_SAMPLE, O_AUDIT_MAX,
  O_AUDIT_KEEP, O_AUDIT_RING, O_AUDIT_RAW, O_AUDIT_SALT, O_REVIEW, O_N
};

static opt OPTS[O_N] = {
    [O_BUNDLE] = {"--bundle", "VITRINE_BUNDLE", "DIR", "the model bundle (required)", NULL, 0, 0, 0},
    [O_CATALOG] = {"--catalog", "VITRINE_CATALOG", "DIR",
                   "the catalogue (required; SIGHUP reloads it from here)", NULL, 0, 0, 0},
    [O_LISTEN] = {"--listen", "VITRINE_LISTEN", "HOST:PORT", "gRPC address (port 0: any free port)",
                  "0.0.0.0:50051", 0, 0, 0},
    [O_METRICS] = {"--metrics-listen", "VITRINE_METRICS_LISTEN", "IPV4:PORT|off",
                   "Prometheus endpoint, GET /metrics (port 0: any free port)", "0.0.0.0:9464", 0,
                   0, 0},
    [O_WORKERS] = {"--workers", "VITRINE_WORKERS", "N",
                   "CPU engine workers (one engine and thread each; 0: one per CPU this process "
                   "may use, its affinity and cgroup CPU limit; on CUDA: one per device)",
                   NULL, 0, 0, VT_MAX_DEVICES},
    [O_CQ] = {"--cq-threads", "VITRINE_CQ_THREADS", "N",
              "gRPC completion-queue threads (parse and validate requests)", NULL, 2, 1, 64},
    [O_BATCH] = {"--max-batch", "VITRINE_MAX_BATCH", "N", "largest engine batch", NULL, 16, 1, 1024},
    [O_DELAY] = {"--max-queue-delay-us", "VITRINE_MAX_QUEUE_DELAY_US", "N",
                 "longest a request waits for its batch to fill, microseconds", NULL, 500, 0,
                 10000000},
    [O_CAPACITY] = {"--queue-capacity", "VITRINE_QUEUE_CAPACITY", "N",
                    "requests that may wait; more are refused with UNAVAILABLE", NULL, 512, 1,
                    1000000},
    [O_MAXQ] = {"--max-queue-ms", "VITRINE_MAX_QUEUE_MS", "N",
                "refuse (UNAVAILABLE) a request the queued work would keep waiting longer than "
                "this, deadline or not, so a backlog stays short and drains fast (0: only the "
                "deadline limits the wait)",
                NULL, 0, 0, 3600000},
    [O_EVENTS] = {"--max-request-events", "VITRINE_MAX_REQUEST_EVENTS", "N",
                  "events (and excluded ids) one request may carry", NULL, 4096, 1, 10000000},
    [O_MSG] = {"--max-message-bytes", "VITRINE_MAX_MESSAGE_BYTES", "N",
               "largest request or answer, bytes", NULL, 4 << 20, 1024, INT_MAX},
    [O_DRAIN] = {"--drain-timeout-ms", "VITRINE_DRAIN_TIMEOUT_MS", "N",
                 "on SIGTERM, how long accepted requests may take to finish", NULL, 10000, 0,
                 3600000},
    [O_LINGER] = {"--drain-linger-ms", "VITRINE_DRAIN_LINGER_MS", "N",
                  "on SIGTERM, how long health says NOT_SERVING while calls are still answered "
                  "(for balancers to catch up) before new calls are refused",
                  NULL, 5000, 0, 600000},
    [O_LOGFMT] = {"--log-format", "VITRINE_LOG_FORMAT", "text|json", "log line format", "text", 0,
                  0, 0},
    [O_LOGREQ] = {"--log-requests", "VITRINE_LOG_REQUESTS", "0|1",
                  "one log line per Recommend (the flag alone: 1; or --log-requests=0|1)",
                  NULL, 0, 0, 1},
    [O_CDELAY] = {"--compute-delay-us", "VITRINE_COMPUTE_DELAY_US", "N",
                  "testing: added to every batch's compute time (warm-up included)", NULL, 0, 0,
                  60000000},
    [O_DEVICE] = {"--device", "VITRINE_DEVICE", "cpu|cuda|cuda:N,..",
                  "where the engines run (CUDA falls back to the CPU, with a log line, when it "
                  "cannot be used)", "cpu", 0, 0, 0},
    [O_GRAPHS] = {"--cuda-graphs", "VITRINE_CUDA_GRAPHS", "0|1",
                  "CUDA engines replay each batch shape's decode from a CUDA graph", NULL, 0, 0,
                  1},
    [O_TLS_CERT] = {"--tls-cert", "VITRINE_TLS_CERT", "FILE",
                    "TLS on the gRPC port: the server's certificate chain (PEM; with --tls-key)",
                    NULL, 0, 0, 0},
    [O_TLS_KEY] = {"--tls-key", "VITRINE_TLS_KEY", "FILE", "TLS: the server's private key (PEM)",
                   NULL, 0, 0, 0},
    [O_TLS_CA] = {"--tls-client-ca", "VITRINE_TLS_CLIENT_CA", "FILE",
                  "mutual TLS: clients must present a certificate signed by this CA (PEM)", NULL,
                  0, 0, 0},
    [O_WATCH] = {"--watch-catalog-ms", "VITRINE_WATCH_CATALOG_MS", "N",
                 "reload the catalogue when its files or its rules.txt change, looking every N ms "
                 "(0: only on SIGHUP; follows the symlink swaps of a Kubernetes volume)",
                 NULL, 0, 0, 3600000},
    [O_MAXAGE] = {"--max-connection-age-ms", "VITRINE_MAX_CONNECTION_AGE_MS", "N",
                  "ask each client connection to reconnect after about N ms (GOAWAY; calls in "
                  "flight finish), so that clients spread over replicas added since (0: never)",
                  NULL, 0, 0, 86400000},
    [O_AUDIT] = {"--audit-log", "VITRINE_AUDIT_LOG", "FILE|off",
                 "audit log: one JSON line per sampled answered Recommend (docs/SERVER.md), "
                 "written off the request path, rotated by size",
                 "off", 0, 0, 0},
    [O_AUDIT_SAMPLE] = {"--audit-sample", "VITRINE_AUDIT_SAMPLE", "F",
                        "fraction of answered Recommend calls the audit log records, 0..1", "1",
                        0, 0, 0},
    [O_AUDIT_MAX] = {"--audit-max-bytes", "VITRINE_AUDIT_MAX_BYTES", "N",
                     "audit log: no file grows past N bytes (FILE is rotated to FILE.1 first)",
                     NULL, 64L << 20, 4096, 1L << 40},
    [O_AUDIT_KEEP] = {"--audit-keep", "VITRINE_AUDIT_KEEP", "N",
                      "audit log: files kept, FILE included (FILE, FILE.1 .. FILE.N-1)", NULL, 4,
                      1, 1000},
    [O_AUDIT_RING] = {"--audit-ring", "VITRINE_AUDIT_RING", "N",
                      "audit log: records waiting for the writer; more are dropped and counted, "
                      "never waited for", NULL, 256, 1, 65536},
    [O_AUDIT_RAW] = {"--audit-raw-ids", "VITRINE_AUDIT_RAW_IDS", "0|1",
                     "audit log: shopper ids as sent instead of their keyed hash (the flag "
                     "alone: 1)", NULL, 0, 0, 1},
    [O_AUDIT_SALT] = {"--audit-salt", "VITRINE_AUDIT_SALT", "TEXT",
                      "audit log: the key of the shopper id hash (HMAC-SHA256), so hashes match "
                      "across restarts and replicas; unset: random per process (prefer the "
                      "variable, from a Secret)", NULL, 0, 0, 0},
    [O_REVIEW] = {"--review-listen", "VITRINE_REVIEW_LISTEN", "IPV4:PORT|off",
                  "the review page (docs/SERVER.md): the audit log's newest storefronts, and "
                  "buttons that append deny rules to the catalogue's rules.txt and reload it "
                  "(needs --audit-log; bind it to loopback: it can change the rules)",
                  "off", 0, 0, 0},
};

static void usage(FILE *f) {
  fputs("usage: vitrine serve --bundle DIR --catalog DIR [options]\n"
        "\n"
        "Serves vitrine.v1.Storefront and grpc.health.v1.Health over gRPC, and Prometheus\n"
        "metrics over HTTP. Every option can also be set by its environment variable (a flag\n"
        "wins over the variable). SIGTERM or SIGINT: health NOT_SERVING while calls are still\n"
        "answered for --drain-linger-ms, then new calls refused while accepted ones finish,\n"
        "exit 0 (another signal ends the linger early; one more stops waiting for the queue);\n"
        "SIGHUP: reload the catalogue and its rules.txt (docs/RULES.md) without dropping a\n"
        "request.\n\n",
        f);
  for (int i = 0; i < O_N; i++) {
    const opt *o = &OPTS[i];
    char left[64];
    snprintf(left, sizeof left, "%s %s", o->flag, o->arg);
    fprintf(f, "  %-36s %s\n  %-36s   env %s", left, o->help, "", o->env);
    if (o->sval)
      fprintf(f, ", default %s", o->sval);
    else if (strcmp(o->arg, "N") == 0 || strcmp(o->arg, "0|1") == 0)
      fprintf(f, ", default %ld", o->ival);
    fputc('\n', f);
  }
}

static int split_addr(const char *a, char *h, size_t cap, int *port);

/* An IPV4:PORT option (not "off") split into host and port; -1 after a message naming it. */
static int listen_opt(int o, char *host, size_t cap, int *port) {
  if (split_addr(OPTS[o].sval, host, cap, port) == 0)
    return 0;
  fprintf(stderr, "vitrine serve: %s must be IPV4:PORT or off, not '%s'\n", OPTS[o].flag,
          OPTS[o].sval);
  return -1;
}

static int set_opt(opt *o, const char *v, const char *from) {
  if (strcmp(o->arg, "N") != 0 && strcmp(o->arg, "0|1") != 0) {
    o->sval = v;
    return 0;
  }
  char *end;
  errno = 0;
  long x = strtol(v, &end, 10);
  if (errno || end == v || *end || x < o->lo || x > o->hi) {
    fprintf(stderr, "vitrine serve: %s must be an integer in %ld..%ld, not '%s'\n", from, o->lo,
            o->hi, v);
    return -1;
  }
  o->ival = x;
  return 0;
}

/* The CPUs this process may use: those of its affinity mask, fewer where a cgroup (v2) CPU limit
 * allows less (a container's `cpu.max` quota, rounded up), at least 1. */
static int usable_cpus(void) {
  long n = 0;
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0)
    n = CPU_COUNT(&set);
  if (n < 1)
    n = sysconf(_SC_NPROCESSORS_ONLN);
  FILE *f = fopen("/sys/fs/cgroup/cpu.max", "r");
  if (f) {
    char quota[32];
    long period = 0;
    if (fscanf(f, "%31s %ld", quota, &period) == 2 && strcmp(quota, "max") != 0 && period > 0) {
      long q = strtol(quota, NULL, 10);
      long lim = q > 0 ? (q + period - 1) / period : 0;
      if (lim > 0 && lim < n)
        n = lim;
    }
    fclose(f);
  }
  return n < 1 ? 1 : n;
}

static int parse_opts(int argc, char **argv) {
  for (int i = 0; i < O_N; i++) {
    const char *v = getenv(OPTS[i].env);
    if (v && *v && set_opt(&OPTS[i], v, OPTS[i].env))
      return -1;
  }
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      return 1;
    }
    int found = -1;
    const char *val = NULL;
    for (int k = 0; k < O_N; k++) {
      size_t fl = strlen(OPTS[k].flag);
      if (strncmp(a, OPTS[k].flag, fl) == 0 && (a[fl] == 0 || a[fl] == '=')) {
        found = k;
        val = a[fl] == '=' ? a + fl + 1 : NULL;
        break;
      }
    }
    if (found < 0) {
      fprintf(stderr, "vitrine serve: unknown argument '%s' (see --help)\n", a);
      return -1;
    }
    if (!val && (found == O_LOGREQ || found == O_AUDIT_RAW))
      val = "1";
    if (!val) {
      if (i + 1 >= argc) {
        fprintf(stderr, "vitrine serve: %s needs a value\n", a);
        return -1;
      }
      val = argv[++i];
    }
    if (set_opt(&OPTS[found], val, OPTS[found].flag))
      return -1;
  }
  if (!OPTS[O_BUNDLE].sval || !OPTS[O_CATALOG].sval) {
    fprintf(stderr, "vitrine serve: --bundle and --catalog (or VITRINE_BUNDLE and "
                    "VITRINE_CATALOG) are required (see --help)\n");
    return -1;
  }
  if (!OPTS[O_TLS_CERT].sval != !OPTS[O_TLS_KEY].sval) {
    fprintf(stderr, "vitrine serve: --tls-cert and --tls-key go together (TLS needs both)\n");
    return -1;
  }
  if (OPTS[O_TLS_CA].sval && !OPTS[O_TLS_CERT].sval) {
    fprintf(stderr, "vitrine serve: --tls-client-ca needs --tls-cert and --tls-key (mutual TLS "
                    "is TLS first)\n");
    return -1;
  }
  {
    const char *v = OPTS[O_AUDIT_SAMPLE].sval;
    char *end;
    errno = 0;
    double f = strtod(v, &end);
    if (errno || end == v || *end || !isfinite(f) || f < 0.0 || f > 1.0) {
      fprintf(stderr, "vitrine serve: --audit-sample must be a number in 0..1, not '%s'\n", v);
      return -1;
    }
  }
  if (!*OPTS[O_AUDIT].sval) {
    fprintf(stderr, "vitrine serve: --audit-log needs a file (or off)\n");
    return -1;
  }
  if (strcmp(OPTS[O_REVIEW].sval, "off") != 0) {
    char host[64];
    int port;
    if (listen_opt(O_REVIEW, host, sizeof host, &port))
      return -1;
    if (strcmp(OPTS[O_AUDIT].sval, "off") == 0) {
      fprintf(stderr, "vitrine serve: --review-listen needs --audit-log (the page shows the "
                      "audit log's storefronts)\n");
      return -1;
    }
  }
  const char *lf = OPTS[O_LOGFMT].sval;
  if (strcmp(lf, "text") && strcmp(lf, "json")) {
    fprintf(stderr, "vitrine serve: --log-format must be text or json, not '%s'\n", lf);
    return -1;
  }
  return 0;
}

/* Signals. Every thread vitrine starts blocks SIGTERM, SIGINT and SIGHUP and the main thread
 * takes them with sigtimedwait; but threads that libraries start before main (OpenBLAS's pool)
 * do not block them, and the kernel may deliver a process-wide signal to one of those: there a
 * handler passes it on through a pipe, which the main thread polls too. */
static int g_sig_pipe[2] = {-1, -1};

static void on_signal(int sig) {
  int saved = errno;
  unsigned char b = (unsigned char)sig;
  if (write(g_sig_pipe[1], &b, 1) < 0) {
  } /* full pipe: a signal is pending anyway */
  errno = saved;
}

/* A pending SIGTERM, SIGINT or SIGHUP, waiting up to timeout_ms; 0 if none. */
static int poll_signal(const sigset_t *sigs, int timeout_ms) {
  struct timespec zero = {0, 0};
  int sig = sigtimedwait(sigs, NULL, &zero);
  if (sig > 0)
    return sig;
  struct pollfd pfd = {.fd = g_sig_pipe[0], .events = POLLIN};
  if (poll(&pfd, 1, timeout_ms) > 0) {
    unsigned char b;
    if (read(g_sig_pipe[0], &b, 1) == 1)
      return b;
  }
  return 0;
}

static void fmt_long(char *buf, size_t cap, long v) { snprintf(buf, cap, "%ld", v); }

/* What a reload needs. The main thread reloads (SIGHUP, --watch-catalog-ms) and so does the review
 * page's thread (a deny): mu serialises them, and the watcher's stamp with them. */
typedef struct reloader {
  pthread_mutex_t mu;
  vt_sched *s;
  vt_metrics *m;
  const vt_bundle *b;
  vt_model *const *models;
  int workers;
  const char *dir;
  long watch_ms;
  uint64_t stamp; /* catalog_stamp when the files were last read (with watch_ms) */
} reloader;

static uint64_t catalog_stamp(const char *dir);

/* Loads the catalogue and its rules again and makes them current; rl->mu held. */
static int reload(reloader *rl, vt_err *err) {
  vt_sched *s = rl->s;
  vt_metrics *m = rl->m;
  const vt_bundle *b = rl->b;
  const char *dir = rl->dir;
  vt_catalog *c = NULL;
  vt_gen *g = NULL;
  int64_t t0 = vt_now_ns();
  if (rl->watch_ms)
    rl->stamp = catalog_stamp(dir); /* before it reads them */
  if (vt_catalog_load(&c, dir, b, err) ||
      vt_gen_create(&g, b, rl->models, rl->workers, c, 0, (int)OPTS[O_GRAPHS].ival, err)) {
    vt_metrics_reload(m, 0);
    vt_log("error", "reload_failed", "catalog", dir, "error", err->msg, NULL);
    return -1;
  }
  char ms[32], version[160], rules[VT_RULES_VERSION_MAX + 1];
  fmt_long(ms, sizeof ms, (long)((vt_now_ns() - t0) / 1000000));
  snprintf(version, sizeof version, "%s", g->c->catalog_version);
  snprintf(rules, sizeof rules, "%s", vt_rules_version(g->c->rules));
  vt_metrics_versions(m, b->model_version, version, rules);
  vt_sched_publish(s, g); /* live from here: the log line says so only after */
  vt_metrics_reload(m, 1);
  vt_log("info", "reloaded", "catalog", dir, "catalog_version", version, "rules_version", rules,
         "ms", ms, NULL);
  return 0;
}

static void reload_locked(reloader *rl) {
  vt_err err = {0};
  pthread_mutex_lock(&rl->mu);
  reload(rl, &err);
  pthread_mutex_unlock(&rl->mu);
}

/* The review page's deny (vt_review_apply_fn): the line, then the reload, under the lock. */
static int review_apply(void *arg, const char *kind, const char *value, const char *comment,
                        int *line_no, char *version, size_t cap, vt_err *err) {
  reloader *rl = arg;
  pthread_mutex_lock(&rl->mu);
  vt_gen *g = vt_sched_gen(rl->s);
  int rc = vt_review_append(rl->dir, kind, value, comment, rl->b, g->c, line_no, err);
  vt_gen_unref(g);
  if (rc == 0) {
    char line[16];
    fmt_long(line, sizeof line, *line_no);
    vt_log("info", "review_deny", "kind", kind, "value", value, "rules_line", line, "by",
           comment, NULL);
    if (reload(rl, err)) {
      rc = VT_REVIEW_RELOAD_FAILED;
    } else {
      g = vt_sched_gen(rl->s);
      snprintf(version, cap, "%s", vt_rules_version(g->c->rules));
      vt_gen_unref(g);
    }
  } else {
    vt_log("warn", "review_deny_refused", "kind", kind, "value", value, "error", err->msg, NULL);
  }
  pthread_mutex_unlock(&rl->mu);
  return rc;
}

/* Splits "host:port" at the last ':'; host is copied into h. */
static int split_addr(const char *a, char *h, size_t cap, int *port) {
  const char *colon = strrchr(a, ':');
  if (!colon || (size_t)(colon - a) >= cap)
    return -1;
  memcpy(h, a, (size_t)(colon - a));
  h[colon - a] = 0;
  char *end;
  long p = strtol(colon + 1, &end, 10);
  if (end == colon + 1 || *end || p < 0 || p > 65535)
    return -1;
  *port = (int)p;
  return 0;
}

/* A PEM file's text (malloc'd), or NULL with a message naming the option and the file. */
static char *read_pem(int o, vt_err *err) {
  const char *path = OPTS[o].sval;
  FILE *f = fopen(path, "rb");
  if (!f) {
    vt_fail(err, VT_EIO, "%s %s: cannot read (%s)", OPTS[o].flag, path, strerror(errno));
    return NULL;
  }
  size_t cap = 1 << 16, n = 0;
  char *p = malloc(cap + 1);
  while (p && n < cap) {
    size_t k = fread(p + n, 1, cap - n, f);
    if (k == 0)
      break;
    n += k;
  }
  int big = !feof(f) && n == cap;
  fclose(f);
  if (!p) {
    vt_fail(err, VT_ENOMEM, "out of memory");
    return NULL;
  }
  p[n] = 0;
  if (big || !strstr(p, "-----BEGIN ") || strlen(p) != n) {
    vt_fail(err, VT_EFORMAT, "%s %s: not a PEM file%s", OPTS[o].flag, path,
            big ? " (over 64 KiB)" : " (no -----BEGIN line, or a NUL byte)");
    free(p);
    return NULL;
  }
  return p;
}

/* What the catalogue directory's files and its rules file look like now (name, device, inode,
 * size, mtime of each, following symlinks as a Kubernetes volume's ..data swap needs; an absent
 * rules.txt counts as zeros): a 64-bit FNV-1a digest. */
static uint64_t catalog_stamp(const char *dir) {
  static const char *const files[] = {"manifest.json", "products.tsv", "embeddings.safetensors",
                                      VT_RULES_FILE};
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
    char path[4096];
    struct stat sb;
    long long v[5] = {0};
    snprintf(path, sizeof path, "%s/%s", dir, files[i]);
    if (stat(path, &sb) == 0) {
      v[0] = (long long)sb.st_dev;
      v[1] = (long long)sb.st_ino;
      v[2] = (long long)sb.st_size;
      v[3] = (long long)sb.st_mtim.tv_sec;
      v[4] = (long long)sb.st_mtim.tv_nsec;
    }
    const unsigned char *b = (const unsigned char *)v;
    for (size_t k = 0; k < sizeof v; k++)
      h = (h ^ b[k]) * 1099511628211ull;
  }
  return h;
}

int vt_serve_main(int argc, char **argv) {
  int pr = parse_opts(argc, argv);
  if (pr)
    return pr > 0 ? 0 : 2;
  vt_log_init(strcmp(OPTS[O_LOGFMT].sval, "json") == 0);

  /* signals are handled by this thread only (sigtimedwait); every thread inherits the mask */
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &sigs, NULL);
  signal(SIGPIPE, SIG_IGN);
  if (pipe2(g_sig_pipe, O_CLOEXEC | O_NONBLOCK) == 0) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
  }

  int workers = (int)OPTS[O_WORKERS].ival;
  vt_err err = {0};
  vt_device_plan plan;
  if (vt_device_plan_make(&plan, OPTS[O_DEVICE].sval, &err)) {
    fprintf(stderr, "vitrine serve: %s\n", err.msg);
    return 2;
  }
  if (plan.fell_back)
    vt_log("warn", "device_fallback", "requested", OPTS[O_DEVICE].sval, "device", "cpu",
           "reason", plan.reason, NULL);
  vt_bundle *b = NULL;
  vt_catalog *c = NULL;
  vt_model *models[VT_MAX_DEVICES] = {0};
  vt_gen *g = NULL;
  vt_sched *s = NULL;
  vt_server *srv = NULL;
  vt_audit *audit = NULL;
  vt_review *review = NULL;
  reloader rl;
  memset(&rl, 0, sizeof rl);
  pthread_mutex_init(&rl.mu, NULL);
  int status = 2, metrics_port = -1, grpc_port = -1;
  vt_metrics *m = vt_metrics_create();
  if (!m) {
    vt_log("error", "start_failed", "error", "out of memory", NULL);
    return 1;
  }
  int64_t t0 = vt_now_ns();
  /* listen first: while the model loads, health answers NOT_SERVING and Recommend UNAVAILABLE */
  if (strcmp(OPTS[O_METRICS].sval, "off") != 0) {
    char host[256];
    int port;
    if (listen_opt(O_METRICS, host, sizeof host, &port))
      goto done;
    if (vt_metrics_listen(m, host, port, &metrics_port, &err)) {
      vt_log("error", "start_failed", "error", err.msg, NULL);
      status = 1;
      goto done;
    }
  }
  if (strcmp(OPTS[O_AUDIT].sval, "off") != 0) {
    const vt_audit_opts ao = {.path = OPTS[O_AUDIT].sval,
                              .sample = strtod(OPTS[O_AUDIT_SAMPLE].sval, NULL),
                              .max_bytes = OPTS[O_AUDIT_MAX].ival,
                              .keep = (int)OPTS[O_AUDIT_KEEP].ival,
                              .ring = (int)OPTS[O_AUDIT_RING].ival,
                              .raw_ids = (int)OPTS[O_AUDIT_RAW].ival,
                              .salt = OPTS[O_AUDIT_SALT].sval};
    if (vt_audit_open(&audit, &ao, m, &err)) {
      vt_log("error", "start_failed", "error", err.msg, NULL);
      status = 1;
      goto done;
    }
    char mb[32], keep[16];
    fmt_long(mb, sizeof mb, OPTS[O_AUDIT_MAX].ival);
    fmt_long(keep, sizeof keep, OPTS[O_AUDIT_KEEP].ival);
    vt_log("info", "audit_log", "path", ao.path, "sample", OPTS[O_AUDIT_SAMPLE].sval,
           "max_bytes", mb, "keep", keep, "shopper_ids",
           ao.raw_ids                       ? "raw"
           : ao.salt && *ao.salt ? "hmac-sha256 (--audit-salt)"
                                            : "hmac-sha256 (random per-process salt)",
           NULL);
  }
  char *pem[3] = {NULL, NULL, NULL};
  if (OPTS[O_TLS_CERT].sval) {
    const int which[3] = {O_TLS_CERT, O_TLS_KEY, O_TLS_CA};
    for (int i = 0; i < 3; i++)
      if (OPTS[which[i]].sval && !(pem[i] = read_pem(which[i], &err))) {
        vt_log("error", "start_failed", "error", err.msg, NULL);
        status = 1;
        for (int k = 0; k < i; k++)
          free(pem[k]);
        goto done;
      }
  }
  vt_server_opts sopts = {.listen = OPTS[O_LISTEN].sval,
                          .tls_cert_pem = pem[0],
                          .tls_key_pem = pem[1],
                          .tls_client_ca_pem = pem[2],
                          .cq_threads = (int)OPTS[O_CQ].ival,
                          .max_message_bytes = (int)OPTS[O_MSG].ival,
                          .max_request_events = (int)OPTS[O_EVENTS].ival,
                          .log_requests = (int)OPTS[O_LOGREQ].ival,
                          .max_batch = (int)OPTS[O_BATCH].ival,
                          .max_connection_age_ms = (int)OPTS[O_MAXAGE].ival,
                          .drain_timeout_ms = (int)OPTS[O_DRAIN].ival,
                          .audit = audit};
  int started = vt_server_start(&srv, &sopts, m, &grpc_port, &err);
  for (int i = 0; i < 3; i++) { /* gRPC keeps its own copies */
    if (pem[i])
      memset(pem[i], 0, strlen(pem[i])); /* the key leaves no copy behind */
    free(pem[i]);
  }
  if (started) {
    vt_log("error", "start_failed", "error", err.msg, NULL);
    status = 1;
    goto done;
  }
  char gp[16], mp[16];
  fmt_long(gp, sizeof gp, grpc_port);
  fmt_long(mp, sizeof mp, metrics_port);
  vt_log("info", "listening", "grpc_port", gp, "metrics_port", mp, "tls",
         !OPTS[O_TLS_CERT].sval ? "off" : OPTS[O_TLS_CA].sval ? "mutual" : "on", NULL);

  /* the files as they are before they are read: a change from here on (even one made while
   * loading, or right after `serving`) is seen by the first look of --watch-catalog-ms */
  const long watch_ms = OPTS[O_WATCH].ival;
  rl.watch_ms = watch_ms;
  rl.dir = OPTS[O_CATALOG].sval;
  rl.stamp = watch_ms ? catalog_stamp(rl.dir) : 0;
  if (vt_bundle_load(&b, OPTS[O_BUNDLE].sval, &err) ||
      vt_catalog_load(&c, OPTS[O_CATALOG].sval, b, &err)) {
    vt_log("error", "load_failed", "error", err.msg, NULL);
    goto done;
  }
  char ncat[160], nrules[VT_RULES_VERSION_MAX + 1];
  snprintf(ncat, sizeof ncat, "%s", c->catalog_version);
  snprintf(nrules, sizeof nrules, "%s", vt_rules_version(c->rules));
  /* one backend per engine: a CUDA device each, or --workers CPU ones; the weights go to every
   * device once (copied device to device after the first) and stay across reloads */
  if (plan.cuda)
    workers = plan.n_devices;
  else if (workers == 0) /* one engine per usable CPU: the gRPC threads share them */
    workers = usable_cpus() < VT_MAX_DEVICES ? usable_cpus() : VT_MAX_DEVICES;
  {
    vt_backend *bes[VT_MAX_DEVICES] = {0};
    for (int i = 0; i < workers; i++) {
      char name[16], why[256];
      if (plan.cuda)
        snprintf(name, sizeof name, "cuda:%d", plan.ordinals[i]);
      else
        snprintf(name, sizeof name, "cpu");
      if (vt_backend_open(&bes[i], name, why, sizeof why)) {
        vt_log("error", "load_failed", "device", name, "error", why, NULL);
        for (int k = 0; k < i; k++)
          vt_backend_close(bes[k]);
        vt_catalog_free(c);
        goto done;
      }
    }
    if (vt_models_create(models, bes, workers, b, &err)) { /* takes bes */
      vt_log("error", "load_failed", "error", err.msg, NULL);
      vt_catalog_free(c);
      goto done;
    }
    for (int i = 0; i < workers; i++) {
      char w[16];
      fmt_long(w, sizeof w, i);
      vt_log("info", "engine", "worker", w, "device", vt_model_backend(models[i])->name, NULL);
    }
  }
  /* takes c; builds the engines and runs a warm-up batch through each */
  if (vt_gen_create(&g, b, models, workers, c, (int)OPTS[O_CDELAY].ival,
                    (int)OPTS[O_GRAPHS].ival, &err)) {
    vt_log("error", "warmup_failed", "error", err.msg, NULL);
    goto done;
  }
  vt_metrics_versions(m, b->model_version, ncat, nrules);
  vt_sched_opts so = {.workers = workers,
                      .max_batch = (int)OPTS[O_BATCH].ival,
                      .max_delay_us = (int)OPTS[O_DELAY].ival,
                      .capacity = (int)OPTS[O_CAPACITY].ival,
                      .max_queue_ms = (int)OPTS[O_MAXQ].ival,
                      .compute_delay_us = (int)OPTS[O_CDELAY].ival};
  if (vt_sched_create(&s, &so, g, m, &err)) { /* takes g */
    g = NULL;
    vt_log("error", "start_failed", "error", err.msg, NULL);
    status = 1;
    goto done;
  }
  g = NULL;
  rl.s = s;
  rl.m = m;
  rl.b = b;
  rl.models = models;
  rl.workers = workers;
  if (strcmp(OPTS[O_REVIEW].sval, "off") != 0) {
    char host[64], rp[16];
    int port = 0, bound = 0;
    split_addr(OPTS[O_REVIEW].sval, host, sizeof host, &port); /* checked by parse_opts */
    const vt_review_opts ro = {.host = host,
                               .port = port,
                               .audit_path = OPTS[O_AUDIT].sval,
                               .catalog_dir = rl.dir,
                               .b = b,
                               .s = s,
                               .apply = review_apply,
                               .arg = &rl};
    if (vt_review_start(&review, &ro, &bound, &err)) {
      vt_log("error", "start_failed", "error", err.msg, NULL);
      status = 1;
      goto done;
    }
    fmt_long(rp, sizeof rp, bound);
    vt_log("info", "review_page", "review_port", rp, "audit_log", OPTS[O_AUDIT].sval, "rules",
           rl.dir, NULL);
  }
  vt_server_attach(srv, s);
  vt_server_set_serving(srv);
  {
    char w[16], mb[16], md[16], ms[32];
    fmt_long(w, sizeof w, workers);
    fmt_long(mb, sizeof mb, OPTS[O_BATCH].ival);
    fmt_long(md, sizeof md, OPTS[O_DELAY].ival);
    fmt_long(ms, sizeof ms, (long)((vt_now_ns() - t0) / 1000000));
    vt_log("info", "serving", "grpc_port", gp, "metrics_port", mp, "model_version",
           b->model_version, "catalog_version", ncat, "rules_version", nrules, "workers", w,
           "max_batch", mb,
           "max_queue_delay_us", md, "startup_ms", ms, NULL);
  }
  int sig = 0;
  int64_t next_look = vt_now_ns() + watch_ms * 1000000;
  for (;;) {
    sig = poll_signal(&sigs, 100);
    if (sig == SIGHUP) {
      reload_locked(&rl);
      continue;
    }
    if (sig)
      break;
    if (watch_ms && vt_now_ns() >= next_look) {
      next_look = vt_now_ns() + watch_ms * 1000000;
      pthread_mutex_lock(&rl.mu); /* a deny on the review page reloads (and stamps) too */
      uint64_t now_stamp = catalog_stamp(rl.dir);
      if (now_stamp != rl.stamp) {
        /* a change: reload once it has settled (two looks 50 ms apart agree), so a copy in
         * progress is not taken; a broken catalogue is refused and the old one kept, and it is
         * tried again only when the files change again */
        struct timespec settle = {0, 50 * 1000000};
        nanosleep(&settle, NULL);
        uint64_t again = catalog_stamp(rl.dir);
        if (again == now_stamp) {
          vt_log("info", "catalog_changed", "catalog", rl.dir, NULL);
          vt_err rerr = {0};
          reload(&rl, &rerr); /* stamps the files as it reads them */
        }
      }
      pthread_mutex_unlock(&rl.mu);
    }
  }
  vt_review_stop(review); /* no deny (hence no reload) from here on */
  review = NULL;
  const char *signame = sig == SIGINT ? "SIGINT" : "SIGTERM";
  /* linger: health NOT_SERVING at once, calls still answered, so balancers and endpoint lists
   * catch up before anything is refused; a second SIGTERM/SIGINT ends it */
  if (OPTS[O_LINGER].ival > 0) {
    vt_server_linger(srv);
    char lm[32];
    fmt_long(lm, sizeof lm, OPTS[O_LINGER].ival);
    vt_log("info", "lingering", "signal", signame, "linger_ms", lm, NULL);
    int64_t linger_due = vt_now_ns() + (int64_t)OPTS[O_LINGER].ival * 1000000;
    while (vt_now_ns() < linger_due) {
      int again = poll_signal(&sigs, 20);
      if (again == SIGTERM || again == SIGINT)
        break; /* to the drain; one more stops waiting for the queue */
      if (again == SIGHUP)
        reload_locked(&rl);
    }
  }
  /* drain: NOT_SERVING, refuse new calls, let accepted ones finish */
  vt_server_drain(srv);
  char inq[32];
  fmt_long(inq, sizeof inq, vt_sched_depth(s));
  vt_log("info", "draining", "signal", signame, "queued", inq, NULL);
  /* accepted requests finish, up to the drain timeout; a second SIGTERM/SIGINT stops waiting */
  int timed_out = 0, forced = 0;
  int64_t drain_due = vt_now_ns() + (int64_t)OPTS[O_DRAIN].ival * 1000000;
  while (vt_sched_wait_idle(s, 20) != 0) {
    int again = poll_signal(&sigs, 0);
    if (again == SIGTERM || again == SIGINT) {
      forced = 1;
      break;
    }
    if (vt_now_ns() >= drain_due) {
      timed_out = 1;
      break;
    }
  }
  vt_server_detach(srv);
  fmt_long(inq, sizeof inq, vt_sched_depth(s));
  vt_sched_free(s); /* anything still queued is answered UNAVAILABLE */
  s = NULL;
  vt_server_stop(srv, 2000);
  srv = NULL;
  vt_log("info", "stopped", "drain_timed_out", timed_out ? "true" : "false", "forced",
         forced ? "true" : "false", "abandoned", inq, NULL);
  status = 0;
done:
  vt_review_stop(review);
  if (srv) {
    vt_server_drain(srv);
    vt_server_detach(srv);
  }
  vt_sched_free(s);
  vt_server_stop(srv, 0);
  vt_audit_close(audit); /* after the last answer: writes what its ring holds */
  vt_gen_unref(g);
  for (int i = 0; i < VT_MAX_DEVICES; i++)
    vt_model_free(models[i]);
  vt_metrics_free(m);
  vt_bundle_free(b);
  pthread_mutex_destroy(&rl.mu);
  return status;
}
