/* Reading safetensors files by mmap: the standard layout (8-byte little-endian header length, a
 * JSON header, then the data). Every inconsistency is refused with a message naming the file:
 * header longer than the file, malformed JSON, unknown dtype, a shape that does not match the
 * byte range, data outside the file, overlapping tensors. */
#ifndef VITRINE_ENGINE_SAFETENSORS_H
#define VITRINE_ENGINE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

enum vt_dtype { VT_F32 = 0, VT_F16 = 1, VT_BF16 = 2, VT_I64 = 3, VT_I32 = 4 };

#define VT_MAX_DIMS 8

typedef struct vt_tensor {
  char *name;
  enum vt_dtype dtype;
  int ndim;
  int64_t shape[VT_MAX_DIMS];
  int64_t numel;
  const void *data; /* into the mapping; not necessarily aligned */
  size_t nbytes;
} vt_tensor;

typedef struct vt_safetensors {
  char *path;
  void *map;
  size_t size;
  int n;              /* tensors, in header order */
  vt_tensor *tensors;
  int n_meta;         /* __metadata__ string pairs */
  char **meta_keys, **meta_values;
} vt_safetensors;

int vt_st_open(vt_safetensors **out, const char *path, vt_err *err);
void vt_st_close(vt_safetensors *st);
const vt_tensor *vt_st_get(const vt_safetensors *st, const char *name);
const char *vt_st_meta(const vt_safetensors *st, const char *key); /* NULL if absent */

/* A float32 copy of a tensor (F32, F16 and BF16 are widened), malloc'd; NULL on failure. */
float *vt_tensor_to_f32(const vt_tensor *t);

#endif
