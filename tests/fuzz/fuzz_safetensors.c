/* The safetensors reader (engine/safetensors.c): a file of the input's bytes, opened by mmap;
 * every tensor it accepts is read end to end (ASan sees a range outside the mapping). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/safetensors.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *dir = vt_fuzz_scratch();
  vt_fuzz_write(dir, "t.safetensors", data, size);
  char path[512];
  snprintf(path, sizeof path, "%s/t.safetensors", dir);
  vt_safetensors *st = NULL;
  vt_err err = {0};
  int rc = vt_st_open(&st, path, &err);
  vt_fuzz_report("safetensors", rc, err.msg);
  if (rc == 0) {
    volatile uint8_t sink = 0;
    for (int i = 0; i < st->n; i++) {
      const vt_tensor *t = &st->tensors[i];
      const uint8_t *b = t->data;
      if (t->nbytes && ((const uint8_t *)t->data < (const uint8_t *)st->map ||
                        (const uint8_t *)t->data + t->nbytes > (const uint8_t *)st->map + st->size))
        abort(); /* a tensor outside the file */
      for (size_t k = 0; k < t->nbytes; k++)
        sink ^= b[k];
      if (vt_st_get(st, t->name) == NULL)
        abort();
    }
    for (int i = 0; i < st->n_meta; i++)
      if (vt_st_meta(st, st->meta_keys[i]) == NULL)
        abort();
    (void)sink;
    vt_st_close(st);
  } else if (!strstr(err.msg, path)) {
    abort(); /* a refusal names the file */
  }
  return 0;
}
