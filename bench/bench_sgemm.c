/* OpenBLAS's SGEMM rate on this machine at given shapes: the reference the scale sweep
 * (bench/sweep.py) holds the engine's achieved GEMM rate against, measured in the same run.
 *
 *   bench_sgemm [--shapes MxNxK[,MxNxK...]] [--seconds 0.2] [--samples 5]
 *
 * Each shape is the product the engine's Linear layer issues (kernels/cpu/matmul.c): row-major
 * out (M, N) = inp (M, K) W^T with W (N, K), i.e. cblas_sgemm(RowMajor, NoTrans, Trans, M, N, K,
 * alpha 1, beta 0), on the same OpenBLAS the engine links (its thread count from
 * OPENBLAS_NUM_THREADS, as the engine's). Operands are filled with values in [-1, 1) and reused
 * across calls (warm caches, as in an engine that runs the same layer for a whole batch).
 *
 * FLOPs per call: 2 M N K. Per shape: one untimed call, then --samples samples, each as many
 * back-to-back calls as last at least --seconds / --samples; one JSON line per shape with the
 * median and the best sample's GFLOP/s. Default shape: 1024x1024x1024 (the machine's peak). */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static float *filled(size_t n, unsigned *seed) {
  float *p = malloc(n * sizeof *p);
  if (!p)
    return NULL;
  for (size_t i = 0; i < n; i++) {
    *seed = *seed * 1664525u + 1013904223u;
    p[i] = (float)(*seed >> 8) / (float)(1u << 23) - 1.0f;
  }
  return p;
}

#define MAX_SAMPLES 64

/* Times one shape; prints its JSON line. 0, or 1 when out of memory. */
static int time_shape(int M, int N, int K, double seconds, int samples) {
  unsigned seed = 13;
  float *A = filled((size_t)M * K, &seed), *W = filled((size_t)N * K, &seed),
        *C = filled((size_t)M * N, &seed);
  if (!A || !W || !C) {
    fprintf(stderr, "bench_sgemm: %dx%dx%d: out of memory\n", M, N, K);
    free(A);
    free(W);
    free(C);
    return 1;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, A, K, W, K, 0.0f, C, N);
  const double flop = 2.0 * M * N * K, per = seconds / samples;
  double rate[MAX_SAMPLES];
  long calls = 0;
  for (int s = 0; s < samples; s++) {
    long n = 0;
    const double t0 = now_s();
    double t;
    do {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, A, K, W, K, 0.0f, C,
                  N);
      n++;
    } while ((t = now_s() - t0) < per);
    rate[s] = flop * (double)n / t * 1e-9;
    calls += n;
  }
  qsort(rate, (size_t)samples, sizeof *rate, cmp_double);
  printf("{\"m\": %d, \"n\": %d, \"k\": %d, \"gflops\": %.3f, \"gflops_best\": %.3f, "
         "\"calls\": %ld, \"samples\": %d, \"threads\": %d, \"blas\": \"%s\"}\n",
         M, N, K, rate[samples / 2], rate[samples - 1], calls, samples,
         openblas_get_num_threads(), openblas_get_corename());
  fflush(stdout);
  free(A);
  free(W);
  free(C);
  return 0;
}

int main(int argc, char **argv) {
  const char *shapes = "1024x1024x1024";
  double seconds = 0.2;
  int samples = 5;
  for (int i = 1; i < argc; i++) {
    if (i + 1 < argc && !strcmp(argv[i], "--shapes"))
      shapes = argv[++i];
    else if (i + 1 < argc && !strcmp(argv[i], "--seconds"))
      seconds = atof(argv[++i]);
    else if (i + 1 < argc && !strcmp(argv[i], "--samples"))
      samples = atoi(argv[++i]);
    else {
      fprintf(stderr, "usage: bench_sgemm [--shapes MxNxK[,MxNxK...]] [--seconds 0.2] "
                      "[--samples 5]\n");
      return 2;
    }
  }
  if (samples < 1 || samples > MAX_SAMPLES || !(seconds > 0)) {
    fprintf(stderr, "bench_sgemm: --samples must be 1..%d and --seconds > 0\n", MAX_SAMPLES);
    return 2;
  }
  for (const char *p = shapes; *p;) {
    int M, N, K, used = 0;
    if (sscanf(p, "%dx%dx%d%n", &M, &N, &K, &used) != 3 || M < 1 || N < 1 || K < 1 ||
        (p[used] && p[used] != ',')) {
      fprintf(stderr, "bench_sgemm: bad shape at \"%s\" (want MxNxK, positive)\n", p);
      return 2;
    }
    if (time_shape(M, N, K, seconds, samples))
      return 1;
    p += used + (p[used] == ',');
  }
  return 0;
}
