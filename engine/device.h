/* --device: where the engines run.
 *
 *   cpu               CPU engines (--workers of them)
 *   cuda              every CUDA device, one engine each
 *   cuda:0,2          these devices, one engine each
 *
 * A request for CUDA that cannot be met falls back to the CPU engines with the reason, which the
 * caller logs: the binary was built without CUDA, or no device answers. A malformed value or a
 * device number that does not exist on a machine with devices is an error, not a fallback. */
#ifndef VITRINE_ENGINE_DEVICE_H
#define VITRINE_ENGINE_DEVICE_H

#include "status.h"

#define VT_MAX_DEVICES 64

typedef struct vt_device_plan {
  int cuda;                     /* 1: engines on the CUDA devices below; 0: on the CPU */
  int n_devices;                /* CUDA devices requested (cuda: all that answered) */
  int ordinals[VT_MAX_DEVICES]; /* their numbers */
  int fell_back;                /* CUDA was asked for and the CPU was chosen */
  char reason[200];             /* why, when fell_back */
} vt_device_plan;

/* Parses spec ("cpu", "cuda", "cuda:N[,N...]"). Sets *cuda and the listed ordinals (*n = 0 for
 * plain "cuda": all devices). VT_EINVAL naming the problem. */
int vt_device_parse(const char *spec, int *cuda, int *ordinals, int *n, vt_err *err);

/* Parses spec and decides (see above). VT_EINVAL for a malformed spec or a missing device. */
int vt_device_plan_make(vt_device_plan *p, const char *spec, vt_err *err);

#endif
