/* The CPU backend table: the reference kernels of kernels/cpu/ and host memory. */
#include "kernels/backend.h"

#include <stdlib.h>
#include <string.h>

static void *cpu_alloc(const vt_backend *be, size_t bytes) {
  (void)be;
  return malloc(bytes ? bytes : 1);
}

static void cpu_free(const vt_backend *be, void *p) {
  (void)be;
  free(p);
}

static int cpu_copy(const vt_backend *be, void *dst, const void *src, size_t bytes) {
  (void)be;
  memcpy(dst, src, bytes);
  return 0;
}

static int cpu_sync(const vt_backend *be) {
  (void)be;
  return 0;
}

static const vt_backend cpu_backend = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .sync = cpu_sync,
    .event_embed = vt_event_embed,
    .layernorm = vt_layernorm,
    .residual_layernorm = vt_residual_layernorm,
    .rmsnorm = vt_rmsnorm,
    .add = vt_add,
    .matmul = vt_matmul,
    .attention = vt_attention,
    .cross_attention = vt_cross_attention,
    .decoder_attention = vt_decoder_attention,
    .beam_step = vt_beam_step,
    .retrieval_scores = vt_retrieval_scores,
    .topk = vt_topk,
    .ctx = NULL,
};

const vt_backend *vt_backend_cpu(void) { return &cpu_backend; }

const vt_backend *vt_backend_find(const char *name) {
  if (name && strcmp(name, "cpu") == 0)
    return &cpu_backend;
#ifdef VITRINE_HAVE_CUDA
  if (name && (strcmp(name, "cuda") == 0 || strcmp(name, "cuda:0") == 0))
    return vt_backend_cuda();
#endif
  return NULL;
}
