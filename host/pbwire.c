/* Protobuf wire-format walking (see pbwire.h). */
#include "pbwire.h"

static int varint(const uint8_t *p, size_t n, size_t *i, uint64_t *out) {
  uint64_t v = 0;
  for (int sh = 0;; sh += 7) {
    if (*i >= n || sh > 63)
      return -1;
    v |= (uint64_t)(p[*i] & 0x7f) << sh;
    if (!(p[(*i)++] & 0x80))
      break;
  }
  *out = v;
  return 0;
}

int vt_pb_next_field(const uint8_t *p, size_t n, size_t *i, uint64_t *field,
                     const uint8_t **data, size_t *len) {
  uint64_t key, v;
  *data = NULL;
  *len = 0;
  if (*i >= n)
    return 0;
  if (varint(p, n, i, &key) || (key >> 3) == 0)
    return -1;
  *field = key >> 3;
  switch (key & 7) {
  case 0:
    return varint(p, n, i, &v) ? -1 : 1;
  case 1:
    if (n - *i < 8)
      return -1;
    *i += 8;
    return 1;
  case 5:
    if (n - *i < 4)
      return -1;
    *i += 4;
    return 1;
  case 2:
    if (varint(p, n, i, &v) || v > n - *i)
      return -1;
    *data = p + *i;
    *len = (size_t)v;
    *i += (size_t)v;
    return 1;
  default:
    return -1;
  }
}
