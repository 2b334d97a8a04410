/* Walking protobuf wire format without decoding: for the server's pre-scan of a request (counting
 * repeated fields before protobuf-c allocates them) and the load generator's read of one field of
 * an answer. */
#ifndef VITRINE_HOST_PBWIRE_H
#define VITRINE_HOST_PBWIRE_H

#include <stddef.h>
#include <stdint.h>

/* Reads the field at p[*i] (n bytes in all) and moves *i past it. *field gets its number; for a
 * length-delimited field *data and *len its payload (NULL and 0 otherwise). Returns 1 when a field
 * was read, 0 at the end, -1 when the bytes are not wire format (truncated, field 0, a group or
 * an unknown wire type). */
int vt_pb_next_field(const uint8_t *p, size_t n, size_t *i, uint64_t *field,
                     const uint8_t **data, size_t *len);

#endif
