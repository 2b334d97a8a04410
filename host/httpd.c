/* The metrics port's HTTP server (see httpd.h). One thread: poll() over the listening socket, a
 * wake-up pipe and the open connections; every socket is non-blocking, so no client can hold the
 * thread. */
#include "httpd.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct conn {
  int fd;             /* -1: free */
  int64_t opened_ms;  /* when it was accepted */
  size_t got;         /* request head bytes read */
  char head[VT_HTTPD_HEAD_MAX];
  char *out;          /* the answer (head and body), once the request is read */
  size_t out_len, sent;
} conn;

struct vt_httpd {
  int lfd, wake[2];
  const char *content_type;
  vt_httpd_render_fn fn;
  vt_httpd_ready_fn ready;
  void *arg;
  pthread_t thread;
  conn conns[VT_HTTPD_MAX_CONNS];
};

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void conn_close(conn *c) {
  if (c->fd >= 0)
    close(c->fd);
  free(c->out);
  c->fd = -1;
  c->out = NULL;
  c->got = c->out_len = c->sent = 0;
}

/* The answer: status line, headers, body (NULL body: none). */
static void answer(vt_httpd *h, conn *c, int status, const char *reason, const char *type,
                   const char *extra, char *body, int head_only) {
  size_t blen = body ? strlen(body) : 0;
  char hdr[512];
  int k = snprintf(hdr, sizeof hdr,
                   "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s"
                   "Connection: close\r\n\r\n",
                   status, reason, type, blen, extra ? extra : "");
  (void)h;
  size_t send_body = head_only ? 0 : blen;
  c->out = malloc((size_t)k + send_body + 1);
  if (!c->out) {
    free(body);
    conn_close(c);
    return;
  }
  memcpy(c->out, hdr, (size_t)k);
  if (send_body)
    memcpy(c->out + k, body, send_body);
  c->out_len = (size_t)k + send_body;
  c->sent = 0;
  free(body);
}

static char *dup_text(const char *s) {
  size_t n = strlen(s) + 1;
  char *p = malloc(n);
  if (p)
    memcpy(p, s, n);
  return p;
}

/* A whole request head has arrived (or the limit was reached): decide the answer. */
static void handle(vt_httpd *h, conn *c, int too_big) {
  const char *plain = "text/plain; charset=utf-8";
  if (too_big) {
    answer(h, c, 431, "Request Header Fields Too Large", plain, NULL,
           dup_text("request head too large\n"), 0);
    return;
  }
  /* request line: METHOD SP TARGET SP HTTP/x.y */
  char *line_end = memchr(c->head, '\n', c->got);
  char *sp1 = memchr(c->head, ' ', line_end ? (size_t)(line_end - c->head) : 0);
  char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(line_end - sp1 - 1)) : NULL;
  if (!line_end || !sp1 || !sp2 || strncmp(sp2 + 1, "HTTP/1.", 7) != 0) {
    answer(h, c, 400, "Bad Request", plain, NULL, dup_text("bad request line\n"), 0);
    return;
  }
  size_t mlen = (size_t)(sp1 - c->head), tlen = (size_t)(sp2 - sp1 - 1);
  int get = mlen == 3 && memcmp(c->head, "GET", 3) == 0;
  int head = mlen == 4 && memcmp(c->head, "HEAD", 4) == 0;
  const char *target = sp1 + 1;
  const char *q = memchr(target, '?', tlen);
  size_t plen = q ? (size_t)(q - target) : tlen;
  if (!get && !head) {
    answer(h, c, 405, "Method Not Allowed", plain, "Allow: GET, HEAD\r\n", dup_text("only GET\n"),
           0);
  } else if (plen == 7 && memcmp(target, "/readyz", 7) == 0) {
    if (h->ready(h->arg))
      answer(h, c, 200, "OK", plain, NULL, dup_text("ready\n"), head);
    else
      answer(h, c, 503, "Service Unavailable", plain, NULL, dup_text("not ready\n"), head);
  } else if (plen == 6 && memcmp(target, "/livez", 6) == 0) {
    answer(h, c, 200, "OK", plain, NULL, dup_text("alive\n"), head);
  } else if (!(plen == 8 && memcmp(target, "/metrics", 8) == 0) &&
             !(plen == 1 && target[0] == '/')) {
    answer(h, c, 404, "Not Found", plain, NULL,
           dup_text("not found: the metrics are at /metrics\n"), head);
  } else {
    char *text = h->fn(h->arg);
    if (text)
      answer(h, c, 200, "OK", h->content_type, NULL, text, head);
    else
      answer(h, c, 500, "Internal Server Error", plain, NULL, dup_text("out of memory\n"), head);
  }
}

/* The end of the request head ("\r\n\r\n", or "\n\n" from lenient clients) is in head[0..got). */
static int head_complete(const conn *c) {
  for (size_t i = 0; i + 1 < c->got; i++)
    if (c->head[i] == '\n' &&
        (c->head[i + 1] == '\n' ||
         (c->head[i + 1] == '\r' && i + 2 < c->got && c->head[i + 2] == '\n')))
      return 1;
  return 0;
}

static void on_readable(vt_httpd *h, conn *c) {
  for (;;) {
    ssize_t k = recv(c->fd, c->head + c->got, sizeof c->head - c->got, 0);
    if (k > 0) {
      c->got += (size_t)k;
      if (head_complete(c)) {
        handle(h, c, 0);
        return;
      }
      if (c->got == sizeof c->head) {
        handle(h, c, 1);
        return;
      }
      continue;
    }
    if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
      return;
    conn_close(c); /* closed by the client, or an error */
    return;
  }
}

static void on_writable(conn *c) {
  while (c->sent < c->out_len) {
    ssize_t k = send(c->fd, c->out + c->sent, c->out_len - c->sent, MSG_NOSIGNAL);
    if (k > 0) {
      c->sent += (size_t)k;
      continue;
    }
    if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
      return;
    conn_close(c);
    return;
  }
  conn_close(c); /* answered */
}

/* Accepts every pending connection; a full table closes its oldest connection first. */
static void on_accept(vt_httpd *h, int64_t now) {
  for (;;) {
    int fd = accept4(h->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
      return;
    conn *slot = NULL, *oldest = NULL;
    for (int i = 0; i < VT_HTTPD_MAX_CONNS; i++) {
      conn *c = &h->conns[i];
      if (c->fd < 0) {
        slot = c;
        break;
      }
      if (!oldest || c->opened_ms < oldest->opened_ms)
        oldest = c;
    }
    if (!slot) {
      conn_close(oldest);
      slot = oldest;
    }
    slot->fd = fd;
    slot->opened_ms = now;
  }
}

static void *httpd_main(void *arg) {
  vt_httpd *h = arg;
  struct pollfd pfd[VT_HTTPD_MAX_CONNS + 2];
  int idx[VT_HTTPD_MAX_CONNS + 2];
  for (;;) {
    int64_t now = now_ms(), next = now + 60000;
    int n = 0;
    pfd[n++] = (struct pollfd){.fd = h->wake[0], .events = POLLIN};
    pfd[n++] = (struct pollfd){.fd = h->lfd, .events = POLLIN};
    for (int i = 0; i < VT_HTTPD_MAX_CONNS; i++) {
      conn *c = &h->conns[i];
      if (c->fd < 0)
        continue;
      /* the deadlines count from the accept, not from the last byte */
      int64_t due = c->opened_ms + (c->out ? VT_HTTPD_TOTAL_MS : VT_HTTPD_REQUEST_MS);
      if (now >= due) {
        conn_close(c);
        continue;
      }
      if (due < next)
        next = due;
      idx[n] = i;
      pfd[n++] = (struct pollfd){.fd = c->fd, .events = c->out ? POLLOUT : POLLIN};
    }
    int rc = poll(pfd, (nfds_t)n, (int)(next - now));
    if (rc < 0 && errno != EINTR)
      break;
    if (rc <= 0)
      continue;
    if (pfd[0].revents)
      break; /* told to stop */
    now = now_ms();
    for (int k = 2; k < n; k++) {
      conn *c = &h->conns[idx[k]];
      if (c->fd != pfd[k].fd || !pfd[k].revents)
        continue;
      if (!c->out)
        on_readable(h, c);
      if (c->fd >= 0 && c->out)
        on_writable(c);
    }
    if (pfd[1].revents)
      on_accept(h, now);
  }
  return NULL;
}

int vt_httpd_start(vt_httpd **out, const char *host, int port, const char *content_type,
                   vt_httpd_render_fn fn, vt_httpd_ready_fn ready, void *arg, int *bound,
                   vt_err *err) {
  *out = NULL;
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  if (port < 0 || port > 65535 || inet_pton(AF_INET, host, &sa.sin_addr) != 1)
    return vt_fail(err, VT_EINVAL, "metrics address '%s:%d' is not an IPv4 address and port",
                   host, port);
  vt_httpd *h = calloc(1, sizeof *h);
  if (!h)
    return vt_fail(err, VT_ENOMEM, "out of memory");
  h->wake[0] = h->wake[1] = -1;
  for (int i = 0; i < VT_HTTPD_MAX_CONNS; i++)
    h->conns[i].fd = -1;
  h->content_type = content_type;
  h->fn = fn;
  h->ready = ready;
  h->arg = arg;
  int one = 1;
  socklen_t sl = sizeof sa;
  h->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (h->lfd < 0 || setsockopt(h->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
      bind(h->lfd, (struct sockaddr *)&sa, sizeof sa) || listen(h->lfd, 128) ||
      getsockname(h->lfd, (struct sockaddr *)&sa, &sl) ||
      pipe2(h->wake, O_CLOEXEC | O_NONBLOCK)) {
    int e = errno;
    if (h->lfd >= 0)
      close(h->lfd);
    free(h);
    return vt_fail(err, VT_EIO, "cannot serve metrics on %s:%d: %s", host, port, strerror(e));
  }
  if (pthread_create(&h->thread, NULL, httpd_main, h)) {
    close(h->lfd);
    close(h->wake[0]);
    close(h->wake[1]);
    free(h);
    return vt_fail(err, VT_EIO, "cannot start the metrics thread");
  }
  *bound = ntohs(sa.sin_port);
  *out = h;
  return VT_OK;
}

void vt_httpd_stop(vt_httpd *h) {
  if (!h)
    return;
  char b = 1;
  if (write(h->wake[1], &b, 1) < 0) {
  } /* the pipe is empty: this cannot fail but by a bug */
  pthread_join(h->thread, NULL);
  for (int i = 0; i < VT_HTTPD_MAX_CONNS; i++)
    conn_close(&h->conns[i]);
  close(h->lfd);
  close(h->wake[0]);
  close(h->wake[1]);
  free(h);
}
