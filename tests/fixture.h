/* The fixture the C tests share: the bundle and catalogue that `python3 -m train.fixture` writes
 * to $VT_FIXTURE (the build's fixture target), loaded for a Criterion suite's .init. */
#ifndef VT_TESTS_FIXTURE_H
#define VT_TESTS_FIXTURE_H

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

#include "engine/bundle.h"
#include "engine/catalog.h"

/* Loads $VT_FIXTURE/bundle into *b and $VT_FIXTURE/catalog into *c; the catalogue's absolute
 * path goes to cat_dir (cap bytes) when it is not NULL (for tests that link to its files). Any
 * failure fails the test with the loader's message. */
static inline void vt_fixture_load(vt_bundle **b, vt_catalog **c, char *cat_dir, size_t cap) {
  char p[1024];
  vt_err err = {0};
  const char *dir = getenv("VT_FIXTURE");
  cr_assert(dir, "VT_FIXTURE is not set");
  snprintf(p, sizeof p, "%s/bundle", dir);
  cr_assert_eq(vt_bundle_load(b, p, &err), 0, "%s", err.msg);
  snprintf(p, sizeof p, "%s/catalog", dir);
  char *abs = realpath(p, NULL);
  cr_assert(abs, "%s: %s", p, "cannot resolve the fixture's catalogue");
  if (cat_dir)
    snprintf(cat_dir, cap, "%s", abs);
  cr_assert_eq(vt_catalog_load(c, abs, *b, &err), 0, "%s", err.msg);
  free(abs);
}

#endif
