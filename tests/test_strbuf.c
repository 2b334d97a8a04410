/* The growable text buffer behind the metrics page and the wire's JSON (serve/strbuf.c): text of
 * any length and any bytes appended exactly, NUL-terminated after every append, formatted text
 * longer than any first guess, and an allocation that cannot be made turning the buffer oom with
 * every later append a no-op. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "serve/strbuf.h"

Test(strbuf, empty_appends_leave_an_empty_string) {
  vt_strbuf b = {0};
  vt_strbuf_put(&b, NULL, 0); /* an empty field: no bytes, no pointer */
  cr_assert_not_null(b.p);
  cr_assert_eq(b.n, 0);
  cr_assert_str_eq(b.p, "");
  vt_strbuf_printf(&b, "%s", "");
  cr_assert_eq(b.n, 0);
  cr_assert_eq(b.oom, 0);
  free(b.p);
}

Test(strbuf, bytes_kept_exactly_across_growth) {
  vt_strbuf b = {0};
  char want[5000];
  for (size_t i = 0; i < sizeof want; i++)
    want[i] = (char)(i * 7 % 256); /* NULs and high bytes included */
  size_t at = 0;
  for (size_t step = 1; at < sizeof want; step = step * 3 + 1) {
    size_t k = step < sizeof want - at ? step : sizeof want - at;
    vt_strbuf_put(&b, want + at, k);
    at += k;
    cr_assert_eq(b.n, at);
    cr_assert_eq(b.p[b.n], 0, "NUL-terminated after %zu bytes", at);
    cr_assert_gt(b.cap, b.n);
  }
  cr_assert_eq(memcmp(b.p, want, sizeof want), 0);
  free(b.p);
}

Test(strbuf, formatted_text_longer_than_the_buffer) {
  vt_strbuf b = {0};
  vt_strbuf_put(&b, "x", 1);
  char big[3000];
  memset(big, 'a', sizeof big - 1);
  big[sizeof big - 1] = 0;
  vt_strbuf_printf(&b, "[%s]%d", big, -42);
  cr_assert_eq(b.n, 1 + 1 + strlen(big) + 1 + 3);
  cr_assert_eq(strncmp(b.p, "x[aaa", 5), 0);
  cr_assert_str_eq(b.p + b.n - 4, "]-42");
  vt_strbuf_printf(&b, "\\u%04x", 0x1f); /* the wire's control-character escape */
  cr_assert_str_eq(b.p + b.n - 6, "\\u001f");
  size_t cap = b.cap;
  while (b.cap - b.n > 8) /* fill to the edge: a text that fits exactly, then one that does not */
    vt_strbuf_printf(&b, "%c", 'b');
  vt_strbuf_printf(&b, "%s", "1234567");
  cr_assert_eq(b.cap, cap, "7 bytes and the NUL fitted in the 8 left");
  vt_strbuf_printf(&b, "%s", "x");
  cr_assert_gt(b.cap, cap);
  cr_assert_str_eq(b.p + b.n - 9, "b1234567x");
  cr_assert_eq(strlen(b.p), b.n);
  free(b.p);
}

Test(strbuf, an_impossible_size_turns_it_oom_and_later_appends_do_nothing) {
  vt_strbuf b = {0};
  vt_strbuf_put(&b, "kept", 4);
  vt_strbuf_put(&b, "never read", SIZE_MAX - 2); /* no allocation can hold it: refused unread */
  cr_assert_eq(b.oom, 1);
  vt_strbuf_put(&b, "more", 4);
  vt_strbuf_printf(&b, "%d", 1);
  cr_assert_eq(b.n, 4);
  cr_assert_str_eq(b.p, "kept");
  free(b.p);
}
