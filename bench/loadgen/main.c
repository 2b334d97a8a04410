/* vitrine-bench: the gRPC load generator and latency profiler for vitrine.v1.Storefront.
 *
 *   build/vitrine-bench --target 127.0.0.1:50051 --requests build/demo/requests.jsonl \
 *       --concurrency 1,2,4,8,16,32,64 --rate 0.25x,0.5x,0.9x --out build/bench/run
 *
 * Sweeps load steps (closed loop: calls kept outstanding; open loop: calls per second, with
 * latency from each call's scheduled time), prints one table row per step as it finishes, and
 * writes results.json / results.csv. bench/README.md explains every number. */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "loadgen.h"
#include "report.h"
#include "requests.h"
#include "stats.h"

#define MAX_STEPS 128

static void usage(FILE *f) {
  fputs(
      "usage: vitrine-bench --requests FILE (--concurrency LIST | --rate LIST | both) [options]\n"
      "\n"
      "Load generator and latency profiler for vitrine.v1.Storefront/Recommend (any server of\n"
      "that proto). Closed loop (--concurrency) keeps exactly N calls outstanding; open loop\n"
      "(--rate) sends calls at scheduled times whatever the answers, and measures latency from\n"
      "each call's scheduled time (no coordinated omission). Each step: a warm-up, then windows\n"
      "until the last two agree (throughput and p99 within the tolerance) or --max-windows.\n"
      "\n"
      "  --target TARGET          the server: HOST:PORT (default 127.0.0.1:50051), or a fleet\n"
      "                           with calls round-robin over its addresses: a list\n"
      "                           IP:PORT,IP:PORT,... or any gRPC target (dns:NAME:PORT,\n"
      "                           ipv4:..., ipv6:...)\n"
      "  --requests FILE          JSON lines, each a request as `vitrine recommend` takes it;\n"
      "                           sent round-robin (a malformed line is refused: FILE:LINE)\n"
      "  --concurrency N,N,...    closed-loop steps: calls kept outstanding\n"
      "  --rate R,R,...           open-loop steps, calls/s; Rx (e.g. 0.5x) is R times the best\n"
      "                           closed-loop throughput of this run (needs --concurrency)\n"
      "  --arrivals constant|poisson  open-loop gaps (default poisson, seeded)\n"
      "  --seed N                 the Poisson schedules' seed (default 1)\n"
      "  --warmup S               seconds of warm-up per step, discarded (default 2)\n"
      "  --window S               seconds per measurement window (default 2)\n"
      "  --max-windows N          windows per step at most, >= 2 (default 6)\n"
      "  --tolerance F            windows agree within this relative difference (default 0.1)\n"
      "  --timeout-ms N           per-call deadline (default 0: none)\n"
      "  --max-outstanding N      calls in flight at most; open loop drops (and counts) calls\n"
      "                           beyond it (default 1024)\n"
      "  --connections N          HTTP/2 connections, calls round-robin (default 1)\n"
      "  --drain S                at a step's end, how long to wait for the calls in flight\n"
      "                           before cancelling them (counted UNFINISHED; default 10)\n"
      "  --max-lag-ms F           open loop: send-lag p99 above this flags the generator as\n"
      "                           behind (default 5)\n"
      "  --connect-timeout S      wait this long for GetInfo to answer at start (default 30)\n"
      "  --label NAME             the system's name in the output files (default: the target)\n"
      "  --out DIR                write DIR/results.json and DIR/results.csv\n"
      "  --quiet                  no progress on stderr\n"
      "  --records DIR            also write DIR/records-N.csv: every call of step N (times,\n"
      "                           status, server timing), after a line with the step's t0\n"
      "                           on CLOCK_MONOTONIC; written once the last step has run\n"
      "\n"
      "Exit status: 0 when every step ran (errors the server answered are results, in the\n"
      "table and the files), 1 when the server cannot be reached or a step cannot run, 2 for\n"
      "bad options or a bad request file.\n",
      f);
}

/* "a,b,c" -> doubles; relative[i] when the item ends in 'x'. -1 on a bad list. */
static int parse_list(const char *s, double *v, int *relative, int max, int integers) {
  int n = 0;
  const char *p = s;
  while (*p) {
    if (n == max)
      return -1;
    char *end;
    errno = 0;
    double d = strtod(p, &end);
    if (end == p || errno || !(d > 0) || !isfinite(d))
      return -1;
    relative[n] = 0;
    if (*end == 'x' && !integers) {
      relative[n] = 1;
      end++;
    }
    if (integers && d != floor(d))
      return -1;
    v[n++] = d;
    if (*end == ',')
      end++;
    else if (*end)
      return -1;
    p = end;
  }
  return n;
}

static int parse_double(const char *s, double lo, double hi, double *out) {
  char *end;
  errno = 0;
  double d = strtod(s, &end);
  if (end == s || *end || errno || !(d >= lo && d <= hi))
    return -1;
  *out = d;
  return 0;
}

/* in the order of longopts below (the error message indexes it) */
enum {
  O_TARGET = 256, O_REQUESTS, O_CONC, O_RATE, O_ARRIVALS, O_SEED, O_WARMUP, O_WINDOW,
  O_MAXWIN, O_TOL, O_TIMEOUT, O_MAXOUT, O_CONNS, O_DRAIN, O_LAG, O_CONNECT, O_LABEL, O_OUT,
  O_QUIET, O_HELP, O_RECORDS
};

int main(int argc, char **argv) {
  static const struct option longopts[] = {
      {"target", required_argument, NULL, O_TARGET},
      {"requests", required_argument, NULL, O_REQUESTS},
      {"concurrency", required_argument, NULL, O_CONC},
      {"rate", required_argument, NULL, O_RATE},
      {"arrivals", required_argument, NULL, O_ARRIVALS},
      {"seed", required_argument, NULL, O_SEED},
      {"warmup", required_argument, NULL, O_WARMUP},
      {"window", required_argument, NULL, O_WINDOW},
      {"max-windows", required_argument, NULL, O_MAXWIN},
      {"tolerance", required_argument, NULL, O_TOL},
      {"timeout-ms", required_argument, NULL, O_TIMEOUT},
      {"max-outstanding", required_argument, NULL, O_MAXOUT},
      {"connections", required_argument, NULL, O_CONNS},
      {"drain", required_argument, NULL, O_DRAIN},
      {"max-lag-ms", required_argument, NULL, O_LAG},
      {"connect-timeout", required_argument, NULL, O_CONNECT},
      {"label", required_argument, NULL, O_LABEL},
      {"out", required_argument, NULL, O_OUT},
      {"quiet", no_argument, NULL, O_QUIET},
      {"help", no_argument, NULL, O_HELP},
      {"records", required_argument, NULL, O_RECORDS},
      {NULL, 0, NULL, 0}};
  vb_run_info run = {0};
  run.target = "127.0.0.1:50051";
  run.arrivals = "poisson";
  run.seed = 1;
  run.warmup_s = 2;
  run.window_s = 2;
  run.max_windows = 6;
  run.tolerance = 0.10;
  run.max_outstanding = 1024;
  run.connections = 1;
  run.drain_s = 10;
  run.max_lag_ms = 5;
  double connect_s = 30, d;
  const char *out_dir = NULL, *records_dir = NULL;
  int quiet = 0, c;
  while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    int bad = 0;
    switch (c) {
    case O_TARGET: run.target = optarg; break;
    case O_REQUESTS: run.requests_path = optarg; break;
    case O_CONC: run.concurrency_arg = optarg; break;
    case O_RATE: run.rate_arg = optarg; break;
    case O_ARRIVALS:
      run.arrivals = optarg;
      bad = strcmp(optarg, "constant") != 0 && strcmp(optarg, "poisson") != 0;
      break;
    case O_SEED:
      bad = parse_double(optarg, 0, 9007199254740992.0, &d) || d != floor(d);
      run.seed = (unsigned long long)d;
      break;
    case O_WARMUP: bad = parse_double(optarg, 0, 3600, &run.warmup_s); break;
    case O_WINDOW: bad = parse_double(optarg, 0.01, 3600, &run.window_s); break;
    case O_MAXWIN:
      bad = parse_double(optarg, 2, VB_MAX_WINDOWS, &d) || d != floor(d);
      run.max_windows = (int)d;
      break;
    case O_TOL: bad = parse_double(optarg, 0, 1, &run.tolerance); break;
    case O_TIMEOUT:
      bad = parse_double(optarg, 0, 86400000, &d) || d != floor(d);
      run.timeout_ms = (long)d;
      break;
    case O_MAXOUT:
      bad = parse_double(optarg, 1, 1000000, &d) || d != floor(d);
      run.max_outstanding = (int)d;
      break;
    case O_CONNS:
      bad = parse_double(optarg, 1, 256, &d) || d != floor(d);
      run.connections = (int)d;
      break;
    case O_DRAIN: bad = parse_double(optarg, 0, 3600, &run.drain_s); break;
    case O_LAG: bad = parse_double(optarg, 0, 1e9, &run.max_lag_ms); break;
    case O_CONNECT: bad = parse_double(optarg, 0, 3600, &connect_s); break;
    case O_LABEL: run.label = optarg; break;
    case O_OUT: out_dir = optarg; break;
    case O_QUIET: quiet = 1; break;
    case O_RECORDS: records_dir = optarg; break;
    case O_HELP: usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
    if (bad) {
      fprintf(stderr, "vitrine-bench: bad value for --%s: '%s'\n", longopts[c - O_TARGET].name,
              optarg);
      return 2;
    }
  }
  if (optind < argc || !run.requests_path || (!run.concurrency_arg && !run.rate_arg)) {
    fprintf(stderr, "vitrine-bench: %s\n\n",
            optind < argc ? "unexpected argument"
            : !run.requests_path ? "--requests is required"
                                 : "give --concurrency, --rate or both");
    usage(stderr);
    return 2;
  }
  double conc[MAX_STEPS], rate[MAX_STEPS];
  int conc_rel[MAX_STEPS], rate_rel[MAX_STEPS], n_conc = 0, n_rate = 0;
  if (run.concurrency_arg &&
      ((n_conc = parse_list(run.concurrency_arg, conc, conc_rel, MAX_STEPS, 1)) <= 0)) {
    fprintf(stderr, "vitrine-bench: --concurrency must be positive integers, a,b,c\n");
    return 2;
  }
  if (run.rate_arg && ((n_rate = parse_list(run.rate_arg, rate, rate_rel, MAX_STEPS, 0)) <= 0)) {
    fprintf(stderr, "vitrine-bench: --rate must be positive numbers (or Rx), a,b,c\n");
    return 2;
  }
  for (int i = 0; i < n_conc; i++)
    if (conc[i] > run.max_outstanding) {
      fprintf(stderr, "vitrine-bench: concurrency %.0f is above --max-outstanding %d\n", conc[i],
              run.max_outstanding);
      return 2;
    }
  for (int i = 0; i < n_rate; i++)
    if (rate_rel[i] && !n_conc) {
      fprintf(stderr, "vitrine-bench: a relative rate (%gx) needs a --concurrency sweep\n",
              rate[i]);
      return 2;
    }
  if (!run.label)
    run.label = run.target;
  /* a bare list of addresses becomes gRPC's ipv4:/ipv6: target (round robin: loadgen.c) */
  char target_buf[4096];
  if (strchr(run.target, ',') && !strchr(run.target, '/') &&
      strncmp(run.target, "dns:", 4) != 0 && strncmp(run.target, "ipv4:", 5) != 0 &&
      strncmp(run.target, "ipv6:", 5) != 0) {
    int v6 = run.target[0] == '[';
    for (const char *p = run.target; *p; p++)
      if (!(isdigit((unsigned char)*p) || *p == '.' || *p == ':' || *p == ',' ||
            (v6 && (isxdigit((unsigned char)*p) || *p == '[' || *p == ']')))) {
        fprintf(stderr,
                "vitrine-bench: --target %s: a list takes IP:PORT addresses only; for a name "
                "with several addresses use dns:NAME:PORT\n",
                run.target);
        return 2;
      }
    if (snprintf(target_buf, sizeof target_buf, "%s:%s", v6 ? "ipv6" : "ipv4", run.target) >=
        (int)sizeof target_buf) {
      fprintf(stderr, "vitrine-bench: --target is too long\n");
      return 2;
    }
    run.target = target_buf;
  }

  char err[1024];
  vb_requests reqs;
  if (vb_requests_load(&reqs, run.requests_path, err, sizeof err)) {
    fprintf(stderr, "vitrine-bench: %s\n", err);
    return 2;
  }
  run.n_requests = reqs.n;
  run.request_bytes_mean = (double)reqs.bytes / reqs.n;
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(run.started_at, sizeof run.started_at, "%Y-%m-%dT%H:%M:%SZ", &tm);
  if (gethostname(run.host, sizeof run.host) != 0)
    snprintf(run.host, sizeof run.host, "?");
  run.host[sizeof run.host - 1] = 0;
  run.cpus = sysconf(_SC_NPROCESSORS_ONLN);

  vb_client_opts co = {run.target, run.connections, run.max_outstanding};
  vb_client *client = vb_client_create(&co, &reqs, err, sizeof err);
  if (!client) {
    fprintf(stderr, "vitrine-bench: %s\n", err);
    vb_requests_free(&reqs);
    return 1;
  }
  int rc = 0;
  char *info = NULL, msg[512];
  int code = vb_get_info(client, (long)(connect_s * 1000), &info, msg, sizeof msg);
  if (code == 12 /* UNIMPLEMENTED: a server without GetInfo is still measured */) {
    fprintf(stderr, "vitrine-bench: %s has no GetInfo; going on\n", run.target);
  } else if (code != 0) {
    fprintf(stderr, "vitrine-bench: %s: GetInfo failed: %s: %s\n", run.target,
            vb_status_name(code), msg);
    vb_client_destroy(client);
    vb_requests_free(&reqs);
    return 1;
  }
  run.server_info_json = info;

  printf("vitrine-bench: %s (%s), %d requests from %s (%.0f bytes on average)\n", run.label,
         run.target, reqs.n, run.requests_path, run.request_bytes_mean);
  if (info)
    printf("server: %s\n", info);
  printf("each step: warm-up %.3g s, windows of %.3g s until two agree within %.0f%% (at most "
         "%d); latency from the intended send time, exact percentiles of OK answers\n\n",
         run.warmup_s, run.window_s, 100 * run.tolerance, run.max_windows);
  vb_table_header(stdout);

  vb_result *res = calloc(MAX_STEPS * 2, sizeof *res);
  if (!res) {
    fprintf(stderr, "vitrine-bench: out of memory\n");
    vb_client_destroy(client);
    vb_requests_free(&reqs);
    free(info);
    return 1;
  }
  vb_step_data *kept = records_dir ? calloc(MAX_STEPS * 2, sizeof *kept) : NULL;
  if (records_dir && !kept) {
    fprintf(stderr, "vitrine-bench: out of memory\n");
    free(res);
    vb_client_destroy(client);
    vb_requests_free(&reqs);
    free(info);
    return 1;
  }
  int n_res = 0;
  double best_closed = 0;
  vb_progress prog = {quiet, isatty(2), ""};
  for (int i = 0; i < n_conc + n_rate && rc == 0; i++) {
    vb_step_spec s = {0};
    s.warmup_ns = (int64_t)(run.warmup_s * 1e9);
    s.window_ns = (int64_t)(run.window_s * 1e9);
    s.max_windows = run.max_windows;
    s.tolerance = run.tolerance;
    s.timeout_ns = (int64_t)run.timeout_ms * 1000000;
    s.drain_ns = (int64_t)(run.drain_s * 1e9);
    if (i < n_conc) {
      s.mode = VB_CLOSED;
      s.concurrency = (int)conc[i];
      snprintf(prog.name, sizeof prog.name, "c=%d", s.concurrency);
    } else {
      int k = i - n_conc;
      s.mode = VB_OPEN;
      s.rate = rate_rel[k] ? rate[k] * best_closed : rate[k];
      s.arrivals = strcmp(run.arrivals, "constant") == 0 ? VB_CONSTANT : VB_POISSON;
      s.seed = run.seed * 0x9e3779b97f4a7c15ULL + (unsigned long long)k;
      if (!(s.rate > 0)) {
        fprintf(stderr, "vitrine-bench: rate %gx of a closed-loop best of 0 ok/s: skipped\n",
                rate[k]);
        continue;
      }
      snprintf(prog.name, sizeof prog.name, "r=%.4g", s.rate);
    }
    vb_step_data data;
    int failed = vb_run_step(client, &s, &data, vb_progress_cb, &prog, err, sizeof err);
    if (!failed && vb_summarize(&data, run.max_lag_ms, &res[n_res])) {
      snprintf(err, sizeof err, "out of memory");
      failed = 1;
    }
    vb_progress_end(&prog);
    if (failed) {
      fprintf(stderr, "vitrine-bench: %s: %s\n", prog.name, err);
      rc = 1;
    } else {
      vb_table_row(stdout, &res[n_res]);
      if (s.mode == VB_CLOSED && res[n_res].ok_per_s > best_closed)
        best_closed = res[n_res].ok_per_s;
      n_res++;
      if (out_dir && vb_write_results(out_dir, &run, res, n_res, err, sizeof err)) {
        fprintf(stderr, "vitrine-bench: %s\n", err);
        rc = 1;
      }
      if (records_dir) { /* written after the last step: writing them takes CPU and disk
                            * that the next step's calls should not share */
        kept[n_res - 1] = data;
        continue;
      }
    }
    vb_step_data_free(&data);
  }
  for (int i = 0; records_dir && i < n_res; i++) {
    if (rc == 0 && vb_write_records(records_dir, i + 1, &kept[i], err, sizeof err)) {
      fprintf(stderr, "vitrine-bench: %s\n", err);
      rc = 1;
    }
    vb_step_data_free(&kept[i]);
  }
  free(kept);
  if (out_dir && rc == 0)
    printf("\nwrote %s/results.json and %s/results.csv\n", out_dir, out_dir);
  free(res);
  free(info);
  vb_client_destroy(client);
  vb_requests_free(&reqs);
  return rc;
}
