/* The server's decode path without a socket: protobuf bytes (serve/wire.c, serve/pbwire.c) into the
 * request parser, as serve/server.c does for Recommend; GetInfo and Health bodies too. */
#include <stdlib.h>
#include <string.h>

#include "serve/pbwire.h"
#include "engine/request.h"
#include "serve/wire.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  vt_fuzz_catalog();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  vt_wire_limits lim = {64, 128}; /* vitrine serve's defaults are in the same range */
  vt_wire_request w = {0};
  vt_err err = {0};
  int rc = vt_wire_recommend(&w, data, size, &lim, &err);
  if (rc)
    vt_fuzz_report("wire", rc, err.msg);
  if (rc == 0) {
    if (!w.json || strlen(w.json) != w.json_len)
      abort(); /* the JSON form is one NUL-terminated string */
    vt_request r;
    vt_err e2 = {0};
    int rc2 = vt_request_parse(&r, w.json, w.json_len, vt_fuzz_bundle(), vt_fuzz_catalog(), &e2);
    vt_fuzz_report("wire", rc2, e2.msg);
    if (rc2 == 0)
      vt_request_free(&r);
    else if (!e2.msg[0])
      abort();
  } else if (!err.msg[0]) {
    abort();
  }
  vt_wire_request_free(&w);

  vt_err e3 = {0};
  vt_wire_getinfo(data, size, &e3);
  const char *svc;
  size_t len;
  if (vt_wire_health(data, size, &svc, &len, &e3) == 0 && len && (svc < (const char *)data ||
                                                                  svc + len > (const char *)data + size))
    abort(); /* the service name points into the input */

  /* the raw walker: it must end, and never step backwards or past the end */
  size_t i = 0, prev = 0;
  uint64_t field;
  const uint8_t *p;
  size_t plen;
  while (i < size && vt_pb_next_field(data, size, &i, &field, &p, &plen) > 0) {
    if (i <= prev || i > size)
      abort();
    prev = i;
  }
  return 0;
}
