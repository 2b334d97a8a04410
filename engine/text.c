/* UTF-8, whitespace and escaping (see text.h). */
#include "text.h"

#include <stdio.h>
#include <string.h>

/* Length of the valid UTF-8 sequence at s (n > 0 bytes left) and its code point, or 0 when the
 * bytes there are not valid UTF-8 (RFC 3629, table 3-7 of the Unicode standard). */
static int seq(const unsigned char *s, size_t n, uint32_t *cp) {
  unsigned c = s[0];
  if (c < 0x80) {
    *cp = c;
    return 1;
  }
  int len;
  unsigned lo = 0x80, hi = 0xBF; /* the second byte's range */
  if (c >= 0xC2 && c <= 0xDF)
    len = 2;
  else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0)
      lo = 0xA0; /* no overlong forms */
    else if (c == 0xED)
      hi = 0x9F; /* no surrogates */
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0)
      lo = 0x90;
    else if (c == 0xF4)
      hi = 0x8F; /* nothing above U+10FFFF */
  } else {
    return 0;
  }
  if (n < (size_t)len || s[1] < lo || s[1] > hi)
    return 0;
  uint32_t v = c & (0xFFu >> (len + 1));
  for (int i = 1; i < len; i++) {
    if (i > 1 && (s[i] & 0xC0) != 0x80)
      return 0;
    v = v << 6 | (s[i] & 0x3F);
  }
  *cp = v;
  return len;
}

int vt_utf8_check(const char *s, size_t n, size_t *at) {
  const unsigned char *u = (const unsigned char *)s;
  size_t i = 0;
  while (i < n) {
    uint32_t cp;
    if (u[i] == 0 || (u[i] == 0xC0 && i + 1 < n && u[i + 1] == 0x80)) {
      *at = i;
      return VT_TEXT_NUL;
    }
    int len = seq(u + i, n - i, &cp);
    if (!len) {
      *at = i;
      return VT_TEXT_BAD_UTF8;
    }
    i += (size_t)len;
  }
  *at = n;
  return VT_TEXT_OK;
}

int vt_utf8_next(const char *s, size_t n, uint32_t *cp) {
  int len = seq((const unsigned char *)s, n, cp);
  if (!len) {
    *cp = 0xFFFD;
    len = 1;
  }
  return len;
}

int vt_is_space(uint32_t cp) {
  if (cp < 0x80)
    return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20);
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

int vt_words(const char *s, size_t n, int (*fn)(const char *w, size_t len, void *arg),
             void *arg) {
  size_t i = 0, start = 0;
  int in_word = 0;
  while (i < n) {
    uint32_t cp;
    int len = vt_utf8_next(s + i, n - i, &cp);
    if (vt_is_space(cp)) {
      if (in_word) {
        int rc = fn(s + start, i - start, arg);
        if (rc)
          return rc;
        in_word = 0;
      }
    } else if (!in_word) {
      start = i;
      in_word = 1;
    }
    i += (size_t)len;
  }
  return in_word ? fn(s + start, n - start, arg) : 0;
}

/* The escaped form of the character at u[i] (n bytes left) into piece; returns its length and
 * sets *used to the input bytes it stands for. */
static size_t escape_one(const unsigned char *u, size_t n, char piece[8], size_t *used) {
  uint32_t cp;
  int len = u[0] ? seq(u, n, &cp) : 0;
  *used = len > 0 ? (size_t)len : 1;
  if (len == 1 && u[0] >= 0x20 && u[0] != 0x7F && u[0] != '\\') {
    piece[0] = (char)u[0];
    return 1;
  }
  if (len == 1 && u[0] == '\\') {
    memcpy(piece, "\\\\", 2);
    return 2;
  }
  if (len > 1) {
    memcpy(piece, u, (size_t)len);
    return (size_t)len;
  }
  snprintf(piece, 8, "\\x%02x", u[0]); /* control character, DEL, NUL or not UTF-8 */
  return 4;
}

size_t vt_text_escape(char *out, size_t cap, const char *s, size_t n) {
  if (cap == 0)
    return 0;
  const unsigned char *u = (const unsigned char *)s;
  char piece[8];
  size_t total = 0, used;
  for (size_t i = 0; i < n && total < cap; i += used)
    total += escape_one(u + i, n - i, piece, &used);
  /* all of it when it fits, else as much as leaves room for "..." */
  size_t limit = total < cap ? cap - 1 : (cap > 4 ? cap - 4 : 0), o = 0;
  for (size_t i = 0; i < n; i += used) {
    size_t plen = escape_one(u + i, n - i, piece, &used);
    if (o + plen > limit)
      break;
    memcpy(out + o, piece, plen);
    o += plen;
  }
  if (total >= cap && cap > 4) {
    memcpy(out + o, "...", 3);
    o += 3;
  }
  out[o] = 0;
  return o;
}
