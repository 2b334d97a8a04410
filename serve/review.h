/* The review page of `vitrine serve --review-listen` (docs/SERVER.md "Review page"): a reviewer
 * browses the newest storefronts of the audit log (serve/audit.h), each shown as it was answered,
 * theme -> keyword -> product with their scores and the rules that acted on it, and denies a
 * theme, keyword or product with one button; the `deny` line is appended to the catalogue's
 * rules.txt (docs/RULES.md) and the catalogue and rules are reloaded as on SIGHUP.
 *
 * Plain HTML from the server's own small HTTP server (serve/httpd.h), on an address of its own so
 * that the read-only metrics port never gains a write action; no script, no external asset.
 * Everything taken from the audit log or a request is HTML-escaped; a POST is accepted only with
 * the per-process token that the page embeds in its forms (and, when the browser sends an Origin,
 * only from the page's own origin); a request whose Host is a name other than localhost is refused
 * (DNS rebinding). */
#ifndef VITRINE_SERVE_REVIEW_H
#define VITRINE_SERVE_REVIEW_H

#include <stddef.h>

#include "engine/bundle.h"
#include "engine/catalog.h"
#include "sched.h"
#include "engine/status.h"

struct cJSON;

#define VT_REVIEW_RECORDS 20             /* storefronts on the page: the newest records */
#define VT_REVIEW_TAIL_BYTES (4L << 20)  /* read from the end of each audit file, at most */
#define VT_REVIEW_VALUE_MAX 200          /* bytes of a denied phrase or product id */
#define VT_REVIEW_TOKEN_LEN 32           /* hex digits of the per-process token */
#define VT_REVIEW_RELOAD_FAILED 1        /* vt_review_apply_fn: the line is written, the reload
                                            failed (the old catalogue and rules keep serving) */

/* Applies a deny for the page: appends `deny kind value  # comment` to the catalogue's rules.txt
 * (vt_review_append) and reloads the catalogue and rules as SIGHUP does, under the server's reload
 * lock. 0: done, *line_no the new line, version the new rules version; VT_REVIEW_RELOAD_FAILED:
 * written but not reloaded, err says why; < 0: refused or failed, nothing written, err says why.
 * Called on the review page's thread. */
typedef int (*vt_review_apply_fn)(void *arg, const char *kind, const char *value,
                                  const char *comment, int *line_no, char *version, size_t cap,
                                  vt_err *err);

typedef struct vt_review_opts {
  const char *host; /* IPv4 address to listen on */
  int port;         /* 0: any free port */
  const char *audit_path, *catalog_dir;
  const vt_bundle *b;
  vt_sched *s; /* the current generation: its catalogue (titles) and rules (what is denied) */
  vt_review_apply_fn apply;
  void *arg;
} vt_review_opts;

typedef struct vt_review vt_review;

/* Draws the token and starts serving; *bound gets the port. VT_EINVAL for a bad address, VT_EIO
 * when it cannot listen. */
int vt_review_start(vt_review **out, const vt_review_opts *o, int *bound, vt_err *err);
void vt_review_stop(vt_review *r); /* NULL: nothing */

/* ---- the pieces, for the tests ---------------------------------------------------------------- */

/* s with & < > " ' as HTML character references (malloc'd; NULL when out of memory). */
char *vt_review_escape(const char *s);

/* 1 when got (n bytes) is the token want (compared in time independent of where they differ). */
int vt_review_token_ok(const char *want, const char *got, size_t n);

/* The value of field `name` of an application/x-www-form-urlencoded body (len bytes), decoded
 * ('+' and %XX) into out (cap bytes, NUL-terminated). 0; -1 absent; -2 malformed (a bad %XX, a
 * NUL, longer than cap - 1 bytes). The first occurrence counts. */
int vt_review_form_get(const char *body, size_t len, const char *name, char *out, size_t cap);

/* 1 when a request's Host header (n bytes) names an IPv4 address, a bracketed IPv6 address or
 * localhost, with an optional port: any other name is refused (403), since a DNS-rebinding site's
 * own name pointed at this address would make the page and its token readable to that site. */
int vt_review_host_ok(const char *host, size_t n);

/* Whether `deny kind value` can be written as one rules line: kind theme, keyword or product;
 * value 1..VT_REVIEW_VALUE_MAX bytes of UTF-8 whose only whitespace is the space (a product id:
 * none), no control character, no '#'. VT_EINVAL naming the problem. */
int vt_review_check(const char *kind, const char *value, vt_err *err);

/* Appends the line "deny KIND VALUE  # COMMENT" (comment: one line, may be NULL) to
 * dir/rules.txt, which is created when absent. The existing bytes are kept as they are (a newline
 * is added first when the last line has none). The whole new file is parsed first against b and c
 * (vt_rules_parse: the phrase must be one of the bundle's, the product one of the catalogue's),
 * and a kind and value the file already denies (a term's deny included) is refused; nothing is
 * written then. Atomic: a temporary file in dir (same mode), fsync, rename over rules.txt, fsync
 * of dir; refused when rules.txt is a symlink (a mounted ConfigMap: edit its source) or changed
 * while this ran. *line_no: the new line's number. */
int vt_review_append(const char *dir, const char *kind, const char *value, const char *comment,
                     const vt_bundle *b, const vt_catalog *c, int *line_no, vt_err *err);

/* The newest records (at most max, newest first) of the audit log at path, then of path.1 when
 * path has fewer (a rotation just happened): a cJSON array. At most VT_REVIEW_TAIL_BYTES are read
 * from the end of each file; a partial first line, a last line still being written and lines
 * that are not a JSON object are skipped (*skipped counts the last two kinds). VT_EIO when path
 * cannot be read (an absent path.1 is no error). */
int vt_review_recent(struct cJSON **out, const char *path, int max, int *skipped, vt_err *err);

#endif
