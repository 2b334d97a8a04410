/* The metrics port's HTTP server: GET (or HEAD) of one text resource, on one thread with poll(),
 * built to keep answering whatever other clients do:
 *
 *   - a connection has VT_HTTPD_REQUEST_MS to send its whole request head (at most
 *     VT_HTTPD_HEAD_MAX bytes) and VT_HTTPD_TOTAL_MS to take the answer; the clock starts when it
 *     is accepted, so a client trickling a byte at a time (a slowloris) is closed all the same;
 *   - at most VT_HTTPD_MAX_CONNS connections are open; a new one closes the oldest, so a full table
 *     of idle or slow clients never locks a scraper out;
 *   - one request per connection (the answer says Connection: close).
 *
 * Why not libmicrohttpd (used before): its connection timeout counts from the last byte received,
 * so a client sending one byte every 2 s kept its connection forever, and once its connection limit
 * was full every scrape was refused; it has no way to close the oldest connection.
 *
 * Answers: 200 with the text for /metrics and /; for probes that cannot speak gRPC over TLS
 * (Kubernetes' native gRPC probes cannot), /readyz (200 "ready" or 503 "not ready", from the
 * ready callback) and /livez (200 "alive" while this thread answers); 404 for other paths, 405
 * for other methods, 400 for a malformed request line, 431 for a head over the limit, 500 when
 * out of memory.
 *
 * The same server also carries a small application (vt_httpd_start_app: the review page of
 * serve/review.h): GET, HEAD and POST of any path go to its handler; a POST body must come with a
 * Content-Length of at most VT_HTTPD_BODY_MAX bytes (411 without one, 413 over it, 501 for a
 * Transfer-Encoding) and arrive within the same VT_HTTPD_REQUEST_MS. The handler runs on the
 * server's one thread: while it works no other connection of that server is served. */
#ifndef VITRINE_SERVE_HTTPD_H
#define VITRINE_SERVE_HTTPD_H

#include "engine/status.h"

#define VT_HTTPD_MAX_CONNS 64
#define VT_HTTPD_HEAD_MAX 8192
#define VT_HTTPD_REQUEST_MS 5000
#define VT_HTTPD_TOTAL_MS 10000
#define VT_HTTPD_BODY_MAX 16384 /* bytes of a request body (application servers only) */

typedef struct vt_httpd vt_httpd;

/* The resource: malloc'd NUL-terminated text (freed by the server), NULL when out of memory. */
typedef char *(*vt_httpd_render_fn)(void *arg);
/* Readiness for /readyz: 1 ready, 0 not. */
typedef int (*vt_httpd_ready_fn)(void *arg);

/* Listens on host:port (host an IPv4 address; port 0: any free port, *bound gets the port) and
 * starts the thread. VT_EINVAL for a bad address, VT_EIO when it cannot listen. */
int vt_httpd_start(vt_httpd **out, const char *host, int port, const char *content_type,
                   vt_httpd_render_fn fn, vt_httpd_ready_fn ready, void *arg, int *bound,
                   vt_err *err);
/* One request to an application handler; the pointers are into the connection's buffer and valid
 * during the call only. */
typedef struct vt_httpd_req {
  const char *method, *path, *query; /* query: after '?', "" when none (none NUL-terminated) */
  size_t method_len, path_len, query_len;
  const char *head; /* the whole request head, for vt_httpd_header */
  size_t head_len;
  const char *body; /* Content-Length bytes (0 for GET and HEAD) */
  size_t body_len;
  const char *peer; /* the client's IPv4 address, NUL-terminated */
} vt_httpd_req;

/* The handler's answer. body: malloc'd NUL-terminated text, freed by the server (NULL: 500 "out
 * of memory"); headers: extra header lines, each ending in \r\n, or NULL (static or kept by the
 * handler's arg: not freed). A HEAD request gets the head only. */
typedef struct vt_httpd_resp {
  int status;
  const char *reason, *type, *headers;
  char *body;
} vt_httpd_resp;

typedef void (*vt_httpd_handler_fn)(void *arg, const vt_httpd_req *req, vt_httpd_resp *resp);

/* An application server on host:port (as vt_httpd_start; what names it in messages). */
int vt_httpd_start_app(vt_httpd **out, const char *host, int port, const char *what,
                       vt_httpd_handler_fn fn, void *arg, int *bound, vt_err *err);

/* The value of header `name` (case-insensitive) in req's head, blanks around it trimmed, with its
 * length in *len; NULL when absent. */
const char *vt_httpd_header(const vt_httpd_req *req, const char *name, size_t *len);

/* Stops the thread, closes every connection and the socket, frees h. */
void vt_httpd_stop(vt_httpd *h);

#endif
