/* The rules file (see rules.h, docs/RULES.md): a line parser, the phrase and product lookups, the
 * season table and the pruned tries. */
#include "rules.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calendar.h"
#include "catalog.h"
#include "text.h"

#define MAX_TOKENS 64 /* words of one line */
#define N_SEASONS 4
#define DAYS 372      /* (month, day) cells: 12 x 31 */

static const char *const season_names[N_SEASONS] = {"winter", "spring", "summer", "autumn"};
static const int month_days[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};

typedef struct tok {
  const char *s;
  size_t n;
} tok;

/* A phrase table's lookup: token sequence -> phrase id (open addressing). */
typedef struct phrase_index {
  const vt_phrases *p;
  int32_t *slot; /* (size): phrase id + 1, 0 empty */
  size_t size;
} phrase_index;

typedef struct parser {
  const char *name;
  const vt_bundle *b;
  const vt_catalog *c;
  vt_rules *r;
  int line;
  vt_err *err;
  phrase_index themes, keywords;
  int32_t *season_line; /* (n_regions * DAYS): the line that set a cell, 0 none (r's) */
  int cap_scoped;       /* of r->scoped */
  int version_line;
  int allow_line[32];    /* the first allow-only line of each section */
} parser;

/* "name:LINE: " + the message. */
static int line_fail(parser *ps, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int line_fail(parser *ps, const char *fmt, ...) {
  char msg[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return vt_fail(ps->err, VT_EFORMAT, "%s:%d: %s", ps->name, ps->line, msg);
}

/* t for a message: escaped, at most ~80 bytes. */
static const char *shown(char *buf, size_t cap, tok t) {
  vt_text_escape(buf, cap < 96 ? cap : 96, t.s, t.n);
  return buf;
}

static int tok_is(tok t, const char *s) { return t.n == strlen(s) && memcmp(t.s, s, t.n) == 0; }

/* ---- lookups ------------------------------------------------------------------------------- */
static uint64_t seq_hash(const int32_t *t, int n) {
  uint64_t h = 1469598103934665603ull;
  for (int i = 0; i < n; i++)
    h = (h ^ (uint32_t)t[i]) * 1099511628211ull;
  return h ^ (uint64_t)n;
}

static int index_build(phrase_index *x, const vt_phrases *p) {
  x->p = p;
  x->size = 16;
  while (x->size < (size_t)p->n * 2)
    x->size <<= 1;
  if (!(x->slot = calloc(x->size, sizeof *x->slot)))
    return -1;
  for (int i = 0; i < p->n; i++) {
    size_t h = seq_hash(p->tok + p->tok_off[i], p->tok_off[i + 1] - p->tok_off[i]) & (x->size - 1);
    while (x->slot[h])
      h = (h + 1) & (x->size - 1);
    x->slot[h] = i + 1;
  }
  return 0;
}

static int index_find(const phrase_index *x, const int32_t *t, int n) {
  size_t h = seq_hash(t, n) & (x->size - 1);
  for (; x->slot[h]; h = (h + 1) & (x->size - 1)) {
    const int i = x->slot[h] - 1, len = x->p->tok_off[i + 1] - x->p->tok_off[i];
    if (len == n && memcmp(x->p->tok + x->p->tok_off[i], t, (size_t)n * sizeof *t) == 0)
      return i;
  }
  return -1;
}

/* The token of a word as the phrase tables spell it (A-Z lowercased), or VT_TOK_UNK. */
static int word_token(const vt_bundle *b, tok w) {
  char buf[256];
  if (w.n == 0 || w.n >= sizeof buf)
    return VT_TOK_UNK;
  for (size_t i = 0; i < w.n; i++)
    buf[i] = w.s[i] >= 'A' && w.s[i] <= 'Z' ? (char)(w.s[i] - 'A' + 'a') : w.s[i];
  return vt_vocab_lookup(b, buf, w.n);
}

/* The phrase of `kind` written by words w[0..n): its id, else a refusal naming it. */
static int find_phrase(parser *ps, const char *kind, const tok *w, int n, int *id) {
  phrase_index *x = strcmp(kind, "theme") == 0 ? &ps->themes : &ps->keywords;
  char all[200];
  size_t at = 0;
  int32_t t[MAX_TOKENS];
  all[0] = 0;
  for (int i = 0; i < n; i++) { /* the phrase as written, for messages */
    char one[100];
    at += (size_t)snprintf(all + at, at < sizeof all ? sizeof all - at : 0, "%s%s", i ? " " : "",
                           shown(one, sizeof one, w[i]));
    if (at >= sizeof all)
      at = sizeof all - 1;
  }
  if (n == 0)
    return line_fail(ps, "a %s phrase is missing", kind);
  for (int i = 0; i < n; i++) {
    if ((t[i] = word_token(ps->b, w[i])) == VT_TOK_UNK) {
      char one[100];
      return line_fail(ps, "unknown %s '%s': the word '%s' is in no theme or keyword", kind, all,
                       shown(one, sizeof one, w[i]));
    }
  }
  if ((*id = index_find(x, t, n)) < 0)
    return line_fail(ps, "unknown %s '%s': not a phrase of the bundle's %s", kind, all,
                     strcmp(kind, "theme") == 0 ? "themes.tsv" : "keywords.tsv");
  return VT_OK;
}

static int find_product(parser *ps, tok id, int *p) {
  char one[100];
  if ((*p = vt_catalog_find(ps->c, id.s, id.n)) < 0)
    return line_fail(ps, "unknown product '%s': not in the catalogue's products.tsv",
                     shown(one, sizeof one, id));
  return VT_OK;
}

static int find_region(parser *ps, tok t, int *region) {
  for (int i = 0; i < ps->b->n_regions; i++)
    if (tok_is(t, ps->b->regions[i].name)) {
      *region = i;
      return VT_OK;
    }
  char one[100], list[300];
  size_t at = 0;
  list[0] = 0;
  for (int i = 0; i < ps->b->n_regions && at < sizeof list; i++)
    at += (size_t)snprintf(list + at, sizeof list - at, "%s%s", i ? ", " : "",
                           ps->b->regions[i].name);
  return line_fail(ps, "unknown region '%s' (the bundle's regions: %s)", shown(one, sizeof one, t),
                   list);
}

static int find_season(parser *ps, tok t, int *season) {
  for (int s = 0; s < N_SEASONS; s++)
    if (tok_is(t, season_names[s])) {
      *season = s;
      return VT_OK;
    }
  char one[100];
  return line_fail(ps, "unknown season '%s' (winter, spring, summer or autumn)",
                   shown(one, sizeof one, t));
}

/* Keeps the current line's scope for the audit log (rules.h vt_rule_scope). */
static int add_scope(parser *ps, int kind, int id, int section, uint32_t regions,
                     uint8_t seasons) {
  vt_rules *r = ps->r;
  if (r->n_scoped == ps->cap_scoped) {
    const int cap = ps->cap_scoped ? ps->cap_scoped * 2 : 16;
    vt_rule_scope *g = realloc(r->scoped, (size_t)cap * sizeof *g);
    if (!g)
      return vt_fail(ps->err, VT_ENOMEM, "out of memory");
    r->scoped = g;
    ps->cap_scoped = cap;
  }
  r->scoped[r->n_scoped++] = (vt_rule_scope){.line = ps->line, .kind = kind, .id = id,
                                             .section = section, .regions = regions,
                                             .seasons = seasons};
  return VT_OK;
}

static int scope_cmp(const void *a, const void *b) {
  const vt_rule_scope *x = a, *y = b;
  if (x->kind != y->kind)
    return x->kind < y->kind ? -1 : 1;
  if (x->id != y->id)
    return x->id < y->id ? -1 : 1;
  return (x->line > y->line) - (x->line < y->line);
}

/* ---- the directives ------------------------------------------------------------------------ */
static int do_version(parser *ps, const tok *w, int n) {
  if (n != 2)
    return line_fail(ps, "version takes one word (letters, digits, . _ : + -), not %d", n - 1);
  if (ps->version_line)
    return line_fail(ps, "a second version line (the first is line %d)", ps->version_line);
  if (w[1].n > VT_RULES_VERSION_MAX)
    return line_fail(ps, "the version is longer than %d bytes", VT_RULES_VERSION_MAX);
  for (size_t i = 0; i < w[1].n; i++) {
    const char ch = w[1].s[i];
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
          strchr("._:+-", ch))) {
      char one[100];
      return line_fail(ps, "the version '%s' may only hold letters, digits and . _ : + -",
                       shown(one, sizeof one, w[1]));
    }
  }
  free(ps->r->version);
  if (!(ps->r->version = strndup(w[1].s, w[1].n)))
    return vt_fail(ps->err, VT_ENOMEM, "out of memory");
  ps->version_line = ps->line;
  return VT_OK;
}

/* "MM-DD" -> cell (month - 1) * 31 + day - 1. */
static int parse_day(parser *ps, tok t, int *cell) {
  char one[100];
  if (t.n == 5 && t.s[2] == '-') {
    int ok = 1;
    for (int i = 0; i < 5; i++)
      ok &= i == 2 || (t.s[i] >= '0' && t.s[i] <= '9');
    const int m = (t.s[0] - '0') * 10 + (t.s[1] - '0'), d = (t.s[3] - '0') * 10 + (t.s[4] - '0');
    if (ok && m >= 1 && m <= 12 && d >= 1 && d <= month_days[m - 1]) {
      *cell = (m - 1) * 31 + d - 1;
      return VT_OK;
    }
  }
  return line_fail(ps, "'%s' is not a date MM-DD (01-01 .. 12-31, 02-29 allowed)",
                   shown(one, sizeof one, t));
}

/* The next existing (month, day) cell after c, wrapping over the new year. */
static int next_cell(int c) {
  int m = c / 31, d = c % 31 + 1;
  if (d >= month_days[m]) {
    m = (m + 1) % 12;
    d = 0;
  }
  return m * 31 + d;
}

static int do_season(parser *ps, const tok *w, int n) {
  if (n != 4)
    return line_fail(ps, "season takes a region, a date range MM-DD..MM-DD and a season");
  int region = 0, season = 0, from = 0, to = 0;
  int rc;
  if ((rc = find_region(ps, w[1], &region)) || (rc = find_season(ps, w[3], &season)))
    return rc;
  const char *dots = w[2].n == 12 ? w[2].s + 5 : NULL;
  if (!dots || dots[0] != '.' || dots[1] != '.') {
    char one[100];
    return line_fail(ps, "'%s' is not a date range MM-DD..MM-DD", shown(one, sizeof one, w[2]));
  }
  if ((rc = parse_day(ps, (tok){w[2].s, 5}, &from)) ||
      (rc = parse_day(ps, (tok){w[2].s + 7, 5}, &to)))
    return rc;
  int8_t *tab = ps->r->season + (size_t)region * DAYS;
  int32_t *by = ps->season_line + (size_t)region * DAYS;
  for (int c = from;; c = next_cell(c)) {
    if (by[c] && by[c] != ps->line)
      return line_fail(ps, "the range %.*s of region %s overlaps the season rule of line %d",
                       (int)w[2].n, w[2].s, ps->b->regions[region].name, by[c]);
    by[c] = ps->line;
    tab[c] = (int8_t)season;
    if (c == to)
      break;
  }
  return VT_OK;
}

/* Marks every phrase of p holding token t; returns how many. */
static int mark_term(const vt_phrases *p, uint8_t *denied, int t) {
  int hits = 0;
  for (int i = 0; i < p->n; i++)
    for (int k = p->tok_off[i]; k < p->tok_off[i + 1]; k++)
      if (p->tok[k] == t) {
        denied[i] = 1;
        hits++;
        break;
      }
  return hits;
}

static int do_deny(parser *ps, const tok *w, int n) {
  vt_rules *r = ps->r;
  char one[100];
  if (n < 3)
    return line_fail(ps, "deny takes theme|keyword <phrase>, product <id> or term <word>");
  int rc, id = 0;
  if (tok_is(w[1], "theme") || tok_is(w[1], "keyword")) {
    const int theme = tok_is(w[1], "theme");
    if ((rc = find_phrase(ps, theme ? "theme" : "keyword", w + 2, n - 2, &id)))
      return rc;
    (theme ? r->theme_denied : r->keyword_denied)[id] = 1;
    return add_scope(ps, VT_RULE_DENY_PHRASE, id, 0, 0, 0);
  }
  if (tok_is(w[1], "product")) {
    if (n != 3)
      return line_fail(ps, "deny product takes one product id");
    if ((rc = find_product(ps, w[2], &id)))
      return rc;
    r->product_regions_off[id] = ~0u;
    return add_scope(ps, VT_RULE_DENY_PRODUCT, id, 0, 0, 0);
  }
  if (tok_is(w[1], "term")) {
    if (n != 3)
      return line_fail(ps, "deny term takes one word (a brand term)");
    const int t = word_token(ps->b, w[2]);
    if (t < VT_N_SPECIALS ||
        mark_term(&ps->b->themes, r->theme_denied, t) +
                mark_term(&ps->b->keywords, r->keyword_denied, t) ==
            0)
      return line_fail(ps, "unknown term '%s': no theme or keyword has this word",
                       shown(one, sizeof one, w[2]));
    return add_scope(ps, VT_RULE_DENY_PHRASE, -1, 0, 0, 0);
  }
  return line_fail(ps, "deny what? '%s' (theme, keyword, product or term)",
                   shown(one, sizeof one, w[1]));
}

/* Sets the bits of regions in block[i * 4 + s] for each season s of seasons (allocating block, of
 * n entries, at its first use). */
static int block_set(parser *ps, uint32_t **block, int n, int i, uint32_t regions,
                     uint8_t seasons) {
  if (!*block && !(*block = calloc((size_t)n * 4, sizeof **block)))
    return vt_fail(ps->err, VT_ENOMEM, "out of memory");
  for (int s = 0; s < N_SEASONS; s++)
    if (seasons >> s & 1u)
      (*block)[(size_t)i * 4 + (size_t)s] |= regions;
  return VT_OK;
}

/* Trailing region=a,b / season=s,.. words from w[first..n): masks (0: not given); *n_opts set. */
static int parse_where(parser *ps, const tok *w, int n, int first, uint32_t *regions,
                       uint8_t *seasons, int *n_opts) {
  *regions = 0;
  *seasons = 0;
  *n_opts = 0;
  for (int i = n - 1; i >= first; i--) {
    const int is_region = w[i].n > 7 && memcmp(w[i].s, "region=", 7) == 0,
              is_season = w[i].n > 7 && memcmp(w[i].s, "season=", 7) == 0;
    if (!is_region && !is_season)
      break;
    if ((is_region && *regions) || (is_season && *seasons))
      return line_fail(ps, "%s= is given twice", is_region ? "region" : "season");
    const char *s = w[i].s + 7, *end = w[i].s + w[i].n;
    while (s <= end) {
      const char *comma = memchr(s, ',', (size_t)(end - s));
      tok item = {s, (size_t)((comma ? comma : end) - s)};
      int v, rc;
      if (item.n == 0)
        return line_fail(ps, "an empty name in '%.*s'", (int)w[i].n, w[i].s);
      if (is_region) {
        if ((rc = find_region(ps, item, &v)))
          return rc;
        *regions |= 1u << v;
      } else {
        if ((rc = find_season(ps, item, &v)))
          return rc;
        *seasons |= (uint8_t)(1u << v);
      }
      s = item.s + item.n + 1;
    }
    (*n_opts)++;
  }
  return VT_OK;
}

static int do_unavailable(parser *ps, const tok *w, int n) {
  vt_rules *r = ps->r;
  char one[100];
  if (n < 3)
    return line_fail(ps, "unavailable takes product <id>, keyword <phrase> or theme <phrase>, "
                         "then region=.. and/or season=..");
  uint32_t regions;
  uint8_t seasons;
  int n_opts = 0, rc, id = 0;
  if ((rc = parse_where(ps, w, n, 2, &regions, &seasons, &n_opts)))
    return rc;
  if (!n_opts)
    return line_fail(ps, "unavailable needs region=.. or season=.. (deny removes it everywhere)");
  if (tok_is(w[1], "product")) {
    if (n - n_opts != 3)
      return line_fail(ps, "unavailable product takes one product id, then region=.. and/or "
                           "season=..");
    if ((rc = find_product(ps, w[2], &id)) ||
        (rc = add_scope(ps, VT_RULE_PRODUCT, id, 0, regions, seasons)))
      return rc;
    if (regions && seasons) /* those regions in those seasons: the page op's table */
      return block_set(ps, &r->prod_block, r->n_products, id, regions, seasons);
    r->product_regions_off[id] |= regions; /* folded into the catalogue's masks */
    r->product_seasons_off[id] |= seasons;
    return VT_OK;
  }
  if (tok_is(w[1], "keyword") || tok_is(w[1], "theme")) { /* all regions or seasons if left out */
    const int theme = tok_is(w[1], "theme");
    if ((rc = find_phrase(ps, theme ? "theme" : "keyword", w + 2, n - 2 - n_opts, &id)) ||
        (rc = add_scope(ps, theme ? VT_RULE_THEME : VT_RULE_KEYWORD, id, 0, regions, seasons)))
      return rc;
    return block_set(ps, theme ? &r->theme_block : &r->kw_block,
                     theme ? r->n_themes : r->n_keywords, id,
                     regions ? regions : (uint32_t)((1ull << ps->b->n_regions) - 1),
                     seasons ? seasons : (uint8_t)((1u << N_SEASONS) - 1));
  }
  return line_fail(ps, "unavailable what? '%s' (product, keyword or theme)",
                   shown(one, sizeof one, w[1]));
}

/* allow-only section <n> theme <phrase>: section n (1-based) shows only the themes it lists. */
static int do_allow_only(parser *ps, const tok *w, int n) {
  vt_rules *r = ps->r;
  char one[100];
  const int max = ps->b->max_sections < 32 ? ps->b->max_sections : 32;
  if (n < 5 || !tok_is(w[1], "section") || !tok_is(w[3], "theme"))
    return line_fail(ps, "allow-only takes section <n> theme <phrase>");
  int k = 0;
  for (size_t i = 0; i < w[2].n && k <= max; i++)
    k = w[2].s[i] >= '0' && w[2].s[i] <= '9' ? k * 10 + (w[2].s[i] - '0') : max + 1;
  if (k < 1 || k > max)
    return line_fail(ps, "allow-only section '%s': a section is 1..%d (the bundle's max_sections)",
                     shown(one, sizeof one, w[2]), max);
  int id, rc;
  if ((rc = find_phrase(ps, "theme", w + 4, n - 4, &id)) ||
      (rc = add_scope(ps, VT_RULE_ALLOW, id, k, 0, 0)))
    return rc;
  if (!r->theme_allow &&
      !(r->theme_allow = calloc((size_t)r->n_themes + 1, sizeof *r->theme_allow)))
    return vt_fail(ps->err, VT_ENOMEM, "out of memory");
  r->theme_allow[id] |= 1u << (k - 1);
  r->restricted |= 1u << (k - 1);
  if (!ps->allow_line[k - 1])
    ps->allow_line[k - 1] = ps->line;
  return VT_OK;
}

/* One line's words (comments removed): the directive. */
static int do_line(parser *ps, const tok *w, int n) {
  char one[100];
  if (tok_is(w[0], "version"))
    return do_version(ps, w, n);
  if (tok_is(w[0], "season"))
    return do_season(ps, w, n);
  if (tok_is(w[0], "deny"))
    return do_deny(ps, w, n);
  if (tok_is(w[0], "unavailable"))
    return do_unavailable(ps, w, n);
  if (tok_is(w[0], "allow-only"))
    return do_allow_only(ps, w, n);
  return line_fail(ps, "unknown rule '%s' (version, season, deny, unavailable or allow-only)",
                   shown(one, sizeof one, w[0]));
}

/* ---- pruned tries -------------------------------------------------------------------------- */
/* t = the trie of p's phrases not denied, with their ids in p. 0 kept: refused. */
static int prune(vt_trie *t, const vt_phrases *p, const uint8_t *denied, int terminator,
                 const char *name, const char *what, vt_err *err) {
  vt_phrases sub = {0};
  int32_t *ids = malloc(((size_t)p->n + 1) * sizeof *ids);
  sub.tok_off = malloc(((size_t)p->n + 1) * sizeof *sub.tok_off);
  sub.tok = malloc(((size_t)p->tok_off[p->n] + 1) * sizeof *sub.tok);
  int rc = VT_OK;
  if (!ids || !sub.tok_off || !sub.tok) {
    rc = vt_fail(err, VT_ENOMEM, "out of memory");
    goto done;
  }
  sub.tok_off[0] = 0;
  for (int i = 0; i < p->n; i++) {
    if (denied[i])
      continue;
    const int len = p->tok_off[i + 1] - p->tok_off[i];
    memcpy(sub.tok + sub.tok_off[sub.n], p->tok + p->tok_off[i], (size_t)len * sizeof *sub.tok);
    sub.tok_off[sub.n + 1] = sub.tok_off[sub.n] + len;
    ids[sub.n++] = i;
  }
  if (sub.n == 0) {
    rc = vt_fail(err, VT_EFORMAT, "%s: the rules deny every %s: nothing is left to generate",
                 name, what);
    goto done;
  }
  if ((rc = vt_trie_build(t, &sub, terminator, err)))
    goto done;
  for (int k = 0; k < t->n_nodes; k++)
    if (t->phrase[k] >= 0)
      t->phrase[k] = ids[t->phrase[k]];
done:
  free(ids);
  free(sub.tok_off);
  free(sub.tok);
  return rc;
}

/* ---- parse, load, apply -------------------------------------------------------------------- */
void vt_rules_free(vt_rules *r) {
  if (!r)
    return;
  free(r->name);
  free(r->version);
  free(r->season);
  free(r->theme_denied);
  free(r->keyword_denied);
  vt_trie_free(&r->theme_trie);
  vt_trie_free(&r->keyword_trie);
  free(r->product_regions_off);
  free(r->product_seasons_off);
  free(r->kw_block);
  free(r->prod_block);
  free(r->theme_block);
  free(r->theme_allow);
  for (int i = 0; r->text && i <= r->n_text; i++)
    free(r->text[i]);
  free(r->text);
  free(r->season_line);
  free(r->scoped);
  free(r->cat_regions);
  free(r->cat_seasons);
  free(r);
}

/* The words of a line joined by one space (the audit log quotes it). */
static char *join_words(const tok *w, int n) {
  size_t len = 0;
  for (int i = 0; i < n; i++)
    len += w[i].n + 1;
  char *s = malloc(len + 1), *o = s;
  for (int i = 0; s && i < n; i++) {
    memcpy(o, w[i].s, w[i].n);
    o += w[i].n;
    *o++ = i + 1 < n ? ' ' : 0;
  }
  return s;
}

static int is_blank(char ch) { return ch == ' ' || ch == '\t' || ch == '\r'; }

int vt_rules_parse(vt_rules **out, const char *text, size_t len, const char *name,
                   const vt_bundle *b, const vt_catalog *c, vt_err *err) {
  *out = NULL;
  parser ps = {.name = name, .b = b, .c = c, .err = err};
  vt_rules *r = calloc(1, sizeof *r);
  int rc = VT_OK;
  if (!r || !(r->name = strdup(name))) {
    rc = vt_fail(err, VT_ENOMEM, "out of memory");
    goto done;
  }
  ps.r = r;
  r->n_regions = b->n_regions;
  r->n_themes = b->themes.n;
  r->n_keywords = b->keywords.n;
  r->n_products = c->n_products;
  r->season = malloc((size_t)b->n_regions * DAYS);
  ps.season_line = r->season_line =
      calloc((size_t)b->n_regions * DAYS, sizeof *ps.season_line);
  r->n_text = 1;
  for (size_t i = 0; i < len; i++)
    r->n_text += text[i] == '\n';
  r->text = calloc((size_t)r->n_text + 1, sizeof *r->text);
  r->theme_denied = calloc((size_t)b->themes.n + 1, 1);
  r->keyword_denied = calloc((size_t)b->keywords.n + 1, 1);
  r->product_regions_off = calloc((size_t)c->n_products + 1, sizeof *r->product_regions_off);
  r->product_seasons_off = calloc((size_t)c->n_products + 1, 1);
  if (!r->season || !ps.season_line || !r->text || !r->theme_denied || !r->keyword_denied ||
      !r->product_regions_off || !r->product_seasons_off ||
      index_build(&ps.themes, &b->themes) || index_build(&ps.keywords, &b->keywords)) {
    rc = vt_fail(err, VT_ENOMEM, "out of memory");
    goto done;
  }
  memset(r->season, -1, (size_t)b->n_regions * DAYS);
  const char *s = text, *end = text + len;
  while (s < end) {
    const char *nl = memchr(s, '\n', (size_t)(end - s)), *le = nl ? nl : end;
    ps.line++;
    size_t at;
    switch (vt_utf8_check(s, (size_t)(le - s), &at)) {
    case VT_TEXT_NUL:
      rc = line_fail(&ps, "a NUL byte (at byte %zu of the line)", at);
      goto done;
    case VT_TEXT_BAD_UTF8:
      rc = line_fail(&ps, "not valid UTF-8 (at byte %zu of the line)", at);
      goto done;
    }
    tok w[MAX_TOKENS];
    int n = 0;
    for (const char *p = s; p < le;) {
      while (p < le && is_blank(*p))
        p++;
      if (p >= le || *p == '#') /* a comment runs to the end of the line */
        break;
      const char *q = p;
      while (q < le && !is_blank(*q))
        q++;
      if (n == MAX_TOKENS) {
        rc = line_fail(&ps, "more than %d words", MAX_TOKENS);
        goto done;
      }
      w[n++] = (tok){p, (size_t)(q - p)};
      p = q;
    }
    if (n) {
      r->n_lines++;
      if ((rc = do_line(&ps, w, n)))
        goto done;
      if (!(r->text[ps.line] = join_words(w, n))) {
        rc = vt_fail(err, VT_ENOMEM, "out of memory");
        goto done;
      }
    }
    s = nl ? nl + 1 : end;
  }
  if (r->n_scoped)
    qsort(r->scoped, (size_t)r->n_scoped, sizeof *r->scoped, scope_cmp);
  for (int i = 0; i < r->n_themes; i++)
    r->n_themes_denied += r->theme_denied[i];
  for (int i = 0; i < r->n_keywords; i++)
    r->n_keywords_denied += r->keyword_denied[i];
  for (int p = 0; p < r->n_products; p++) {
    const uint32_t *pb = r->prod_block ? r->prod_block + (size_t)p * 4 : NULL;
    r->n_products_denied += r->product_regions_off[p] == ~0u;
    r->n_products_limited += r->product_regions_off[p] != ~0u &&
                             (r->product_regions_off[p] || r->product_seasons_off[p] ||
                              (pb && (pb[0] | pb[1] | pb[2] | pb[3])));
  }
  for (int k = 0; r->kw_block && k < r->n_keywords; k++) {
    const uint32_t *kb = r->kw_block + (size_t)k * 4;
    r->n_keywords_limited += !r->keyword_denied[k] && (kb[0] | kb[1] | kb[2] | kb[3]) != 0;
  }
  for (int t = 0; r->theme_block && t < r->n_themes; t++) {
    const uint32_t *tb = r->theme_block + (size_t)t * 4;
    r->n_themes_limited += !r->theme_denied[t] && (tb[0] | tb[1] | tb[2] | tb[3]) != 0;
  }
  for (int k = 0; k < 32; k++) { /* a restricted section keeps a theme to show */
    if (!(r->restricted >> k & 1u))
      continue;
    int left = 0;
    for (int t = 0; t < r->n_themes; t++)
      left += (r->theme_allow[t] >> k & 1u) && !r->theme_denied[t];
    r->n_sections_restricted++;
    if (!left) {
      ps.line = ps.allow_line[k];
      rc = line_fail(&ps, "allow-only section %d: every theme it allows is denied", k + 1);
      goto done;
    }
  }
  if ((r->n_themes_denied &&
       (rc = prune(&r->theme_trie, &b->themes, r->theme_denied, VT_TOK_SEP, name, "theme", err))) ||
      (r->n_keywords_denied && (rc = prune(&r->keyword_trie, &b->keywords, r->keyword_denied,
                                           VT_TOK_EOS, name, "keyword", err))))
    goto done;
  if (!r->version) { /* the first 12 hex of the file's sha256 */
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    char hex[25];
    if (EVP_Digest(text, len, md, &md_len, EVP_sha256(), NULL) != 1 || md_len < 6) {
      rc = vt_fail(err, VT_EINTERNAL, "%s: sha256 failed", name);
      goto done;
    }
    for (int i = 0; i < 6; i++)
      snprintf(hex + 2 * i, 3, "%02x", md[i]);
    if (!(r->version = strdup(hex))) {
      rc = vt_fail(err, VT_ENOMEM, "out of memory");
      goto done;
    }
  }
  *out = r;
  r = NULL;
done:
  free(ps.themes.slot);
  free(ps.keywords.slot);
  vt_rules_free(r);
  return rc;
}

int vt_rules_load(vt_rules **out, const char *dir, const vt_bundle *b, const vt_catalog *c,
                  vt_err *err) {
  char path[VT_PATH_MAX];
  int rc;
  *out = NULL;
  if ((rc = vt_path_join(path, dir, VT_RULES_FILE, err)))
    return rc;
  FILE *f = fopen(path, "rb");
  if (!f) {
    if (errno == ENOENT)
      return VT_OK; /* no rules */
    return vt_fail(err, VT_EIO, "%s: cannot read (%s)", path, strerror(errno));
  }
  char *buf = malloc((size_t)VT_RULES_MAX_BYTES + 1);
  size_t n = 0;
  if (!buf) {
    fclose(f);
    return vt_fail(err, VT_ENOMEM, "%s: out of memory", path);
  }
  for (size_t got; n <= VT_RULES_MAX_BYTES &&
                   (got = fread(buf + n, 1, (size_t)VT_RULES_MAX_BYTES + 1 - n, f)) > 0;)
    n += got;
  const int bad = ferror(f);
  fclose(f);
  if (bad)
    rc = vt_fail(err, VT_EIO, "%s: cannot read", path);
  else if (n > VT_RULES_MAX_BYTES)
    rc = vt_fail(err, VT_EFORMAT, "%s: larger than %d bytes", path, VT_RULES_MAX_BYTES);
  else
    rc = vt_rules_parse(out, buf, n, path, b, c, err);
  free(buf);
  return rc;
}

void vt_rules_apply(vt_catalog *c, vt_rules *r) {
  c->rules = r;
  if (!r)
    return;
  /* the catalogue's own masks, for the audit log (NULL when out of memory: it then counts what
   * the rules removed under the catalogue's filters) */
  free(r->cat_regions);
  free(r->cat_seasons);
  r->cat_regions = malloc(((size_t)c->n_products + 1) * sizeof *r->cat_regions);
  r->cat_seasons = malloc((size_t)c->n_products + 1);
  if (r->cat_regions && r->cat_seasons) {
    memcpy(r->cat_regions, c->regions, (size_t)c->n_products * sizeof *r->cat_regions);
    memcpy(r->cat_seasons, c->seasons, (size_t)c->n_products);
  } else {
    free(r->cat_regions);
    free(r->cat_seasons);
    r->cat_regions = NULL;
    r->cat_seasons = NULL;
  }
  for (int p = 0; p < c->n_products; p++) {
    c->regions[p] &= ~r->product_regions_off[p];
    c->seasons[p] &= (uint8_t)~r->product_seasons_off[p];
  }
}

int vt_rules_season(const vt_rules *r, const vt_bundle *b, int region, int64_t ts) {
  const vt_region *g = &b->regions[region];
  if (r) {
    int64_t y;
    int m, d;
    int64_t days = ts / 86400 - (ts % 86400 < 0);
    vt_civil_from_days(days, &y, &m, &d);
    const int s = r->season[(size_t)region * DAYS + (size_t)(m - 1) * 31 + (size_t)(d - 1)];
    if (s >= 0)
      return s;
  }
  return vt_season_of(ts, g->season_offset, g->fixed_season);
}

int vt_rules_season_line(const vt_rules *r, int region, int64_t ts) {
  if (!r || region < 0 || region >= r->n_regions)
    return 0;
  int64_t y;
  int m, d;
  vt_civil_from_days(ts / 86400 - (ts % 86400 < 0), &y, &m, &d);
  return r->season_line[(size_t)region * DAYS + (size_t)(m - 1) * 31 + (size_t)(d - 1)];
}

int vt_rules_find(const vt_rules *r, int kind, int id, int region, int season, int *at) {
  if (!r || !r->n_scoped)
    return 0;
  int i = *at;
  if (i == 0) { /* the first entry of (kind, id): lower bound */
    int lo = 0, hi = r->n_scoped;
    while (lo < hi) {
      const int mid = lo + (hi - lo) / 2;
      const vt_rule_scope *e = &r->scoped[mid];
      if (e->kind < kind || (e->kind == kind && e->id < id))
        lo = mid + 1;
      else
        hi = mid;
    }
    i = lo;
  }
  for (; i < r->n_scoped && r->scoped[i].kind == kind && r->scoped[i].id == id; i++) {
    const vt_rule_scope *e = &r->scoped[i];
    if ((!e->regions || (e->regions >> region & 1u)) &&
        (!e->seasons || (e->seasons >> season & 1u))) {
      *at = i + 1;
      return e->line;
    }
  }
  *at = i;
  return 0;
}

const char *vt_rules_version(const vt_rules *r) { return r ? r->version : ""; }
