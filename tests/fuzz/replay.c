/* Runs a fuzz target on files, without libFuzzer (`make test`): every file named, and every file
 * in each directory named, in sorted order. A missing path or a directory without a file fails:
 * a replay that ran nothing must not pass. A crash or a sanitizer report ends the process as it
 * would under the fuzzer. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

static int run_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "replay: %s: cannot open\n", path);
    return -1;
  }
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  /* an exact-size copy, as libFuzzer passes, so reading past the input is caught by ASan */
  uint8_t *p = malloc(n > 0 ? (size_t)n : 1);
  if (!p || (n > 0 && fread(p, 1, (size_t)n, f) != (size_t)n)) {
    fprintf(stderr, "replay: %s: cannot read\n", path);
    fclose(f);
    free(p);
    return -1;
  }
  fclose(f);
  LLVMFuzzerTestOneInput(p, (size_t)n);
  free(p);
  return 0;
}

static int by_name(const struct dirent **a, const struct dirent **b) {
  return strcmp((*a)->d_name, (*b)->d_name);
}

int main(int argc, char **argv) {
  if (LLVMFuzzerInitialize)
    LLVMFuzzerInitialize(&argc, &argv);
  int ran = 0;
  for (int i = 1; i < argc; i++) {
    struct stat sb;
    if (stat(argv[i], &sb) != 0) {
      fprintf(stderr, "replay: %s: missing\n", argv[i]);
      return 1;
    }
    if (!S_ISDIR(sb.st_mode)) {
      if (run_file(argv[i]))
        return 1;
      ran++;
      continue;
    }
    struct dirent **names;
    int k = scandir(argv[i], &names, NULL, by_name), here = 0;
    for (int j = 0; j < k; j++) {
      char path[4096];
      snprintf(path, sizeof path, "%s/%s", argv[i], names[j]->d_name);
      if (names[j]->d_name[0] != '.' && stat(path, &sb) == 0 && S_ISREG(sb.st_mode)) {
        if (run_file(path))
          return 1;
        here++;
      }
      free(names[j]);
    }
    free(names);
    if (here == 0 && strstr(argv[i], "regressions") == NULL) {
      fprintf(stderr, "replay: %s: no input in the corpus\n", argv[i]);
      return 1;
    }
    ran += here;
  }
  printf("replayed %d inputs\n", ran);
  return ran ? 0 : 1;
}
