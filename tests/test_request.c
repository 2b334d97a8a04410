/* Request validation (the same refusals as train/data.py) and the calendar arithmetic. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/bundle.h"
#include "engine/calendar.h"
#include "engine/catalog.h"
#include "engine/engine.h"
#include "engine/request.h"
#include "tests/fixture.h"

static vt_bundle *b;
static vt_catalog *c;

static void setup(void) { vt_fixture_load(&b, &c, NULL, 0); }

static void teardown(void) {
  vt_catalog_free(c);
  vt_bundle_free(b);
}

TestSuite(request, .init = setup, .fini = teardown);

static int parse(vt_request *r, const char *json, vt_err *err) {
  return vt_request_parse(r, json, strlen(json), b, c, err);
}

#define BASE "\"now\": 1750000000, \"region\": \"eu\", \"sections\": 2, " \
             "\"keywords_per_section\": 2, \"products_per_section\": 3"

Test(request, bad_requests_are_refused_naming_the_field) {
  struct {
    const char *json, *msg;
  } cases[] = {
      {"{", "not valid JSON"},
      {"[1, 2]", "must be an object"},
      {"{\"now\": -5, \"region\": \"eu\"}", "now is negative"},
      {"{\"now\": 1.5, \"region\": \"eu\"}", "now must be an integer"},
      {"{\"now\": 0, \"region\": \"eu\"}", "now is missing or 0"},
      {"{\"region\": \"eu\"}", "now is missing or 0"},
      {"{\"now\": 9007199254740992, \"region\": \"eu\"}", "now is above 9007199254740991"},
      {"{\"now\": 9007199254740993, \"region\": \"eu\"}", "now is above 9007199254740991"},
      {"{\"now\": 1e300, \"region\": \"eu\"}", "now is above 9007199254740991"},
      {"{\"now\": 10, \"region\": \"mars\"}", "unknown region 'mars': one of 'eu', 'us'"},
      {"{\"now\": 10, \"region\": 7}", "region must be a string"},
      {"{\"now\": 10}", "region is missing: one of 'eu'"},
      {"{\"now\": 10, \"region\": \"\"}", "region is missing"},
      {"{\"now\": 10, \"region\": \"\\u0000eu\"}", "region contains a NUL character (at byte 0)"},
      {"{\"now\": 10, \"region\": \"eu\\u0000x\"}", "region contains a NUL character (at byte 2)"},
      {"{\"now\": 10, \"region\": \"\xed\xa0\x80\"}", "region is not valid UTF-8 (at byte 0)"},
      {"{\"now\": 10, \"region\": \"\\ud800\"}", "not valid JSON"},
      {"{\"now\": 10, \"region\": \"e\tu\"}", "not valid JSON"},
      {"{\"now\": 10, \"region\": \"eu\"} trailing", "not valid JSON"},
      {"{}", "empty request: now, region"},
      {"{\"now\": 10, \"now\": 11}", "the request has the key 'now' twice"},
      {"{\"now\": 10, \"region\": \"atl\\u001bantis\\\\\"}", "unknown region 'atl\\x1bantis\\\\'"},
      {"{\"now\": 10, \"region\": \"eu\", \"sections\": 0, \"keywords_per_section\": 1, "
       "\"products_per_section\": 1}", "sections is missing or 0: it must be an integer in 1..16"},
      {"{\"now\": 10, \"region\": \"eu\", \"keywords_per_section\": 1, "
       "\"products_per_section\": 1}", "sections is missing or 0"},
      {"{\"now\": 10, \"region\": \"eu\", \"sections\": 17, \"keywords_per_section\": 1, "
       "\"products_per_section\": 1}", "sections must be an integer in 1..16"},
      {"{\"now\": 10, \"region\": \"eu\", \"sections\": 11, \"keywords_per_section\": 1, "
       "\"products_per_section\": 1}", "at most 10 (the number of themes)"},
      {"{\"now\": 10, \"region\": \"eu\", \"sections\": 1, \"keywords_per_section\": -1, "
       "\"products_per_section\": 1}", "keywords_per_section must be"},
      {"{\"now\": 10, \"region\": \"eu\", \"sections\": 1, \"keywords_per_section\": 1, "
       "\"products_per_section\": \"4\"}", "products_per_section must be"},
      {"{" BASE ", \"events\": {\"a\": 1}}", "events must be a list"},
      {"{" BASE ", \"events\": [7]}", "events[0] must be an object"},
      {"{" BASE ", \"events\": [{\"action\": \"view\", \"ts\": 1}, {\"action\": \"like\", "
       "\"ts\": 5}]}", "events[1].action must be one of"},
      {"{" BASE ", \"events\": [{\"action\": \"view\", \"ts\": -1}]}", "events[0].ts is negative"},
      {"{" BASE ", \"events\": [{\"action\": \"view\"}]}", "events[0].ts is missing or 0"},
      {"{" BASE ", \"events\": [{\"ts\": 5}]}", "events[0].action is missing: it must be one of"},
      {"{" BASE ", \"events\": [{\"action\": \"view\", \"ts\": 9007199254740993}]}",
       "events[0].ts is above 9007199254740991 (2^53 - 1)"},
      {"{" BASE ", \"events\": [{\"action\": \"view\", \"ts\": 1, \"ts\": 2}]}",
       "events[0] has the key 'ts' twice"},
      {"{" BASE ", \"events\": [{\"action\": \"view\", \"ts\": 1, \"item\": \"p00001\\u0000junk\"}]}",
       "events[0].item contains a NUL character (at byte 6)"},
      {"{" BASE ", \"events\": [{\"action\": \"search\", \"ts\": 1, \"query\": \"wool\xff\"}]}",
       "events[0].query is not valid UTF-8 (at byte 4)"},
      {"{" BASE ", \"shopper_id\": \"s\\u0000\"}", "shopper_id contains a NUL character (at byte 1)"},
      {"{" BASE ", \"shopper_id\": 5}", "shopper_id must be a string"},
      {"{" BASE ", \"exclude\": [\"p00537\\u0000zzz\"]}", "exclude[0] contains a NUL character"},
      {"{" BASE ", \"exclude\": [\"p00537\", \"\xc0\xaf\"]}", "exclude[1] is not valid UTF-8 (at byte 0)"},
      {"{" BASE ", \"events\": [{\"action\": \"view\", \"ts\": 1, \"item\": 5}]}",
       "events[0].item must be a string"},
      {"{" BASE ", \"exclude\": [3]}", "exclude[0] must be a string"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    vt_request r;
    vt_err err = {0};
    cr_expect_eq(parse(&r, cases[i].json, &err), VT_EINVAL, "case %zu accepted: %s", i,
                 cases[i].json);
    cr_expect(strstr(err.msg, cases[i].msg), "case %zu: got '%s', want '%s'", i, err.msg,
              cases[i].msg);
  }
  /* an oversized query */
  size_t n = 5000;
  char *big = malloc(n + 256);
  int k = snprintf(big, 256, "{" BASE ", \"events\": [{\"action\": \"search\", \"ts\": 1, "
                              "\"query\": \"");
  memset(big + k, 'x', 2000);
  strcpy(big + k + 2000, "\"}]}");
  vt_request r;
  vt_err err = {0};
  cr_expect_eq(parse(&r, big, &err), VT_EINVAL);
  cr_expect(strstr(err.msg, "events[0].query must be a string of at most 1024 bytes"), "%s",
            err.msg);
  free(big);
}

/* The largest time accepted is 2^53 - 1, exactly, for now and for every event. */
Test(request, times_up_to_2_pow_53_minus_1) {
  vt_request r;
  vt_err err = {0};
  cr_assert_eq(parse(&r, "{\"now\": 9007199254740991, \"region\": \"eu\", \"sections\": 1, "
                         "\"keywords_per_section\": 1, \"products_per_section\": 1, \"events\": "
                         "[{\"action\": \"view\", \"ts\": 9007199254740991}, {\"action\": "
                         "\"view\", \"ts\": 1}]}", &err), 0, "%s", err.msg);
  cr_expect_eq(r.now, INT64_C(9007199254740991));
  cr_expect_eq(r.events[1].ts, INT64_C(9007199254740991));
  vt_request_free(&r);
}

/* Queries split into words where train/vocab.py splits them: at every character Python's
 * str.isspace() is true for (and nowhere else), A-Z lowercased only. Every code point is tried
 * between two known words. */
Test(request, query_words_split_at_the_reference_whitespace) {
  static const uint32_t spaces[] = {0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x1F, 0x20,
                                    0x85, 0xA0, 0x1680, 0x2000, 0x2001, 0x2002, 0x2003, 0x2004,
                                    0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200A, 0x2028,
                                    0x2029, 0x202F, 0x205F, 0x3000};
  int scented = vt_vocab_lookup(b, "scented", 7), scarf = vt_vocab_lookup(b, "scarf", 5);
  cr_assert(scented > VT_TOK_UNK && scarf > VT_TOK_UNK);
  size_t k = 0;
  for (uint32_t cp = 1; cp < 0x110000; cp++) {
    if (cp >= 0xD800 && cp <= 0xDFFF)
      continue;
    char s[32], u[4];
    int len = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    if (len == 1)
      u[0] = (char)cp;
    else {
      for (int i = len - 1; i > 0; i--)
        u[i] = (char)(0x80 | ((cp >> (6 * (len - 1 - i))) & 0x3F));
      u[0] = (char)((0xF0 << (4 - len)) | (cp >> (6 * (len - 1))));
    }
    memcpy(s, "Scented", 7);
    memcpy(s + 7, u, (size_t)len);
    memcpy(s + 7 + len, "SCARF", 5);
    int32_t ids[8];
    int n = vt_request_tokenize(b, s, (size_t)(12 + len), ids, 8);
    int want_space = k < sizeof spaces / sizeof spaces[0] && spaces[k] == cp;
    if (want_space) {
      k++;
      cr_expect(n == 2 && ids[0] == scented && ids[1] == scarf, "U+%04X must split", cp);
    } else {
      cr_expect(n == 1, "U+%04X must not split (%d words)", cp, n);
    }
  }
  cr_expect_eq(k, sizeof spaces / sizeof spaces[0]);
  /* runs of whitespace, leading and trailing, make no empty words; the cap is kept */
  int32_t ids[2];
  const char *q = "\u3000 scented\u00a0\u2028\x1f scarf wool\x85";
  cr_expect_eq(vt_request_tokenize(b, q, strlen(q), ids, 2), 2);
  cr_expect(ids[0] == scented && ids[1] == scarf);
  /* only A-Z are lowercased: an accented capital is another word */
  const char *acc = "\xc3\x89T\xc3\x89";
  cr_expect_eq(vt_request_tokenize(b, acc, strlen(acc), ids, 2), 1);
  cr_expect_eq(ids[0], VT_TOK_UNK);
}

Test(request, events_are_sorted_truncated_and_cold_items_kept) {
  /* more events than max_events, out of order, with equal timestamps, unknown items, a search */
  const int max = b->cfg.max_events, n = max + 7;
  size_t cap = (size_t)n * 128 + 512;
  char *js = malloc(cap);
  int k = snprintf(js, cap, "{" BASE ", \"events\": [");
  for (int i = 0; i < n; i++) {
    int ts = 1000 + (n - i) / 2; /* descending, pairs of equal timestamps */
    if (i % 5 == 0)
      k += snprintf(js + k, cap - k, "%s{\"action\": \"view\", \"ts\": %d, \"item\": \"nope%d\"}",
                    i ? "," : "", ts, i);
    else if (i % 5 == 1)
      k += snprintf(js + k, cap - k, "%s{\"action\": \"search\", \"ts\": %d, \"query\": "
                    "\"Zzz  %s\"}", i ? "," : "", ts, b->vocab[VT_N_SPECIALS]);
    else
      k += snprintf(js + k, cap - k, "%s{\"action\": \"cart\", \"ts\": %d, \"item\": \"%s\"}",
                    i ? "," : "", ts, c->ids[i % c->n_products]);
  }
  snprintf(js + k, cap - k, "]}");
  vt_request r;
  vt_err err = {0};
  cr_assert_eq(parse(&r, js, &err), 0, "%s", err.msg);
  cr_expect_eq(r.n_events, max);
  cr_expect_eq(r.dropped, n - max);
  for (int i = 1; i < r.n_events; i++)
    cr_expect_leq(r.events[i - 1].ts, r.events[i].ts, "sorted ascending");
  cr_expect_eq(r.events[r.n_events - 1].ts, 1000 + n / 2, "the newest events are kept");
  int unknown = 0, searches = 0;
  for (int i = 0; i < r.n_events; i++) {
    unknown += r.events[i].item == VT_ITEM_UNKNOWN;
    if (r.events[i].action == 1) {
      searches++;
      cr_expect_eq(r.events[i].item, VT_ITEM_NONE);
      cr_expect_eq(r.events[i].n_query, 2);
      cr_expect_eq(r.events[i].query[0], VT_TOK_UNK, "'zzz' is not a word of the vocabulary");
      cr_expect_eq(r.events[i].query[1], VT_N_SPECIALS);
    }
  }
  cr_expect_gt(unknown, 0);
  cr_expect_gt(searches, 0);
  vt_engine *e;
  cr_assert_eq(vt_engine_create(&e, b, c, &err), 0, "%s", err.msg);
  vt_storefront s;
  cr_assert_eq(vt_engine_run(e, &r, 1, &s, NULL, NULL, &err), 0, "%s", err.msg);
  cr_expect_eq(s.dropped_events, n - max);
  cr_expect_eq(s.n_sections, 2);
  vt_engine_free(e);
  vt_request_free(&r);
  free(js);
}

Test(request, empty_history_and_future_events_give_a_storefront) {
  vt_request r;
  vt_err err = {0};
  cr_assert_eq(parse(&r, "{" BASE ", \"events\": [{\"action\": \"view\", \"ts\": 1760000000, "
                         "\"item\": \"p00001\"}]}", &err), 0, "%s", err.msg);
  vt_engine *e;
  cr_assert_eq(vt_engine_create(&e, b, c, &err), 0, "%s", err.msg);
  vt_storefront s;
  cr_assert_eq(vt_engine_run(e, &r, 1, &s, NULL, NULL, &err), 0, "%s", err.msg);
  cr_expect_eq(s.n_sections, 2);
  for (int i = 0; i < s.n_sections; i++)
    cr_expect(isfinite(s.sections[i].theme_score) && s.sections[i].theme_score <= 0.0f);
  vt_request_free(&r);
  cr_assert_eq(parse(&r, "{" BASE "}", &err), 0, "%s", err.msg);
  cr_expect_eq(r.n_events, 0);
  cr_assert_eq(vt_engine_run(e, &r, 1, &s, NULL, NULL, &err), 0, "%s", err.msg);
  cr_expect_eq(s.n_sections, 2);
  cr_expect_neq(s.sections[0].theme, s.sections[1].theme, "distinct themes");
  vt_request_free(&r);
  vt_engine_free(e);
}

Test(calendar, matches_known_dates_and_seasons) {
  int64_t y;
  int m, d;
  vt_civil_from_days(0, &y, &m, &d);
  cr_expect(y == 1970 && m == 1 && d == 1);
  vt_civil_from_days(11016, &y, &m, &d); /* 2000-02-29 */
  cr_expect(y == 2000 && m == 2 && d == 29, "%lld-%d-%d", (long long)y, m, d);
  vt_civil_from_days(20454, &y, &m, &d); /* 2026-01-01 */
  cr_expect(y == 2026 && m == 1 && d == 1, "%lld-%d-%d", (long long)y, m, d);
  cr_expect_eq(vt_days_from_civil(2026, 11, 25), 20782);
  double f[6];
  vt_calendar_features(6 * 3600, f); /* 1970-01-01 06:00, a Thursday, day 0 */
  cr_expect_float_eq(f[0], 1.0, 1e-12);        /* sin(2 pi 6/24) */
  cr_expect_float_eq(f[2], sin(2 * M_PI * 3 / 7.0), 1e-12);
  cr_expect_float_eq(f[4], 0.0, 1e-12);
  cr_expect_eq(vt_season_of(1736000000, 0, -1), 0); /* January: northern winter */
  cr_expect_eq(vt_season_of(1736000000, 2, -1), 2); /* southern summer */
  cr_expect_eq(vt_season_of(1751500000, 0, -1), 2); /* July */
  cr_expect_eq(vt_season_of(1736000000, 0, 2), 2);  /* tropical */
}
