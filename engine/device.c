/* --device parsing and the CPU fallback (see device.h). */
#include "device.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"

int vt_device_parse(const char *spec, int *cuda, int *ordinals, int *n, vt_err *err) {
  *n = 0;
  *cuda = 0;
  if (!spec || strcmp(spec, "cpu") == 0)
    return VT_OK;
  if (strncmp(spec, "cuda", 4) != 0 || (spec[4] != 0 && spec[4] != ':'))
    return vt_fail(err, VT_EINVAL, "--device must be cpu, cuda or cuda:N[,N...], not '%s'", spec);
  *cuda = 1;
  if (spec[4] == 0)
    return VT_OK;
  const char *p = spec + 5;
  for (;;) {
    if (!isdigit((unsigned char)*p))
      return vt_fail(err, VT_EINVAL, "--device '%s': a device number is expected at '%s'", spec,
                     p);
    char *end;
    long v = strtol(p, &end, 10);
    if (v >= VT_MAX_DEVICES)
      return vt_fail(err, VT_EINVAL, "--device '%s': device %ld is above %d", spec, v,
                     VT_MAX_DEVICES - 1);
    for (int i = 0; i < *n; i++)
      if (ordinals[i] == (int)v)
        return vt_fail(err, VT_EINVAL, "--device '%s': device %ld is listed twice", spec, v);
    ordinals[(*n)++] = (int)v;
    if (*end == 0)
      return VT_OK;
    if (*end != ',')
      return vt_fail(err, VT_EINVAL, "--device '%s': unexpected '%c'", spec, *end);
    p = end + 1;
  }
}

int vt_device_plan_make(vt_device_plan *p, const char *spec, vt_err *err) {
  memset(p, 0, sizeof *p);
  int cuda = 0, rc = vt_device_parse(spec, &cuda, p->ordinals, &p->n_devices, err);
  if (rc || !cuda)
    return rc;
  char why[160];
  int count = vt_backend_cuda_devices(why, sizeof why);
  if (count <= 0) {
    p->fell_back = 1;
    p->n_devices = 0;
    snprintf(p->reason, sizeof p->reason, "%s", why);
    return VT_OK;
  }
  for (int i = 0; i < p->n_devices; i++)
    if (p->ordinals[i] >= count)
      return vt_fail(err, VT_EINVAL, "--device '%s': cuda:%d does not exist (%d device%s)", spec,
                     p->ordinals[i], count, count == 1 ? "" : "s");
  if (p->n_devices == 0) {
    p->n_devices = count < VT_MAX_DEVICES ? count : VT_MAX_DEVICES;
    for (int i = 0; i < p->n_devices; i++)
      p->ordinals[i] = i;
  }
  p->cuda = 1;
  return VT_OK;
}
