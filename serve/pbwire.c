/* Protobuf wire-format walking (see pbwire.h). */
#include "pbwire.h"

#define FAIL(msg)                                                                                 \
  do {                                                                                            \
    if (why)                                                                                      \
      *why = msg;                                                                                 \
    return -1;                                                                                    \
  } while (0)

/* A varint of at most 10 bytes whose value fits 64 bits. */
static int varint(const uint8_t *p, size_t n, size_t *i, uint64_t *out, const char **why) {
  uint64_t v = 0;
  for (int k = 0;; k++) {
    if (*i >= n)
      FAIL("truncated varint");
    uint8_t b = p[*i];
    if (k == 9 && b > 1)
      FAIL("varint longer than 64 bits");
    v |= (uint64_t)(b & 0x7f) << (7 * k);
    (*i)++;
    if (!(b & 0x80))
      break;
  }
  *out = v;
  return 0;
}

/* A key: field number and wire type, both checked. */
static int read_key(const uint8_t *p, size_t n, size_t *i, uint32_t *number, int *wt,
                    const char **why) {
  uint64_t key;
  if (varint(p, n, i, &key, why))
    return -1;
  if ((key >> 3) == 0)
    FAIL("field number 0");
  if ((key >> 3) > VT_PB_MAX_FIELD)
    FAIL("field number above 2^29 - 1");
  *number = (uint32_t)(key >> 3);
  *wt = (int)(key & 7);
  return 0;
}

/* The value of a field whose key has been read (not a group's start or end). */
static int read_value(const uint8_t *p, size_t n, size_t *i, int wt, vt_pb_field *f,
                      const char **why) {
  switch (wt) {
  case VT_PB_VARINT:
    return varint(p, n, i, &f->value, why);
  case VT_PB_I64:
  case VT_PB_I32: {
    size_t w = wt == VT_PB_I64 ? 8 : 4;
    if (n - *i < w)
      FAIL(wt == VT_PB_I64 ? "truncated 64-bit value" : "truncated 32-bit value");
    uint64_t v = 0;
    for (size_t k = 0; k < w; k++)
      v |= (uint64_t)p[*i + k] << (8 * k);
    f->value = v;
    *i += w;
    return 0;
  }
  case VT_PB_LEN: {
    uint64_t len;
    if (varint(p, n, i, &len, why))
      return -1;
    if (len > n - *i)
      FAIL("length past the end of the message");
    f->data = p + *i;
    f->len = (size_t)len;
    *i += (size_t)len;
    return 0;
  }
  default:
    FAIL("unknown wire type");
  }
}

/* Skips a group whose start (field `number`) has been read, nested groups included. */
static int skip_group(const uint8_t *p, size_t n, size_t *i, uint32_t number, const char **why) {
  uint32_t open[VT_PB_MAX_DEPTH];
  int depth = 0;
  open[depth++] = number;
  while (depth > 0) {
    uint32_t num;
    int wt;
    vt_pb_field f;
    if (*i >= n)
      FAIL("unclosed group");
    if (read_key(p, n, i, &num, &wt, why))
      return -1;
    if (wt == VT_PB_GROUP) {
      if (depth == VT_PB_MAX_DEPTH)
        FAIL("groups nested too deep");
      open[depth++] = num;
    } else if (wt == 4) {
      if (open[depth - 1] != num)
        FAIL("a group ended by another field's end-group");
      depth--;
    } else if (read_value(p, n, i, wt, &f, why)) {
      return -1;
    }
  }
  return 0;
}

int vt_pb_read(const uint8_t *p, size_t n, size_t *i, vt_pb_field *f, const char **why) {
  f->data = NULL;
  f->len = 0;
  f->value = 0;
  if (*i >= n)
    return 0;
  size_t start = *i;
  int rc;
  if (read_key(p, n, i, &f->number, &f->wire_type, why))
    rc = -1;
  else if (f->wire_type == VT_PB_GROUP)
    rc = skip_group(p, n, i, f->number, why);
  else if (f->wire_type == 4) {
    if (why)
      *why = "an end-group without its start";
    rc = -1;
  } else
    rc = read_value(p, n, i, f->wire_type, f, why);
  if (rc) {
    if (*i > n || *i == start)
      *i = start;
    return -1;
  }
  return 1;
}

int vt_pb_next_field(const uint8_t *p, size_t n, size_t *i, uint64_t *field,
                     const uint8_t **data, size_t *len) {
  vt_pb_field f;
  int rc = vt_pb_read(p, n, i, &f, NULL);
  *data = f.data;
  *len = f.len;
  if (rc == 1)
    *field = f.number;
  return rc;
}
