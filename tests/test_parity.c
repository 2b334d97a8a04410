/* Parity of the C engine with the PyTorch reference on the golden requests of the fixture bundle
 * (train/fixture.py, made by ctest's fixture_bundle step; VT_FIXTURE names its directory):
 * every intermediate tensor within 1e-4 relative error, and identical theme, keyword and product
 * ids, in order, for every request; the same answers whatever the batch size. The parity_learned
 * suite does the same for the fixture's bundle with a learned ranker (VT_FIXTURE/learned/: its
 * bundle and golden file; the catalogue is the fixture's). */
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

typedef struct fixture {
  vt_bundle *b;
  vt_catalog *c;
  vt_engine *e;
  vt_safetensors *golden;
  cJSON *requests, *fronts;
  int n;
  vt_request *reqs;
} fixture;

static fixture fx;
static const char *variant = ""; /* "" or "learned/": where the bundle and golden file are */

static void path_of(char *out, size_t n, const char *name) {
  const char *dir = getenv("VT_FIXTURE");
  cr_assert(dir, "VT_FIXTURE is not set (ctest sets it; or run python3 -m train.fixture)");
  snprintf(out, n, "%s/%s%s", dir, strcmp(name, "catalog") == 0 ? "" : variant, name);
}

static void setup(void) {
  char p[1024];
  vt_err err = {0};
  memset(&fx, 0, sizeof fx);
  path_of(p, sizeof p, "bundle");
  cr_assert_eq(vt_bundle_load(&fx.b, p, &err), 0, "%s", err.msg);
  path_of(p, sizeof p, "catalog");
  cr_assert_eq(vt_catalog_load(&fx.c, p, fx.b, &err), 0, "%s", err.msg);
  cr_assert_eq(vt_engine_create(&fx.e, fx.b, fx.c, &err), 0, "%s", err.msg);
  path_of(p, sizeof p, "golden.safetensors");
  cr_assert_eq(vt_st_open(&fx.golden, p, &err), 0, "%s", err.msg);
  cr_assert_str_eq(vt_st_meta(fx.golden, "format"), "vitrine-golden");
  cr_assert_str_eq(vt_st_meta(fx.golden, "version"), "1");
  cr_assert_str_eq(vt_st_meta(fx.golden, "model_version"), fx.b->model_version,
                   "golden file is stale: regenerate it (python3 -m train.fixture)");
  fx.requests = cJSON_Parse(vt_st_meta(fx.golden, "requests"));
  fx.fronts = cJSON_Parse(vt_st_meta(fx.golden, "storefronts"));
  cr_assert(fx.requests && fx.fronts);
  fx.n = cJSON_GetArraySize(fx.requests);
  cr_assert_geq(fx.n, 200);
  fx.reqs = calloc((size_t)fx.n, sizeof *fx.reqs);
  for (int i = 0; i < fx.n; i++) {
    char *js = cJSON_PrintUnformatted(cJSON_GetArrayItem(fx.requests, i));
    cr_assert_eq(vt_request_parse(&fx.reqs[i], js, strlen(js), fx.b, fx.c, &err), 0,
                 "request %d: %s", i, err.msg);
    free(js);
  }
}

static void teardown(void) {
  for (int i = 0; i < fx.n; i++)
    vt_request_free(&fx.reqs[i]);
  free(fx.reqs);
  cJSON_Delete(fx.requests);
  cJSON_Delete(fx.fronts);
  vt_st_close(fx.golden);
  vt_engine_free(fx.e);
  vt_catalog_free(fx.c);
  vt_bundle_free(fx.b);
}

typedef struct trace_state {
  int base;          /* index of the batch's first request */
  int checked;
  double worst;
  char worst_name[64];
} trace_state;

static void check_tensor(void *ctx, int req, const char *name, const float *data, int rows,
                         int cols) {
  trace_state *ts = ctx;
  char key[64];
  snprintf(key, sizeof key, "r%03d.%s", ts->base + req, name);
  const vt_tensor *t = vt_st_get(fx.golden, key);
  cr_assert(t, "golden file has no tensor %s", key);
  cr_assert_eq(t->numel, (int64_t)rows * cols, "%s: %lld values, engine has %d x %d", key,
               (long long)t->numel, rows, cols);
  float *ref = vt_tensor_to_f32(t);
  double scale = 0.0, diff = 0.0;
  for (int64_t i = 0; i < t->numel; i++) {
    scale = fmax(scale, fabs(ref[i]));
    diff = fmax(diff, fabs((double)data[i] - ref[i]));
  }
  free(ref);
  double rel = diff / fmax(scale, 1e-6);
  if (rel > ts->worst) {
    ts->worst = rel;
    snprintf(ts->worst_name, sizeof ts->worst_name, "%s", key);
  }
  ts->checked++;
  cr_expect_leq(rel, 1e-4, "%s: relative error %.3g (max |diff| %.3g, scale %.3g)", key, rel,
                diff, scale);
}

static void compare_front(int i, const vt_storefront *s) {
  const cJSON *f = cJSON_GetArrayItem(fx.fronts, i);
  const cJSON *secs = cJSON_GetObjectItemCaseSensitive(f, "sections");
  cr_assert_eq(s->n_sections, cJSON_GetArraySize(secs), "request %d: sections", i);
  cr_expect_eq(s->dropped_events,
               cJSON_GetObjectItemCaseSensitive(f, "dropped_events")->valueint,
               "request %d: dropped events", i);
  for (int k = 0; k < s->n_sections; k++) {
    const cJSON *sec = cJSON_GetArrayItem(secs, k);
    const cJSON *th = cJSON_GetObjectItemCaseSensitive(sec, "theme");
    const vt_section *cs = &s->sections[k];
    cr_assert_eq(cs->theme, cJSON_GetObjectItemCaseSensitive(th, "id")->valueint,
                 "request %d section %d: theme", i, k);
    cr_expect_float_eq(cs->theme_score,
                       cJSON_GetObjectItemCaseSensitive(th, "score")->valuedouble, 1e-3,
                       "request %d section %d: theme score", i, k);
    const cJSON *kws = cJSON_GetObjectItemCaseSensitive(sec, "keywords");
    cr_assert_eq(cs->n_keywords, cJSON_GetArraySize(kws), "request %d section %d", i, k);
    for (int j = 0; j < cs->n_keywords; j++)
      cr_assert_eq(cs->keyword[j],
                   cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(kws, j), "id")->valueint,
                   "request %d section %d keyword %d", i, k, j);
    const cJSON *ps = cJSON_GetObjectItemCaseSensitive(sec, "products");
    cr_assert_eq(cs->n_products, cJSON_GetArraySize(ps), "request %d section %d: products", i,
                 k);
    for (int j = 0; j < cs->n_products; j++) {
      const cJSON *p = cJSON_GetArrayItem(ps, j);
      cr_assert_eq(cs->products[j].product,
                   cJSON_GetObjectItemCaseSensitive(p, "index")->valueint,
                   "request %d section %d product %d", i, k, j);
      cr_assert_eq(cs->products[j].keyword,
                   cJSON_GetObjectItemCaseSensitive(p, "keyword")->valueint);
      cr_expect_float_eq(cs->products[j].score,
                         cJSON_GetObjectItemCaseSensitive(p, "score")->valuedouble, 1e-3);
    }
  }
}

TestSuite(parity, .init = setup, .fini = teardown, .timeout = 300);

static void check_one_at_a_time(void) {
  vt_err err = {0};
  vt_storefront s;
  trace_state ts = {0};
  for (int i = 0; i < fx.n; i++) {
    ts.base = i;
    cr_assert_eq(vt_engine_run(fx.e, &fx.reqs[i], 1, &s, check_tensor, &ts, &err), 0, "%s",
                 err.msg);
    compare_front(i, &s);
  }
  const int per_request = 3 + fx.b->cfg.n_enc_layers + 1; /* emb, enc*, memory, user, logits */
  cr_assert_eq(ts.checked, fx.n * per_request);
  cr_log_info("%d tensors compared; worst relative error %.3g (%s)", ts.checked, ts.worst,
              ts.worst_name);
}

static void check_batches(void) {
  vt_err err = {0};
  vt_storefront *s = calloc((size_t)fx.n, sizeof *s);
  trace_state ts = {0};
  cr_assert_eq(vt_engine_run(fx.e, fx.reqs, fx.n, s, check_tensor, &ts, &err), 0, "%s", err.msg);
  for (int i = 0; i < fx.n; i++)
    compare_front(i, &s[i]);
  /* and in uneven batches, reusing the arena */
  for (int i0 = 0; i0 < fx.n; i0 += 37) {
    int n = fx.n - i0 < 37 ? fx.n - i0 : 37;
    cr_assert_eq(vt_engine_run(fx.e, fx.reqs + i0, n, s + i0, NULL, NULL, &err), 0, "%s",
                 err.msg);
  }
  for (int i = 0; i < fx.n; i++)
    compare_front(i, &s[i]);
  free(s);
}

Test(parity, every_tensor_and_id_matches_the_reference_one_request_at_a_time) {
  check_one_at_a_time();
}

Test(parity, a_batch_of_all_requests_gives_the_same_storefronts) { check_batches(); }

static void setup_learned(void) {
  variant = "learned/";
  setup();
  cr_assert_eq(fx.b->rank_model.hidden, 6, "the learned fixture's ranker did not load");
}

TestSuite(parity_learned, .init = setup_learned, .fini = teardown, .timeout = 300);

Test(parity_learned, every_tensor_and_id_matches_the_reference_one_request_at_a_time) {
  check_one_at_a_time();
}

Test(parity_learned, a_batch_of_all_requests_gives_the_same_storefronts) { check_batches(); }
