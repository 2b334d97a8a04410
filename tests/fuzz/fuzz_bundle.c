/* The bundle loader (host/bundle.c): the fixture's bundle with one of its small files replaced by
 * the input. The first byte picks the file (manifest.json, vocab.txt, keywords.tsv, themes.tsv);
 * for the last three the manifest is given the file's true size and sha256, so the input reaches
 * the parser behind the integrity check. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/fuzz/fuzz.h"

static const char *const FILES[] = {"manifest.json", "vocab.txt", "keywords.tsv", "themes.tsv"};
static char pristine[512], work[512];
static const char *last;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  char src[4200];
  snprintf(src, sizeof src, "%s/bundle", vt_fuzz_fixture());
  snprintf(pristine, sizeof pristine, "%s/pristine", vt_fuzz_scratch());
  snprintf(work, sizeof work, "%s/bundle", vt_fuzz_scratch());
  vt_fuzz_copy_dir(src, pristine);
  vt_fuzz_copy_dir(src, work);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  const char *name = FILES[data[0] % 4];
  /* undo the previous input: its file and the manifest */
  vt_fuzz_copy_file(pristine, work, "manifest.json");
  if (last)
    vt_fuzz_copy_file(pristine, work, last);
  last = name;
  vt_fuzz_write(work, name, data + 1, size - 1);
  if (strcmp(name, "manifest.json") != 0)
    vt_fuzz_fix_manifest(work, name);
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
