/* The JSON request parser (engine/request.c: the CLI's and, behind serve/wire.c, the server's),
 * against the fixture's bundle and catalogue. */
#include <stdlib.h>
#include <string.h>

#include "engine/request.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  vt_fuzz_catalog();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  vt_request r;
  vt_err err = {0};
  /* the parser takes a length, not a terminator: give it the exact bytes */
  int rc = vt_request_parse(&r, (const char *)data, size, vt_fuzz_bundle(), vt_fuzz_catalog(), &err);
  vt_fuzz_report("request", rc, err.msg);
  if (rc == 0) {
    /* what was accepted is in range */
    if (r.n_events < 0 || r.sections < 1 || r.n_exclude < 0)
      abort();
    for (int i = 0; i < r.n_exclude; i++)
      if (r.exclude[i] < 0 || r.exclude[i] >= vt_fuzz_catalog()->n_products)
        abort();
    vt_request_free(&r);
  } else if (!err.msg[0]) {
    abort(); /* a refusal must say why */
  }
  return 0;
}
