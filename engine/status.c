#include "status.h"

#include <stdarg.h>
#include <stdio.h>

int vt_fail(vt_err *err, int code, const char *fmt, ...) {
  if (err) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    err->code = code;
  }
  return code;
}

const char *vt_strerror(int code) {
  switch (code) {
  case VT_OK: return "ok";
  case VT_EIO: return "i/o error";
  case VT_EFORMAT: return "bad format";
  case VT_EINVAL: return "invalid argument";
  case VT_ENOMEM: return "out of memory";
  case VT_EINTERNAL: return "internal error";
  default: return "unknown error";
  }
}
