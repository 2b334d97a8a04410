/* Opening a backend by name (kernels/backend.h). This file is compiled into each library that
 * provides the CUDA side: the real one (cmake/cuda.cmake), the tests' CUDA emulator
 * (cmake/cuda_emu.cmake) or the one that has none (kernels/nocuda.c), so a binary's CUDA is
 * chosen by what it links, and the CPU kernels never depend on it. */
#include "kernels/backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int vt_backend_open(vt_backend **out, const char *name, char *err, size_t errlen) {
  *out = NULL;
  if (name && strcmp(name, "cpu") == 0)
    return vt__backend_cpu_open(out, err, errlen);
  if (name && strncmp(name, "cuda", 4) == 0 && (name[4] == 0 || name[4] == ':')) {
    int dev = 0;
    if (name[4] == ':') {
      char *end;
      long v = strtol(name + 5, &end, 10);
      if (end == name + 5 || *end || v < 0 || v > 1023) {
        snprintf(err, errlen, "'%s' is not a backend (cuda:N with a device number N)", name);
        return VT_BACKEND_EUNKNOWN;
      }
      dev = (int)v;
    }
    return vt__backend_cuda_open(out, dev, err, errlen);
  }
  snprintf(err, errlen, "'%s' is not a backend (cpu, cuda or cuda:N)", name ? name : "(null)");
  return VT_BACKEND_EUNKNOWN;
}

void vt_backend_close(vt_backend *be) {
  if (be)
    be->close(be);
}

int vt_backend_cuda_devices(char *err, size_t errlen) {
  return vt__backend_cuda_devices(err, errlen);
}
