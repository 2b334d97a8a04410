/* The batched cascade: B requests of different history lengths in one pass, on one backend
 * (the CPU, or one CUDA device).
 *
 *   requests -> featurise on the host (ragged, no padding), one upload
 *   -> event embedding -> encoder -> Query-Former -> memory tokens and the user vector
 *   -> stage 1: themes, one beam search per request, all requests' beams decoded together
 *   -> stage 2: keywords, one beam search per (request, section), all decoded together, each
 *      starting from its theme's cached keys and values (no prefix recomputation)
 *   -> retrieval, business filters, ranking, de-duplication across sections -> one download.
 *
 * train/cascade.py is the specification (tie-breaking included). Every step is an op of the
 * backend (kernels/backend.h) on buffers the backend owns, so on a GPU the whole batch runs on
 * the device: the decode loop's bookkeeping (beam selection, finished hypotheses, early stop,
 * compaction) is done by ops too, and the host never waits for a decoded token. On the CPU the
 * same ops run on host memory and the engine reads the live counts to skip finished work; on a
 * device it runs a fixed number of steps over bucketed capacities (done searches do nothing),
 * which is also what lets a CUDA graph replay the decode (vt_engine_set_graphs).
 *
 * Decoder keys and values live in a per-layer pool; each beam holds a table of pool slots, so
 * following a beam's parent copies a few ints, never cached vectors. A batch's buffers come from
 * one arena per engine that grows to the largest batch seen and is then reused. */
#ifndef VITRINE_ENGINE_ENGINE_H
#define VITRINE_ENGINE_ENGINE_H

#include "bundle.h"
#include "catalog.h"
#include "kernels/backend.h"
#include "request.h"
#include "status.h"

/* The bundle's weights and tries where one backend computes: shared by every engine on that
 * backend, across catalogue reloads. Owns its backend. */
typedef struct vt_model vt_model;

/* Places b's weights on each of n backends (taking ownership of them, also on failure): uploaded
 * once, to bes[0], then copied from there to the others (the backend's broadcast: NCCL between
 * CUDA devices where it is available). On the CPU the weights stay where the bundle mapped them. */
int vt_models_create(vt_model **out, vt_backend *const *bes, int n, const vt_bundle *b,
                     vt_err *err);
void vt_model_free(vt_model *m);
vt_backend *vt_model_backend(const vt_model *m);

typedef struct vt_engine vt_engine;

/* One engine per model for catalogue c: the catalogue's tables are uploaded to the first model's
 * device and copied to the others. On failure nothing is left allocated. */
int vt_engines_create(vt_engine **out, vt_model *const *models, int n, const vt_catalog *c,
                      vt_err *err);
/* An engine on a backend and model of its own, on `device` ("cpu", "cuda:N": the CLI, tests,
 * benchmarks); vt_engine_create is the CPU one. A device that cannot be opened is VT_EINVAL with
 * the reason. */
int vt_engine_create_on(vt_engine **out, const vt_bundle *b, const vt_catalog *c,
                        const char *device, vt_err *err);
int vt_engine_create(vt_engine **out, const vt_bundle *b, const vt_catalog *c, vt_err *err);
void vt_engine_free(vt_engine *e);

/* Observes intermediate tensors (for parity tests): request index in the batch, a name
 * ("event_emb", "enc0", ..., "memory", "user", "first_logits"), rows x cols floats on the host.
 * Tracing downloads (and so waits for) each observed tensor. */
typedef void (*vt_trace_fn)(void *ctx, int req, const char *name, const float *data, int rows,
                            int cols);

/* Runs n requests as one batch; out[i] answers reqs[i]. trace may be NULL. A failure (a bad
 * batch, out of memory, a device error) fails the whole batch with the reason in err and leaves
 * the engine usable for the next one where the device still is. */
int vt_engine_run(vt_engine *e, const vt_request *reqs, int n, vt_storefront *out,
                  vt_trace_fn trace, void *trace_ctx, vt_err *err);

/* Device engines: replay the decode and page steps from CUDA graphs, one per bucketed batch
 * shape (captured at its first use). Off by default; ignored where the backend has none. */
void vt_engine_set_graphs(vt_engine *e, int on);

/* Time spent in each phase since the engine was created (or the profile last reset), in
 * nanoseconds of the calling thread's wall clock. On a device the phases are only separated
 * when profiling is on (it waits for the device at every phase boundary, which costs time). */
typedef struct vt_profile {
  double encode_ns, decode_ns, beam_ns, retrieve_ns;
  long batches, requests, decode_steps;
} vt_profile;

vt_profile *vt_engine_profile(vt_engine *e);
void vt_engine_set_profiling(vt_engine *e, int on);

/* Bytes the engine holds where it computes: its arena, and the catalogue tables and page scratch
 * (for `vitrine info` and the benchmarks). */
size_t vt_engine_arena_bytes(const vt_engine *e);

/* The backend's name ("cpu", "cuda:1"). */
const char *vt_engine_device(const vt_engine *e);

#endif
