/* The rules parser (engine/rules.c: the catalogue's rules.txt, docs/RULES.md), against the
 * fixture's bundle and catalogue. */
#include <stdlib.h>
#include <string.h>

#include "engine/rules.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  vt_fuzz_catalog();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  vt_rules *r = NULL;
  vt_err err = {0};
  const vt_bundle *b = vt_fuzz_bundle();
  const vt_catalog *c = vt_fuzz_catalog();
  int rc = vt_rules_parse(&r, (const char *)data, size, "rules.txt", b, c, &err);
  vt_fuzz_report("rules", rc, err.msg);
  if (rc == 0) {
    /* what was accepted is consistent: a version, seasons in range, tries whose phrases are
     * the bundle's and not denied */
    if (!r->version || !r->version[0] || strlen(r->version) > VT_RULES_VERSION_MAX)
      abort();
    for (size_t i = 0; i < (size_t)b->n_regions * 372; i++)
      if (r->season[i] < -1 || r->season[i] > 3)
        abort();
    const vt_trie *t[2] = {&r->theme_trie, &r->keyword_trie};
    const uint8_t *denied[2] = {r->theme_denied, r->keyword_denied};
    const int n[2] = {b->themes.n, b->keywords.n};
    for (int k = 0; k < 2; k++)
      for (int i = 0; i < t[k]->n_nodes; i++)
        if (t[k]->phrase[i] >= n[k] || (t[k]->phrase[i] >= 0 && denied[k][t[k]->phrase[i]]))
          abort();
    vt_rules_free(r);
  } else if (!err.msg[0] || strncmp(err.msg, "rules.txt", 9) != 0) {
    abort(); /* a refusal must say why, naming the file */
  }
  return 0;
}
