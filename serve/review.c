/* The review page (see review.h, docs/SERVER.md "Review page"): the audit log's newest records as
 * HTML, and the deny action that appends to rules.txt. */
#include "review.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "httpd.h"
#include "engine/rules.h"
#include "engine/text.h"

struct vt_review {
  vt_review_opts o;
  char token[VT_REVIEW_TOKEN_LEN + 1];
  char security[512]; /* the headers every HTML answer carries */
  vt_httpd *http;
};

/* ---- HTML ----------------------------------------------------------------------------------- */

/* s (n bytes) into f with & < > " ' as character references: safe in text and quoted attributes. */
static void esc_n(FILE *f, const char *s, size_t n) {
  static const char special[] = "&<>\"'";
  static const char *const refs[] = {"&amp;", "&lt;", "&gt;", "&quot;", "&#39;"};
  for (size_t i = 0; i < n; i++) {
    const char *k = s[i] ? strchr(special, s[i]) : NULL;
    if (k)
      fputs(refs[k - special], f);
    else
      fputc(s[i], f);
  }
}

static void esc(FILE *f, const char *s) { esc_n(f, s, strlen(s)); }

/* A stream writing into a growing malloc'd buffer (open_memstream). */
typedef struct sbuf {
  FILE *f;
  char *p;
  size_t n;
} sbuf;

static int sb_open(sbuf *b) {
  b->p = NULL;
  b->n = 0;
  b->f = open_memstream(&b->p, &b->n);
  return b->f ? 0 : -1;
}

/* Closes the stream: the text (malloc'd), or NULL when out of memory. */
static char *sb_close(sbuf *b) {
  int bad = ferror(b->f);
  if (fclose(b->f) || bad) {
    free(b->p);
    return NULL;
  }
  return b->p;
}

char *vt_review_escape(const char *s) {
  sbuf b;
  if (sb_open(&b))
    return NULL;
  esc(b.f, s);
  return sb_close(&b);
}

/* ---- the pieces of a POST ------------------------------------------------------------------- */

int vt_review_token_ok(const char *want, const char *got, size_t n) {
  const size_t w = strlen(want);
  unsigned char diff = (unsigned char)(n != w);
  for (size_t i = 0; i < w; i++) /* every byte of want, whatever got is */
    diff |= (unsigned char)(want[i] ^ (i < n ? got[i] : 0));
  return diff == 0;
}

static int hexval(char ch) {
  if (ch >= '0' && ch <= '9')
    return ch - '0';
  if (ch >= 'a' && ch <= 'f')
    return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F')
    return ch - 'A' + 10;
  return -1;
}

int vt_review_form_get(const char *body, size_t len, const char *name, char *out, size_t cap) {
  const size_t nl = strlen(name);
  const char *p = body, *end = body + len;
  while (p < end) {
    const char *amp = memchr(p, '&', (size_t)(end - p)), *fe = amp ? amp : end;
    const char *eq = memchr(p, '=', (size_t)(fe - p));
    if (eq && (size_t)(eq - p) == nl && memcmp(p, name, nl) == 0) {
      size_t o = 0;
      for (const char *v = eq + 1; v < fe; v++) {
        int ch = (unsigned char)*v;
        if (ch == '+') {
          ch = ' ';
        } else if (ch == '%') {
          int hi = v + 2 < fe ? hexval(v[1]) : -1, lo = v + 2 < fe ? hexval(v[2]) : -1;
          if (hi < 0 || lo < 0)
            return -2;
          ch = hi * 16 + lo;
          v += 2;
        }
        if (ch == 0 || o + 1 >= cap)
          return -2;
        out[o++] = (char)ch;
      }
      out[o] = 0;
      return 0;
    }
    p = fe + 1;
  }
  return -1;
}

/* ---- the rules file ------------------------------------------------------------------------- */

int vt_review_check(const char *kind, const char *value, vt_err *err) {
  const int product = strcmp(kind, "product") == 0;
  if (!product && strcmp(kind, "theme") != 0 && strcmp(kind, "keyword") != 0)
    return vt_fail(err, VT_EINVAL, "cannot deny a '%.40s': only a theme, keyword or product",
                   kind);
  const size_t n = strlen(value);
  if (n == 0 || n > VT_REVIEW_VALUE_MAX)
    return vt_fail(err, VT_EINVAL, "the %s to deny must be 1 to %d bytes, not %zu", kind,
                   VT_REVIEW_VALUE_MAX, n);
  size_t at;
  if (vt_utf8_check(value, n, &at) != VT_TEXT_OK)
    return vt_fail(err, VT_EINVAL, "the %s to deny is not UTF-8 (byte %zu)", kind, at);
  int words = 0;
  for (size_t i = 0; i < n;) {
    uint32_t cp;
    int k = vt_utf8_next(value + i, n - i, &cp);
    if (cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp < 0xa0))
      return vt_fail(err, VT_EINVAL, "the %s to deny has a control character (byte %zu)", kind,
                     i);
    if (cp == '#')
      return vt_fail(err, VT_EINVAL, "the %s to deny has a '#' (it would start a comment)", kind);
    if (vt_is_space(cp) && (cp != ' ' || product))
      return vt_fail(err, VT_EINVAL, "the %s to deny has %s (byte %zu)", kind,
                     product ? "a blank: a product id is one word" : "a blank other than a space",
                     i);
    words += cp != ' ' && (i == 0 || value[i - 1] == ' ');
    i += (size_t)k;
  }
  if (!words)
    return vt_fail(err, VT_EINVAL, "the %s to deny is blank", kind);
  return VT_OK;
}

/* The whole file (absent: *buf "" and *st zeroed, st_mode 0644), at most VT_RULES_MAX_BYTES. */
static int read_rules(const char *path, char **buf, size_t *len, struct stat *st, vt_err *err) {
  *buf = NULL;
  *len = 0;
  memset(st, 0, sizeof *st);
  if (lstat(path, st) != 0) {
    if (errno != ENOENT)
      return vt_fail(err, VT_EIO, "%s: cannot read (%s)", path, strerror(errno));
    st->st_mode = S_IFREG | 0644;
    return (*buf = calloc(1, 1)) ? VT_OK : vt_fail(err, VT_ENOMEM, "out of memory");
  }
  if (S_ISLNK(st->st_mode))
    return vt_fail(err, VT_EIO,
                   "%s is a symlink (a mounted ConfigMap?): the review page edits only a regular "
                   "file; change the rules where they come from",
                   path);
  if (!S_ISREG(st->st_mode))
    return vt_fail(err, VT_EIO, "%s is not a regular file", path);
  if (st->st_size > VT_RULES_MAX_BYTES)
    return vt_fail(err, VT_EFORMAT, "%s: larger than %d bytes", path, VT_RULES_MAX_BYTES);
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0)
    return vt_fail(err, VT_EIO, "%s: cannot read (%s)", path, strerror(errno));
  size_t cap = (size_t)st->st_size;
  char *p = malloc(cap + 1);
  size_t n = 0;
  ssize_t k = 0;
  while (p && n < cap && (k = read(fd, p + n, cap - n)) > 0)
    n += (size_t)k;
  int e = errno;
  close(fd);
  if (!p)
    return vt_fail(err, VT_ENOMEM, "out of memory");
  if (k < 0 || n != cap) {
    free(p);
    return vt_fail(err, VT_EIO, "%s: cannot read (%s)", path,
                   k < 0 ? strerror(e) : "it changed while being read");
  }
  p[n] = 0;
  *buf = p;
  *len = n;
  return VT_OK;
}

/* How many of kind the rules deny. */
static int denied_count(const vt_rules *r, const char *kind) {
  if (!r)
    return 0;
  return strcmp(kind, "theme") == 0     ? r->n_themes_denied
         : strcmp(kind, "keyword") == 0 ? r->n_keywords_denied
                                        : r->n_products_denied;
}

/* text (n bytes) to a temporary file beside path, synced, with mode, renamed over path, and the
 * directory synced; the file at path must still be what was read (st) when it is replaced. */
static int write_atomic(const char *dir, const char *path, const char *text, size_t n,
                        const struct stat *st, vt_err *err) {
  char tmp[VT_PATH_MAX];
  int rc;
  if ((rc = vt_path_join(tmp, dir, ".rules.txt.review-XXXXXX", err)))
    return rc;
  int fd = mkostemp(tmp, O_CLOEXEC);
  if (fd < 0)
    return vt_fail(err, VT_EIO, "%s: cannot create a file there (%s)", dir, strerror(errno));
  size_t done = 0;
  ssize_t k = 0;
  while (done < n && (k = write(fd, text + done, n - done)) > 0)
    done += (size_t)k;
  if (done != n || fchmod(fd, st->st_mode & 07777) || fsync(fd)) {
    int e = errno;
    close(fd);
    unlink(tmp);
    return vt_fail(err, VT_EIO, "%s: cannot write (%s)", tmp, strerror(e));
  }
  if (close(fd)) {
    int e = errno;
    unlink(tmp);
    return vt_fail(err, VT_EIO, "%s: cannot write (%s)", tmp, strerror(e));
  }
  struct stat now;
  const int existed = st->st_ino != 0;
  const int gone = lstat(path, &now) != 0;
  if (existed ? gone || now.st_ino != st->st_ino || now.st_dev != st->st_dev ||
                    now.st_size != st->st_size || now.st_mtim.tv_sec != st->st_mtim.tv_sec ||
                    now.st_mtim.tv_nsec != st->st_mtim.tv_nsec
              : !gone) {
    unlink(tmp);
    return vt_fail(err, VT_EIO, "%s changed while the review page was writing it: try again",
                   path);
  }
  if (rename(tmp, path)) {
    int e = errno;
    unlink(tmp);
    return vt_fail(err, VT_EIO, "%s: cannot replace it (%s)", path, strerror(e));
  }
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) { /* the rename itself is durable only once the directory is */
    int bad = fsync(dfd);
    close(dfd);
    if (bad)
      return vt_fail(err, VT_EIO, "%s: cannot sync the directory (%s)", dir, strerror(errno));
  }
  return VT_OK;
}

int vt_review_append(const char *dir, const char *kind, const char *value, const char *comment,
                     const vt_bundle *b, const vt_catalog *c, int *line_no, vt_err *err) {
  char path[VT_PATH_MAX];
  int rc;
  *line_no = 0;
  if ((rc = vt_review_check(kind, value, err)) || (rc = vt_path_join(path, dir, VT_RULES_FILE, err)))
    return rc;
  if (comment && strpbrk(comment, "\r\n"))
    return vt_fail(err, VT_EINVAL, "the comment of a rules line must be one line");
  char *old = NULL, *text = NULL;
  size_t n_old;
  struct stat st;
  vt_rules *before = NULL, *after = NULL;
  if ((rc = read_rules(path, &old, &n_old, &st, err)))
    return rc;
  const int sep = n_old > 0 && old[n_old - 1] != '\n';
  sbuf sb;
  if (sb_open(&sb)) {
    rc = vt_fail(err, VT_ENOMEM, "out of memory");
    goto done;
  }
  fwrite(old, 1, n_old, sb.f);
  fprintf(sb.f, "%sdeny %s %s%s%s\n", sep ? "\n" : "", kind, value, comment ? "  # " : "",
          comment ? comment : "");
  if (!(text = sb_close(&sb))) {
    rc = vt_fail(err, VT_ENOMEM, "out of memory");
    goto done;
  }
  const size_t n = strlen(text);
  if (n > VT_RULES_MAX_BYTES) {
    rc = vt_fail(err, VT_EINVAL, "%s would grow past %d bytes", path, VT_RULES_MAX_BYTES);
    goto done;
  }
  *line_no = 1;
  for (size_t i = 0; i + 1 < n; i++)
    *line_no += text[i] == '\n';
  /* what the file denies now: a broken file is not written to (its line is not ours to fix) */
  if (n_old && (rc = vt_rules_parse(&before, old, n_old, path, b, c, err)))
    goto done;
  if ((rc = vt_rules_parse(&after, text, n, path, b, c, err))) {
    vt_err why = *err;
    rc = vt_fail(err, VT_EINVAL, "refused, nothing written: %s", why.msg);
    goto done;
  }
  if (denied_count(after, kind) == denied_count(before, kind)) {
    rc = vt_fail(err, VT_EINVAL, "%s '%s' is already denied by %s", kind, value, path);
    goto done;
  }
  rc = write_atomic(dir, path, text, n, &st, err);
done:
  if (rc)
    *line_no = 0;
  vt_rules_free(before);
  vt_rules_free(after);
  free(old);
  free(text);
  return rc;
}

/* ---- the audit log -------------------------------------------------------------------------- */

/* Adds the records of one file, newest first, to arr until it holds max. */
static int recent_of(cJSON *arr, const char *path, int max, int *skipped, int must, vt_err *err) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (!must && errno == ENOENT)
      return VT_OK;
    return vt_fail(err, VT_EIO, "%s: cannot read (%s)", path, strerror(errno));
  }
  struct stat st;
  if (fstat(fd, &st)) {
    int e = errno;
    close(fd);
    return vt_fail(err, VT_EIO, "%s: cannot read (%s)", path, strerror(e));
  }
  const off_t from = st.st_size > VT_REVIEW_TAIL_BYTES ? st.st_size - VT_REVIEW_TAIL_BYTES : 0;
  const size_t cap = (size_t)(st.st_size - from);
  char *buf = malloc(cap + 1);
  size_t n = 0;
  ssize_t k = 0;
  while (buf && n < cap && (k = pread(fd, buf + n, cap - n, from + (off_t)n)) > 0)
    n += (size_t)k;
  close(fd);
  if (!buf)
    return vt_fail(err, VT_ENOMEM, "out of memory");
  if (k < 0) {
    free(buf);
    return vt_fail(err, VT_EIO, "%s: cannot read", path);
  }
  size_t start = 0;
  if (from > 0) { /* the first line is cut: it starts after the first newline */
    char *nl = memchr(buf, '\n', n);
    start = nl ? (size_t)(nl - buf) + 1 : n;
  }
  size_t end = n;
  if (end > start && buf[end - 1] != '\n') { /* a record still being written */
    while (end > start && buf[end - 1] != '\n')
      end--;
    ++*skipped;
  }
  while (end > start && cJSON_GetArraySize(arr) < max) {
    size_t le = end - 1; /* buf[le] is the newline ending this line */
    size_t ls = le;
    while (ls > start && buf[ls - 1] != '\n')
      ls--;
    end = ls;
    if (le == ls)
      continue; /* blank */
    cJSON *rec = cJSON_ParseWithLength(buf + ls, le - ls);
    if (!cJSON_IsObject(rec)) {
      cJSON_Delete(rec);
      ++*skipped;
      continue;
    }
    cJSON_AddItemToArray(arr, rec);
  }
  free(buf);
  return VT_OK;
}

int vt_review_recent(cJSON **out, const char *path, int max, int *skipped, vt_err *err) {
  *skipped = 0;
  cJSON *arr = cJSON_CreateArray();
  if (!arr)
    return *out = NULL, vt_fail(err, VT_ENOMEM, "out of memory");
  char older[VT_PATH_MAX];
  int rc = recent_of(arr, path, max, skipped, 1, err);
  if (!rc && cJSON_GetArraySize(arr) < max) {
    if (snprintf(older, sizeof older, "%s.1", path) >= (int)sizeof older)
      rc = vt_fail(err, VT_EINVAL, "%s: path too long", path);
    else
      rc = recent_of(arr, older, max, skipped, 0, err);
  }
  if (rc) {
    cJSON_Delete(arr);
    arr = NULL;
  }
  *out = arr;
  return rc;
}

/* ---- the page ------------------------------------------------------------------------------- */

static const char *jstr(const cJSON *o, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  return cJSON_IsString(v) ? v->valuestring : "";
}

static double jnum(const cJSON *o, const char *key, double dflt) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

static const cJSON *jarr(const cJSON *o, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  return cJSON_IsArray(v) ? v : NULL;
}

/* HTML from a format: %e a string, HTML-escaped; %s a string as it is (markup, or text that
 * cannot hold a special character); %d an int; %n a count (double, no decimals); %f a score
 * (double, 4 decimals); %% a '%'. Nothing else is special. */
static void html(FILE *f, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  for (const char *p = fmt; *p; p++) {
    if (*p != '%' || !p[1]) {
      fputc(*p, f);
      continue;
    }
    switch (*++p) {
    case 'e':
      esc(f, va_arg(ap, const char *));
      break;
    case 's':
      fputs(va_arg(ap, const char *), f);
      break;
    case 'd':
      fprintf(f, "%d", va_arg(ap, int));
      break;
    case 'n':
      fprintf(f, "%.0f", va_arg(ap, double));
      break;
    case 'f':
      fprintf(f, "%.4f", va_arg(ap, double));
      break;
    default:
      fputc(*p, f);
    }
  }
  va_end(ap);
}

/* The deny button of one theme, keyword or product, or "denied" when the rules in force deny it. */
static void deny_form(FILE *f, const vt_review *rv, const char *kind, const char *value,
                      int denied) {
  if (denied) {
    html(f, " <span class=\"denied\">denied</span>");
    return;
  }
  html(f,
       "<form method=\"post\" action=\"deny\"><input type=\"hidden\" name=\"token\" value=\"%s\">"
       "<input type=\"hidden\" name=\"kind\" value=\"%s\"><input type=\"hidden\" name=\"value\" "
       "value=\"%e\"><button type=\"submit\" class=\"deny\" data-kind=\"%s\" data-value=\"%e\" "
       "title=\"deny %s %e\">deny</button></form>",
       rv->token, kind, value, kind, value, kind, value);
}

/* Whether the rules in force deny phrase id (whose text in the record is text) of a table. */
static int phrase_denied(const vt_phrases *p, const uint8_t *denied, int id, const char *text) {
  return denied && id >= 0 && id < p->n && strcmp(p->text[id], text) == 0 && denied[id];
}

/* The products of a section retrieved by keyword (any: all of them), with their titles. */
static void render_products(FILE *f, const vt_review *rv, const vt_catalog *c,
                            const cJSON *products, int keyword, int any) {
  const vt_rules *r = c ? c->rules : NULL;
  int opened = 0;
  const cJSON *p;
  cJSON_ArrayForEach(p, products) {
    if (!any && (int)jnum(p, "keyword", -1) != keyword)
      continue;
    if (!opened++)
      html(f, "<ul class=\"products\">");
    const char *id = jstr(p, "id");
    const int at = c ? vt_catalog_find(c, id, strlen(id)) : -1;
    html(f, "<li>product <code class=\"product\">%e</code> <span class=\"title\">%e</span> "
            "<span class=\"score\">%f</span>",
         id, at >= 0 ? c->titles[at] : "", jnum(p, "score", 0));
    deny_form(f, rv, "product", id, r && at >= 0 && r->product_regions_off[at] == ~0u);
    html(f, "</li>");
  }
  if (opened)
    html(f, "</ul>");
}

/* A theme or keyword: "<kind> <phrase> <score>", then its deny form (or "denied" where the rules
 * already deny it: the same id in the bundle's table with the same text). */
static void render_phrase(FILE *f, const vt_review *rv, const char *kind, const vt_phrases *tab,
                          const uint8_t *denied, const cJSON *o) {
  html(f, "%s <span class=\"phrase %s\">%e</span> <span class=\"score\">%f</span>", kind, kind,
       jstr(o, "text"), jnum(o, "score", 0));
  deny_form(f, rv, kind, jstr(o, "text"),
            phrase_denied(tab, denied, (int)jnum(o, "id", -1), jstr(o, "text")));
}

/* One section: theme -> keywords -> the products each retrieved, and what the filters held back. */
static void render_section(FILE *f, const vt_review *rv, const vt_catalog *c, const cJSON *sec) {
  const vt_bundle *b = rv->o.b;
  const vt_rules *r = c ? c->rules : NULL;
  const cJSON *th = cJSON_GetObjectItemCaseSensitive(sec, "theme");
  const cJSON *products = jarr(sec, "products"), *p, *kw;
  html(f, "<li class=\"section\">");
  render_phrase(f, rv, "theme", &b->themes, r ? r->theme_denied : NULL, th);
  int keyed = 0; /* records written before products named their keyword: listed once, below */
  cJSON_ArrayForEach(p, products) keyed += jnum(p, "keyword", -1) >= 0;
  html(f, "<ul class=\"keywords\">");
  cJSON_ArrayForEach(kw, jarr(sec, "keywords")) {
    html(f, "<li>");
    render_phrase(f, rv, "keyword", &b->keywords, r ? r->keyword_denied : NULL, kw);
    if (keyed)
      render_products(f, rv, c, products, (int)jnum(kw, "id", -1), 0);
    html(f, "</li>");
  }
  html(f, "</ul>");
  if (!keyed)
    render_products(f, rv, c, products, -1, 1);
  const cJSON *held = cJSON_GetObjectItemCaseSensitive(sec, "held_back");
  html(f, "<p class=\"held\">held back of the keywords' products: stock %n, region %n, season %n,"
          " product rules %n</p></li>",
       jnum(held, "stock", 0), jnum(held, "region", 0), jnum(held, "season", 0),
       jnum(held, "rules", 0));
}

/* One audit record: who and when, the versions, the sections, the rules that acted on it. */
static void render_record(FILE *f, const vt_review *rv, const vt_catalog *c, const cJSON *rec) {
  const cJSON *seg = cJSON_GetObjectItemCaseSensitive(rec, "segment");
  const cJSON *season = cJSON_GetObjectItemCaseSensitive(rec, "season");
  const cJSON *ver = cJSON_GetObjectItemCaseSensitive(rec, "versions");
  const cJSON *den = cJSON_GetObjectItemCaseSensitive(rec, "denied"), *x;
  html(f, "<section class=\"storefront\" data-request=\"%e\"><h2>%e &middot; region %e, %e "
          "shopper (%n events) &middot; %e by %e <code>%e</code></h2>"
          "<p class=\"versions\">request <code>%e</code>, model <code>%e</code>, catalogue "
          "<code>%e</code>, rules <code>%e</code></p><ol class=\"sections\">",
       jstr(rec, "request"), jstr(rec, "ts"), jstr(seg, "region"), jstr(seg, "activity"),
       jnum(seg, "events", 0), jstr(season, "name"), jstr(season, "by"), jstr(season, "rule"),
       jstr(rec, "request"), jstr(ver, "model"), jstr(ver, "catalog"),
       *jstr(ver, "rules") ? jstr(ver, "rules") : "(none)");
  cJSON_ArrayForEach(x, jarr(rec, "sections")) render_section(f, rv, c, x);
  html(f, "</ol><ul class=\"rules\">");
  cJSON_ArrayForEach(x, jarr(rec, "removed_by")) {
    html(f, "<li>removed %n candidate products: line %n <code>%e</code></li>",
         jnum(x, "products", 0), jnum(x, "line", 0), jstr(x, "rule"));
  }
  cJSON_ArrayForEach(x, jarr(rec, "in_effect")) {
    html(f, "<li>in effect (%e): line %n <code>%e</code></li>", jstr(x, "kind"),
         jnum(x, "line", 0), jstr(x, "rule"));
  }
  if (jnum(rec, "in_effect_more", 0) > 0)
    html(f, "<li>and %n more lines in effect</li>", jnum(rec, "in_effect_more", 0));
  html(f, "<li>denied everywhere when answered: %n themes, %n keywords, %n products</li></ul>"
          "</section>\n",
       jnum(den, "themes", 0), jnum(den, "keywords", 0), jnum(den, "products", 0));
}

/* The page; banner (plain text, escaped here) above it when not NULL. */
static char *render(const vt_review *rv, const char *banner, int ok, const char *version) {
  sbuf sb;
  if (sb_open(&sb))
    return NULL;
  FILE *f = sb.f;
  html(f, "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>vitrine review"
          "</title><style>body{font:14px/1.45 sans-serif;margin:1em 2em;max-width:75em}"
          ".ok,.error{padding:.6em;border-radius:4px}.ok{background:#e3f4e6}.error{background:"
          "#fbe3e4}section.storefront{border-top:1px solid #bbb;margin-top:1.2em}h2{font-size:"
          "15px}form{display:inline;margin-left:.6em}button.deny{font-size:11px}.score,.versions,"
          ".held,.title{color:#555;font-size:12px}.denied{color:#a00;font-size:12px;margin-left:"
          ".6em}ul.rules{color:#333;font-size:12px}</style></head><body><h1>vitrine review</h1>\n");
  if (banner)
    html(f, "<p id=\"result\" class=\"%s\" data-rules-version=\"%e\">%e</p>\n",
         ok ? "ok" : "error", version ? version : "", banner);
  vt_gen *g = vt_sched_gen(rv->o.s);
  const vt_catalog *c = g ? g->c : NULL;
  const vt_rules *r = c ? c->rules : NULL;
  html(f, "<p class=\"summary\">Catalogue <code>%e</code>, version <code>%e</code>; rules "
          "<code id=\"rules-version\">%e</code> (%d themes, %d keywords and %d products denied). "
          "A deny appends its line to <code>rules.txt</code> and reloads the catalogue.</p>\n",
       rv->o.catalog_dir, c ? c->catalog_version : "", r ? vt_rules_version(r) : "",
       r ? r->n_themes_denied : 0, r ? r->n_keywords_denied : 0, r ? r->n_products_denied : 0);
  cJSON *recs = NULL;
  int skipped = 0;
  vt_err err = {0};
  if (vt_review_recent(&recs, rv->o.audit_path, VT_REVIEW_RECORDS, &skipped, &err)) {
    html(f, "<p class=\"error\">%e</p>\n", err.msg);
  } else {
    html(f, "<p class=\"summary\">The newest %d storefronts of the audit log <code>%e</code> (at "
            "most %d, newest first)",
         cJSON_GetArraySize(recs), rv->o.audit_path, VT_REVIEW_RECORDS);
    if (skipped)
      html(f, "; %d lines skipped (not a record, or still being written)", skipped);
    html(f, ".</p>\n");
    const cJSON *rec;
    cJSON_ArrayForEach(rec, recs) render_record(f, rv, c, rec);
  }
  cJSON_Delete(recs);
  vt_gen_unref(g);
  html(f, "</body></html>\n");
  return sb_close(&sb);
}

/* ---- the handler ---------------------------------------------------------------------------- */

static int is(const char *s, size_t n, const char *lit) {
  return n == strlen(lit) && memcmp(s, lit, n) == 0;
}

static void page(const vt_review *rv, vt_httpd_resp *resp, int status, const char *reason,
                 const char *banner, int ok, const char *version) {
  resp->status = status;
  resp->reason = reason;
  resp->type = "text/html; charset=utf-8";
  resp->headers = rv->security;
  resp->body = render(rv, banner, ok, version);
}

/* 1 when origin (n bytes) is http:// or https:// (a proxy's TLS) and the request's Host. */
static int same_origin(const char *origin, size_t n, const char *host, size_t hn) {
  static const char *const schemes[] = {"http://", "https://"};
  for (int i = 0; i < 2; i++) {
    const size_t k = strlen(schemes[i]);
    if (host && n == k + hn && strncmp(origin, schemes[i], k) == 0 &&
        memcmp(origin + k, host, hn) == 0)
      return 1;
  }
  return 0;
}

int vt_review_host_ok(const char *host, size_t n) {
  char name[64];
  const char *end = host + n;
  if (n && host[0] == '[') { /* [IPv6]:port */
    const char *close = memchr(host, ']', n);
    if (!close || (size_t)(close - host - 1) >= sizeof name ||
        (close + 1 < end && close[1] != ':'))
      return 0;
    memcpy(name, host + 1, (size_t)(close - host - 1));
    name[close - host - 1] = 0;
    struct in6_addr a6;
    return inet_pton(AF_INET6, name, &a6) == 1;
  }
  const char *colon = memchr(host, ':', n);
  const size_t hl = colon ? (size_t)(colon - host) : n;
  if (hl == 0 || hl >= sizeof name)
    return 0;
  for (const char *p = colon ? colon + 1 : end; p < end; p++)
    if (*p < '0' || *p > '9')
      return 0;
  memcpy(name, host, hl);
  name[hl] = 0;
  struct in_addr a4;
  return strcasecmp(name, "localhost") == 0 || inet_pton(AF_INET, name, &a4) == 1;
}

/* A POST to /deny: the token, then the form, then the deny itself. */
static void deny(vt_review *rv, const vt_httpd_req *req, vt_httpd_resp *resp) {
  size_t n;
  const char *v = vt_httpd_header(req, "Content-Type", &n);
  const char *form = "application/x-www-form-urlencoded";
  if (!v || n < strlen(form) || strncasecmp(v, form, strlen(form)) != 0) {
    page(rv, resp, 415, "Unsupported Media Type",
         "refused: a deny is a form POST (application/x-www-form-urlencoded)", 0, NULL);
    return;
  }
  /* a browser says where a form came from: only this page's own origin may post */
  const char *origin = vt_httpd_header(req, "Origin", &n);
  size_t hn;
  const char *host = vt_httpd_header(req, "Host", &hn);
  if (origin && !same_origin(origin, n, host, hn)) {
    page(rv, resp, 403, "Forbidden", "refused: the form was not sent from this page's origin", 0,
         NULL);
    return;
  }
  char token[VT_REVIEW_TOKEN_LEN + 2], kind[16], value[VT_REVIEW_VALUE_MAX + 2];
  if (vt_review_form_get(req->body, req->body_len, "token", token, sizeof token) ||
      !vt_review_token_ok(rv->token, token, strlen(token))) {
    page(rv, resp, 403, "Forbidden",
         "refused: the form's token is missing or not this server's (reload the page: the "
         "server may have restarted)",
         0, NULL);
    return;
  }
  if (vt_review_form_get(req->body, req->body_len, "kind", kind, sizeof kind) ||
      vt_review_form_get(req->body, req->body_len, "value", value, sizeof value)) {
    page(rv, resp, 400, "Bad Request",
         "refused: the form needs a kind and a value (at most 200 bytes)", 0, NULL);
    return;
  }
  vt_err err = {0};
  char version[VT_RULES_VERSION_MAX + 1] = "", comment[128], banner[1024], stamp[32];
  if (vt_review_check(kind, value, &err)) {
    page(rv, resp, 400, "Bad Request", err.msg, 0, NULL);
    return;
  }
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", &tm);
  snprintf(comment, sizeof comment, "review page %s from %s", stamp, req->peer);
  int line = 0;
  int rc = rv->o.apply(rv->o.arg, kind, value, comment, &line, version, sizeof version, &err);
  if (rc == 0) {
    snprintf(banner, sizeof banner,
             "Denied %s '%s': rules.txt line %d; reloaded, rules version %s.", kind, value, line,
             version);
    page(rv, resp, 200, "OK", banner, 1, version);
  } else if (rc == VT_REVIEW_RELOAD_FAILED) {
    snprintf(banner, sizeof banner,
             "The %s '%s' is denied in rules.txt (line %d), but the reload failed, so the old "
             "catalogue and rules keep serving: %s",
             kind, value, line, err.msg);
    page(rv, resp, 500, "Internal Server Error", banner, 0, NULL);
  } else {
    snprintf(banner, sizeof banner, "Not denied: %s", err.msg);
    if (rc == VT_EINVAL || rc == VT_EFORMAT)
      page(rv, resp, 400, "Bad Request", banner, 0, NULL);
    else
      page(rv, resp, 500, "Internal Server Error", banner, 0, NULL);
  }
}

static void handle(void *arg, const vt_httpd_req *req, vt_httpd_resp *resp) {
  vt_review *rv = arg;
  const int post = is(req->method, req->method_len, "POST");
  const int root = is(req->path, req->path_len, "/");
  const int deny_path = is(req->path, req->path_len, "/deny");
  size_t hn;
  const char *host = vt_httpd_header(req, "Host", &hn);
  if (host && !vt_review_host_ok(host, hn)) {
    /* a name that is not localhost may be a DNS-rebinding page's own name pointed at this
     * address, which would make the page (and its token) readable to that site */
    resp->status = 403;
    resp->reason = "Forbidden";
    resp->type = "text/plain; charset=utf-8";
    resp->body = strdup("refused: the Host is not an IP address or localhost (a guard against "
                        "DNS rebinding): open the page by address\n");
    return;
  }
  if (post && deny_path) {
    deny(rv, req, resp);
  } else if (!post && (root || deny_path)) {
    page(rv, resp, 200, "OK", NULL, 1, NULL);
  } else {
    resp->status = 404;
    resp->reason = "Not Found";
    resp->type = "text/plain; charset=utf-8";
    resp->body = strdup(post ? "not found: a deny is a POST to /deny\n"
                             : "not found: the review page is at /\n");
  }
}

int vt_review_start(vt_review **out, const vt_review_opts *o, int *bound, vt_err *err) {
  *out = NULL;
  vt_review *rv = calloc(1, sizeof *rv);
  if (!rv)
    return vt_fail(err, VT_ENOMEM, "out of memory");
  rv->o = *o;
  unsigned char raw[VT_REVIEW_TOKEN_LEN / 2];
  if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw) {
    free(rv);
    return vt_fail(err, VT_EIO, "review page: cannot draw its token (getrandom: %s)",
                   strerror(errno));
  }
  for (size_t i = 0; i < sizeof raw; i++)
    snprintf(rv->token + 2 * i, 3, "%02x", raw[i]);
  snprintf(rv->security, sizeof rv->security, "%s",
           "Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; "
           "form-action 'self'; frame-ancestors 'none'; base-uri 'none'\r\n"
           "X-Content-Type-Options: nosniff\r\nReferrer-Policy: same-origin\r\n"
           "Cache-Control: no-store\r\n");
  int rc = vt_httpd_start_app(&rv->http, o->host, o->port, "the review page", handle, rv, bound,
                              err);
  if (rc) {
    free(rv);
    return rc;
  }
  *out = rv;
  return VT_OK;
}

void vt_review_stop(vt_review *r) {
  if (!r)
    return;
  vt_httpd_stop(r->http);
  free(r);
}
