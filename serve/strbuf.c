/* The growable text buffer (see strbuf.h). */
#include "strbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Room for `more` bytes and a NUL after the text; 0 when the buffer is (or just became) oom. */
static int reserve(vt_strbuf *b, size_t more) {
  if (b->oom)
    return 0;
  if (more >= (size_t)-1 / 2 - b->n) { /* no capacity could hold it */
    b->oom = 1;
    return 0;
  }
  if (b->n + more + 1 <= b->cap)
    return 1;
  size_t cap = b->cap ? b->cap : 256;
  while (b->n + more + 1 > cap)
    cap *= 2;
  char *np = realloc(b->p, cap);
  if (!np) {
    b->oom = 1;
    return 0;
  }
  b->p = np;
  b->cap = cap;
  return 1;
}

void vt_strbuf_put(vt_strbuf *b, const char *s, size_t n) {
  if (!reserve(b, n))
    return;
  if (n)
    memcpy(b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = 0;
}

void vt_strbuf_printf(vt_strbuf *b, const char *fmt, ...) {
  if (b->oom)
    return;
  va_list ap;
  va_start(ap, fmt); /* into the room left: one pass when it fits */
  int k = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
  va_end(ap);
  if (k < 0) {
    b->oom = 1;
    return;
  }
  if (b->p && (size_t)k < b->cap - b->n) {
    b->n += (size_t)k;
    return;
  }
  if (b->p)
    b->p[b->n] = 0; /* the cut text is not the buffer's */
  if (!reserve(b, (size_t)k))
    return;
  va_start(ap, fmt);
  vsnprintf(b->p + b->n, b->cap - b->n, fmt, ap);
  va_end(ap);
  b->n += (size_t)k;
}
