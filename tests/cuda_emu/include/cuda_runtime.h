/* <cuda_runtime.h> of the vitrine CUDA emulator (docs/CUDA.md): the runtime API, and in C++ the
 * kernel language (vt_emu_kernel.h), so that the kernels of kernels/cuda/ build with the host
 * compiler.
 * VT_CUDA_EMU is defined; kernels/cuda/common.cuh then leaves VT_LAUNCH and VT_DYNAMIC_SHARED to
 * this header. */
#ifndef VT_EMU_CUDA_RUNTIME_H
#define VT_EMU_CUDA_RUNTIME_H

#include "cuda_runtime_api.h"

#ifdef __cplusplus
#include "vt_emu_kernel.h"
#endif

#endif
