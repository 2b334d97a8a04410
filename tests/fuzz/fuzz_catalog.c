/* The catalogue loader (engine/catalog.c) against the fixture's bundle: the fixture's catalogue
 * with one file replaced by the input. The first byte picks it (manifest.json, products.tsv,
 * embeddings.safetensors); for the last two the manifest gets the true size and sha256. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/fuzz/fuzz.h"

static const char *const FILES[] = {"manifest.json", "products.tsv", "embeddings.safetensors"};
static vt_fuzz_dir dir;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  vt_fuzz_bundle();
  vt_fuzz_dir_init(&dir, "catalog");
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  vt_fuzz_dir_replace(&dir, FILES[data[0] % 3], data + 1, size - 1);
  const char *work = dir.work;
  vt_catalog *c = NULL;
  vt_err err = {0};
  int rc = vt_catalog_load(&c, work, vt_fuzz_bundle(), &err);
  vt_fuzz_report("catalog", rc, err.msg);
  if (rc == 0) {
    for (int i = 0; i < c->n_products; i++) /* every id it accepted can be found again */
      if (vt_catalog_find(c, c->ids[i], strlen(c->ids[i])) < 0)
        abort();
    vt_catalog_free(c);
  } else if (!strstr(err.msg, work)) {
    abort(); /* a refusal names the catalogue's file */
  }
  return 0;
}
