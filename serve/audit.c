/* The audit log (see audit.h): a ring of fixed-size records filled by the engine workers under
 * one mutex (a copy of the storefront's sections, a few KB), emptied by one writer thread that
 * formats each record as a JSON line and appends it to the file, rotating by size. */
#include "audit.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine/calendar.h"
#include "engine/rules.h"
#include "server.h"
#include "engine/text.h"

#define MAX_ID 256       /* bytes of a shopper id kept (the server refuses longer ones) */
#define MAX_LISTED 32    /* rule lines listed per record; more are counted */
#define MAX_PATH 4096

static const char *const SEASONS[4] = {"winter", "spring", "summer", "autumn"};

typedef struct rec {
  int64_t wall_ns; /* CLOCK_REALTIME when the answer was ready */
  char digest[17];
  char shopper[MAX_ID + 1];
  int region, events, asked; /* asked: the sections the request asked for */
  int64_t now;
  vt_gen *g; /* a reference: versions, texts, ids, rules */
  int n_sections;
  vt_section sec[VT_MAX_SECTIONS];
} rec;

struct vt_audit {
  vt_audit_opts o;
  char *path;
  unsigned char key[64];
  int key_len;
  uint64_t threshold; /* record a call when its draw is below (sample * 2^64) */
  atomic_uint_fast64_t draws;
  vt_metrics *m;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pthread_t writer;
  int started, stop;
  rec *ring; /* (cap): records head .. head + count - 1, modulo cap */
  int cap, head, count;
  /* the writer's */
  int fd;
  long size;
  int failing; /* the last write failed: the next success is logged */
};

/* ---- JSON ---------------------------------------------------------------------------------- */
/* A record is formatted into a memory stream (open_memstream), one per record. */
static void sb_put(FILE *b, const char *s, size_t n) { fwrite(s, 1, n, b); }

/* s as a JSON string: valid UTF-8 kept, quote, backslash and control characters escaped, a byte
 * that is not UTF-8 written as the text \xNN (so the line stays valid UTF-8 and JSON). */
static void sb_str(FILE *b, const char *s) {
  const size_t len = strlen(s);
  sb_put(b, "\"", 1);
  for (size_t i = 0; i < len;) {
    const unsigned char ch = (unsigned char)s[i];
    uint32_t cp;
    const int k = vt_utf8_next(s + i, len - i, &cp);
    if (cp == 0xFFFD && k == 1 && ch >= 0x80)
      fprintf(b, "\\\\x%02x", ch);
    else if (ch == '"' || ch == '\\')
      sb_put(b, (const char[]){'\\', (char)ch}, 2);
    else if (ch < 0x20 || ch == 0x7f)
      fprintf(b, "\\u%04x", ch);
    else
      sb_put(b, s + i, (size_t)k);
    i += (size_t)k;
  }
  sb_put(b, "\"", 1);
}

/* A float as JSON (no NaN or infinity there: null). */
static void sb_num(FILE *b, float x) {
  if (x != x || x > 3.4e38f || x < -3.4e38f)
    sb_put(b, "null", 4);
  else
    fprintf(b, "%.9g", (double)x);
}

static void hex16(const unsigned char *md, char hex[17]) {
  for (int i = 0; i < 8; i++)
    snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

void vt_audit_digest(const void *bytes, size_t n, char hex[17]) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(bytes, n, md, &len, EVP_sha256(), NULL) != 1 || len < 8)
    memset(md, 0, 8);
  hex16(md, hex);
}

const char *vt_audit_activity(int events) {
  return events <= 0 ? "new" : events < VT_AUDIT_HEAVY_EVENTS ? "light" : "heavy";
}

/* ---- what the filters held back ------------------------------------------------------------- */
enum { HELD_STOCK, HELD_REGION, HELD_SEASON, HELD_RULES, N_HELD };
static const char *const HELD_NAMES[N_HELD] = {"stock", "region", "season", "rules"};

/* A rule line that removed products from this request's candidates. */
typedef struct hit {
  int line, products;
} hit;

/* Why the page op's filter (kernels/cpu/page.c retrieve) drops product p for (region, season):
 * HELD_* (the catalogue's own stock, region and season first, the rules only for what the
 * catalogue alone would have shown), or -1 when it passes. *line: the rule line (HELD_RULES). */
static int held_back(const vt_catalog *c, int p, int region, int season, int *line) {
  const vt_rules *r = c->rules;
  const uint32_t regions = r && r->cat_regions ? r->cat_regions[p] : c->regions[p];
  const uint8_t seasons = r && r->cat_seasons ? r->cat_seasons[p] : c->seasons[p];
  *line = 0;
  if (c->stock[p] <= 0)
    return HELD_STOCK;
  if (!(regions >> region & 1u))
    return HELD_REGION;
  if (!(seasons >> season & 1u))
    return HELD_SEASON;
  const int blocked = !(c->regions[p] >> region & 1u) || !(c->seasons[p] >> season & 1u) ||
                      (r && r->prod_block &&
                       r->prod_block[(size_t)p * 4 + (size_t)season] >> region & 1u);
  if (!blocked)
    return -1;
  int at = 0;
  *line = vt_rules_find(r, VT_RULE_DENY_PRODUCT, p, region, season, &at);
  if (!*line) {
    at = 0;
    *line = vt_rules_find(r, VT_RULE_PRODUCT, p, region, season, &at);
  }
  return HELD_RULES;
}

static void count_hit(hit *hits, int *n_hits, int line) {
  for (int i = 0; i < *n_hits; i++)
    if (hits[i].line == line) {
      hits[i].products++;
      return;
    }
  if (*n_hits < MAX_LISTED)
    hits[(*n_hits)++] = (hit){line, 1};
}

/* One section's held-back counts over the distinct products its keywords retrieve (what the page
 * op filters), the rule lines among them added to hits. */
static void section_held(const vt_catalog *c, const vt_section *sec, int region, int season,
                         long held[N_HELD], hit *hits, int *n_hits, uint8_t *seen) {
  memset(held, 0, N_HELD * sizeof *held);
  for (int pass = 0; pass < 2; pass++) /* 0: count, 1: clear the marks */
    for (int k = 0; k < sec->n_keywords; k++) {
      const int kw = sec->keyword[k];
      for (int i = c->kw_off[kw]; i < c->kw_off[kw + 1]; i++) {
        const int p = c->kw_prod[i];
        if (pass) {
          seen[p] = 0;
          continue;
        }
        if (seen[p])
          continue;
        seen[p] = 1;
        int line, why = held_back(c, p, region, season, &line);
        if (why >= 0)
          held[why]++;
        if (why == HELD_RULES && line)
          count_hit(hits, n_hits, line);
      }
    }
}

/* ---- a record as a JSON line ---------------------------------------------------------------- */
static void put_rule(FILE *b, const vt_rules *r, int line, int *first) {
  fprintf(b, "%s{\"line\":%d,\"rule\":", *first ? "" : ",", line);
  sb_str(b, line > 0 && line <= r->n_text && r->text[line] ? r->text[line] : "");
  *first = 0;
}

/* The rule lines that hold for this request and can change it without the record seeing how
 * (keyword and theme rules of its region and season, the allow-only placements it asked for). */
static void put_in_effect(FILE *b, const vt_rules *r, int region, int season, int sections) {
  int listed = 0, more = 0, first = 1;
  sb_put(b, ",\"in_effect\":[", 14);
  for (int i = 0; r && i < r->n_scoped; i++) {
    const vt_rule_scope *e = &r->scoped[i];
    const int holds =
        ((e->kind == VT_RULE_KEYWORD || e->kind == VT_RULE_THEME) &&
         (!e->regions || (e->regions >> region & 1u)) &&
         (!e->seasons || (e->seasons >> season & 1u))) ||
        (e->kind == VT_RULE_ALLOW && e->section <= sections);
    if (!holds)
      continue;
    if (listed == MAX_LISTED) {
      more++;
      continue;
    }
    put_rule(b, r, e->line, &first);
    fprintf(b, ",\"kind\":\"%s\"}",
              e->kind == VT_RULE_KEYWORD ? "keyword" : e->kind == VT_RULE_THEME ? "theme"
                                                                                 : "allow-only");
    listed++;
  }
  fprintf(b, "],\"in_effect_more\":%d", more);
}

static void format_record(vt_audit *a, const rec *x, FILE *b, uint8_t *seen) {
  const vt_gen *g = x->g;
  const vt_bundle *bd = g->b;
  const vt_catalog *c = g->c;
  const vt_rules *r = c->rules;
  struct tm tm;
  const time_t sec = (time_t)(x->wall_ns / 1000000000);
  gmtime_r(&sec, &tm);
  fprintf(b, "{\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03dZ\",\"request\":\"%s\"",
            tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
            (int)(x->wall_ns / 1000000 % 1000), x->digest);
  if (a->o.raw_ids) {
    sb_put(b, ",\"shopper_id\":", 14);
    sb_str(b, x->shopper);
  } else {
    char hex[17] = "";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (x->shopper[0] && HMAC(EVP_sha256(), a->key, a->key_len, (const unsigned char *)x->shopper,
                              strlen(x->shopper), md, &len) && len >= 8)
      hex16(md, hex);
    fprintf(b, ",\"shopper\":\"%s\"", hex);
  }
  sb_put(b, ",\"segment\":{\"region\":", 21);
  sb_str(b, bd->regions[x->region].name);
  fprintf(b, ",\"activity\":\"%s\",\"events\":%d},\"now\":%lld", vt_audit_activity(x->events),
            x->events, (long long)x->now);
  /* the season the filters used, and what decided it */
  const vt_region *rg = &bd->regions[x->region];
  const int season = vt_rules_season(r, bd, x->region, x->now);
  const int sline = vt_rules_season_line(r, x->region, x->now);
  fprintf(b, ",\"season\":{\"name\":\"%s\",\"by\":", SEASONS[season & 3]);
  if (sline) {
    char by[64];
    snprintf(by, sizeof by, "%s:%d", VT_RULES_FILE, sline);
    sb_str(b, by);
    sb_put(b, ",\"rule\":", 8);
    sb_str(b, r->text[sline] ? r->text[sline] : "");
  } else {
    sb_str(b, rg->fixed_season >= 0 ? "fixed" : "calendar");
  }
  sb_put(b, "},\"versions\":{\"model\":", 22);
  sb_str(b, bd->model_version);
  sb_put(b, ",\"catalog\":", 11);
  sb_str(b, c->catalog_version);
  sb_put(b, ",\"rules\":", 9);
  sb_str(b, vt_rules_version(r));
  sb_put(b, "},\"sections\":[", 14);
  hit hits[MAX_LISTED];
  int n_hits = 0;
  for (int s = 0; s < x->n_sections; s++) {
    const vt_section *sc = &x->sec[s];
    fprintf(b, "%s{\"theme\":{\"id\":%d,\"text\":", s ? "," : "", sc->theme);
    sb_str(b, bd->themes.text[sc->theme]);
    sb_put(b, ",\"score\":", 9);
    sb_num(b, sc->theme_score);
    sb_put(b, "},\"keywords\":[", 14);
    for (int k = 0; k < sc->n_keywords; k++) {
      fprintf(b, "%s{\"id\":%d,\"text\":", k ? "," : "", sc->keyword[k]);
      sb_str(b, bd->keywords.text[sc->keyword[k]]);
      sb_put(b, ",\"score\":", 9);
      sb_num(b, sc->keyword_score[k]);
      sb_put(b, "}", 1);
    }
    sb_put(b, "],\"products\":[", 14);
    for (int k = 0; k < sc->n_products; k++) {
      sb_put(b, k ? ",{\"id\":" : "{\"id\":", k ? 7 : 6);
      sb_str(b, c->ids[sc->products[k].product]);
      fprintf(b, ",\"keyword\":%d", sc->products[k].keyword);
      sb_put(b, ",\"score\":", 9);
      sb_num(b, sc->products[k].score);
      sb_put(b, "}", 1);
    }
    long held[N_HELD];
    section_held(c, sc, x->region, season, held, hits, &n_hits, seen);
    sb_put(b, "],\"held_back\":{", 15);
    for (int h = 0; h < N_HELD; h++)
      fprintf(b, "%s\"%s\":%ld", h ? "," : "", HELD_NAMES[h], held[h]);
    sb_put(b, "}}", 2);
  }
  /* the product rule lines that removed some of the sections' candidates, with how many */
  sb_put(b, "],\"removed_by\":[", 16);
  int first = 1;
  for (int i = 0; i < n_hits; i++) {
    put_rule(b, r, hits[i].line, &first);
    fprintf(b, ",\"products\":%d}", hits[i].products);
  }
  sb_put(b, "]", 1);
  put_in_effect(b, r, x->region, season, x->asked);
  fprintf(b, ",\"denied\":{\"themes\":%d,\"keywords\":%d,\"products\":%d}}\n",
            r ? r->n_themes_denied : 0, r ? r->n_keywords_denied : 0,
            r ? r->n_products_denied : 0);
}

/* ---- the file ------------------------------------------------------------------------------- */
static int open_file(vt_audit *a) {
  a->fd = open(a->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
  if (a->fd < 0)
    return -1;
  struct stat sb;
  a->size = fstat(a->fd, &sb) == 0 && S_ISREG(sb.st_mode) ? (long)sb.st_size : 0;
  return 0;
}

/* PATH -> PATH.1 -> ... -> PATH.(keep - 1) (the oldest falls off), then a new PATH. */
static int rotate(vt_audit *a) {
  char from[MAX_PATH + 16], to[MAX_PATH + 16];
  close(a->fd);
  a->fd = -1;
  if (a->o.keep <= 1) {
    if (unlink(a->path) && errno != ENOENT)
      return -1;
  } else {
    for (int i = a->o.keep - 1; i >= 1; i--) {
      if (i == 1)
        snprintf(from, sizeof from, "%s", a->path);
      else
        snprintf(from, sizeof from, "%s.%d", a->path, i - 1);
      snprintf(to, sizeof to, "%s.%d", a->path, i);
      if (rename(from, to) && errno != ENOENT)
        return -1;
    }
  }
  return open_file(a);
}

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t k = write(fd, p, n);
    if (k < 0 && errno == EINTR)
      continue;
    if (k <= 0)
      return -1;
    p += k;
    n -= (size_t)k;
  }
  return 0;
}

/* One formatted line to the file: counted as written, too large or a write error. */
static void write_line(vt_audit *a, const char *line, size_t n) {
  if ((long)n > a->o.max_bytes) {
    vt_metrics_audit(a->m, 0, 0, 1, 0);
    return;
  }
  int bad = a->fd < 0 && open_file(a);
  if (!bad && a->size > 0 && a->size + (long)n > a->o.max_bytes)
    bad = rotate(a);
  if (!bad && write_all(a->fd, line, n))
    bad = 1;
  if (bad) {
    const int e = errno;
    if (a->fd >= 0)
      close(a->fd);
    a->fd = -1; /* opened again for the next record */
    vt_metrics_audit(a->m, 0, 0, 0, 1);
    if (!a->failing)
      vt_log("error", "audit_write_failed", "path", a->path, "error", strerror(e), NULL);
    a->failing = 1;
    return;
  }
  if (a->failing)
    vt_log("info", "audit_write_resumed", "path", a->path, NULL);
  a->failing = 0;
  a->size += (long)n;
  vt_metrics_audit(a->m, 1, 0, 0, 0);
}

static void *writer_main(void *arg) {
  vt_audit *a = arg;
  uint8_t *seen = NULL;
  int seen_n = -1;
  for (;;) {
    pthread_mutex_lock(&a->mu);
    while (!a->count && !a->stop)
      pthread_cond_wait(&a->cv, &a->mu);
    if (!a->count) {
      pthread_mutex_unlock(&a->mu);
      break;
    }
    rec *x = &a->ring[a->head]; /* counted: no worker writes it until head moves on */
    pthread_mutex_unlock(&a->mu);
    if (seen_n < x->g->c->n_products) { /* marks for the distinct products of a section */
      free(seen);
      seen_n = x->g->c->n_products;
      seen = calloc((size_t)seen_n + 1, 1);
    }
    char *line = NULL;
    size_t n = 0;
    FILE *f = seen ? open_memstream(&line, &n) : NULL;
    if (f) {
      format_record(a, x, f, seen);
      const int bad = ferror(f);
      if (fclose(f) || bad || !line)
        vt_metrics_audit(a->m, 0, 0, 0, 1); /* out of memory */
      else
        write_line(a, line, n);
      free(line);
    } else {
      seen_n = -1;
      vt_metrics_audit(a->m, 0, 0, 0, 1); /* out of memory */
    }
    vt_gen_unref(x->g);
    x->g = NULL;
    pthread_mutex_lock(&a->mu);
    a->head = (a->head + 1) % a->cap;
    a->count--;
    pthread_mutex_unlock(&a->mu);
  }
  free(seen);
  return NULL;
}

/* ---- the interface -------------------------------------------------------------------------- */
int vt_audit_open(vt_audit **out, const vt_audit_opts *o, vt_metrics *m, vt_err *err) {
  *out = NULL;
  if (strlen(o->path) >= MAX_PATH)
    return vt_fail(err, VT_EINVAL, "--audit-log: the path is longer than %d bytes", MAX_PATH - 1);
  vt_audit *a = calloc(1, sizeof *a);
  if (!a || !(a->path = strdup(o->path)) ||
      !(a->ring = calloc((size_t)(o->ring > 0 ? o->ring : 1), sizeof *a->ring))) {
    if (a)
      free(a->path);
    free(a);
    return vt_fail(err, VT_ENOMEM, "out of memory for the audit ring");
  }
  a->o = *o;
  a->o.path = a->path;
  a->o.salt = NULL;
  a->cap = o->ring > 0 ? o->ring : 1;
  a->m = m;
  a->fd = -1;
  if (o->salt && *o->salt) {
    const size_t n = strlen(o->salt);
    a->key_len = (int)(n < sizeof a->key ? n : sizeof a->key);
    memcpy(a->key, o->salt, (size_t)a->key_len);
  } else {
    a->key_len = 32;
    if (RAND_bytes(a->key, a->key_len) != 1) {
      free(a->ring);
      free(a->path);
      free(a);
      return vt_fail(err, VT_EINTERNAL, "cannot draw a random salt for the audit log");
    }
  }
  a->threshold = o->sample >= 1.0 ? UINT64_MAX
                 : o->sample <= 0.0 ? 0
                                    : (uint64_t)(o->sample * 18446744073709551616.0);
  unsigned char seed[8];
  uint64_t s0 = 0;
  if (RAND_bytes(seed, sizeof seed) == 1)
    memcpy(&s0, seed, sizeof s0);
  atomic_init(&a->draws, s0);
  pthread_mutex_init(&a->mu, NULL);
  pthread_cond_init(&a->cv, NULL);
  if (open_file(a)) {
    const int e = errno;
    vt_audit_close(a);
    return vt_fail(err, VT_EIO, "--audit-log %s: cannot open for appending (%s)", o->path,
                   strerror(e));
  }
  if (pthread_create(&a->writer, NULL, writer_main, a)) {
    vt_audit_close(a);
    return vt_fail(err, VT_EINTERNAL, "cannot start the audit log's writer thread");
  }
  pthread_setname_np(a->writer, "vt-audit");
  a->started = 1;
  *out = a;
  return VT_OK;
}

void vt_audit_close(vt_audit *a) {
  if (!a)
    return;
  if (a->started) {
    pthread_mutex_lock(&a->mu);
    a->stop = 1;
    pthread_cond_signal(&a->cv);
    pthread_mutex_unlock(&a->mu);
    pthread_join(a->writer, NULL);
  }
  for (int i = 0; i < a->count; i++) /* only when the writer never ran */
    vt_gen_unref(a->ring[(a->head + i) % a->cap].g);
  if (a->fd >= 0)
    close(a->fd);
  pthread_cond_destroy(&a->cv);
  pthread_mutex_destroy(&a->mu);
  memset(a->key, 0, sizeof a->key);
  free(a->ring);
  free(a->path);
  free(a);
}

int vt_audit_sample(vt_audit *a) {
  if (!a || a->threshold == 0)
    return 0;
  if (a->threshold == UINT64_MAX)
    return 1;
  /* splitmix64 of a shared counter: uniform draws, one atomic add per call */
  uint64_t z = atomic_fetch_add(&a->draws, 0x9e3779b97f4a7c15ull) + 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return z < a->threshold;
}

int vt_audit_submit(vt_audit *a, const char digest[17], const vt_request *req, vt_gen *g,
                    const vt_storefront *s) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  pthread_mutex_lock(&a->mu);
  if (a->count == a->cap || a->stop) {
    pthread_mutex_unlock(&a->mu);
    vt_metrics_audit(a->m, 0, 1, 0, 0);
    return -1;
  }
  rec *x = &a->ring[(a->head + a->count) % a->cap];
  x->wall_ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
  memcpy(x->digest, digest, 17);
  snprintf(x->shopper, sizeof x->shopper, "%s", req->shopper_id ? req->shopper_id : "");
  x->region = req->region;
  x->events = req->n_events + req->dropped;
  x->asked = req->sections;
  x->now = req->now;
  vt_gen_ref(g);
  x->g = g;
  x->n_sections = s->n_sections < VT_MAX_SECTIONS ? s->n_sections : VT_MAX_SECTIONS;
  memcpy(x->sec, s->sections, (size_t)x->n_sections * sizeof *x->sec);
  a->count++;
  pthread_cond_signal(&a->cv);
  pthread_mutex_unlock(&a->mu);
  return 0;
}
