/* vitrine: the command line.
 *
 *   vitrine recommend --bundle DIR --catalog DIR --request FILE|- [--pretty]
 *   vitrine batch     --bundle DIR --catalog DIR --requests FILE|- [--batch N]
 *   (both: [--calibration L], overriding the bundle's ranker.calibration; docs/AUDIT.md)
 *   vitrine info      --bundle DIR --catalog DIR
 *   vitrine tokenize  --bundle DIR   (JSON strings in, one per line; their token ids out)
 *
 * Exit status: 0 ok, 2 bad arguments, bundle, catalogue or request (the message names which). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/bundle.h"
#include "engine/catalog.h"
#include "engine/engine.h"
#include "engine/request.h"
#include "engine/rules.h"
#include "engine/text.h"
#include "serve/serve.h"

#include <cjson/cJSON.h>

static void usage(FILE *f) {
  fputs("usage: vitrine recommend --bundle DIR --catalog DIR --request FILE|- [--pretty]\n"
        "                         [--device cpu|cuda:N]\n"
        "       vitrine batch --bundle DIR --catalog DIR --requests FILE|- [--batch N]\n"
        "                     [--device cpu|cuda:N]\n"
        "       (recommend and batch: [--calibration L], 0..1, instead of the bundle's)\n"
        "       vitrine info --bundle DIR --catalog DIR\n"
        "       vitrine tokenize --bundle DIR < strings.jsonl\n"
        "       vitrine serve --bundle DIR --catalog DIR [options]  (vitrine serve --help)\n"
        "\n"
        "  recommend  run the cascade on one JSON request and print the storefront as JSON\n"
        "             (--pretty: as a table)\n"
        "  batch      offline scoring: one JSON request per line in, one storefront per line\n"
        "             out in the same order, N requests per engine batch (default 64); a line\n"
        "             that is refused becomes {\"line\": L, \"error\": \"...\"} (exit status 1)\n"
        "  info       print what the bundle and catalogue hold\n"
        "  tokenize   one JSON string per input line (a search query); prints its token ids\n"
        "             as a JSON list, as the engine reads the query (docs/SERVER.md)\n"
        "  --device   where recommend and batch run the cascade (default cpu; docs/DEVICE.md)\n"
        "  --calibration  the ranker's calibrated re-ranking strength, 0 (off) .. 1, instead of\n"
        "             the bundle manifest's ranker.calibration (docs/AUDIT.md)\n"
        "  serve      the gRPC server (docs/SERVER.md)\n",
        f);
}

static char *read_all(const char *path, size_t *len) {
  FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
  if (!f)
    return NULL;
  size_t cap = 1 << 16, n = 0;
  char *buf = malloc(cap);
  while (buf) {
    size_t got = fread(buf + n, 1, cap - n, f);
    n += got;
    if (n < cap)
      break;
    char *nb = realloc(buf, cap * 2);
    if (!nb) {
      free(buf);
      buf = NULL;
      break;
    }
    buf = nb;
    cap *= 2;
  }
  if (f != stdin)
    fclose(f);
  *len = n;
  return buf;
}

static void print_pretty(const vt_storefront *s, const vt_bundle *b, const vt_catalog *c) {
  if (s->dropped_events)
    printf("(%d oldest events dropped: more than the model's maximum)\n", s->dropped_events);
  for (int i = 0; i < s->n_sections; i++) {
    const vt_section *sec = &s->sections[i];
    printf("section %d  %-36s score %7.3f\n", i + 1, b->themes.text[sec->theme],
           sec->theme_score);
    printf("  keywords:");
    for (int k = 0; k < sec->n_keywords; k++)
      printf("%s %s (%.2f)", k ? "," : "", b->keywords.text[sec->keyword[k]],
             sec->keyword_score[k]);
    printf("\n");
    for (int k = 0; k < sec->n_products; k++) {
      const vt_hit *h = &sec->products[k];
      printf("    %-8s %-40s %7.3f  via %s\n", c->ids[h->product], c->titles[h->product],
             h->score, b->keywords.text[h->keyword]);
    }
  }
}

/* `vitrine batch`: JSON lines in, storefront lines out, n requests per engine batch. Returns 0
 * when every line was answered, 1 when some were refused (each refusal is printed in its place as
 * {"line": L, "error": "..."}), 2 when the file cannot be read or the engine fails. */
static int run_batch(vt_engine *e, const vt_bundle *b, const vt_catalog *c, const char *path,
                     int batch) {
  FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
  if (!f) {
    fprintf(stderr, "vitrine: %s: cannot read the requests\n", path);
    return 2;
  }
  vt_request *reqs = calloc((size_t)batch, sizeof *reqs);
  vt_storefront *out = calloc((size_t)batch, sizeof *out);
  long *line_no = calloc((size_t)batch, sizeof *line_no);
  char **errors = calloc((size_t)batch, sizeof *errors);
  int *ok = calloc((size_t)batch, sizeof *ok), *slot_of = calloc((size_t)batch, sizeof *slot_of);
  int status = 0, eof = 0;
  long lineno = 0, n_ok = 0, n_bad = 0;
  char *line = NULL;
  size_t cap = 0;
  if (!reqs || !out || !line_no || !errors || !ok || !slot_of) {
    fprintf(stderr, "vitrine: out of memory\n");
    status = 2;
    eof = 1;
  }
  while (!eof) {
    /* read up to `batch` lines; refused lines keep their place in the output */
    int n = 0, n_req = 0;
    while (n < batch) {
      ssize_t got = getline(&line, &cap, f);
      if (got < 0) {
        eof = 1;
        break;
      }
      lineno++;
      if (got == 0 || strspn(line, " \t\r\n") == (size_t)got)
        continue; /* blank lines are skipped, as JSON-lines readers do */
      vt_err err = {0};
      line_no[n] = lineno;
      errors[n] = NULL;
      if (vt_request_parse(&reqs[n_req], line, (size_t)got, b, c, &err)) {
        errors[n] = strdup(err.msg);
        ok[n] = 0;
      } else {
        ok[n] = 1;
        slot_of[n] = n_req++;
      }
      n++;
    }
    if (n == 0)
      break;
    vt_err err = {0};
    if (n_req && vt_engine_run(e, reqs, n_req, out, NULL, NULL, &err)) {
      fprintf(stderr, "vitrine: %s: lines %ld..%ld: %s\n", path, line_no[0], line_no[n - 1],
              err.msg);
      status = 2;
      eof = 1;
    }
    for (int i = 0; i < n && status != 2; i++) {
      if (ok[i]) {
        char *js = vt_storefront_json(&out[slot_of[i]], b, c, 0);
        if (!js) {
          fprintf(stderr, "vitrine: out of memory\n");
          status = 2;
          break;
        }
        puts(js);
        free(js);
        n_ok++;
      } else {
        /* the message is ours (no quotes or control characters need escaping beyond these) */
        fputs("{\"line\": ", stdout);
        printf("%ld, \"error\": \"", line_no[i]);
        for (const char *p = errors[i] ? errors[i] : "out of memory"; *p; p++) {
          if (*p == '"' || *p == '\\')
            putchar('\\');
          if ((unsigned char)*p >= 0x20)
            putchar(*p);
        }
        fputs("\"}\n", stdout);
        n_bad++;
        if (status == 0)
          status = 1;
      }
    }
    for (int i = 0; i < n; i++)
      free(errors[i]);
    for (int i = 0; i < n_req; i++)
      vt_request_free(&reqs[i]);
  }
  fprintf(stderr, "vitrine batch: %ld answered, %ld refused\n", n_ok, n_bad);
  free(line);
  free(reqs);
  free(out);
  free(line_no);
  free(errors);
  free(ok);
  free(slot_of);
  if (f != stdin)
    fclose(f);
  return status;
}

/* `vitrine tokenize`: each stdin line is a JSON string; prints its token ids as a JSON list (all
 * of them: the engine keeps the first max_query_tokens). 0, or 2 for a line that is not a JSON
 * string of UTF-8 (reported, the others still printed). */
static int run_tokenize(const vt_bundle *b) {
  char *line = NULL;
  size_t cap = 0;
  long lineno = 0;
  int status = 0;
  ssize_t got;
  while ((got = getline(&line, &cap, stdin)) >= 0) {
    lineno++;
    cJSON *j = cJSON_ParseWithLength(line, (size_t)got);
    size_t at, n = cJSON_IsString(j) ? strlen(j->valuestring) : 0;
    int32_t *ids = cJSON_IsString(j) ? malloc((n + 1) * sizeof *ids) : NULL;
    if (!ids || vt_utf8_check(j->valuestring, n, &at) != VT_TEXT_OK) {
      fprintf(stderr, "vitrine tokenize: line %ld: not a JSON string of UTF-8 text\n", lineno);
      puts("null");
      status = 2;
    } else {
      int k = vt_request_tokenize(b, j->valuestring, n, ids, (int)n + 1);
      putchar('[');
      for (int i = 0; i < k; i++)
        printf("%s%d", i ? ", " : "", ids[i]);
      puts("]");
    }
    free(ids);
    cJSON_Delete(j);
  }
  free(line);
  return status;
}

int main(int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (strcmp(argv[1], "serve") == 0)
    return vt_serve_main(argc - 1, argv + 1);
  const char *cmd = argv[1], *bundle_dir = NULL, *catalog_dir = NULL, *request = NULL;
  const char *device = "cpu";
  int pretty = 0, batch = 64;
  const char *calibration = NULL;
  for (int i = 2; i < argc; i++) {
    if (strcmp(argv[i], "--bundle") == 0 && i + 1 < argc)
      bundle_dir = argv[++i];
    else if (strcmp(argv[i], "--catalog") == 0 && i + 1 < argc)
      catalog_dir = argv[++i];
    else if (strcmp(argv[i], "--request") == 0 && i + 1 < argc)
      request = argv[++i];
    else if (strcmp(argv[i], "--requests") == 0 && i + 1 < argc)
      request = argv[++i];
    else if (strcmp(argv[i], "--device") == 0 && i + 1 < argc)
      device = argv[++i];
    else if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc) {
      char *end;
      long v = strtol(argv[++i], &end, 10);
      if (*end || v < 1 || v > 4096) {
        fprintf(stderr, "vitrine: --batch must be an integer in 1..4096\n");
        return 2;
      }
      batch = (int)v;
    } else if (strcmp(argv[i], "--calibration") == 0 && i + 1 < argc)
      calibration = argv[++i];
    else if (strcmp(argv[i], "--pretty") == 0)
      pretty = 1;
    else {
      fprintf(stderr, "vitrine: unknown or incomplete argument '%s'\n", argv[i]);
      usage(stderr);
      return 2;
    }
  }
  int is_rec = strcmp(cmd, "recommend") == 0, is_info = strcmp(cmd, "info") == 0;
  int is_batch = strcmp(cmd, "batch") == 0;
  if (strcmp(cmd, "tokenize") == 0) {
    vt_err err = {0};
    vt_bundle *b = NULL;
    if (!bundle_dir) {
      fprintf(stderr, "vitrine tokenize: --bundle is required\n");
      return 2;
    }
    if (vt_bundle_load(&b, bundle_dir, &err)) {
      fprintf(stderr, "vitrine: %s\n", err.msg);
      return 2;
    }
    int st = run_tokenize(b);
    vt_bundle_free(b);
    return st;
  }
  if ((!is_rec && !is_info && !is_batch) || !bundle_dir || !catalog_dir ||
      ((is_rec || is_batch) && !request)) {
    if (!is_rec && !is_info && !is_batch)
      fprintf(stderr, "vitrine: unknown command '%s'\n", cmd);
    else
      fprintf(stderr, "vitrine %s: --bundle, --catalog%s are required\n", cmd,
                      is_rec ? " and --request" : is_batch ? " and --requests" : "");
    usage(stderr);
    return 2;
  }
  vt_err err = {0};
  vt_bundle *b = NULL;
  vt_catalog *c = NULL;
  vt_engine *e = NULL;
  int status = 2;
  if (vt_bundle_load(&b, bundle_dir, &err)) {
    fprintf(stderr, "vitrine: %s\n", err.msg);
    goto done;
  }
  if (calibration) {
    char *end;
    const float v = strtof(calibration, &end);
    if (*end || end == calibration || vt_bundle_check_calibration(b, v, &err)) {
      fprintf(stderr, "vitrine: --calibration: %s\n",
              *end || end == calibration ? "not a number" : err.msg);
      goto done;
    }
    b->rank_calibration = v;
  }
  if (vt_catalog_load(&c, catalog_dir, b, &err) || vt_engine_create_on(&e, b, c, device, &err)) {
    fprintf(stderr, "vitrine: %s\n", err.msg);
    goto done;
  }
  if (is_info) {
    printf("bundle    %s\n  model     %s\n  params    %lld (%.1f MiB of weights)\n", b->dir,
           b->model_version, (long long)b->n_params, (double)b->weight_bytes / (1 << 20));
    printf("  shape     d_model %d, heads %d, encoder %d, decoder %d, ffn %d, queries %d, "
           "max_events %d\n",
           b->cfg.d_model, b->cfg.n_heads, b->cfg.n_enc_layers, b->cfg.n_dec_layers, b->cfg.d_ff,
           b->cfg.n_queries, b->cfg.max_events);
    printf("  vocab     %d tokens\n  themes    %d (trie %d nodes)\n  keywords  %d (trie %d nodes)\n",
           b->cfg.vocab_size, b->themes.n, b->theme_trie.n_nodes, b->keywords.n,
           b->keyword_trie.n_nodes);
    printf("catalog   %s\n  version   %s\n  products  %d (embeddings %d-d, %.1f MiB)\n", c->dir,
           c->catalog_version, c->n_products, c->d_retrieval,
           (double)c->n_products * c->d_retrieval * 4 / (1 << 20));
    if (c->rules) {
      const vt_rules *r = c->rules;
      printf("rules     %s\n  version   %s\n  rules     %d lines\n  denied    %d themes, %d "
             "keywords, %d products\n  limited   by region or season: %d themes, %d keywords, %d "
             "products\n  allow-only %d sections\n",
             r->name, r->version, r->n_lines, r->n_themes_denied, r->n_keywords_denied,
             r->n_products_denied, r->n_themes_limited, r->n_keywords_limited,
             r->n_products_limited, r->n_sections_restricted);
    } else {
      printf("rules     none (no %s/%s)\n", c->dir, VT_RULES_FILE);
    }
    status = 0;
    goto done;
  }
  if (is_batch) {
    status = run_batch(e, b, c, request, batch);
    goto done;
  }
  size_t len = 0;
  char *json = read_all(request, &len);
  if (!json) {
    fprintf(stderr, "vitrine: %s: cannot read the request\n", request);
    goto done;
  }
  vt_request r;
  int rc = vt_request_parse(&r, json, len, b, c, &err);
  free(json);
  if (rc) {
    fprintf(stderr, "vitrine: %s: %s\n", request, err.msg);
    goto done;
  }
  vt_storefront *s = calloc(1, sizeof *s);
  if (!s || vt_engine_run(e, &r, 1, s, NULL, NULL, &err)) {
    fprintf(stderr, "vitrine: %s\n", s ? err.msg : "out of memory");
    free(s);
    vt_request_free(&r);
    goto done;
  }
  if (pretty) {
    print_pretty(s, b, c);
  } else {
    char *out = vt_storefront_json(s, b, c, 1);
    if (out)
      puts(out);
    free(out);
  }
  free(s);
  vt_request_free(&r);
  status = 0;
done:
  vt_engine_free(e);
  vt_catalog_free(c);
  vt_bundle_free(b);
  return status;
}
