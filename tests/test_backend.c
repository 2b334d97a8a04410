/* The backend registry: the CPU table is complete and found by name; unknown names are not. */
#include <criterion/criterion.h>

#include "kernels/backend.h"

Test(backend, cpu_table_is_complete_and_found_by_name) {
  const vt_backend *be = vt_backend_cpu();
  cr_assert_str_eq(be->name, "cpu");
  cr_assert_eq(vt_backend_find("cpu"), be);
  cr_assert_null(vt_backend_find("tpu:0"));
#ifndef VITRINE_HAVE_CUDA
  cr_assert_null(vt_backend_find("cuda"), "no CUDA backend without VITRINE_CUDA");
#endif
  cr_assert_null(vt_backend_find(NULL));
  const void *fns[] = {(void *)be->alloc, (void *)be->free, (void *)be->upload,
                       (void *)be->download, (void *)be->sync, (void *)be->event_embed,
                       (void *)be->layernorm, (void *)be->residual_layernorm,
                       (void *)be->rmsnorm, (void *)be->add, (void *)be->matmul,
                       (void *)be->attention, (void *)be->cross_attention,
                       (void *)be->decoder_attention, (void *)be->beam_step,
                       (void *)be->retrieval_scores, (void *)be->topk};
  for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++)
    cr_assert_not_null(fns[i], "op %zu missing", i);
  /* the memory operations round-trip bytes */
  char src[5] = "abcd", dst[5] = {0};
  void *p = be->alloc(be, 5);
  cr_assert_not_null(p);
  cr_assert_eq(be->upload(be, p, src, 5), 0);
  cr_assert_eq(be->download(be, dst, p, 5), 0);
  cr_assert_str_eq(dst, "abcd");
  cr_assert_eq(be->sync(be), 0);
  be->free(be, p);
  /* an op through the table computes what the reference function computes */
  float in[6] = {1, 2, 3, -1, 0, 4}, w[3] = {1, 1, 1}, b[3] = {0, 0, 0}, o1[6], o2[6];
  be->layernorm(o1, in, w, b, 2, 3);
  vt_layernorm(o2, in, w, b, 2, 3);
  for (int i = 0; i < 6; i++)
    cr_assert_eq(o1[i], o2[i]);
}

#ifdef VITRINE_HAVE_CUDA
#include "kernels/ops_cuda.h"
#endif

/* The CUDA table, where built and a device answers: an op through it, on device memory, computes
 * what the CPU table computes. */
Test(backend, cuda_table_computes_like_the_cpu_one) {
#ifndef VITRINE_HAVE_CUDA
  cr_skip_test("built without CUDA (VITRINE_CUDA=OFF or no nvcc)");
#else
  if (vt_cuda_device_count() == 0) {
    cr_assert_null(vt_backend_find("cuda"), "no device: the CUDA backend is not offered");
    cr_skip_test("no CUDA device: the CUDA backend table is built but cannot run here");
  }
  const vt_backend *cu = vt_backend_find("cuda");
  cr_assert_not_null(cu);
  cr_assert_str_eq(cu->name, "cuda:0");
  float in[6] = {1, 2, 3, -1, 0, 4}, w[3] = {1, 0.5f, 2}, b[3] = {0, 1, 0}, want[6], got[6];
  vt_layernorm(want, in, w, b, 2, 3);
  float *d_in = cu->alloc(cu, sizeof in), *d_w = cu->alloc(cu, sizeof w),
        *d_b = cu->alloc(cu, sizeof b), *d_out = cu->alloc(cu, sizeof got);
  cr_assert(d_in && d_w && d_b && d_out);
  cr_assert_eq(cu->upload(cu, d_in, in, sizeof in), 0);
  cr_assert_eq(cu->upload(cu, d_w, w, sizeof w), 0);
  cr_assert_eq(cu->upload(cu, d_b, b, sizeof b), 0);
  cu->layernorm(d_out, d_in, d_w, d_b, 2, 3);
  cr_assert_eq(cu->download(cu, got, d_out, sizeof got), 0);
  for (int i = 0; i < 6; i++)
    cr_assert_float_eq(got[i], want[i], 1e-5);
  cu->free(cu, d_in);
  cu->free(cu, d_w);
  cu->free(cu, d_b);
  cu->free(cu, d_out);
#endif
}
