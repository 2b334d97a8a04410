/* Text from outside: UTF-8 validation, the whitespace words are split on, and escaping for status
 * messages and log lines.
 *
 * Every string a client sends (ids, regions, queries) must be UTF-8 without NUL characters, as
 * proto3 `string` and JSON text require; the first problem is reported with its byte offset.
 *
 * Whitespace is what the reference (train/vocab.py) splits on: the characters for which Python's
 * str.isspace() is true, so str.split() and the C tokeniser give the same words (docs/SERVER.md
 * lists them). */
#ifndef VITRINE_ENGINE_TEXT_H
#define VITRINE_ENGINE_TEXT_H

#include <stddef.h>
#include <stdint.h>

enum { VT_TEXT_OK = 0, VT_TEXT_NUL = 1, VT_TEXT_BAD_UTF8 = 2 };

/* The first problem of s[0..n): VT_TEXT_NUL (a NUL byte, or C0 80, the overlong form the JSON
 * reader turns an escaped \u0000 into) or VT_TEXT_BAD_UTF8 (not RFC 3629 UTF-8: a stray or
 * missing continuation byte, an overlong form, a surrogate, above U+10FFFF), with *at its byte
 * offset; VT_TEXT_OK when there is none. */
int vt_utf8_check(const char *s, size_t n, size_t *at);

/* The code point at s (n > 0 bytes left) into *cp; returns its length in bytes. A byte that does
 * not start valid UTF-8 is one code point U+FFFD of length 1. */
int vt_utf8_next(const char *s, size_t n, uint32_t *cp);

/* 1 when cp is whitespace (Python's str.isspace()): U+0009..U+000D, U+001C..U+0020, U+0085,
 * U+00A0, U+1680, U+2000..U+200A, U+2028, U+2029, U+202F, U+205F, U+3000. */
int vt_is_space(uint32_t cp);

/* Splits s (n bytes) into words at whitespace and calls fn(word, len, arg) for each, in order,
 * until fn returns non-zero (which is returned) or the words run out (0). */
int vt_words(const char *s, size_t n, int (*fn)(const char *w, size_t len, void *arg), void *arg);

/* s (n bytes) for a status message or a text log line: valid UTF-8 as it is except backslash
 * (\\), control characters and DEL (\xNN); every byte outside valid UTF-8 as \xNN. Writes at most
 * cap - 1 bytes and a NUL, never cutting an escape or a character (a cut is marked "..."); returns
 * the bytes written. */
size_t vt_text_escape(char *out, size_t cap, const char *s, size_t n);

#endif
