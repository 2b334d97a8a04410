/* The server's requests from the wire, without a socket: a serialized vitrine.v1.RecommendRequest
 * becomes the JSON form that vt_request_parse validates (so the server and `vitrine recommend`
 * accept and refuse the same requests, with the same messages), after the checks only the wire
 * form needs; GetInfoRequest and grpc.health.v1.HealthCheckRequest are checked the same way.
 *
 * Decoding follows proto3: unknown fields (groups included) are skipped, the last value of a
 * repeated scalar wins, and a zero or empty value is "unset", which the JSON form expresses by
 * leaving the key out (so an unset `now` is refused as missing on both paths). Strings keep every
 * byte (a NUL becomes \u0000, any other byte is kept as it is) so that vt_request_parse reports a
 * NUL or invalid UTF-8 naming the field. A known field sent with another wire type is refused as
 * malformed (protobuf-c does the same). */
#ifndef VITRINE_SERVE_WIRE_H
#define VITRINE_SERVE_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/status.h"

typedef struct vt_wire_limits {
  int max_events;   /* events, and excluded ids, per request (counted before decoding them) */
  int max_id_bytes; /* shopper_id, region, item and exclude ids */
} vt_wire_limits;

typedef struct vt_wire_request {
  char *json;      /* malloc'd, NUL-terminated: the request as vt_request_parse takes it */
  size_t json_len;
  int priority;    /* 0 PRIORITY_NORMAL, 1 PRIORITY_HIGH */
  const uint8_t *shopper; /* shopper_id's bytes on the wire (for logs: escape them), len bytes */
  size_t shopper_len;
} vt_wire_request;

/* Decodes p[0..n). VT_OK; VT_EINVAL with a message naming the problem (malformed protobuf, too
 * many events, an oversized id, a bad priority); VT_ENOMEM. out->shopper is set as soon as the
 * framing is valid, also when the request is then refused. Free with vt_wire_request_free. */
int vt_wire_recommend(vt_wire_request *out, const uint8_t *p, size_t n,
                      const vt_wire_limits *lim, vt_err *err);
void vt_wire_request_free(vt_wire_request *r);
/* The priority a RecommendRequest asks for (1 PRIORITY_HIGH, else 0), from a walk over its
 * top-level fields that decodes nothing else: for admission before the request is decoded.
 * Malformed bytes give 0; vt_wire_recommend reports them if the request is admitted. */
int vt_wire_peek_priority(const uint8_t *p, size_t n);

/* A GetInfoRequest (no fields: any well-formed message). VT_OK or VT_EINVAL. */
int vt_wire_getinfo(const uint8_t *p, size_t n, vt_err *err);

/* A HealthCheckRequest: its `service` (UTF-8, no NUL) into *service / *len (pointing into p).
 * VT_OK or VT_EINVAL. */
int vt_wire_health(const uint8_t *p, size_t n, const char **service, size_t *len, vt_err *err);

#endif
