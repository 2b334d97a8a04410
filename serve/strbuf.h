/* A growable, NUL-terminated text buffer: the metrics page and the JSON a wire request becomes are
 * built in one. An allocation failure sets oom and turns every later append into a no-op, so the
 * builder checks once, at the end, and frees p either way. */
#ifndef VITRINE_SERVE_STRBUF_H
#define VITRINE_SERVE_STRBUF_H

#include <stddef.h>

typedef struct vt_strbuf {
  char *p;       /* the text, NUL-terminated once anything was appended (NULL before) */
  size_t n, cap; /* bytes of text (without the NUL) and bytes allocated */
  int oom;       /* an allocation failed: the text is incomplete */
} vt_strbuf;

/* Appends s[0..n) (any bytes). */
void vt_strbuf_put(vt_strbuf *b, const char *s, size_t n);

/* Appends the formatted text, however long. */
__attribute__((format(printf, 2, 3))) void vt_strbuf_printf(vt_strbuf *b, const char *fmt, ...);

#endif
