/* The CUDA entry points of kernels/backend.h in a binary built without CUDA (VITRINE_CUDA=OFF or
 * no nvcc): no device, and the reason. */
#include <stdio.h>

#include "kernels/backend.h"

int vt__backend_cuda_open(vt_backend **out, int device, char *err, size_t errlen) {
  *out = NULL;
  snprintf(err, errlen, "cuda:%d: this binary was built without CUDA (VITRINE_CUDA=OFF or no nvcc)",
           device);
  return VT_BACKEND_ENOCUDA;
}

int vt__backend_cuda_devices(char *err, size_t errlen) {
  snprintf(err, errlen, "this binary was built without CUDA (VITRINE_CUDA=OFF or no nvcc)");
  return 0;
}
