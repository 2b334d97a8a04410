/* The rules file (engine/rules.c, docs/RULES.md): refusals with their line numbers, the season
 * table, and each rule's effect on the storefronts of the fixture (a phrase or product that
 * appeared without the rules never appears with them), the brief's failure case (a winter history
 * in the local summer), and, on a device (the emulator in test_rules_emu), the rules' tries giving
 * the CPU's storefronts. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/bundle.h"
#include "engine/calendar.h"
#include "engine/catalog.h"
#include "engine/engine.h"
#include "engine/request.h"
#include "engine/rules.h"
#include "tests/fixture.h"

#define N_REQ 24
#define SEC 3
#define KW 3
#define PROD 6

static vt_bundle *b;
static vt_catalog *c0; /* the fixture's catalogue, no rules */
static char cat_dir[1024];

static void setup(void) {
  vt_fixture_load(&b, &c0, cat_dir, sizeof cat_dir); /* the symlinks of tmpcat_open point here */
  cr_assert_null(c0->rules, "the fixture has no rules.txt");
}

static void teardown(void) {
  vt_catalog_free(c0);
  vt_bundle_free(b);
}

TestSuite(rules, .init = setup, .fini = teardown);

/* ---- helpers ------------------------------------------------------------------------------- */
/* A catalogue directory of the fixture's files (symlinks) and rules.txt = text; loaded. */
typedef struct tmpcat {
  char dir[256];
  vt_catalog *c;
} tmpcat;

static const char *const cat_files[] = {"manifest.json", "products.tsv",
                                        "embeddings.safetensors"};

static int tmpcat_open(tmpcat *t, const char *text, vt_err *err) {
  char src[1200], dst[1200];
  snprintf(t->dir, sizeof t->dir, "/tmp/vt-rules-XXXXXX");
  cr_assert(mkdtemp(t->dir), "mkdtemp");
  for (int i = 0; i < 3; i++) {
    snprintf(src, sizeof src, "%s/%s", cat_dir, cat_files[i]);
    snprintf(dst, sizeof dst, "%s/%s", t->dir, cat_files[i]);
    cr_assert_eq(symlink(src, dst), 0, "symlink %s", dst);
  }
  snprintf(dst, sizeof dst, "%s/rules.txt", t->dir);
  FILE *f = fopen(dst, "wb");
  cr_assert(f);
  fputs(text, f);
  fclose(f);
  t->c = NULL;
  return vt_catalog_load(&t->c, t->dir, b, err);
}

static void tmpcat_close(tmpcat *t) {
  char p[1200];
  vt_catalog_free(t->c);
  for (int i = 0; i < 3; i++) {
    snprintf(p, sizeof p, "%s/%s", t->dir, cat_files[i]);
    unlink(p);
  }
  snprintf(p, sizeof p, "%s/rules.txt", t->dir);
  unlink(p);
  rmdir(t->dir);
}

static vt_catalog *with_rules(tmpcat *t, const char *text) {
  vt_err err = {0};
  cr_assert_eq(tmpcat_open(t, text, &err), 0, "%s", err.msg);
  cr_assert_not_null(t->c->rules);
  return t->c;
}

/* Parses text as "rules.txt" against the fixture: the error message ("" when accepted). */
static const char *parse_msg(const char *text, size_t len, vt_err *err) {
  vt_rules *r = NULL;
  memset(err, 0, sizeof *err);
  int rc = vt_rules_parse(&r, text, len, "rules.txt", b, c0, err);
  if (rc == 0) {
    vt_rules_free(r);
    err->msg[0] = 0;
  } else {
    cr_assert_eq(rc, VT_EFORMAT, "%s", err->msg);
    cr_assert_null(r);
  }
  return err->msg;
}

static const int64_t JAN = 1736899200; /* 2025-01-15 00:00 UTC */
static const int64_t JUL = 1752537600; /* 2025-07-15 00:00 UTC */

/* Request i of the common set: regions in turn, four dates a year apart by a season, a history of
 * four products. */
static void request_json(char *out, size_t cap, int i, const char *region, int64_t now,
                         const int *items, int n_items) {
  static const char *const actions[] = {"view", "cart", "purchase", "view"};
  size_t at = (size_t)snprintf(out, cap, "{\"now\": %lld, \"region\": \"%s\", \"sections\": %d, "
                                         "\"keywords_per_section\": %d, \"products_per_section\": "
                                         "%d, \"events\": [",
                               (long long)now, region, SEC, KW, PROD);
  for (int k = 0; k < n_items; k++)
    at += (size_t)snprintf(out + at, cap - at,
                           "%s{\"item\": \"%s\", \"action\": \"%s\", \"ts\": %lld}", k ? ", " : "",
                           c0->ids[items[k]], actions[(i + k) % 4],
                           (long long)(now - 86400 * (n_items - k)));
  snprintf(out + at, cap - at, "]}");
}

/* Runs requests (JSON) on the CPU engine for catalogue c, or on `device`. */
static void run_on(const vt_catalog *c, const char *device, char **json, int n,
                   vt_storefront *out) {
  vt_err err = {0};
  vt_request *r = calloc((size_t)n, sizeof *r);
  for (int i = 0; i < n; i++)
    cr_assert_eq(vt_request_parse(&r[i], json[i], strlen(json[i]), b, c, &err), 0, "%s: %s",
                 json[i], err.msg);
  vt_engine *e;
  cr_assert_eq(vt_engine_create_on(&e, b, c, device, &err), 0, "%s", err.msg);
  cr_assert_eq(vt_engine_run(e, r, n, out, NULL, NULL, &err), 0, "%s", err.msg);
  vt_engine_free(e);
  for (int i = 0; i < n; i++)
    vt_request_free(&r[i]);
  free(r);
}

static char **common_requests(void) {
  static const char *const regions[] = {"eu", "us", "au", "sg"};
  const int64_t nows[] = {JAN, JAN + 90 * 86400, JUL, JUL + 90 * 86400};
  char **json = calloc(N_REQ, sizeof *json);
  for (int i = 0; i < N_REQ; i++) {
    int items[4];
    for (int k = 0; k < 4; k++)
      items[k] = (i * 37 + k * 11) % c0->n_products;
    json[i] = malloc(4096);
    request_json(json[i], 4096, i, regions[i % 4], nows[(i / 4) % 4], items, 4);
  }
  return json;
}

static void free_requests(char **json, int n) {
  for (int i = 0; i < n; i++)
    free(json[i]);
  free(json);
}

/* How often each theme, keyword and product appears in the storefronts. */
typedef struct tally {
  int theme[256], keyword[1024], product[4096];
  int sections, products;
} tally;

static void count(tally *t, const vt_storefront *s, int n) {
  memset(t, 0, sizeof *t);
  for (int i = 0; i < n; i++)
    for (int k = 0; k < s[i].n_sections; k++) {
      const vt_section *sec = &s[i].sections[k];
      t->sections++;
      t->theme[sec->theme]++;
      for (int q = 0; q < sec->n_keywords; q++)
        t->keyword[sec->keyword[q]]++;
      for (int q = 0; q < sec->n_products; q++) {
        t->product[sec->products[q].product]++;
        t->products++;
      }
    }
}

/* The common requests, their storefronts without rules (s, reused for the runs after) and what
 * those show. */
typedef struct baseline {
  char **json;
  vt_storefront *s;
  tally before;
} baseline;

static void baseline_run(baseline *x) {
  x->json = common_requests();
  x->s = calloc(N_REQ, sizeof *x->s);
  run_on(c0, "cpu", x->json, N_REQ, x->s);
  count(&x->before, x->s, N_REQ);
}

static void baseline_free(baseline *x) {
  free(x->s);
  free_requests(x->json, N_REQ);
}

static int most(const int *a, int n) {
  int best = 0;
  for (int i = 1; i < n; i++)
    if (a[i] > a[best])
      best = i;
  return best;
}

/* ---- parsing ------------------------------------------------------------------------------- */
Test(rules, bad_lines_are_refused_with_their_line_number) {
  cr_assert_lt(b->themes.n, 256);
  struct {
    const char *text, *msg;
  } cases[] = {
      {"version a\nversion b\n", "rules.txt:2: a second version line (the first is line 1)"},
      {"version a b\n", "rules.txt:1: version takes one word"},
      {"version bad/slash\n", "rules.txt:1: the version 'bad/slash' may only hold"},
      {"\n# a comment\n  season mars 01-01..02-01 winter\n",
       "rules.txt:3: unknown region 'mars' (the bundle's regions: eu, us, au, sg)"},
      {"season eu 13-01..02-01 winter", "rules.txt:1: '13-01' is not a date MM-DD"},
      {"season eu 04-31..05-01 winter", "rules.txt:1: '04-31' is not a date MM-DD"},
      {"season eu 04-01-05-01 winter", "rules.txt:1: '04-01-05-01' is not a date range"},
      {"season eu 01-01..02-01 monsoon",
       "rules.txt:1: unknown season 'monsoon' (winter, spring, summer or autumn)"},
      {"season eu 01-01..02-01", "rules.txt:1: season takes a region, a date range"},
      {"season sg 06-01..08-31 winter\n\nseason sg 08-31..09-30 summer\n",
       "rules.txt:3: the range 08-31..09-30 of region sg overlaps the season rule of line 1"},
      {"season sg 12-01..01-31 winter\nseason sg 01-15..01-16 summer\n",
       "rules.txt:2: the range 01-15..01-16 of region sg overlaps the season rule of line 1"},
      {"deny keyword zzqq dress", "rules.txt:1: unknown keyword 'zzqq dress': the word 'zzqq' is "
                                  "in no theme or keyword"},
      {"deny theme fresh kitchen", "rules.txt:1: unknown theme 'fresh kitchen': not a phrase of "
                                   "the bundle's themes.tsv"},
      {"deny keyword fresh kitchen picks", "rules.txt:1: unknown keyword 'fresh kitchen picks': "
                                           "not a phrase of the bundle's keywords.tsv"},
      {"deny product p99999", "rules.txt:1: unknown product 'p99999'"},
      {"deny product p00001 p00002", "rules.txt:1: deny product takes one product id"},
      {"deny term zzqq", "rules.txt:1: unknown term 'zzqq': no theme or keyword has this word"},
      {"deny term <eos>", "rules.txt:1: unknown term '<eos>'"},
      {"deny widget x", "rules.txt:1: deny what? 'widget'"},
      {"deny theme", "rules.txt:1: deny takes theme|keyword"},
      {"frobnicate all", "rules.txt:1: unknown rule 'frobnicate'"},
      {"unavailable product p00001", "rules.txt:1: unavailable needs region=.. or season=.."},
      {"unavailable product p00001 region=eu,mars", "rules.txt:1: unknown region 'mars'"},
      {"unavailable product p00001 region= eu", "rules.txt:1: unavailable needs region=.."},
      {"unavailable product p00001 region=eu,", "rules.txt:1: an empty name in 'region=eu,'"},
      {"unavailable product p00001 region=eu region=us", "rules.txt:1: region= is given twice"},
      {"unavailable product p00001 season=hot", "rules.txt:1: unknown season 'hot'"},
      {"unavailable product p00001 p00002 season=winter",
       "rules.txt:1: unavailable product takes one product id"},
      {"unavailable keyword kids shorts", "rules.txt:1: unavailable needs region=.. or season="},
      {"unavailable keyword region=eu", "rules.txt:1: a keyword phrase is missing"},
      {"unavailable keyword kids shirts region=eu", "rules.txt:1: unknown keyword 'kids shirts'"},
      {"unavailable theme fresh kitchen season=winter",
       "rules.txt:1: unknown theme 'fresh kitchen'"},
      {"unavailable gadget x region=eu", "rules.txt:1: unavailable what? 'gadget'"},
      {"allow-only section 0 theme fresh kitchen picks",
       "rules.txt:1: allow-only section '0': a section is 1..16 (the bundle's max_sections)"},
      {"allow-only section 2x theme fresh kitchen picks", "rules.txt:1: allow-only section '2x'"},
      {"allow-only section 99999999999 theme fresh kitchen picks",
       "rules.txt:1: allow-only section '99999999999'"},
      {"allow-only section 1 fresh kitchen picks",
       "rules.txt:1: allow-only takes section <n> theme <phrase>"},
      {"allow-only section 1 theme", "rules.txt:1: allow-only takes section <n> theme <phrase>"},
      {"allow-only section 1 theme kids shorts", "rules.txt:1: unknown theme 'kids shorts'"},
      {"\nallow-only section 2 theme fresh kitchen picks\nallow-only section 2 theme bold gaming "
       "edit\ndeny theme fresh kitchen picks\ndeny term gaming\n",
       "rules.txt:2: allow-only section 2: every theme it allows is denied"},
      {"deny term finds\ndeny theme bold gaming edit\ndeny theme fresh kitchen picks\n"
       "deny theme rainy baking staples\ndeny theme zesty kids essentials\n",
       "rules.txt: the rules deny every theme: nothing is left to generate"},
      {"deny term \xff\n", "rules.txt:1: not valid UTF-8 (at byte 10 of the line)"},
  };
  vt_err err;
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    const char *msg = parse_msg(cases[i].text, strlen(cases[i].text), &err);
    cr_expect(strstr(msg, cases[i].msg) != NULL, "case %zu '%s': got '%s', want '%s'", i,
              cases[i].text, msg, cases[i].msg);
  }
  const char nul[] = "version a\ndeny term fr\0esh\n";
  cr_expect(strstr(parse_msg(nul, sizeof nul - 1, &err), "rules.txt:2: a NUL byte (at byte 12") !=
                NULL,
            "%s", err.msg);
}

Test(rules, comments_blank_lines_crlf_and_versions) {
  vt_err err = {0};
  vt_rules *r;
  const char *text = "# merchandising\r\n\r\n  version v1.2_x:y+z-w   # the version\r\n"
                     "deny keyword Kids   Shorts\t# case and spacing do not matter\r\n"
                     "deny product p00001";
  cr_assert_eq(vt_rules_parse(&r, text, strlen(text), "rules.txt", b, c0, &err), 0, "%s",
               err.msg);
  cr_expect_str_eq(r->version, "v1.2_x:y+z-w");
  cr_expect_eq(r->n_lines, 3);
  cr_expect_eq(r->n_keywords_denied, 1);
  cr_expect_eq(r->n_products_denied, 1);
  cr_expect_eq(r->n_themes_denied, 0);
  cr_expect_eq(r->theme_trie.n_nodes, 0, "nothing denied: the bundle's theme trie");
  cr_expect_gt(r->keyword_trie.n_nodes, 0);
  vt_rules_free(r);
  /* no version line: the first 12 hex of the sha256, a function of the text */
  const char *a = "deny product p00001\n", *a2 = "deny product p00002\n";
  char va[64];
  cr_assert_eq(vt_rules_parse(&r, a, strlen(a), "rules.txt", b, c0, &err), 0, "%s", err.msg);
  cr_expect_eq(strlen(r->version), 12);
  cr_expect_eq(strspn(r->version, "0123456789abcdef"), 12);
  snprintf(va, sizeof va, "%s", r->version);
  vt_rules_free(r);
  cr_assert_eq(vt_rules_parse(&r, a2, strlen(a2), "rules.txt", b, c0, &err), 0, "%s", err.msg);
  cr_expect_str_neq(r->version, va);
  vt_rules_free(r);
  /* an empty file is valid: no rules, a version all the same */
  cr_assert_eq(vt_rules_parse(&r, "", 0, "rules.txt", b, c0, &err), 0, "%s", err.msg);
  cr_expect_str_eq(r->version, "e3b0c44298fc"); /* sha256 of nothing */
  vt_rules_free(r);
  cr_expect_str_eq(vt_rules_version(NULL), "");
}

Test(rules, a_broken_file_refuses_the_catalogue_naming_the_line) {
  tmpcat t;
  vt_err err = {0};
  cr_assert_neq(tmpcat_open(&t, "version x\ndeny product p00001\ndeny product nope\n", &err), 0);
  cr_expect_null(t.c);
  char want[400];
  snprintf(want, sizeof want, "%s/rules.txt:3: unknown product 'nope'", t.dir);
  cr_expect(strstr(err.msg, want) != NULL, "got '%s', want '%s'", err.msg, want);
  tmpcat_close(&t);
}

Test(rules, season_rules_override_the_calendar_and_fixed_seasons) {
  tmpcat t;
  const vt_catalog *c = with_rules(&t, "season sg 06-01..08-31 winter\n"
                                       "season au 12-01..02-29 winter\n");
  const vt_rules *r = c->rules;
  const int eu = 0, au = 2, sg = 3;
  cr_assert_eq(b->regions[sg].fixed_season, 2, "the fixture's sg is summer all year");
  cr_expect_eq(vt_rules_season(r, b, sg, JUL), 0, "sg in July: the rule's winter");
  cr_expect_eq(vt_rules_season(NULL, b, sg, JUL), 2, "without rules: fixed summer");
  cr_expect_eq(vt_rules_season(r, b, sg, JAN), 2, "sg in January: no rule, fixed summer");
  cr_expect_eq(vt_rules_season(r, b, au, JAN), 0, "au in January: the rule's winter");
  cr_expect_eq(vt_rules_season(NULL, b, au, JAN), 2, "au's calendar: southern summer");
  const int64_t dec1 = vt_days_from_civil(2025, 12, 1) * 86400;
  cr_expect_eq(vt_rules_season(r, b, au, dec1), 0, "the first second of the range");
  cr_expect_eq(vt_rules_season(r, b, au, dec1 - 1), 1, "the last second before: southern spring");
  const int64_t leap = vt_days_from_civil(2024, 2, 29) * 86400 + 43200;
  cr_expect_eq(vt_rules_season(r, b, au, leap), 0, "02-29 is in 12-01..02-29");
  const int64_t mar1 = vt_days_from_civil(2024, 3, 1) * 86400;
  cr_expect_eq(vt_rules_season(r, b, au, mar1), 3, "March: southern autumn again");
  cr_expect_eq(vt_rules_season(r, b, eu, JAN), 0);
  cr_expect_eq(vt_rules_season(r, b, eu, JUL), 2, "eu has no rule");
  tmpcat_close(&t);
}

/* ---- effects on storefronts ---------------------------------------------------------------- */
Test(rules, denied_phrases_and_products_never_appear) {
  baseline x;
  baseline_run(&x);
  const tally before = x.before;
  tally after;
  cr_assert_eq(before.sections, N_REQ * SEC);
  const int th = most(before.theme, b->themes.n), kw = most(before.keyword, b->keywords.n),
            pr = most(before.product, c0->n_products);
  cr_assert_gt(before.theme[th], 0);
  cr_assert_gt(before.keyword[kw], 0);
  cr_assert_gt(before.product[pr], 0);
  char text[1024];
  snprintf(text, sizeof text, "version t1\ndeny theme %s\ndeny keyword %s\ndeny product %s\n",
           b->themes.text[th], b->keywords.text[kw], c0->ids[pr]);
  tmpcat t;
  const vt_catalog *c = with_rules(&t, text);
  cr_expect_eq(c->regions[pr], 0u, "a denied product is sold nowhere");
  run_on(c, "cpu", x.json, N_REQ, x.s);
  count(&after, x.s, N_REQ);
  cr_expect_eq(after.theme[th], 0, "theme '%s' appeared %d times", b->themes.text[th],
               after.theme[th]);
  cr_expect_eq(after.keyword[kw], 0, "keyword '%s' appeared %d times", b->keywords.text[kw],
               after.keyword[kw]);
  cr_expect_eq(after.product[pr], 0, "product %s appeared %d times", c0->ids[pr],
               after.product[pr]);
  cr_expect_eq(after.sections, N_REQ * SEC, "every storefront still has its sections");
  cr_expect_gt(after.products, 0);
  tmpcat_close(&t);
  baseline_free(&x);
}

Test(rules, a_denied_term_removes_every_phrase_with_the_word) {
  baseline x;
  baseline_run(&x);
  const tally *before = &x.before;
  vt_storefront *s = x.s;
  /* the first word of the most frequent keyword */
  const int kw = most(before->keyword, b->keywords.n);
  const int word = b->keywords.tok[b->keywords.tok_off[kw]];
  char text[512];
  snprintf(text, sizeof text, "deny term %s\n", b->vocab[word]);
  int hits = 0;
  for (int i = 0; i < b->keywords.n; i++)
    for (int k = b->keywords.tok_off[i]; k < b->keywords.tok_off[i + 1]; k++)
      hits += b->keywords.tok[k] == word && before->keyword[i] > 0;
  cr_assert_gt(hits, 0);
  tmpcat t;
  const vt_catalog *c = with_rules(&t, text);
  cr_expect_gt(c->rules->n_keywords_denied, 0);
  run_on(c, "cpu", x.json, N_REQ, s);
  for (int i = 0; i < N_REQ; i++)
    for (int k = 0; k < s[i].n_sections; k++) {
      const vt_section *sec = &s[i].sections[k];
      const vt_phrases *p = &b->themes;
      for (int q = p->tok_off[sec->theme]; q < p->tok_off[sec->theme + 1]; q++)
        cr_expect_neq(p->tok[q], word, "theme '%s' has the denied term", p->text[sec->theme]);
      p = &b->keywords;
      for (int j = 0; j < sec->n_keywords; j++)
        for (int q = p->tok_off[sec->keyword[j]]; q < p->tok_off[sec->keyword[j] + 1]; q++)
          cr_expect_neq(p->tok[q], word, "keyword '%s' has the denied term",
                        p->text[sec->keyword[j]]);
    }
  tmpcat_close(&t);
  baseline_free(&x);
}

Test(rules, unavailable_products_are_not_shown_where_and_when_the_rule_says) {
  baseline x;
  baseline_run(&x);
  vt_storefront *s = x.s;
  const int pr = most(x.before.product, c0->n_products);
  /* the regions it was shown in, from the requests' regions (i % 4) */
  uint32_t shown_in = 0;
  for (int i = 0; i < N_REQ; i++)
    for (int k = 0; k < s[i].n_sections; k++)
      for (int q = 0; q < s[i].sections[k].n_products; q++)
        if (s[i].sections[k].products[q].product == pr)
          shown_in |= 1u << (i % 4);
  cr_assert_neq(shown_in, 0u);
  const int region = __builtin_ctz(shown_in);
  char text[256];
  snprintf(text, sizeof text, "unavailable product %s region=%s\n", c0->ids[pr],
           b->regions[region].name);
  tmpcat t;
  const vt_catalog *c = with_rules(&t, text);
  cr_expect_eq(c->regions[pr], c0->regions[pr] & ~(1u << region));
  cr_expect_eq(c->seasons[pr], c0->seasons[pr]);
  cr_expect_eq(c->rules->n_products_limited, 1);
  run_on(c, "cpu", x.json, N_REQ, s);
  for (int i = 0; i < N_REQ; i++)
    for (int k = 0; k < s[i].n_sections; k++)
      for (int q = 0; q < s[i].sections[k].n_products; q++)
        cr_expect(!(s[i].sections[k].products[q].product == pr && i % 4 == region),
                  "request %d (%s) shows %s", i, b->regions[region].name, c0->ids[pr]);
  tmpcat_close(&t);
  snprintf(text, sizeof text, "unavailable product %s season=winter,summer\n", c0->ids[pr]);
  c = with_rules(&t, text);
  cr_expect_eq(c->seasons[pr], c0->seasons[pr] & ~5u);
  cr_expect_eq(c->regions[pr], c0->regions[pr]);
  tmpcat_close(&t);
  baseline_free(&x);
}

/* The season of request i of the common set (its region's calendar: no season rules). */
static int season_of_request(int i) {
  const int64_t nows[] = {JAN, JAN + 90 * 86400, JUL, JUL + 90 * 86400};
  return vt_rules_season(NULL, b, i % 4, nows[(i / 4) % 4]);
}

static int same_storefront(const vt_storefront *x, const vt_storefront *y) {
  if (x->n_sections != y->n_sections)
    return 0;
  for (int k = 0; k < x->n_sections; k++) {
    const vt_section *a = &x->sections[k], *c = &y->sections[k];
    if (a->theme != c->theme || a->n_keywords != c->n_keywords || a->n_products != c->n_products)
      return 0;
    for (int q = 0; q < a->n_keywords; q++)
      if (a->keyword[q] != c->keyword[q])
        return 0;
    for (int q = 0; q < a->n_products; q++)
      if (a->products[q].product != c->products[q].product ||
          a->products[q].score != c->products[q].score)
        return 0;
  }
  return 1;
}

static int in_region_season(int i, int region, int season) {
  return i % 4 == region && season_of_request(i) == season;
}

/* Every storefront of `after` outside (region, season) is the baseline's; returns how many
 * requests are inside. */
static int only_those_change(const baseline *x, const vt_storefront *after, int region,
                             int season) {
  int matching = 0;
  for (int i = 0; i < N_REQ; i++) {
    if (in_region_season(i, region, season))
      matching++;
    else
      cr_expect(same_storefront(&after[i], &x->s[i]), "request %d (another region or season) "
                                                      "changed", i);
  }
  return matching;
}

/* The common requests under catalogue c (malloc'd storefronts), checked to differ from the
 * baseline only inside (region, season), where there is at least one request. */
static vt_storefront *run_changed(const baseline *x, const vt_catalog *c, int region,
                                  int season) {
  vt_storefront *after = calloc(N_REQ, sizeof *after);
  run_on(c, "cpu", x->json, N_REQ, after);
  cr_expect_gt(only_those_change(x, after, region, season), 0);
  return after;
}

/* A keyword and a product unavailable in one (region, season): gone from the storefronts of that
 * region in that season (the next best keyword takes the keyword's place), every other storefront
 * unchanged. */
Test(rules, keywords_and_products_unavailable_in_a_region_and_season) {
  static const char *const seasons[] = {"winter", "spring", "summer", "autumn"};
  baseline x;
  baseline_run(&x);
  /* the first request's first keyword and first product, and that request's region and season */
  const vt_section *sec = &x.s[0].sections[0];
  cr_assert(sec->n_keywords > 0 && sec->n_products > 0);
  const int kw = sec->keyword[0], pr = sec->products[0].product, region = 0,
            season = season_of_request(0);
  char text[512];
  snprintf(text, sizeof text,
           "unavailable keyword %s region=%s season=%s\n"
           "unavailable product %s season=%s region=%s\n",
           b->keywords.text[kw], b->regions[region].name, seasons[season], c0->ids[pr],
           seasons[season], b->regions[region].name);
  tmpcat t;
  const vt_catalog *c = with_rules(&t, text);
  cr_expect_eq(c->rules->n_keywords_limited, 1);
  cr_expect_eq(c->rules->n_products_limited, 1);
  cr_expect_eq(c->regions[pr], c0->regions[pr], "not folded: a (region, season) pair");
  vt_storefront *after = run_changed(&x, c, region, season);
  for (int i = 0; i < N_REQ; i++) {
    if (!in_region_season(i, region, season))
      continue;
    cr_expect_eq(after[i].n_sections, x.s[i].n_sections);
    for (int k = 0; k < after[i].n_sections; k++) {
      const vt_section *a = &after[i].sections[k];
      cr_expect_eq(a->n_keywords, x.s[i].sections[k].n_keywords,
                   "request %d section %d: another keyword takes its place", i, k);
      for (int q = 0; q < a->n_keywords; q++)
        cr_expect_neq(a->keyword[q], kw, "request %d shows keyword '%s'", i, b->keywords.text[kw]);
      for (int q = 0; q < a->n_products; q++)
        cr_expect_neq(a->products[q].product, pr, "request %d shows %s", i, c0->ids[pr]);
    }
  }
  tmpcat_close(&t);
  free(after);
  baseline_free(&x);
}

/* A theme unavailable in one (region, season), and a placement that allows only two themes. */
Test(rules, themes_unavailable_in_a_region_and_season_and_allow_only_sections) {
  static const char *const seasons[] = {"winter", "spring", "summer", "autumn"};
  baseline x;
  baseline_run(&x);
  const int th = x.s[0].sections[0].theme, region = 0, season = season_of_request(0);
  char text[512];
  snprintf(text, sizeof text, "unavailable theme %s region=%s season=%s\n",
           b->themes.text[th], b->regions[region].name, seasons[season]);
  tmpcat t;
  const vt_catalog *c = with_rules(&t, text);
  cr_expect_eq(c->rules->n_themes_limited, 1);
  vt_storefront *after = run_changed(&x, c, region, season);
  for (int i = 0; i < N_REQ; i++) {
    if (!in_region_season(i, region, season))
      continue;
    cr_expect_eq(after[i].n_sections, SEC, "request %d: another theme takes its place", i);
    for (int k = 0; k < after[i].n_sections; k++)
      cr_expect_neq(after[i].sections[k].theme, th, "request %d shows theme '%s'", i,
                    b->themes.text[th]);
  }
  tmpcat_close(&t);
  /* section 2 (1-based) may show only the two themes that were least often the second section's */
  int second[256] = {0};
  for (int i = 0; i < N_REQ; i++)
    second[x.s[i].sections[1].theme]++;
  int a = -1, z = -1;
  for (int k = 0; k < b->themes.n; k++)
    if (second[k] == 0 && (a < 0 || x.before.theme[k] > x.before.theme[a]))
      a = k; /* never second before, but shown elsewhere as often as possible */
  for (int k = 0; k < b->themes.n; k++)
    if (k != a && (z < 0 || x.before.theme[k] > x.before.theme[z]))
      z = k;
  cr_assert(a >= 0 && z >= 0);
  snprintf(text, sizeof text, "allow-only section 2 theme %s\nallow-only section 2 theme %s\n",
           b->themes.text[a], b->themes.text[z]);
  c = with_rules(&t, text);
  cr_expect_eq(c->rules->n_sections_restricted, 1);
  run_on(c, "cpu", x.json, N_REQ, after);
  int full = 0, shown_a = 0;
  for (int i = 0; i < N_REQ; i++) {
    cr_expect_eq(after[i].sections[0].theme, x.s[i].sections[0].theme, "section 1 is free");
    if (after[i].n_sections < 2)
      continue; /* neither allowed theme was finished: the page ends before section 2 */
    full += after[i].n_sections == SEC;
    const int t2 = after[i].sections[1].theme;
    shown_a += t2 == a;
    cr_expect(t2 == a || t2 == z, "request %d: section 2 shows theme '%s'", i,
              b->themes.text[t2]);
  }
  cr_expect_gt(full, 0);
  cr_expect_gt(shown_a, 0, "a theme never second before is now, where allowed");
  tmpcat_close(&t);
  free(after);
  baseline_free(&x);
}

/* Winter products: suit winter and not summer. */
static int winter_products(const vt_storefront *s, const vt_catalog *c) {
  int n = 0;
  for (int k = 0; k < s->n_sections; k++)
    for (int q = 0; q < s->sections[k].n_products; q++) {
      const int p = s->sections[k].products[q].product;
      n += (c->seasons[p] & 1u) && !(c->seasons[p] & 4u);
    }
  return n;
}

static int products_of(const vt_storefront *s) {
  int n = 0;
  for (int k = 0; k < s->n_sections; k++)
    n += s->sections[k].n_products;
  return n;
}

/* The brief's failure case: a shopper whose history is winter products, in a region where it is
 * summer now, gets no winter products; the same history in the northern winter does. And a
 * tropical region (fixed summer in the bundle) made to follow dates by a season rule. */
Test(rules, a_winter_history_in_the_local_summer_gets_no_winter_products) {
  int items[8], n = 0;
  for (int p = 0; p < c0->n_products && n < 8; p++)
    if (c0->seasons[p] == 1u && (c0->regions[p] & 0xfu) == 0xfu) /* winter only, sold everywhere */
      items[n++] = p;
  cr_assert_geq(n, 4, "the fixture has winter products sold in every region");
  char *json[4];
  for (int i = 0; i < 4; i++)
    json[i] = malloc(4096);
  request_json(json[0], 4096, 0, "au", JAN, items, n); /* southern summer */
  request_json(json[1], 4096, 0, "eu", JAN, items, n); /* northern winter */
  request_json(json[2], 4096, 0, "sg", JUL, items, n); /* tropical: fixed summer */
  request_json(json[3], 4096, 0, "au", JUL, items, n); /* southern winter */
  vt_storefront s[4];
  run_on(c0, "cpu", json, 4, s);
  cr_expect_gt(products_of(&s[0]), 0);
  cr_expect_eq(winter_products(&s[0], c0), 0, "au in January (summer) shows winter products");
  cr_expect_gt(winter_products(&s[1], c0), 0, "eu in January (winter) shows none");
  cr_expect_gt(products_of(&s[2]), 0);
  cr_expect_eq(winter_products(&s[2], c0), 0, "sg (fixed summer) shows winter products");
  cr_expect_gt(winter_products(&s[3], c0), 0, "au in July (winter) shows none");
  /* sg follows dates from a season rule: July is its winter now; a rule can also make au's
   * January a summer that shows no winter products whatever its calendar says */
  tmpcat t;
  const vt_catalog *c = with_rules(&t, "season sg 06-01..08-31 winter\n"
                                       "season eu 01-01..01-31 summer\n");
  vt_storefront r[4];
  run_on(c, "cpu", json, 4, r);
  cr_expect_gt(winter_products(&r[2], c), 0, "sg in its rule's winter shows no winter products");
  cr_expect_eq(winter_products(&r[1], c), 0, "eu in its rule's summer shows winter products");
  cr_expect_eq(winter_products(&r[0], c), 0);
  tmpcat_close(&t);
  for (int i = 0; i < 4; i++)
    free(json[i]);
}

/* On a device (test_rules_emu: the CUDA emulator; test_rules on a GPU machine), the generation's
 * pruned tries are uploaded with the catalogue and give the CPU's storefronts exactly. */
Test(rules, a_device_decodes_under_the_rules_tries_as_the_cpu_does) {
  char why[256];
  vt_backend *probe;
  if (vt_backend_open(&probe, "cuda:0", why, sizeof why))
    cr_skip_test("no CUDA device: %s", why);
  vt_backend_close(probe);
  baseline x;
  baseline_run(&x);
  const tally before = x.before;
  const int n = 8;
  char **json = x.json;
  vt_storefront *s = x.s, *d = calloc(N_REQ, sizeof *d);
  char text[1024];
  const vt_section *sec = &s[1].sections[0]; /* request 1: us in January (winter) */
  snprintf(text, sizeof text,
           "deny theme %s\ndeny keyword %s\nseason sg 06-01..08-31 winter\n"
           "unavailable keyword %s region=us season=winter\n"
           "unavailable product %s region=us season=winter\n"
           "unavailable theme %s region=us season=winter\n"
           "allow-only section 3 theme %s\nallow-only section 3 theme %s\n",
           b->themes.text[most(before.theme, b->themes.n)],
           b->keywords.text[most(before.keyword, b->keywords.n)],
           b->keywords.text[sec->keyword[sec->n_keywords - 1]], c0->ids[sec->products[0].product],
           b->themes.text[sec->theme], b->themes.text[0], b->themes.text[1]);
  tmpcat t;
  const vt_catalog *c = with_rules(&t, text);
  run_on(c, "cpu", json, n, s);
  run_on(c, "cuda:0", json, n, d);
  for (int i = 0; i < n; i++) {
    cr_assert_eq(d[i].n_sections, s[i].n_sections, "request %d", i);
    for (int k = 0; k < s[i].n_sections; k++) {
      const vt_section *g = &d[i].sections[k], *w = &s[i].sections[k];
      cr_assert_eq(g->theme, w->theme, "request %d section %d", i, k);
      cr_assert_eq(g->n_keywords, w->n_keywords, "request %d section %d", i, k);
      for (int q = 0; q < w->n_keywords; q++)
        cr_assert_eq(g->keyword[q], w->keyword[q], "request %d section %d keyword %d", i, k, q);
      cr_assert_eq(g->n_products, w->n_products, "request %d section %d", i, k);
      for (int q = 0; q < w->n_products; q++) {
        cr_assert_eq(g->products[q].product, w->products[q].product, "request %d section %d", i,
                     k);
        cr_assert(fabsf(g->products[q].score - w->products[q].score) <=
                      1e-5f * (1.0f + fabsf(w->products[q].score)),
                  "request %d section %d product %d", i, k, q);
      }
    }
  }
  tmpcat_close(&t);
  free(d);
  baseline_free(&x);
}
