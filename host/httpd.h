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
 * out of memory. */
#ifndef VITRINE_HOST_HTTPD_H
#define VITRINE_HOST_HTTPD_H

#include "status.h"

#define VT_HTTPD_MAX_CONNS 64
#define VT_HTTPD_HEAD_MAX 8192
#define VT_HTTPD_REQUEST_MS 5000
#define VT_HTTPD_TOTAL_MS 10000

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
/* Stops the thread, closes every connection and the socket, frees h. */
void vt_httpd_stop(vt_httpd *h);

#endif
