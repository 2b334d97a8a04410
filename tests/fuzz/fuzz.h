/* Shared by the fuzz targets (tests/fuzz/README.md): the fixture the loaders are checked against,
 * and files written from a fuzzer's input. Each target defines LLVMFuzzerTestOneInput and may
 * define LLVMFuzzerInitialize; it is linked either with libFuzzer (clang, `make fuzz`) or with
 * replay.c (any compiler, `make test`: every file of the committed corpus and regressions). */
#ifndef VITRINE_TESTS_FUZZ_H
#define VITRINE_TESTS_FUZZ_H

#include <stddef.h>
#include <stdint.h>

#include "engine/bundle.h"
#include "engine/catalog.h"

/* The fixture directory (VT_FIXTURE, else the build's fixture); the process exits with a message
 * when it has no bundle, as a fuzz run against nothing would find nothing. */
const char *vt_fuzz_fixture(void);
/* The fixture's bundle and catalogue, loaded once (exit with the loader's message on failure). */
const vt_bundle *vt_fuzz_bundle(void);
const vt_catalog *vt_fuzz_catalog(void);
/* A private scratch directory for this process (made once, removed at exit). */
const char *vt_fuzz_scratch(void);
/* Copies every regular file of src into dst (made if missing); exits on failure. */
void vt_fuzz_copy_dir(const char *src, const char *dst);
/* Copies src/name to dst/name; exits on failure. */
void vt_fuzz_copy_file(const char *src, const char *dst, const char *name);
/* Writes n bytes to dir/name; exits on failure. */
void vt_fuzz_write(const char *dir, const char *name, const uint8_t *p, size_t n);
/* Rewrites dir/manifest.json so that its "files" entry for name carries the file's real size and
 * sha256 (so a fuzzed file gets past the integrity check to the parser behind it). */
void vt_fuzz_fix_manifest(const char *dir, const char *name);

/* A fixture directory with one file replaced by a fuzzer's input (the bundle and catalogue
 * targets): made once from the fixture's subdirectory sub, kept pristine beside a working copy. */
typedef struct vt_fuzz_dir {
  char pristine[512], work[512];
  const char *last; /* the file the previous input replaced */
} vt_fuzz_dir;
void vt_fuzz_dir_init(vt_fuzz_dir *d, const char *sub);
/* Restores what the previous input changed, then writes p[0..n) as d->work/name; for any file but
 * manifest.json the manifest is given the file's true size and sha256, so the input gets past the
 * integrity check to the parser behind it. name must outlive the next call (a string literal). */
void vt_fuzz_dir_replace(vt_fuzz_dir *d, const char *name, const uint8_t *p, size_t n);

/* With VT_FUZZ_VERBOSE set: one line per input, "accepted" or the refusal's message (to see how
 * deep a corpus reaches). */
void vt_fuzz_report(const char *target, int rc, const char *msg);

#endif
