/* The bundle loader (engine/bundle.c): the fixture's bundle with one of its small files replaced by
 * the input. The first byte picks the file (manifest.json, vocab.txt, keywords.tsv, themes.tsv);
 * for the last three the manifest is given the file's true size and sha256, so the input reaches
 * the parser behind the integrity check. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/fuzz/fuzz.h"

static const char *const FILES[] = {"manifest.json", "vocab.txt", "keywords.tsv", "themes.tsv"};
static vt_fuzz_dir dir;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  vt_fuzz_dir_init(&dir, "bundle");
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  vt_fuzz_dir_replace(&dir, FILES[data[0] % 4], data + 1, size - 1);
  const char *work = dir.work;
  vt_bundle *b = NULL;
  vt_err err = {0};
  int rc = vt_bundle_load(&b, work, &err);
  vt_fuzz_report("bundle", rc, err.msg);
  if (rc == 0)
    vt_bundle_free(b);
  else if (!strstr(err.msg, work))
    abort(); /* a refusal names the bundle's file */
  return 0;
}
