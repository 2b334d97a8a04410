/* The whole cascade on a CUDA device against the CPU engine, on the golden requests of the
 * fixture bundle (VT_FIXTURE): the same theme, keyword and product ids in the same order, every
 * score and every traced tensor within 1e-5 relative; in one batch, in uneven batches, one
 * request at a time, with and without CUDA graphs. Where the device is the CUDA emulator
 * (test_device_parity_emu) it also checks what the device path promises: per batch one upload,
 * one download and one wait, whatever the number of decoded tokens; the same answers whatever
 * order the threads of a block run in; a failed launch fails that batch with a message naming
 * the op and the next batch is served. Without a device the tests skip with the reason. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "engine/bundle.h"
#include "engine/catalog.h"
#include "engine/engine.h"
#include "engine/request.h"
#include "engine/safetensors.h"

#ifdef VT_CUDA_EMU
#include "vt_emu.h"
#endif

#define DEVICE "cuda:0"

typedef struct fixture {
  vt_bundle *b;
  vt_catalog *c;
  vt_engine *cpu, *dev;
  cJSON *requests;
  int n;
  vt_request *reqs;
  vt_storefront *want; /* the CPU engine's answers, in one batch */
} fixture;

static fixture fx;
static const char *variant = ""; /* "" or "learned/" (the fixture's learned ranker) */

static void path_of(char *out, size_t n, const char *name) {
  const char *dir = getenv("VT_FIXTURE");
  cr_assert(dir, "VT_FIXTURE is not set (ctest sets it; or run python3 -m train.fixture)");
  snprintf(out, n, "%s/%s%s", dir, strcmp(name, "catalog") == 0 ? "" : variant, name);
}

static void setup(void) {
  char p[1024], why[256];
  vt_err err = {0};
  memset(&fx, 0, sizeof fx);
  vt_backend *probe;
  if (vt_backend_open(&probe, DEVICE, why, sizeof why))
    return; /* each test skips with the reason */
  vt_backend_close(probe);
  path_of(p, sizeof p, "bundle");
  cr_assert_eq(vt_bundle_load(&fx.b, p, &err), 0, "%s", err.msg);
  path_of(p, sizeof p, "catalog");
  cr_assert_eq(vt_catalog_load(&fx.c, p, fx.b, &err), 0, "%s", err.msg);
  cr_assert_eq(vt_engine_create(&fx.cpu, fx.b, fx.c, &err), 0, "%s", err.msg);
  cr_assert_eq(vt_engine_create_on(&fx.dev, fx.b, fx.c, DEVICE, &err), 0, "%s", err.msg);
  path_of(p, sizeof p, "golden.safetensors");
  vt_safetensors *golden;
  cr_assert_eq(vt_st_open(&golden, p, &err), 0, "%s", err.msg);
  fx.requests = cJSON_Parse(vt_st_meta(golden, "requests"));
  vt_st_close(golden);
  cr_assert(fx.requests);
  fx.n = cJSON_GetArraySize(fx.requests);
  fx.reqs = calloc((size_t)fx.n, sizeof *fx.reqs);
  fx.want = calloc((size_t)fx.n, sizeof *fx.want);
  for (int i = 0; i < fx.n; i++) {
    char *js = cJSON_PrintUnformatted(cJSON_GetArrayItem(fx.requests, i));
    cr_assert_eq(vt_request_parse(&fx.reqs[i], js, strlen(js), fx.b, fx.c, &err), 0,
                 "request %d: %s", i, err.msg);
    free(js);
  }
  cr_assert_eq(vt_engine_run(fx.cpu, fx.reqs, fx.n, fx.want, NULL, NULL, &err), 0, "%s",
               err.msg);
}

static void teardown(void) {
  for (int i = 0; i < fx.n; i++)
    vt_request_free(&fx.reqs[i]);
  free(fx.reqs);
  free(fx.want);
  cJSON_Delete(fx.requests);
  vt_engine_free(fx.dev);
  vt_engine_free(fx.cpu);
  vt_catalog_free(fx.c);
  vt_bundle_free(fx.b);
}

static void need_device(void) {
  char why[256];
  vt_backend *probe;
  if (!fx.dev) {
    if (vt_backend_open(&probe, DEVICE, why, sizeof why) == 0)
      vt_backend_close(probe);
    cr_skip_test("no CUDA device: %s", why);
  }
}

static int close_enough(double got, double want) {
  return fabs(got - want) <= 1e-5 * (1.0 + fabs(want));
}

/* Storefront got (device) against want (CPU): ids exactly, scores within 1e-5. */
static void compare(int i, const vt_storefront *got, const vt_storefront *want, const char *how) {
  cr_assert_eq(got->n_sections, want->n_sections, "%s, request %d: sections", how, i);
  cr_assert_eq(got->dropped_events, want->dropped_events, "%s, request %d", how, i);
  for (int s = 0; s < want->n_sections; s++) {
    const vt_section *g = &got->sections[s], *w = &want->sections[s];
    cr_assert_eq(g->theme, w->theme, "%s, request %d section %d: theme", how, i, s);
    cr_assert(close_enough(g->theme_score, w->theme_score),
              "%s, request %d section %d: theme score %.9g, CPU %.9g", how, i, s, g->theme_score,
              w->theme_score);
    cr_assert_eq(g->n_keywords, w->n_keywords, "%s, request %d section %d", how, i, s);
    for (int k = 0; k < w->n_keywords; k++) {
      cr_assert_eq(g->keyword[k], w->keyword[k], "%s, request %d section %d keyword %d", how, i,
                   s, k);
      cr_assert(close_enough(g->keyword_score[k], w->keyword_score[k]),
                "%s, request %d section %d keyword %d: %.9g, CPU %.9g", how, i, s, k,
                g->keyword_score[k], w->keyword_score[k]);
    }
    cr_assert_eq(g->n_products, w->n_products, "%s, request %d section %d", how, i, s);
    for (int k = 0; k < w->n_products; k++) {
      cr_assert(g->products[k].product == w->products[k].product &&
                    g->products[k].keyword == w->products[k].keyword,
                "%s, request %d section %d product %d: %d (kw %d), CPU %d (kw %d)", how, i, s, k,
                g->products[k].product, g->products[k].keyword, w->products[k].product,
                w->products[k].keyword);
      cr_assert(close_enough(g->products[k].score, w->products[k].score),
                "%s, request %d section %d product %d: score %.9g, CPU %.9g", how, i, s, k,
                g->products[k].score, w->products[k].score);
    }
  }
}

/* Runs reqs[i0 .. i0+n) on the device in batches of `size` and compares each with the CPU. */
static void run_and_compare(int i0, int n, int size, const char *how) {
  vt_err err = {0};
  vt_storefront *got = calloc((size_t)n, sizeof *got);
  for (int k = 0; k < n; k += size) {
    const int m = n - k < size ? n - k : size;
    cr_assert_eq(vt_engine_run(fx.dev, fx.reqs + i0 + k, m, got + k, NULL, NULL, &err), 0,
                 "%s: %s", how, err.msg);
  }
  for (int k = 0; k < n; k++)
    compare(i0 + k, &got[k], &fx.want[i0 + k], how);
  free(got);
}

TestSuite(device_parity, .init = setup, .fini = teardown, .timeout = 600);

/* The fixture's bundle with a learned ranker (VT_FIXTURE/learned/bundle): the page step's other
 * scoring path. */
static void setup_learned(void) {
  variant = "learned/";
  setup();
  cr_assert(!fx.b || fx.b->rank_model.hidden > 0, "the learned fixture's ranker did not load");
}

TestSuite(device_parity_learned, .init = setup_learned, .fini = teardown, .timeout = 600);

Test(device_parity_learned, the_same_storefronts_in_any_batching) {
  need_device();
  run_and_compare(0, fx.n, fx.n, "learned ranker, one batch");
}

/* ---- traced tensors: the device's against the CPU's ------------------------------------------- */
typedef struct traced {
  int n, cap;
  char (*name)[48];
  float **data;
  int *numel;
} traced;

static void keep(void *ctx, int req, const char *name, const float *data, int rows, int cols) {
  traced *t = ctx;
  if (t->n == t->cap) {
    t->cap = t->cap ? 2 * t->cap : 256;
    t->name = realloc(t->name, (size_t)t->cap * sizeof *t->name);
    t->data = realloc(t->data, (size_t)t->cap * sizeof *t->data);
    t->numel = realloc(t->numel, (size_t)t->cap * sizeof *t->numel);
  }
  snprintf(t->name[t->n], sizeof t->name[t->n], "r%03d.%s", req, name);
  t->numel[t->n] = rows * cols;
  t->data[t->n] = malloc((size_t)rows * cols * sizeof(float) + 1);
  memcpy(t->data[t->n], data, (size_t)rows * cols * sizeof(float));
  t->n++;
}

static void traced_free(traced *t) {
  for (int i = 0; i < t->n; i++)
    free(t->data[i]);
  free(t->name), free(t->data), free(t->numel);
}

Test(device_parity, every_traced_tensor_and_id_matches_the_cpu_engine) {
  need_device();
  vt_err err = {0};
  traced tc = {0}, td = {0};
  vt_storefront *a = calloc((size_t)fx.n, sizeof *a), *b = calloc((size_t)fx.n, sizeof *b);
  cr_assert_eq(vt_engine_run(fx.cpu, fx.reqs, fx.n, a, keep, &tc, &err), 0, "%s", err.msg);
  cr_assert_eq(vt_engine_run(fx.dev, fx.reqs, fx.n, b, keep, &td, &err), 0, "%s", err.msg);
  cr_assert_eq(td.n, tc.n, "device traced %d tensors, CPU %d", td.n, tc.n);
  double worst = 0.0;
  for (int i = 0; i < tc.n; i++) {
    cr_assert_str_eq(td.name[i], tc.name[i]);
    cr_assert_eq(td.numel[i], tc.numel[i], "%s", tc.name[i]);
    double scale = 0.0, diff = 0.0;
    for (int k = 0; k < tc.numel[i]; k++) {
      scale = fmax(scale, fabs(tc.data[i][k]));
      diff = fmax(diff, fabs((double)td.data[i][k] - tc.data[i][k]));
    }
    const double rel = diff / fmax(scale, 1e-6);
    worst = fmax(worst, rel);
    cr_assert_leq(rel, 1e-5, "%s: relative difference %.3g", tc.name[i], rel);
  }
  for (int i = 0; i < fx.n; i++)
    compare(i, &b[i], &a[i], "traced batch");
  cr_log_info("%d tensors compared, worst relative difference %.3g", tc.n, worst);
  traced_free(&tc), traced_free(&td);
  free(a), free(b);
}

Test(device_parity, the_same_storefronts_in_any_batching) {
  need_device();
  run_and_compare(0, fx.n, fx.n, "one batch");
  run_and_compare(0, 111, 37, "batches of 37");
  run_and_compare(111, 12, 1, "one at a time");
}

Test(device_parity, the_same_storefronts_from_cuda_graphs) {
  need_device();
  vt_engine_set_graphs(fx.dev, 1);
  run_and_compare(74, 24, 8, "graphs, batches of 8");  /* captured on a small arena */
  run_and_compare(0, 74, 37, "graphs, batches of 37"); /* the arena grows: graphs re-captured */
  run_and_compare(0, 74, 37, "graphs, replayed");      /* replayed */
  run_and_compare(74, 24, 8, "graphs, batches of 8 again"); /* captured anew on the new arena */
  vt_engine_set_graphs(fx.dev, 0);
}

#ifdef VT_CUDA_EMU
/* One upload, one download, one wait per batch: the decode loop never waits for the host. */
Test(device_parity, a_batch_is_one_upload_one_download_and_one_wait) {
  need_device();
  vt_err err = {0};
  vt_storefront *got = calloc(37, sizeof *got);
  cr_assert_eq(vt_engine_run(fx.dev, fx.reqs, 37, got, NULL, NULL, &err), 0, "%s", err.msg);
  for (int graphs = 0; graphs < 2; graphs++) {
    vt_engine_set_graphs(fx.dev, graphs);
    if (graphs) /* the capture itself runs nothing; count a replay */
      cr_assert_eq(vt_engine_run(fx.dev, fx.reqs, 37, got, NULL, NULL, &err), 0, "%s", err.msg);
    vt_emu_stats st;
    vt_emu_stats_reset();
    const long steps0 = vt_engine_profile(fx.dev)->decode_steps;
    cr_assert_eq(vt_engine_run(fx.dev, fx.reqs + 37, 37, got, NULL, NULL, &err), 0, "%s", err.msg);
    vt_emu_stats_get(&st);
    const long steps = vt_engine_profile(fx.dev)->decode_steps - steps0;
    cr_log_info("graphs %d: %ld decode steps, %llu launches, %llu GEMMs, %llu graph nodes", graphs,
                steps, (unsigned long long)st.launches, (unsigned long long)st.gemms,
                (unsigned long long)st.graph_nodes);
    cr_assert_eq(st.h2d, 1, "graphs %d: %llu uploads", graphs, (unsigned long long)st.h2d);
    cr_assert_eq(st.d2h, 1, "graphs %d: %llu downloads", graphs, (unsigned long long)st.d2h);
    cr_assert_eq(st.syncs, 1, "graphs %d: %llu waits", graphs, (unsigned long long)st.syncs);
    cr_assert_eq(st.graph_launches, (uint64_t)graphs);
    cr_assert(graphs || steps > 4, "the decode took %ld steps", steps);
    for (int i = 0; i < 37; i++)
      compare(37 + i, &got[i], &fx.want[37 + i], graphs ? "counted, graphs" : "counted");
  }
  vt_engine_set_graphs(fx.dev, 0);
  free(got);
}

/* The threads of a block in another order (forward, reverse, another shuffle): the same pages. */
Test(device_parity, the_same_storefronts_whatever_the_thread_order) {
  need_device();
  uint64_t seed;
  const int order = vt_emu_get_order(&seed);
  vt_emu_set_order(VT_EMU_FORWARD, 0);
  run_and_compare(0, 60, 60, "forward order");
  vt_emu_set_order(VT_EMU_REVERSE, 0);
  run_and_compare(60, 60, 60, "reverse order");
  vt_emu_set_order(VT_EMU_SHUFFLE, 12345);
  run_and_compare(120, fx.n - 120, fx.n - 120, "shuffle 12345");
  vt_emu_set_order(order, seed);
}

/* Two devices: the weights and the catalogue tables go to the first by one upload each and to
 * the second by one NCCL broadcast each (or by peer copies with VT_NCCL=off); both devices then
 * answer as the CPU does. */
static void two_devices(int nccl) {
  need_device();
  vt_err err = {0};
  char why[256];
  vt_backend *bes[2];
  if (vt_backend_open(&bes[0], "cuda:0", why, sizeof why) ||
      vt_backend_open(&bes[1], "cuda:1", why, sizeof why))
    cr_skip_test("two devices are needed: %s", why);
  if (!nccl)
    setenv("VT_NCCL", "off", 1);
  vt_emu_stats st;
  vt_emu_stats_reset();
  vt_model *models[2];
  vt_engine *engines[2];
  cr_assert_eq(vt_models_create(models, bes, 2, fx.b, &err), 0, "%s", err.msg);
  cr_assert_eq(vt_engines_create(engines, models, 2, fx.c, &err), 0, "%s", err.msg);
  vt_emu_stats_get(&st);
  unsetenv("VT_NCCL");
  cr_assert_eq(st.h2d, 2, "%llu uploads: the weights and the catalogue, once each",
               (unsigned long long)st.h2d);
  cr_assert_eq(st.collectives, nccl ? 2 : 0, "%llu NCCL broadcasts",
               (unsigned long long)st.collectives);
  if (!nccl)
    cr_assert_eq(st.d2d, 2, "%llu peer copies", (unsigned long long)st.d2d);
  vt_storefront *got = calloc(40, sizeof *got);
  for (int k = 0; k < 2; k++) {
    cr_assert_str_eq(vt_engine_device(engines[k]), k ? "cuda:1" : "cuda:0");
    cr_assert_eq(vt_engine_run(engines[k], fx.reqs + 20 * k, 20, got, NULL, NULL, &err), 0, "%s",
                 err.msg);
    for (int i = 0; i < 20; i++)
      compare(20 * k + i, &got[i], &fx.want[20 * k + i], k ? "cuda:1" : "cuda:0");
  }
  free(got);
  for (int k = 0; k < 2; k++) {
    vt_engine_free(engines[k]);
    vt_model_free(models[k]);
  }
}

Test(device_parity, two_devices_by_nccl_broadcast) { two_devices(1); }
Test(device_parity, two_devices_by_peer_copies) { two_devices(0); }
#endif
