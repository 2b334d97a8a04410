/* Walking protobuf wire format without a schema: the server's request decoding (serve/wire.c) and
 * the load generator's read of one field of an answer. Framing is checked the way the reference
 * parsers check it: varints of at most 10 bytes, field numbers 1..2^29 - 1, wire types 0, 1, 2, 5
 * and groups (3 ... 4 with the same field number, nested at most VT_PB_MAX_DEPTH deep), which
 * are skipped as unknown fields are; a length never runs past the end. */
#ifndef VITRINE_SERVE_PBWIRE_H
#define VITRINE_SERVE_PBWIRE_H

#include <stddef.h>
#include <stdint.h>

#define VT_PB_MAX_FIELD 536870911u /* 2^29 - 1 */
#define VT_PB_MAX_DEPTH 64

enum { VT_PB_VARINT = 0, VT_PB_I64 = 1, VT_PB_LEN = 2, VT_PB_GROUP = 3, VT_PB_I32 = 5 };

typedef struct vt_pb_field {
  uint32_t number;
  int wire_type;       /* VT_PB_*; a group has been skipped whole */
  uint64_t value;      /* VT_PB_VARINT, VT_PB_I64, VT_PB_I32 */
  const uint8_t *data; /* VT_PB_LEN: the payload (len bytes) */
  size_t len;
} vt_pb_field;

/* Reads the field at p[*i] (n bytes in all) into f and moves *i past it. Returns 1 when a field
 * was read, 0 at the end, -1 when the bytes are not wire format, with *why (if not NULL) a static
 * description ("truncated varint", "field number 0", ...) and *i where reading stopped. */
int vt_pb_read(const uint8_t *p, size_t n, size_t *i, vt_pb_field *f, const char **why);

/* The same, the field's number in *field and for a length-delimited field its payload in *data
 * and *len (NULL and 0 otherwise). */
int vt_pb_next_field(const uint8_t *p, size_t n, size_t *i, uint64_t *field,
                     const uint8_t **data, size_t *len);

#endif
