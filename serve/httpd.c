/* The metrics port's HTTP server (see httpd.h). One thread: poll() over the listening socket, a
 * wake-up pipe and the open connections; every socket is non-blocking, so no client can hold the
 * thread. */
#include "httpd.h"

#include <arpa/inet.h>
#include <ctype.h>
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
  size_t got;         /* request bytes read (head, then body) */
  size_t head_len;    /* application servers: the head's length once complete, else 0 */
  size_t need;        /* application servers: head and body, once the head is read */
  char *head;         /* (cap) bytes: the request head, then its body */
  char peer[INET_ADDRSTRLEN];
  char *out;          /* the answer (head and body), once the request is read */
  size_t out_len, sent;
} conn;

struct vt_httpd {
  int lfd, wake[2];
  const char *content_type;
  vt_httpd_render_fn fn;
  vt_httpd_ready_fn ready;
  vt_httpd_handler_fn app; /* an application server: every request goes to it */
  void *arg;
  size_t cap; /* a connection's buffer: VT_HTTPD_HEAD_MAX, + VT_HTTPD_BODY_MAX for app */
  char *bufs; /* (VT_HTTPD_MAX_CONNS, cap) */
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
  c->got = c->head_len = c->need = c->out_len = c->sent = 0;
}

/* The answer: status line, headers, body (NULL body: none). */
static void answer(vt_httpd *h, conn *c, int status, const char *reason, const char *type,
                   const char *extra, char *body, int head_only) {
  size_t blen = body ? strlen(body) : 0;
  char hdr[2048];
  int k = snprintf(hdr, sizeof hdr,
                   "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s"
                   "Connection: close\r\n\r\n",
                   status, reason, type, blen, extra ? extra : "");
  (void)h;
  size_t send_body = head_only ? 0 : blen;
  c->out = k > 0 && (size_t)k < sizeof hdr ? malloc((size_t)k + send_body + 1) : NULL;
  if (!c->out) { /* out of memory, or a handler's headers too long (a bug): no answer */
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

/* The request line "METHOD SP TARGET SP HTTP/1.x" at the start of head (n bytes): the target
 * with the method's and the target's lengths, or NULL when malformed. */
static const char *request_line(const char *head, size_t n, size_t *mlen, size_t *tlen) {
  const char *line_end = memchr(head, '\n', n);
  const char *sp1 = memchr(head, ' ', line_end ? (size_t)(line_end - head) : 0);
  const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(line_end - sp1 - 1)) : NULL;
  if (!line_end || !sp1 || !sp2 || strncmp(sp2 + 1, "HTTP/1.", 7) != 0)
    return NULL;
  *mlen = (size_t)(sp1 - head);
  *tlen = (size_t)(sp2 - sp1 - 1);
  return sp1 + 1;
}

/* A whole request head has arrived (or the limit was reached): decide the answer. */
static void handle(vt_httpd *h, conn *c, int too_big) {
  const char *plain = "text/plain; charset=utf-8";
  if (too_big) {
    answer(h, c, 431, "Request Header Fields Too Large", plain, NULL,
           dup_text("request head too large\n"), 0);
    return;
  }
  size_t mlen, tlen;
  const char *target = request_line(c->head, c->got, &mlen, &tlen);
  if (!target) {
    answer(h, c, 400, "Bad Request", plain, NULL, dup_text("bad request line\n"), 0);
    return;
  }
  int get = mlen == 3 && memcmp(c->head, "GET", 3) == 0;
  int head = mlen == 4 && memcmp(c->head, "HEAD", 4) == 0;
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

/* The length of the request head, its blank line included ("\r\n\r\n", or "\n\n" from lenient
 * clients), when it is in head[0..got); else 0. */
static size_t head_end(const conn *c) {
  for (size_t i = 0; i + 1 < c->got; i++) {
    if (c->head[i] != '\n')
      continue;
    if (c->head[i + 1] == '\n')
      return i + 2;
    if (c->head[i + 1] == '\r' && i + 2 < c->got && c->head[i + 2] == '\n')
      return i + 3;
  }
  return 0;
}

const char *vt_httpd_header(const vt_httpd_req *req, const char *name, size_t *len) {
  const size_t nl = strlen(name);
  const char *p = req->head, *end = req->head + req->head_len;
  const char *eol = memchr(p, '\n', (size_t)(end - p)); /* skip the request line */
  for (p = eol ? eol + 1 : end; p < end; p = eol + 1) {
    eol = memchr(p, '\n', (size_t)(end - p));
    if (!eol)
      break;
    if ((size_t)(eol - p) > nl && p[nl] == ':' && strncasecmp(p, name, nl) == 0) {
      const char *v = p + nl + 1, *ve = eol;
      while (v < ve && (*v == ' ' || *v == '\t'))
        v++;
      while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
        ve--;
      *len = (size_t)(ve - v);
      return v;
    }
  }
  *len = 0;
  return NULL;
}

/* An application server's request head is complete (head_len): how much body to wait for, or an
 * answer refusing it. 0: c->need is set; -1: answered. */
static int app_body(vt_httpd *h, conn *c) {
  const char *plain = "text/plain; charset=utf-8";
  const vt_httpd_req req = {.head = c->head, .head_len = c->head_len};
  size_t n;
  const char *v;
  c->need = c->head_len;
  if (strncmp(c->head, "POST ", 5) != 0)
    return 0; /* GET, HEAD: a body is not read (the connection closes after the answer) */
  if (vt_httpd_header(&req, "Transfer-Encoding", &n)) {
    answer(h, c, 501, "Not Implemented", plain, NULL,
           dup_text("a request body needs a Content-Length (no Transfer-Encoding)\n"), 0);
    return -1;
  }
  if (!(v = vt_httpd_header(&req, "Content-Length", &n))) {
    answer(h, c, 411, "Length Required", plain, NULL, dup_text("Content-Length is required\n"),
           0);
    return -1;
  }
  size_t len = 0;
  int digits = n > 0;
  for (size_t i = 0; i < n; i++)
    if (!isdigit((unsigned char)v[i]))
      digits = 0;
    else if (len <= VT_HTTPD_BODY_MAX) /* stops growing past the limit: no overflow */
      len = len * 10 + (size_t)(v[i] - '0');
  if (!digits) {
    answer(h, c, 400, "Bad Request", plain, NULL, dup_text("bad Content-Length\n"), 0);
    return -1;
  }
  if (len > VT_HTTPD_BODY_MAX) {
    char msg[64];
    snprintf(msg, sizeof msg, "request body over %d bytes\n", VT_HTTPD_BODY_MAX);
    answer(h, c, 413, "Content Too Large", plain, NULL, dup_text(msg), 0);
    return -1;
  }
  c->need = c->head_len + len;
  return 0;
}

/* An application server's whole request (head and body) is in: the handler answers. */
static void app_handle(vt_httpd *h, conn *c) {
  const char *plain = "text/plain; charset=utf-8";
  vt_httpd_req req = {.method = c->head,
                      .head = c->head,
                      .head_len = c->head_len,
                      .body = c->head + c->head_len,
                      .body_len = c->need - c->head_len,
                      .peer = c->peer};
  size_t tlen;
  if (!(req.path = request_line(c->head, c->head_len, &req.method_len, &tlen))) {
    answer(h, c, 400, "Bad Request", plain, NULL, dup_text("bad request line\n"), 0);
    return;
  }
  const char *q = memchr(req.path, '?', tlen);
  req.path_len = q ? (size_t)(q - req.path) : tlen;
  req.query = q ? q + 1 : "";
  req.query_len = q ? tlen - req.path_len - 1 : 0;
  const int get = req.method_len == 3 && memcmp(req.method, "GET", 3) == 0;
  const int head = req.method_len == 4 && memcmp(req.method, "HEAD", 4) == 0;
  const int post = req.method_len == 4 && memcmp(req.method, "POST", 4) == 0;
  if (!get && !head && !post) {
    answer(h, c, 405, "Method Not Allowed", plain, "Allow: GET, HEAD, POST\r\n",
           dup_text("only GET, HEAD and POST\n"), 0);
    return;
  }
  vt_httpd_resp resp = {.status = 500, .reason = "Internal Server Error", .type = plain};
  h->app(h->arg, &req, &resp);
  if (!resp.body)
    answer(h, c, 500, "Internal Server Error", plain, NULL, dup_text("out of memory\n"), head);
  else
    answer(h, c, resp.status, resp.reason, resp.type, resp.headers, resp.body, head);
}

static void on_readable(vt_httpd *h, conn *c) {
  for (;;) {
    /* until the head is complete, read no more than a head may take */
    size_t room = (c->need ? c->need : VT_HTTPD_HEAD_MAX) - c->got;
    ssize_t k = room ? recv(c->fd, c->head + c->got, room, 0) : 0;
    if (k > 0) {
      c->got += (size_t)k;
      if (!c->need) {
        size_t end = head_end(c);
        if (!end) {
          if (c->got == VT_HTTPD_HEAD_MAX) {
            handle(h, c, 1);
            return;
          }
          continue;
        }
        if (!h->app) {
          handle(h, c, 0);
          return;
        }
        c->head_len = end;
        if (app_body(h, c))
          return; /* refused */
      }
      if (c->got >= c->need) {
        app_handle(h, c);
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
    struct sockaddr_in peer;
    socklen_t plen = sizeof peer;
    int fd = accept4(h->lfd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
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
    if (!inet_ntop(AF_INET, &peer.sin_addr, slot->peer, sizeof slot->peer))
      snprintf(slot->peer, sizeof slot->peer, "?");
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

static int start(vt_httpd **out, const char *host, int port, const char *what, vt_httpd *h,
                 int *bound, vt_err *err) {
  *out = NULL;
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  if (port < 0 || port > 65535 || inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
    free(h);
    return vt_fail(err, VT_EINVAL, "%s address '%s:%d' is not an IPv4 address and port", what,
                   host, port);
  }
  h->cap = VT_HTTPD_HEAD_MAX + (h->app ? VT_HTTPD_BODY_MAX : 0);
  h->bufs = malloc(VT_HTTPD_MAX_CONNS * h->cap);
  if (!h->bufs) {
    free(h);
    return vt_fail(err, VT_ENOMEM, "out of memory");
  }
  h->wake[0] = h->wake[1] = -1;
  for (int i = 0; i < VT_HTTPD_MAX_CONNS; i++) {
    h->conns[i].fd = -1;
    h->conns[i].head = h->bufs + (size_t)i * h->cap;
  }
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
    free(h->bufs);
    free(h);
    return vt_fail(err, VT_EIO, "cannot serve %s on %s:%d: %s", what, host, port,
                   strerror(e));
  }
  if (pthread_create(&h->thread, NULL, httpd_main, h)) {
    close(h->lfd);
    close(h->wake[0]);
    close(h->wake[1]);
    free(h->bufs);
    free(h);
    return vt_fail(err, VT_EIO, "cannot start a thread for %s", what);
  }
  pthread_setname_np(h->thread, "vt-http");
  *bound = ntohs(sa.sin_port);
  *out = h;
  return VT_OK;
}

int vt_httpd_start(vt_httpd **out, const char *host, int port, const char *content_type,
                   vt_httpd_render_fn fn, vt_httpd_ready_fn ready, void *arg, int *bound,
                   vt_err *err) {
  vt_httpd *h = calloc(1, sizeof *h);
  if (!h) {
    *out = NULL;
    return vt_fail(err, VT_ENOMEM, "out of memory");
  }
  h->content_type = content_type;
  h->fn = fn;
  h->ready = ready;
  h->arg = arg;
  return start(out, host, port, "metrics", h, bound, err);
}

int vt_httpd_start_app(vt_httpd **out, const char *host, int port, const char *what,
                       vt_httpd_handler_fn fn, void *arg, int *bound, vt_err *err) {
  vt_httpd *h = calloc(1, sizeof *h);
  if (!h) {
    *out = NULL;
    return vt_fail(err, VT_ENOMEM, "out of memory");
  }
  h->app = fn;
  h->arg = arg;
  return start(out, host, port, what, h, bound, err);
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
  free(h->bufs);
  free(h);
}
