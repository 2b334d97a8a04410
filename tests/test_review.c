/* The review page's pieces without a browser (serve/review.c; the page itself in a real browser:
 * tests/server/test_review.py): HTML escaping, the token check, form decoding, the value check
 * that keeps other rule lines out of rules.txt, the atomic append (content kept byte for byte,
 * mode kept, no temporary file left, unknown phrases, injections, repeats, broken files and
 * symlinks refused with the file untouched), and reading the newest audit records. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/bundle.h"
#include "engine/catalog.h"
#include "serve/review.h"
#include "engine/rules.h"
#include "tests/fixture.h"

static vt_bundle *b;
static vt_catalog *c0;
static char cat_dir[1024];

static void setup(void) { vt_fixture_load(&b, &c0, cat_dir, sizeof cat_dir); }

static void teardown(void) {
  vt_catalog_free(c0);
  vt_bundle_free(b);
}

/* ---- helpers ------------------------------------------------------------------------------- */
/* A catalogue directory: the fixture's files (symlinks) and, when text is not NULL, rules.txt. */
static void tmpcat(char *dir, size_t cap, const char *text) {
  static const char *const files[] = {"manifest.json", "products.tsv", "embeddings.safetensors"};
  char src[1200], dst[1200];
  snprintf(dir, cap, "/tmp/vt-review-XXXXXX");
  cr_assert(mkdtemp(dir), "mkdtemp");
  for (int i = 0; i < 3; i++) {
    snprintf(src, sizeof src, "%s/%s", cat_dir, files[i]);
    snprintf(dst, sizeof dst, "%s/%s", dir, files[i]);
    cr_assert_eq(symlink(src, dst), 0, "symlink %s", dst);
  }
  if (text) {
    snprintf(dst, sizeof dst, "%s/rules.txt", dir);
    FILE *f = fopen(dst, "wb");
    cr_assert(f);
    fputs(text, f);
    fclose(f);
  }
}

static void rm_tree(const char *dir) {
  char cmd[1200];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  cr_assert_eq(system(cmd), 0);
}

/* The file's bytes (malloc'd, NUL-terminated), or NULL when it does not exist. */
static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return NULL;
  char *p = NULL;
  size_t n = 0;
  FILE *m = open_memstream(&p, &n);
  int ch;
  while ((ch = fgetc(f)) != EOF)
    fputc(ch, m);
  fclose(m);
  fclose(f);
  return p;
}

static char *rules_of(const char *dir) {
  char p[1200];
  snprintf(p, sizeof p, "%s/rules.txt", dir);
  return slurp(p);
}

/* rules.txt holds want and has mode. */
static void assert_rules(const char *dir, const char *want, unsigned mode) {
  char path[1200];
  struct stat st;
  snprintf(path, sizeof path, "%s/rules.txt", dir);
  char *got = slurp(path);
  cr_assert(got, "no %s", path);
  cr_assert_str_eq(got, want);
  free(got);
  cr_assert_eq(stat(path, &st), 0);
  cr_assert_eq(st.st_mode & 07777, mode, "mode %o", st.st_mode & 07777);
}

/* Files in dir whose name starts with prefix. */
static int count_prefixed(const char *dir, const char *prefix) {
  DIR *d = opendir(dir);
  cr_assert(d);
  int n = 0;
  for (struct dirent *e; (e = readdir(d));)
    n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
  closedir(d);
  return n;
}

/* The append of kind/value is refused with a message holding `want`, and rules.txt is unchanged
 * (byte for byte, or still absent). */
static void refused(const char *dir, const char *kind, const char *value, const char *want) {
  char *before = rules_of(dir);
  vt_err err = {0};
  int line = -1;
  int rc = vt_review_append(dir, kind, value, "test", b, c0, &line, &err);
  cr_assert_neq(rc, 0, "deny %s '%s' was accepted", kind, value);
  cr_assert_eq(line, 0);
  cr_assert(strstr(err.msg, want), "deny %s '%s': message '%s' lacks '%s'", kind, value, err.msg,
            want);
  char *after = rules_of(dir);
  cr_assert_eq(!before, !after, "rules.txt appeared or vanished");
  if (before)
    cr_assert_str_eq(after, before, "rules.txt changed by a refused deny");
  cr_assert_eq(count_prefixed(dir, ".rules.txt"), 0, "a temporary file was left");
  free(before);
  free(after);
}

/* ---- escaping, the token, the form ------------------------------------------------------------ */
Test(review, escape_html) {
  char *e = vt_review_escape("<a href=\"x\" onclick='y'>&amp;</a> ok");
  cr_assert_str_eq(e, "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;amp;&lt;/a&gt; ok");
  free(e);
  /* every printable ASCII character: none of the five is left raw */
  char all[128];
  int n = 0;
  for (int ch = 0x20; ch < 0x7f; ch++)
    all[n++] = (char)ch;
  all[n] = 0;
  e = vt_review_escape(all);
  cr_assert_null(strpbrk(e, "<>\"'"));
  for (const char *p = strchr(e, '&'); p; p = strchr(p + 1, '&'))
    cr_assert(strncmp(p, "&amp;", 5) == 0 || strncmp(p, "&lt;", 4) == 0 ||
                  strncmp(p, "&gt;", 4) == 0 || strncmp(p, "&quot;", 6) == 0 ||
                  strncmp(p, "&#39;", 5) == 0,
              "a raw & at '%.8s'", p);
  free(e);
  e = vt_review_escape("caf\xc3\xa9 \xe2\x80\x94 plain");
  cr_assert_str_eq(e, "caf\xc3\xa9 \xe2\x80\x94 plain");
  free(e);
}

Test(review, token) {
  const char *t = "0123456789abcdef0123456789abcdef";
  cr_assert(vt_review_token_ok(t, t, strlen(t)));
  cr_assert_not(vt_review_token_ok(t, t, strlen(t) - 1), "a prefix");
  cr_assert_not(vt_review_token_ok(t, "0123456789abcdef0123456789abcdef0", 33), "longer");
  cr_assert_not(vt_review_token_ok(t, "0123456789abcdef0123456789abcdeF", 32), "one byte");
  cr_assert_not(vt_review_token_ok(t, "1123456789abcdef0123456789abcdef", 32), "first byte");
  cr_assert_not(vt_review_token_ok(t, "", 0), "empty");
}

Test(review, host_guard) {
  const char *ok[] = {"127.0.0.1:8080", "127.0.0.1", "localhost:9000", "LOCALHOST", "10.1.2.3:80",
                      "[::1]:8080", "[::1]"};
  const char *bad[] = {"evil.example:8080", "evil.example", "localhost.evil.example:80",
                       "127.0.0.1.nip.io:8080", "", ":8080", "127.0.0.1:80x", "[::1]x",
                       "[evil]:80", "127.0.0.1:8080:1"};
  for (size_t i = 0; i < sizeof ok / sizeof *ok; i++)
    cr_assert(vt_review_host_ok(ok[i], strlen(ok[i])), "%s refused", ok[i]);
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
    cr_assert_not(vt_review_host_ok(bad[i], strlen(bad[i])), "%s accepted", bad[i]);
}

Test(review, form_fields) {
  const char *body = "token=ab%43d&kind=keyword&value=mineral+umbrella%21&kind=theme&empty=";
  char out[64];
  cr_assert_eq(vt_review_form_get(body, strlen(body), "token", out, sizeof out), 0);
  cr_assert_str_eq(out, "abCd");
  cr_assert_eq(vt_review_form_get(body, strlen(body), "kind", out, sizeof out), 0);
  cr_assert_str_eq(out, "keyword", "the first occurrence counts");
  cr_assert_eq(vt_review_form_get(body, strlen(body), "value", out, sizeof out), 0);
  cr_assert_str_eq(out, "mineral umbrella!");
  cr_assert_eq(vt_review_form_get(body, strlen(body), "empty", out, sizeof out), 0);
  cr_assert_str_eq(out, "");
  cr_assert_eq(vt_review_form_get(body, strlen(body), "val", out, sizeof out), -1);
  cr_assert_eq(vt_review_form_get(body, strlen(body), "missing", out, sizeof out), -1);
  /* a newline decodes (the value check refuses it later), a NUL and bad escapes do not */
  const char *nl = "value=a%0Adeny+product+p1";
  cr_assert_eq(vt_review_form_get(nl, strlen(nl), "value", out, sizeof out), 0);
  cr_assert_str_eq(out, "a\ndeny product p1");
  const char *bad[] = {"value=a%00b", "value=a%zzb", "value=a%4", "value=%", "value=%G0"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
    cr_assert_eq(vt_review_form_get(bad[i], strlen(bad[i]), "value", out, sizeof out), -2, "%s",
                 bad[i]);
  const char *lng = "value=0123456789";
  cr_assert_eq(vt_review_form_get(lng, strlen(lng), "value", out, 10), -2, "longer than cap");
  cr_assert_eq(vt_review_form_get(lng, strlen(lng), "value", out, 11), 0);
}

Test(review, value_check) {
  vt_err err = {0};
  cr_assert_eq(vt_review_check("keyword", "mineral umbrella", &err), 0, "%s", err.msg);
  cr_assert_eq(vt_review_check("theme", "caf\xc3\xa9 finds", &err), 0, "%s", err.msg);
  cr_assert_eq(vt_review_check("product", "p00001", &err), 0, "%s", err.msg);
  struct {
    const char *kind, *value, *want;
  } bad[] = {
      {"keyword", "a\ndeny product p00001", "control character"},
      {"keyword", "a\rdeny product p00001", "control character"},
      {"theme", "a\tb", "control character"},
      {"keyword", "a # comment", "'#'"},
      {"keyword", "#x", "'#'"},
      {"keyword", "", "1 to 200 bytes"},
      {"keyword", "   ", "blank"},
      {"keyword", "a\xe2\x80\xa8" "b", "a blank other than a space"}, /* U+2028 */
      {"keyword", "a\xc2\x85" "b", "control character"},               /* U+0085 */
      {"keyword", "\xff", "not UTF-8"},
      {"product", "p0 deny", "a product id is one word"},
      {"term", "acme", "only a theme, keyword or product"},
      {"season", "eu", "only a theme, keyword or product"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    cr_assert_eq(vt_review_check(bad[i].kind, bad[i].value, &err), VT_EINVAL, "'%s' accepted",
                 bad[i].value);
    cr_assert(strstr(err.msg, bad[i].want), "'%s': '%s' lacks '%s'", bad[i].value, err.msg,
              bad[i].want);
  }
  char lng[VT_REVIEW_VALUE_MAX + 2];
  memset(lng, 'a', sizeof lng - 1);
  lng[sizeof lng - 1] = 0;
  cr_assert_eq(vt_review_check("keyword", lng, &err), VT_EINVAL);
  lng[VT_REVIEW_VALUE_MAX] = 0;
  cr_assert_eq(vt_review_check("keyword", lng, &err), 0, "%s", err.msg);
}

/* ---- the append ------------------------------------------------------------------------------- */
TestSuite(append, .init = setup, .fini = teardown);

Test(append, keeps_the_content_and_mode_and_reloads) {
  char dir[256], path[300], want[2048];
  /* CRLF, a comment, and a last line without its newline: all kept as they are */
  char old[512];
  snprintf(old, sizeof old, "# merchandising\r\ndeny product %s   # by hand", c0->ids[1]);
  tmpcat(dir, sizeof dir, old);
  snprintf(path, sizeof path, "%s/rules.txt", dir);
  cr_assert_eq(chmod(path, 0640), 0);
  const char *kw = b->keywords.text[0];
  vt_err err = {0};
  int line = 0;
  cr_assert_eq(vt_review_append(dir, "keyword", kw, "review page t from 127.0.0.1", b, c0, &line,
                                &err),
               0, "%s", err.msg);
  cr_assert_eq(line, 3);
  snprintf(want, sizeof want, "%s\ndeny keyword %s  # review page t from 127.0.0.1\n", old, kw);
  assert_rules(dir, want, 0640);
  cr_assert_eq(count_prefixed(dir, ".rules.txt"), 0, "a temporary file was left");
  /* what a reload reads: the keyword and the product denied */
  vt_catalog *c = NULL;
  cr_assert_eq(vt_catalog_load(&c, dir, b, &err), 0, "%s", err.msg);
  cr_assert(c->rules && c->rules->keyword_denied[0]);
  cr_assert_eq(c->rules->n_keywords_denied, 1);
  cr_assert_eq(c->rules->n_products_denied, 1);
  /* a product and a theme next: appended after it, line numbers counting on */
  cr_assert_eq(vt_review_append(dir, "product", c0->ids[2], NULL, b, c, &line, &err), 0, "%s",
               err.msg);
  cr_assert_eq(line, 4);
  cr_assert_eq(vt_review_append(dir, "theme", b->themes.text[1], NULL, b, c, &line, &err), 0,
               "%s", err.msg);
  cr_assert_eq(line, 5);
  size_t n = strlen(want);
  char *got = rules_of(dir);
  cr_assert_eq(strncmp(got, want, n), 0, "the earlier content changed");
  char tail[1024];
  snprintf(tail, sizeof tail, "deny product %s\ndeny theme %s\n", c0->ids[2], b->themes.text[1]);
  cr_assert_str_eq(got + n, tail);
  free(got);
  vt_catalog_free(c);
  rm_tree(dir);
}

Test(append, creates_a_missing_file) {
  char dir[256], path[300], want[512];
  tmpcat(dir, sizeof dir, NULL);
  snprintf(path, sizeof path, "%s/rules.txt", dir);
  vt_err err = {0};
  int line = 0;
  cr_assert_eq(vt_review_append(dir, "product", c0->ids[0], NULL, b, c0, &line, &err), 0, "%s",
               err.msg);
  cr_assert_eq(line, 1);
  snprintf(want, sizeof want, "deny product %s\n", c0->ids[0]);
  assert_rules(dir, want, 0644);
  rm_tree(dir);
}

Test(append, refuses_unknown_and_injected_values) {
  char dir[256], old[512], line[600];
  snprintf(old, sizeof old, "version v1\ndeny keyword %s\n", b->keywords.text[2]);
  tmpcat(dir, sizeof dir, old);
  refused(dir, "keyword", "zzzz qqqq", "unknown keyword");
  refused(dir, "theme", "zzzz", "unknown theme");
  refused(dir, "product", "no-such-product", "unknown product");
  /* a keyword's text is not a theme */
  refused(dir, "theme", b->keywords.text[0], "not a phrase of the bundle's themes.tsv");
  /* another rule line smuggled in by a newline, a CR or a comment */
  snprintf(line, sizeof line, "%s\ndeny product %s", b->keywords.text[0], c0->ids[0]);
  refused(dir, "keyword", line, "control character");
  snprintf(line, sizeof line, "%s\rdeny product %s", b->keywords.text[0], c0->ids[0]);
  refused(dir, "keyword", line, "control character");
  snprintf(line, sizeof line, "%s # allowed by", b->keywords.text[0]);
  refused(dir, "keyword", line, "'#'");
  refused(dir, "term", "acme", "only a theme, keyword or product");
  /* a product id with a region clause after it */
  snprintf(line, sizeof line, "%s region=eu", c0->ids[0]);
  refused(dir, "product", line, "one word");
  /* already denied */
  refused(dir, "keyword", b->keywords.text[2], "already denied");
  /* a comment that is not one line */
  char *before = rules_of(dir);
  vt_err err = {0};
  int n = 0;
  cr_assert_eq(vt_review_append(dir, "keyword", b->keywords.text[0], "x\ndeny theme y", b, c0,
                                &n, &err),
               VT_EINVAL);
  char *after = rules_of(dir);
  cr_assert_str_eq(after, before);
  free(before);
  free(after);
  rm_tree(dir);
}

Test(append, refuses_a_broken_file_and_a_symlink) {
  char dir[256], path[300], target[300];
  tmpcat(dir, sizeof dir, "# fine\ndeny keyword zzzz qqqq\n");
  refused(dir, "keyword", b->keywords.text[0], "rules.txt:2: unknown keyword");
  rm_tree(dir);
  /* rules.txt a symlink (a mounted ConfigMap's): not replaced by a file */
  tmpcat(dir, sizeof dir, NULL);
  snprintf(target, sizeof target, "%s/rules-source.txt", dir);
  FILE *f = fopen(target, "wb");
  cr_assert(f);
  fputs("# from a ConfigMap\n", f);
  fclose(f);
  snprintf(path, sizeof path, "%s/rules.txt", dir);
  cr_assert_eq(symlink(target, path), 0);
  refused(dir, "keyword", b->keywords.text[0], "is a symlink");
  struct stat st;
  cr_assert_eq(lstat(path, &st), 0);
  cr_assert(S_ISLNK(st.st_mode), "the symlink was replaced");
  rm_tree(dir);
}

/* ---- the audit log ---------------------------------------------------------------------------- */
Test(review, newest_records) {
  char dir[] = "/tmp/vt-review-log-XXXXXX", path[100], older[100];
  cr_assert(mkdtemp(dir));
  snprintf(path, sizeof path, "%s/audit.jsonl", dir);
  snprintf(older, sizeof older, "%s/audit.jsonl.1", dir);
  FILE *f = fopen(older, "wb");
  fputs("{\"n\":1}\n{\"n\":2}\n", f);
  fclose(f);
  f = fopen(path, "wb");
  /* a line that is not an object, a blank line, and a record still being written */
  fputs("{\"n\":3}\nnot json\n\n[1,2]\n{\"n\":4}\n{\"n\":5,\"partial", f);
  fclose(f);
  cJSON *recs = NULL;
  int skipped = 0;
  vt_err err = {0};
  cr_assert_eq(vt_review_recent(&recs, path, 2, &skipped, &err), 0, "%s", err.msg);
  cr_assert_eq(cJSON_GetArraySize(recs), 2);
  cr_assert_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(recs, 0), "n")->valueint, 4);
  cr_assert_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(recs, 1), "n")->valueint, 3);
  cr_assert_eq(skipped, 3, "the partial line, 'not json' and the array");
  cJSON_Delete(recs);
  /* more than the file has: the rotated file's newest next */
  cr_assert_eq(vt_review_recent(&recs, path, 10, &skipped, &err), 0, "%s", err.msg);
  cr_assert_eq(cJSON_GetArraySize(recs), 4);
  const int order[] = {4, 3, 2, 1};
  for (int i = 0; i < 4; i++)
    cr_assert_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(recs, i), "n")->valueint, order[i]);
  cJSON_Delete(recs);
  /* a file over VT_REVIEW_TAIL_BYTES: only its tail is read, the cut first line skipped */
  f = fopen(path, "wb");
  fputs("{\"n\":0,\"pad\":\"", f);
  for (long i = 0; i < VT_REVIEW_TAIL_BYTES; i++)
    fputc('x', f);
  fputs("\"}\n{\"n\":6}\n", f);
  fclose(f);
  cr_assert_eq(vt_review_recent(&recs, path, 1, &skipped, &err), 0, "%s", err.msg);
  cr_assert_eq(cJSON_GetArraySize(recs), 1);
  cr_assert_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(recs, 0), "n")->valueint, 6);
  cJSON_Delete(recs);
  cr_assert_eq(vt_review_recent(&recs, path, 10, &skipped, &err), 0, "%s", err.msg);
  cr_assert_eq(cJSON_GetArraySize(recs), 3, "6, then the rotated file's 2 and 1; 0 is cut");
  cJSON_Delete(recs);
  /* no file: an error naming it */
  unlink(path);
  cr_assert_eq(vt_review_recent(&recs, path, 10, &skipped, &err), VT_EIO);
  cr_assert(strstr(err.msg, path), "%s", err.msg);
  cr_assert_null(recs);
  rm_tree(dir);
}
