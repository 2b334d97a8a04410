/* See fuzz.h. */
#include "fuzz.h"

#include <dirent.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#ifndef VT_FUZZ_DEFAULT_FIXTURE
#define VT_FUZZ_DEFAULT_FIXTURE "build/fixture"
#endif

static void die(const char *what, const char *msg) {
  fprintf(stderr, "fuzz: %s: %s\n", what, msg);
  exit(2);
}

const char *vt_fuzz_fixture(void) {
  static char dir[4096];
  if (!dir[0]) {
    const char *e = getenv("VT_FIXTURE");
    snprintf(dir, sizeof dir, "%s", e && *e ? e : VT_FUZZ_DEFAULT_FIXTURE);
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/bundle/manifest.json", dir);
    if (access(probe, R_OK) != 0)
      die(probe, "no fixture bundle (set VT_FIXTURE, or run `make test` once to build it)");
  }
  return dir;
}

const vt_bundle *vt_fuzz_bundle(void) {
  static vt_bundle *b;
  if (!b) {
    char dir[4200];
    vt_err err = {0};
    snprintf(dir, sizeof dir, "%s/bundle", vt_fuzz_fixture());
    if (vt_bundle_load(&b, dir, &err))
      die(dir, err.msg);
  }
  return b;
}

const vt_catalog *vt_fuzz_catalog(void) {
  static vt_catalog *c;
  if (!c) {
    char dir[4200];
    vt_err err = {0};
    snprintf(dir, sizeof dir, "%s/catalog", vt_fuzz_fixture());
    if (vt_catalog_load(&c, dir, vt_fuzz_bundle(), &err))
      die(dir, err.msg);
  }
  return c;
}

static char scratch[256];

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static void rm_scratch(void) {
  if (scratch[0])
    nftw(scratch, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

const char *vt_fuzz_scratch(void) {
  if (!scratch[0]) {
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(scratch, sizeof scratch, "%s/vt-fuzz-XXXXXX", base);
    if (!mkdtemp(scratch))
      die(scratch, "cannot make the scratch directory");
    atexit(rm_scratch);
  }
  return scratch;
}

static uint8_t *read_all(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return NULL;
  uint8_t *p = NULL;
  size_t cap = 0;
  *n = 0;
  for (;;) {
    if (*n == cap) {
      cap = cap ? cap * 2 : 65536;
      uint8_t *q = realloc(p, cap);
      if (!q) {
        free(p);
        fclose(f);
        return NULL;
      }
      p = q;
    }
    size_t k = fread(p + *n, 1, cap - *n, f);
    *n += k;
    if (k == 0)
      break;
  }
  fclose(f);
  return p;
}

void vt_fuzz_write(const char *dir, const char *name, const uint8_t *p, size_t n) {
  char path[4200];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (!f || (n && fwrite(p, 1, n, f) != n) || fclose(f) != 0)
    die(path, "cannot write");
}

void vt_fuzz_copy_file(const char *src, const char *dst, const char *name) {
  char path[4200];
  size_t n;
  snprintf(path, sizeof path, "%s/%s", src, name);
  uint8_t *p = read_all(path, &n);
  if (!p)
    die(path, "cannot read");
  vt_fuzz_write(dst, name, p, n);
  free(p);
}

void vt_fuzz_copy_dir(const char *src, const char *dst) {
  mkdir(dst, 0700);
  DIR *d = opendir(src);
  if (!d)
    die(src, "cannot open");
  struct dirent *e;
  while ((e = readdir(d)))
    if (e->d_name[0] != '.')
      vt_fuzz_copy_file(src, dst, e->d_name);
  closedir(d);
}

void vt_fuzz_fix_manifest(const char *dir, const char *name) {
  char path[4200], hex[65];
  size_t n, fn;
  vt_err err = {0};
  snprintf(path, sizeof path, "%s/manifest.json", dir);
  uint8_t *text = read_all(path, &n);
  if (!text)
    die(path, "cannot read");
  cJSON *m = cJSON_ParseWithLength((const char *)text, n);
  free(text);
  cJSON *files = m ? cJSON_GetObjectItemCaseSensitive(m, "files") : NULL;
  cJSON *entry = files ? cJSON_GetObjectItemCaseSensitive(files, name) : NULL;
  if (!entry)
    die(path, "the fixture's manifest lists no such file");
  snprintf(path, sizeof path, "%s/%s", dir, name);
  uint8_t *body = read_all(path, &fn);
  free(body);
  if (vt_sha256_file(hex, path, &err))
    die(path, err.msg);
  cJSON_ReplaceItemInObjectCaseSensitive(entry, "sha256", cJSON_CreateString(hex));
  cJSON_ReplaceItemInObjectCaseSensitive(entry, "bytes", cJSON_CreateNumber((double)fn));
  char *out = cJSON_Print(m);
  cJSON_Delete(m);
  if (!out)
    die(dir, "out of memory");
  vt_fuzz_write(dir, "manifest.json", (const uint8_t *)out, strlen(out));
  free(out);
}

void vt_fuzz_report(const char *target, int rc, const char *msg) {
  static int verbose = -1;
  if (verbose < 0)
    verbose = getenv("VT_FUZZ_VERBOSE") != NULL;
  if (verbose)
    fprintf(stderr, "%s: %s\n", target, rc ? msg : "accepted");
}

void vt_fuzz_dir_init(vt_fuzz_dir *d, const char *sub) {
  char src[4200];
  snprintf(src, sizeof src, "%s/%s", vt_fuzz_fixture(), sub);
  snprintf(d->pristine, sizeof d->pristine, "%s/pristine-%s", vt_fuzz_scratch(), sub);
  snprintf(d->work, sizeof d->work, "%s/%s", vt_fuzz_scratch(), sub);
  d->last = NULL;
  vt_fuzz_copy_dir(src, d->pristine);
  vt_fuzz_copy_dir(src, d->work);
}

void vt_fuzz_dir_replace(vt_fuzz_dir *d, const char *name, const uint8_t *p, size_t n) {
  vt_fuzz_copy_file(d->pristine, d->work, "manifest.json");
  if (d->last)
    vt_fuzz_copy_file(d->pristine, d->work, d->last);
  d->last = name;
  vt_fuzz_write(d->work, name, p, n);
  if (strcmp(name, "manifest.json") != 0)
    vt_fuzz_fix_manifest(d->work, name);
}
