/* The request file of vitrine-bench: JSON lines, each a request in the JSON form `vitrine
 * recommend` takes (docs/SERVER.md), turned once at start into serialized
 * vitrine.v1.RecommendRequest bytes that every call then sends as they are.
 *
 * What is refused here, naming file:line, is a line that cannot be turned into the protobuf
 * faithfully: not JSON, not an object, a required field missing or of the wrong JSON type
 * (now, region, sections, keywords_per_section, products_per_section), an unknown action, a
 * non-integral time, a count outside int32, an event item "" (the protobuf form reads "" as "no
 * product"). Values the protobuf can carry but the server refuses (an unknown region, sections
 * 0, a negative time) are sent as they are: the server answers INVALID_ARGUMENT and the bench
 * counts the errors, so a file can measure the refusal path on purpose. */
#ifndef VITRINE_BENCH_REQUESTS_H
#define VITRINE_BENCH_REQUESTS_H

#include <stddef.h>

#include <grpc/slice.h>

typedef struct vb_requests {
  grpc_slice *msg; /* (n) serialized RecommendRequest bytes, one slice per line with a request */
  int n;
  size_t bytes;    /* sum of the message sizes */
} vb_requests;

/* Reads path (blank lines are skipped). 0, or -1 with a message "path:line: why" in err. */
int vb_requests_load(vb_requests *out, const char *path, char *err, size_t cap);
void vb_requests_free(vb_requests *r);

#endif
