/* The batched cascade on the CPU: B requests of different history lengths in one pass.
 *
 *   requests -> featurise (ragged, no padding) -> event embedding -> encoder -> Query-Former
 *   -> stage 1: themes, one beam search per request, all requests' beams decoded together
 *   -> stage 2: keywords, one beam search per (request, section), all decoded together, each
 *      starting from its theme's cached keys and values (no prefix recomputation)
 *   -> retrieval, business filters, ranking, de-duplication across sections.
 *
 * train/cascade.py is the specification (tie-breaking included). Decoder keys and values live in
 * a per-layer pool; each beam holds a table of pool slots, so following a beam's parent copies a
 * few ints, never cached vectors. All memory of a batch comes from the engine's arena, which
 * keeps its chunks across batches: after the first batches nothing is allocated. */
#ifndef VITRINE_HOST_ENGINE_H
#define VITRINE_HOST_ENGINE_H

#include "bundle.h"
#include "catalog.h"
#include "request.h"
#include "status.h"

typedef struct vt_engine vt_engine;

/* Observes intermediate tensors (for parity tests): request index in the batch, a name
 * ("event_emb", "enc0", ..., "memory", "user", "first_logits"), rows x cols floats. */
typedef void (*vt_trace_fn)(void *ctx, int req, const char *name, const float *data, int rows,
                            int cols);

int vt_engine_create(vt_engine **out, const vt_bundle *b, const vt_catalog *c, vt_err *err);
void vt_engine_free(vt_engine *e);

/* Runs n requests as one batch; out[i] answers reqs[i]. trace may be NULL. */
int vt_engine_run(vt_engine *e, const vt_request *reqs, int n, vt_storefront *out,
                  vt_trace_fn trace, void *trace_ctx, vt_err *err);

/* Time spent in each phase since the engine was created (or the profile last reset), in
 * nanoseconds of the calling thread's wall clock. */
typedef struct vt_profile {
  double encode_ns, decode_ns, beam_ns, retrieve_ns;
  long batches, requests, decode_steps;
} vt_profile;

vt_profile *vt_engine_profile(vt_engine *e);

/* Bytes the arena holds (for `vitrine info` and the benchmarks). */
size_t vt_engine_arena_bytes(const vt_engine *e);

#endif
