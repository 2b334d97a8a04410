/* Error reporting for the host: functions return 0 or a negative VT_E* code and fill a vt_err with
 * a message that names the file or field and the problem. Nothing on the request path exits. */
#ifndef VITRINE_ENGINE_STATUS_H
#define VITRINE_ENGINE_STATUS_H

#include <stddef.h>

enum {
  VT_OK = 0,
  VT_EIO = -1,       /* a file cannot be opened or read */
  VT_EFORMAT = -2,   /* a file is malformed, truncated, corrupt or inconsistent */
  VT_EINVAL = -3,    /* a request or argument is invalid */
  VT_ENOMEM = -4,    /* out of memory or over an arena's capacity */
  VT_EINTERNAL = -5, /* a broken invariant (a bug): reported, never aborted on */
};

typedef struct vt_err {
  int code;
  char msg[512];
} vt_err;

/* Sets err (if not NULL) to code and a printf-style message; returns code. */
int vt_fail(vt_err *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* A short name for a code ("invalid argument", ...). */
const char *vt_strerror(int code);

#endif
