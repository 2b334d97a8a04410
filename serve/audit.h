/* The audit log of `vitrine serve` (docs/SERVER.md "Audit log"): a sampled, bounded, rotating
 * JSON-lines record of the storefronts served.
 *
 * Off the hot path: the engine worker that finished a sampled request copies what its record
 * needs (the request's region, time and shopper id, the storefront, a reference to the catalogue
 * generation it ran under) into a bounded ring and goes on; when the ring is full the record is
 * dropped and counted, never waited for. One writer thread formats the records (versions, season
 * and the rule that decided it, what the filters and the rules held back, the shopper id's hash)
 * and appends them to the file, rotating it by size: PATH -> PATH.1 -> ... -> PATH.(keep - 1).
 * Written, dropped and failed records are counted in the metrics. */
#ifndef VITRINE_SERVE_AUDIT_H
#define VITRINE_SERVE_AUDIT_H

#include <stddef.h>
#include <stdint.h>

#include "metrics.h"
#include "engine/request.h"
#include "sched.h"
#include "engine/status.h"

typedef struct vt_audit_opts {
  const char *path; /* the log file (its directory must exist) */
  double sample;    /* fraction of answered Recommend calls recorded, 0..1 */
  long max_bytes;   /* no file grows past this; a record that would pass it rotates first */
  int keep;         /* files kept, PATH included (>= 1: 1 truncates at each rotation) */
  int ring;         /* records waiting for the writer (>= 1) */
  int raw_ids;      /* 1: shopper ids as sent; 0: HMAC-SHA256(salt, id), 16 hex digits */
  const char *salt; /* the HMAC key; NULL or "": 32 random bytes drawn at start (per process) */
} vt_audit_opts;

typedef struct vt_audit vt_audit;

/* Opens (creates, appends to) the file and starts the writer. VT_EIO naming the file when it
 * cannot be opened. */
int vt_audit_open(vt_audit **out, const vt_audit_opts *o, vt_metrics *m, vt_err *err);
/* Writes what the ring holds, stops the writer, closes the file. NULL: nothing. */
void vt_audit_close(vt_audit *a);

/* The sampling draw for one call: 1 to record it. 0 for a NULL a. Any thread, lock-free. */
int vt_audit_sample(vt_audit *a);

/* The request digest: the first 16 hex digits of the sha256 of the request's bytes (as received,
 * inflated when compressed), hex[17] NUL-terminated. */
void vt_audit_digest(const void *bytes, size_t n, char hex[17]);

/* One answered request into the ring (copied; g gets a reference until the record is written):
 * 0, or -1 when the ring was full and the record was dropped (counted). Never blocks on the
 * writer. Any thread. */
int vt_audit_submit(vt_audit *a, const char digest[17], const vt_request *req, vt_gen *g,
                    const vt_storefront *s);

/* The activity segment of a request by the events it carried (kept and dropped):
 * "new" (0), "light" (1 .. VT_AUDIT_HEAVY_EVENTS - 1), "heavy" (VT_AUDIT_HEAVY_EVENTS or more). */
#define VT_AUDIT_HEAVY_EVENTS 20
const char *vt_audit_activity(int events);

#endif
