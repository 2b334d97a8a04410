/* The C engine's throughput and latency by batch size on a request file, with the time split
 * between encoder, decoder, beam step and retrieval. bench/run_cpu.sh runs it beside the PyTorch
 * reference (train/bench_reference.py) on the same requests and thread count; tests/gpu/run.sh
 * runs it on a CUDA device.
 *
 *   bench_engine --bundle DIR --catalog DIR --requests FILE.jsonl [--batches 1,8,32,128]
 *                [--seconds 5] [--device cpu|cuda:N] [--graphs 0|1]
 *
 * One JSON line per batch size. A batch is B consecutive requests of the file (wrapping). The
 * throughput and latency come from a run without profiling; on a device the time split comes
 * from a second, shorter run with profiling on (it waits at every phase boundary). Each line also
 * has the phases' mean milliseconds per batch and, on the CPU, the GEMM GFLOP the encoder and the
 * decoder issued per batch (counted at every SGEMM call: below), for bench/sweep.py's rates. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/bundle.h"
#include "engine/catalog.h"
#include "engine/engine.h"
#include "engine/request.h"

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* The GEMM work of the timed batches, by phase. This target is linked with
 * -Wl,--wrap=cblas_sgemm (CMakeLists.txt), so every SGEMM of the CPU backend
 * (kernels/cpu/matmul.c) passes through __wrap_cblas_sgemm, which adds 2 M N K to the phase the
 * engine is in and calls OpenBLAS. A call is the encoder's while the engine's batch counter still
 * has the value it had when run_batch started (vt_engine_run counts a batch once its encoder is
 * done), the decoder's after. A device backend issues no cblas call: its counts stay 0. */
void __real_cblas_sgemm(const enum CBLAS_ORDER order, const enum CBLAS_TRANSPOSE ta,
                        const enum CBLAS_TRANSPOSE tb, const blasint M, const blasint N,
                        const blasint K, const float alpha, const float *A, const blasint lda,
                        const float *B, const blasint ldb, const float beta, float *C,
                        const blasint ldc);
void __wrap_cblas_sgemm(const enum CBLAS_ORDER order, const enum CBLAS_TRANSPOSE ta,
                        const enum CBLAS_TRANSPOSE tb, const blasint M, const blasint N,
                        const blasint K, const float alpha, const float *A, const blasint lda,
                        const float *B, const blasint ldb, const float beta, float *C,
                        const blasint ldc);

static const vt_profile *g_prof; /* the engine's, while counting; NULL: not counting */
static long g_batch0;            /* g_prof->batches when the current batch started */
static double g_flop[2];         /* [encoder, decoder] */

void __wrap_cblas_sgemm(const enum CBLAS_ORDER order, const enum CBLAS_TRANSPOSE ta,
                        const enum CBLAS_TRANSPOSE tb, const blasint M, const blasint N,
                        const blasint K, const float alpha, const float *A, const blasint lda,
                        const float *B, const blasint ldb, const float beta, float *C,
                        const blasint ldc) {
  if (g_prof)
    g_flop[g_prof->batches != g_batch0] += 2.0 * M * N * K;
  __real_cblas_sgemm(order, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

static int run_batch(vt_engine *e, const vt_request *batch, int B, vt_storefront *out,
                     vt_err *err) {
  g_batch0 = vt_engine_profile(e)->batches;
  return vt_engine_run(e, batch, B, out, NULL, NULL, err);
}

/* This process's CPU time (requests_per_cpu_s: steadier than the wall clock on a shared machine) */
static double cpu_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  const char *bundle = NULL, *catalog = NULL, *requests = NULL, *batches = "1,8,32,128";
  const char *device = "cpu";
  int graphs = 0;
  double seconds = 5.0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--bundle"))
      bundle = argv[i + 1];
    else if (!strcmp(argv[i], "--catalog"))
      catalog = argv[i + 1];
    else if (!strcmp(argv[i], "--requests"))
      requests = argv[i + 1];
    else if (!strcmp(argv[i], "--batches"))
      batches = argv[i + 1];
    else if (!strcmp(argv[i], "--seconds"))
      seconds = atof(argv[i + 1]);
    else if (!strcmp(argv[i], "--device"))
      device = argv[i + 1];
    else if (!strcmp(argv[i], "--graphs"))
      graphs = atoi(argv[i + 1]);
  }
  if (!bundle || !catalog || !requests) {
    fprintf(stderr, "usage: bench_engine --bundle DIR --catalog DIR --requests FILE.jsonl "
                    "[--batches 1,8,32,128] [--seconds 5] [--device cpu|cuda:N] [--graphs 0|1]\n");
    return 2;
  }
  vt_err err = {0};
  vt_bundle *b = NULL;
  vt_catalog *c = NULL;
  vt_engine *e = NULL;
  if (vt_bundle_load(&b, bundle, &err) || vt_catalog_load(&c, catalog, b, &err) ||
      vt_engine_create_on(&e, b, c, device, &err)) {
    fprintf(stderr, "bench_engine: %s\n", err.msg);
    return 2;
  }
  vt_engine_set_graphs(e, graphs);
  const int on_device = strcmp(vt_engine_device(e), "cpu") != 0;
  FILE *f = fopen(requests, "r");
  if (!f) {
    fprintf(stderr, "bench_engine: %s: cannot open\n", requests);
    return 2;
  }
  int n = 0, cap = 1024;
  vt_request *reqs = malloc((size_t)cap * sizeof *reqs);
  char *line = NULL;
  size_t lcap = 0;
  ssize_t len;
  while ((len = getline(&line, &lcap, f)) > 0) {
    if (n == cap)
      reqs = realloc(reqs, (size_t)(cap *= 2) * sizeof *reqs);
    if (vt_request_parse(&reqs[n], line, (size_t)len, b, c, &err)) {
      fprintf(stderr, "bench_engine: %s:%d: %s\n", requests, n + 1, err.msg);
      return 2;
    }
    n++;
  }
  free(line);
  fclose(f);
  if (n == 0) {
    fprintf(stderr, "bench_engine: %s: no requests\n", requests);
    return 2;
  }
  int maxb = 1;
  for (const char *p = batches; *p;) {
    int v = atoi(p);
    maxb = v > maxb ? v : maxb;
    p = strchr(p, ',') ? strchr(p, ',') + 1 : p + strlen(p);
  }
  vt_request *batch = malloc((size_t)maxb * sizeof *batch);
  vt_storefront *out = malloc((size_t)maxb * sizeof *out);
  size_t lat_cap = 1 << 16;
  double *lat = malloc(lat_cap * sizeof *lat);
  for (const char *p = batches; *p;) {
    const int B = atoi(p);
    p = strchr(p, ',') ? strchr(p, ',') + 1 : p + strlen(p);
    for (int k = 0; k < B; k++) /* warm-up: grows the arena to this batch size */
      batch[k] = reqs[k % n];
    if (run_batch(e, batch, B, out, &err)) {
      fprintf(stderr, "bench_engine: %s\n", err.msg);
      return 1;
    }
    memset(vt_engine_profile(e), 0, sizeof(vt_profile));
    g_flop[0] = g_flop[1] = 0;
    g_prof = vt_engine_profile(e);
    size_t nl = 0;
    long done = 0;
    int next = 0;
    const double t_end = now_s() + seconds, c0 = cpu_s();
    while ((now_s() < t_end || nl < 3) && nl < lat_cap) {
      for (int k = 0; k < B; k++)
        batch[k] = reqs[(next + k) % n];
      next = (next + B) % n;
      double t0 = now_s();
      if (run_batch(e, batch, B, out, &err)) {
        fprintf(stderr, "bench_engine: %s\n", err.msg);
        return 1;
      }
      lat[nl++] = now_s() - t0;
      done += B;
    }
    const double cpu = cpu_s() - c0;
    double total = 0;
    for (size_t i = 0; i < nl; i++)
      total += lat[i];
    qsort(lat, nl, sizeof *lat, cmp_double);
    const long steps = vt_engine_profile(e)->decode_steps, batches_run = vt_engine_profile(e)->batches;
    g_prof = NULL;
    if (on_device) { /* the split, from a shorter run that waits at every phase boundary */
      memset(vt_engine_profile(e), 0, sizeof(vt_profile));
      vt_engine_set_profiling(e, 1);
      const double t_prof = now_s() + seconds / 4;
      for (int k = 0; k < 3 || now_s() < t_prof; k++) {
        for (int j = 0; j < B; j++)
          batch[j] = reqs[(next + j) % n];
        next = (next + B) % n;
        if (run_batch(e, batch, B, out, &err)) {
          fprintf(stderr, "bench_engine: %s\n", err.msg);
          return 1;
        }
      }
      vt_engine_set_profiling(e, 0);
    }
    const vt_profile *pr = vt_engine_profile(e);
    const double all = pr->encode_ns + pr->decode_ns + pr->beam_ns + pr->retrieve_ns;
    printf("{\"engine\": \"vitrine-c\", \"device\": \"%s\", \"graphs\": %d, "
           "\"batch\": %d, \"requests_per_s\": %.1f, \"requests_per_cpu_s\": %.1f, "
           "\"batch_ms_p50\": %.3f, \"batch_ms_p99\": %.3f, \"batches\": %zu, "
           "\"share_encode\": %.3f, \"share_decode\": %.3f, \"share_beam\": %.3f, "
           "\"share_retrieve\": %.3f, \"beam_of_decode\": %.4f, \"steps_per_batch\": %.1f, "
           "\"arena_mib\": %.1f, \"ms_encode\": %.4f, \"ms_decode\": %.4f, \"ms_beam\": %.4f, "
           "\"ms_retrieve\": %.4f, \"gemm_gflop_encode\": %.9f, \"gemm_gflop_decode\": %.9f}\n",
           vt_engine_device(e), graphs, B, (double)done / total, (double)done / cpu,
           1e3 * lat[nl / 2],
           1e3 * lat[nl * 99 / 100 < nl ? nl * 99 / 100 : nl - 1], nl, pr->encode_ns / all,
           pr->decode_ns / all, pr->beam_ns / all, pr->retrieve_ns / all,
           pr->beam_ns / (pr->decode_ns + pr->beam_ns), (double)steps / (double)batches_run,
           (double)vt_engine_arena_bytes(e) / (1 << 20), pr->encode_ns * 1e-6 / (double)pr->batches,
           pr->decode_ns * 1e-6 / (double)pr->batches, pr->beam_ns * 1e-6 / (double)pr->batches,
           pr->retrieve_ns * 1e-6 / (double)pr->batches, g_flop[0] * 1e-9 / (double)batches_run,
           g_flop[1] * 1e-9 / (double)batches_run);
    fflush(stdout);
  }
  for (int i = 0; i < n; i++)
    vt_request_free(&reqs[i]);
  free(reqs);
  free(batch);
  free(out);
  free(lat);
  vt_engine_free(e);
  vt_catalog_free(c);
  vt_bundle_free(b);
  return 0;
}
