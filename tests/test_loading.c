/* The bundle, catalogue and safetensors loaders against the fixture that train/fixture.py writes
 * (VT_FIXTURE), against corrupted copies of it, and against hand-written safetensors files.
 * Expected values are computed independently of the loaders (stdio, cJSON, sha256 of the files),
 * so a loader bug shows up as a disagreement rather than being copied into the expectation. */
#include <criterion/criterion.h>

#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/bundle.h"
#include "engine/catalog.h"
#include "engine/safetensors.h"

#define PATHLEN 1024

#define assert_msg_has(err, s) \
  cr_assert(strstr((err).msg, (s)) != NULL, "message \"%s\" lacks \"%s\"", (err).msg, (s))

/* ---- helpers ------------------------------------------------------------------------------- */

static const char *fixture(void) {
  const char *d = getenv("VT_FIXTURE");
  return d && *d ? d : "build/fixture";
}

static void join(char *out, const char *dir, const char *name) {
  cr_assert_lt((size_t)snprintf(out, PATHLEN, "%s/%s", dir, name), (size_t)PATHLEN, "path too long");
}

static void fixture_path(char *out, const char *rel) { join(out, fixture(), rel); }

static char *read_all(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  cr_assert(f, "cannot open %s", path);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc((size_t)n + 1);
  cr_assert(buf);
  cr_assert_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
  fclose(f);
  buf[n] = '\0';
  if (len) *len = (size_t)n;
  return buf;
}

static void write_all(const char *path, const void *buf, size_t len) {
  FILE *f = fopen(path, "wb");
  cr_assert(f, "cannot write %s", path);
  cr_assert_eq(fwrite(buf, 1, len, f), len);
  cr_assert_eq(fclose(f), 0);
}

static void copy_file(const char *src, const char *dst) {
  size_t n;
  char *buf = read_all(src, &n);
  write_all(dst, buf, n);
  free(buf);
}

/* Lines of a text file (each malloc'd, without the newline). */
static char **read_lines(const char *path, int *n) {
  char *buf = read_all(path, NULL), *s = buf, *nl;
  char **lines = NULL;
  *n = 0;
  while ((nl = strchr(s, '\n'))) {
    *nl = '\0';
    lines = realloc(lines, (size_t)(*n + 1) * sizeof *lines);
    lines[(*n)++] = strdup(s);
    s = nl + 1;
  }
  free(buf);
  return lines;
}

static void write_lines(const char *path, char **lines, int n) {
  FILE *f = fopen(path, "wb");
  cr_assert(f);
  for (int i = 0; i < n; i++) fprintf(f, "%s\n", lines[i]);
  cr_assert_eq(fclose(f), 0);
}

static void free_lines(char **lines, int n) {
  for (int i = 0; i < n; i++) free(lines[i]);
  free(lines);
}

static cJSON *json_load(const char *path) {
  char *buf = read_all(path, NULL);
  cJSON *j = cJSON_Parse(buf);
  free(buf);
  cr_assert(j, "%s is not JSON", path);
  return j;
}

static void json_save(const char *path, const cJSON *j) {
  char *s = cJSON_Print(j);
  write_all(path, s, strlen(s));
  free(s);
}

/* An independent safetensors reader: the raw bytes of a tensor, from the header via cJSON. */
struct raw_tensor {
  char *file;
  const unsigned char *data;
  size_t nbytes;
  cJSON *header;
};

static int raw_tensor(struct raw_tensor *r, const char *path, const char *name) {
  size_t len;
  memset(r, 0, sizeof *r);
  r->file = read_all(path, &len);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | (unsigned char)r->file[i];
  r->header = cJSON_ParseWithLength(r->file + 8, (size_t)hlen);
  cr_assert(r->header);
  const cJSON *e = cJSON_GetObjectItemCaseSensitive(r->header, name);
  if (!e) return 0;
  const cJSON *o = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
  size_t b = (size_t)cJSON_GetArrayItem(o, 0)->valuedouble, en = (size_t)cJSON_GetArrayItem(o, 1)->valuedouble;
  r->data = (const unsigned char *)r->file + 8 + hlen + b;
  r->nbytes = en - b;
  return 1;
}

static void raw_free(struct raw_tensor *r) {
  cJSON_Delete(r->header);
  free(r->file);
}

/* ---- the fixture loads ------------------------------------------------------------------------ */

static vt_bundle *load_fixture_bundle(void) {
  char dir[PATHLEN];
  vt_err err = {0};
  vt_bundle *b = NULL;
  fixture_path(dir, "bundle");
  int rc = vt_bundle_load(&b, dir, &err);
  cr_assert_eq(rc, 0, "bundle: %s", err.msg);
  cr_assert(b);
  return b;
}

static vt_catalog *load_fixture_catalog(const vt_bundle *b) {
  char dir[PATHLEN];
  vt_err err = {0};
  vt_catalog *c = NULL;
  fixture_path(dir, "catalog");
  int rc = vt_catalog_load(&c, dir, b, &err);
  cr_assert_eq(rc, 0, "catalog: %s", err.msg);
  cr_assert(c);
  return c;
}

Test(bundle, config_and_settings) {
  vt_bundle *b = load_fixture_bundle();
  const vt_config *c = &b->cfg;
  /* train/fixture.py's FIXTURE, and Config's defaults for the rest */
  cr_assert_eq(c->d_model, 36);
  cr_assert_eq(c->n_heads, 3);
  cr_assert_eq(c->n_enc_layers, 2);
  cr_assert_eq(c->n_dec_layers, 2);
  cr_assert_eq(c->d_ff, 80);
  cr_assert_eq(c->n_queries, 5);
  cr_assert_eq(c->d_retrieval, 20);
  cr_assert_eq(c->max_events, 40);
  cr_assert_eq(c->codebook, 32);
  cr_assert_eq(c->code_levels, 4);
  cr_assert_eq(c->max_dec_len, 16);
  cr_assert_eq(c->t2v_dim, 8);
  cr_assert_eq(c->n_time_buckets, 129);
  cr_assert_eq(c->max_query_tokens, 8);
  cr_assert_eq(c->n_regions, 4);
  /* train/fixture.py's RANKER; default decode and limits */
  cr_assert_eq(b->rank_again, 1.5f);
  cr_assert_eq(b->rank_cooc, 6.0f);
  cr_assert_eq(b->rank_popularity, 0.3f);
  cr_assert_eq(b->rank_decay, 0.8f);
  cr_assert_eq(b->rank_model.hidden, -1, "a ranker without a kind is the weights' mix");
  cr_assert_eq(b->theme_beam, 8);
  cr_assert_eq(b->keyword_beam, 8);
  cr_assert_eq(b->max_sections, 16);
  cr_assert_eq(b->max_keywords_per_section, 16);
  cr_assert_eq(b->max_products_per_section, 64);
  cr_assert_eq(b->max_query_bytes, 1024);
  cr_assert_eq(b->n_regions, 4);
  const char *names[] = {"eu", "us", "au", "sg"};
  const int offs[] = {0, 0, 2, 0}, fixed[] = {-1, -1, -1, 2};
  for (int r = 0; r < 4; r++) {
    cr_assert_str_eq(b->regions[r].name, names[r]);
    cr_assert_eq(b->regions[r].season_offset, offs[r]);
    cr_assert_eq(b->regions[r].fixed_season, fixed[r]);
  }
  /* model_version is "fixture-" + the first 12 hex digits of model.safetensors' sha256 */
  char path[PATHLEN], hex[65], want[64];
  fixture_path(path, "bundle/model.safetensors");
  cr_assert_eq(vt_sha256_file(hex, path, NULL), 0);
  snprintf(want, sizeof want, "fixture-%.12s", hex);
  cr_assert_str_eq(b->model_version, want);
  fixture_path(path, "bundle/keywords.tsv");
  cr_assert_eq(vt_sha256_file(hex, path, NULL), 0);
  cr_assert_str_eq(b->keywords_sha256, hex);
  fixture_path(path, "bundle");
  cr_assert_str_eq(b->dir, path);
  vt_bundle_free(b);
}

Test(bundle, params_count_every_tensor) {
  vt_bundle *b = load_fixture_bundle();
  char path[PATHLEN];
  vt_safetensors *st = NULL;
  fixture_path(path, "bundle/model.safetensors");
  cr_assert_eq(vt_st_open(&st, path, NULL), 0);
  int64_t n = 0;
  for (int i = 0; i < st->n; i++) n += st->tensors[i].numel;
  cr_assert_eq(b->n_params, n);
  cr_assert_eq(b->weight_bytes, (size_t)n * sizeof(float));
  cr_assert_eq(b->n_owned, 0, "the writer's aligned float32 tensors are used in place");
  cr_assert_str_eq(vt_st_meta(st, "format"), "vitrine-bundle");
  cr_assert_null(vt_st_meta(st, "no such key"));
  vt_st_close(st);
  vt_bundle_free(b);
}

Test(bundle, vocabulary) {
  vt_bundle *b = load_fixture_bundle();
  char path[PATHLEN];
  int n;
  fixture_path(path, "bundle/vocab.txt");
  char **lines = read_lines(path, &n);
  cr_assert_eq(b->cfg.vocab_size, n);
  const char *sp[] = {"<pad>", "<bos>", "<sep>", "<eos>", "<unk>"};
  for (int i = 0; i < VT_N_SPECIALS; i++) cr_assert_str_eq(b->vocab[i], sp[i]);
  for (int i = 0; i < n; i++) {
    cr_assert_str_eq(b->vocab[i], lines[i]);
    cr_assert_eq(vt_vocab_lookup(b, lines[i], strlen(lines[i])), i, "token %s", lines[i]);
  }
  cr_assert_eq(vt_vocab_lookup(b, "no-such-word", 12), VT_TOK_UNK);
  cr_assert_eq(vt_vocab_lookup(b, "", 0), VT_TOK_UNK);
  /* the length is what counts, not a terminator */
  cr_assert_eq(vt_vocab_lookup(b, "<eos>trailing", 5), VT_TOK_EOS);
  char with_nul[8] = {'<', 'p', 'a', 'd', '>', '\0', 'x', 0};
  cr_assert_eq(vt_vocab_lookup(b, with_nul, 7), VT_TOK_UNK);
  free_lines(lines, n);
  vt_bundle_free(b);
}

/* Node reached from the root by tokens, -1 if it leaves the trie (train/vocab.py's walk). */
static int walk(const vt_trie *t, const int32_t *tok, int n) {
  int node = 0;
  for (int i = 0; i < n; i++) {
    int next = -1;
    for (int e = t->indptr[node]; e < t->indptr[node + 1]; e++)
      if (t->token[e] == tok[i]) next = t->child[e];
    if (next < 0) return -1;
    node = next;
  }
  return node;
}

static void check_phrases(const vt_bundle *b, const vt_phrases *p, const vt_trie *t, const char *file,
                          int terminator) {
  char path[PATHLEN];
  int n;
  fixture_path(path, file);
  char **lines = read_lines(path, &n);
  cr_assert_eq(p->n, n, "%s: %d phrases, %d lines", file, p->n, n);
  cr_assert_eq(t->terminator, terminator);
  for (int i = 0; i < n; i++) {
    const char *text = strchr(lines[i], '\t') + 1;
    cr_assert_str_eq(p->text[i], text);
    /* tokens are the vocabulary ids of the space-separated words */
    char *copy = strdup(text), *save = NULL;
    int k = p->tok_off[i];
    for (char *w = strtok_r(copy, " ", &save); w; w = strtok_r(NULL, " ", &save), k++) {
      cr_assert_lt(k, p->tok_off[i + 1]);
      cr_assert_eq(p->tok[k], vt_vocab_lookup(b, w, strlen(w)), "%s:%d word %s", file, i + 1, w);
      cr_assert_geq(p->tok[k], VT_N_SPECIALS);
    }
    cr_assert_eq(k, p->tok_off[i + 1]);
    free(copy);
    /* the phrase, then the terminator, reaches a leaf that carries the phrase id */
    int len = p->tok_off[i + 1] - p->tok_off[i];
    int32_t seq[64];
    cr_assert_lt(len, 63);
    memcpy(seq, p->tok + p->tok_off[i], (size_t)len * sizeof *seq);
    int mid = walk(t, seq, len);
    cr_assert_geq(mid, 0);
    cr_assert_eq(t->phrase[mid], -1, "a node before the terminator completes no phrase");
    seq[len] = terminator;
    int node = walk(t, seq, len + 1);
    cr_assert_geq(node, 0, "%s:%d does not walk its trie", file, i + 1);
    cr_assert_eq(t->phrase[node], i, "%s:%d reaches phrase %d", file, i + 1, t->phrase[node]);
    cr_assert_eq(t->indptr[node], t->indptr[node + 1], "a phrase node is a leaf");
  }
  free_lines(lines, n);
}

Test(bundle, phrases_walk_their_tries) {
  vt_bundle *b = load_fixture_bundle();
  check_phrases(b, &b->themes, &b->theme_trie, "bundle/themes.tsv", VT_TOK_SEP);
  check_phrases(b, &b->keywords, &b->keyword_trie, "bundle/keywords.tsv", VT_TOK_EOS);
  char path[PATHLEN];
  fixture_path(path, "catalog/manifest.json");
  cJSON *m = json_load(path);
  cr_assert_eq(b->keywords.n, cJSON_GetObjectItem(m, "n_keywords")->valueint);
  cr_assert_gt(b->themes.n, 1);
  cJSON_Delete(m);
  vt_bundle_free(b);
}

static void check_trie_shape(const vt_trie *t, int n_phrases) {
  cr_assert_eq(t->n_edges, t->n_nodes - 1, "a tree: one edge into every node but the root");
  cr_assert_eq(t->indptr[0], 0);
  cr_assert_eq(t->indptr[t->n_nodes], t->n_edges);
  int terminal = 0;
  for (int s = 0; s < t->n_nodes; s++) {
    cr_assert_leq(t->indptr[s], t->indptr[s + 1]);
    for (int e = t->indptr[s]; e < t->indptr[s + 1]; e++) {
      if (e > t->indptr[s]) cr_assert_lt(t->token[e - 1], t->token[e], "children in token order");
      /* breadth-first numbering: edge e leads to node e + 1, always after its parent */
      cr_assert_eq(t->child[e], e + 1);
      cr_assert_gt(t->child[e], s);
      cr_assert_eq(t->token[e] == t->terminator, t->phrase[t->child[e]] >= 0,
                   "exactly the terminator's children carry a phrase");
    }
    if (t->phrase[s] >= 0) terminal++;
  }
  cr_assert_eq(t->phrase[0], -1);
  cr_assert_eq(terminal, n_phrases);
}

Test(bundle, trie_structure) {
  vt_bundle *b = load_fixture_bundle();
  check_trie_shape(&b->theme_trie, b->themes.n);
  check_trie_shape(&b->keyword_trie, b->keywords.n);
  vt_bundle_free(b);
}

Test(trie, matches_python_node_for_node) {
  /* train.vocab.Trie([[5,6],[5],[7,5],[6],[5,6,7],[]], 3), printed by Python */
  int32_t off[] = {0, 2, 3, 5, 6, 9, 9}, tok[] = {5, 6, 5, 7, 5, 6, 5, 6, 7};
  vt_phrases p = {.n = 6, .tok_off = off, .tok = tok};
  const int32_t indptr[] = {0, 4, 4, 6, 7, 8, 8, 10, 10, 11, 11, 12, 12, 12};
  const int32_t token[] = {3, 5, 6, 7, 3, 6, 3, 5, 3, 7, 3, 3};
  const int32_t phrase[] = {-1, 5, -1, -1, -1, 1, -1, 3, -1, 0, -1, 2, 4};
  vt_trie t;
  vt_err err = {0};
  cr_assert_eq(vt_trie_build(&t, &p, 3, &err), 0, "%s", err.msg);
  cr_assert_eq(t.n_nodes, 13);
  cr_assert_eq(t.n_edges, 12);
  cr_assert_arr_eq(t.indptr, indptr, sizeof indptr);
  cr_assert_arr_eq(t.token, token, sizeof token);
  cr_assert_arr_eq(t.phrase, phrase, sizeof phrase);
  for (int e = 0; e < 12; e++) cr_assert_eq(t.child[e], e + 1);
  vt_trie_free(&t);
  cr_assert_null(t.indptr);
}

Test(trie, refuses_duplicates_and_terminator) {
  int32_t off[] = {0, 2, 3, 5}, tok[] = {5, 6, 7, 5, 6};
  vt_phrases p = {.n = 3, .tok_off = off, .tok = tok};
  vt_trie t;
  vt_err err = {0};
  cr_assert_eq(vt_trie_build(&t, &p, 3, &err), VT_EFORMAT);
  assert_msg_has(err, "duplicate phrase 2");
  cr_assert_null(t.indptr);
  int32_t off2[] = {0, 2}, tok2[] = {5, 3};
  vt_phrases q = {.n = 1, .tok_off = off2, .tok = tok2};
  cr_assert_eq(vt_trie_build(&t, &q, 3, &err), VT_EFORMAT);
  assert_msg_has(err, "terminator");
  cr_assert_eq(vt_trie_build(&t, &q, 2, &err), 0, "%s", err.msg); /* 3 is a word for another trie */
  vt_trie_free(&t);
}

/* Every tensor of the file, by name, to the loader's pointer (the spec, written out again). */
static const float *weight_by_name(const vt_bundle *b, const char *name) {
  const vt_weights *w = &b->w;
  char n[96];
  struct { const char *name; const float *p; } top[] = {
      {"action_emb.weight", w->action_emb}, {"region_emb.weight", w->region_emb},
      {"t2v_w", w->t2v_w}, {"t2v_b", w->t2v_b}, {"time_proj.weight", w->time_w},
      {"time_proj.bias", w->time_b}, {"ln_emb.weight", w->ln_emb_w}, {"ln_emb.bias", w->ln_emb_b},
      {"ln_enc.weight", w->ln_enc_w}, {"ln_enc.bias", w->ln_enc_b}, {"queries", w->queries},
      {"qf_rms1.weight", w->qf_rms1_w}, {"qf_rms2.weight", w->qf_rms2_w},
      {"qf_attn.q.weight", w->qf_q_w}, {"qf_attn.q.bias", w->qf_q_b},
      {"qf_attn.kv.weight", w->qf_kv_w}, {"qf_attn.kv.bias", w->qf_kv_b},
      {"qf_attn.proj.weight", w->qf_proj_w}, {"qf_attn.proj.bias", w->qf_proj_b},
      {"qf_ffn.fc1.weight", w->qf_fc1_w}, {"qf_ffn.fc1.bias", w->qf_fc1_b},
      {"qf_ffn.fc2.weight", w->qf_fc2_w}, {"qf_ffn.fc2.bias", w->qf_fc2_b},
      {"ln_mem.weight", w->ln_mem_w}, {"ln_mem.bias", w->ln_mem_b},
      {"tok_emb.weight", w->tok_emb}, {"pos_emb.weight", w->pos_emb},
      {"ln_dec.weight", w->ln_dec_w}, {"ln_dec.bias", w->ln_dec_b},
      {"user_proj.weight", w->user_w}, {"user_proj.bias", w->user_b},
      {"prod_proj.weight", w->prod_w}, {"prod_proj.bias", w->prod_b},
  };
  for (size_t i = 0; i < sizeof top / sizeof top[0]; i++)
    if (strcmp(top[i].name, name) == 0) return top[i].p;
  for (int l = 0; l < VT_MAX_LEVELS; l++) {
    snprintf(n, sizeof n, "code_emb.%d.weight", l);
    if (strcmp(n, name) == 0) return w->code_emb[l];
  }
  for (int i = 0; i < VT_MAX_LAYERS; i++) {
    const vt_enc_layer *L = &w->enc[i];
    struct { const char *sub; const float *p; } enc[] = {
        {"ln1.weight", L->ln1_w}, {"ln1.bias", L->ln1_b}, {"ln2.weight", L->ln2_w},
        {"ln2.bias", L->ln2_b}, {"attn.qkv.weight", L->qkv_w}, {"attn.qkv.bias", L->qkv_b},
        {"attn.proj.weight", L->proj_w}, {"attn.proj.bias", L->proj_b},
        {"time_bias", L->time_bias}, {"ffn.fc1.weight", L->fc1_w}, {"ffn.fc1.bias", L->fc1_b},
        {"ffn.fc2.weight", L->fc2_w}, {"ffn.fc2.bias", L->fc2_b}};
    for (size_t k = 0; k < sizeof enc / sizeof enc[0]; k++) {
      snprintf(n, sizeof n, "enc.%d.%s", i, enc[k].sub);
      if (strcmp(n, name) == 0) return enc[k].p;
    }
    const vt_dec_layer *D = &w->dec[i];
    struct { const char *sub; const float *p; } dec[] = {
        {"ln1.weight", D->ln1_w}, {"ln1.bias", D->ln1_b}, {"ln2.weight", D->ln2_w},
        {"ln2.bias", D->ln2_b}, {"ln3.weight", D->ln3_w}, {"ln3.bias", D->ln3_b},
        {"self_attn.qkv.weight", D->sa_qkv_w}, {"self_attn.qkv.bias", D->sa_qkv_b},
        {"self_attn.proj.weight", D->sa_proj_w}, {"self_attn.proj.bias", D->sa_proj_b},
        {"cross_attn.q.weight", D->ca_q_w}, {"cross_attn.q.bias", D->ca_q_b},
        {"cross_attn.kv.weight", D->ca_kv_w}, {"cross_attn.kv.bias", D->ca_kv_b},
        {"cross_attn.proj.weight", D->ca_proj_w}, {"cross_attn.proj.bias", D->ca_proj_b},
        {"ffn.fc1.weight", D->fc1_w}, {"ffn.fc1.bias", D->fc1_b},
        {"ffn.fc2.weight", D->fc2_w}, {"ffn.fc2.bias", D->fc2_b}};
    for (size_t k = 0; k < sizeof dec / sizeof dec[0]; k++) {
      snprintf(n, sizeof n, "dec.%d.%s", i, dec[k].sub);
      if (strcmp(n, name) == 0) return dec[k].p;
    }
  }
  return NULL;
}

Test(bundle, every_weight_equals_the_file_bytes) {
  vt_bundle *b = load_fixture_bundle();
  char path[PATHLEN];
  struct raw_tensor r;
  fixture_path(path, "bundle/model.safetensors");
  raw_tensor(&r, path, "");
  int n = 0;
  const cJSON *e;
  cJSON_ArrayForEach(e, r.header) {
    if (strcmp(e->string, "__metadata__") == 0) continue;
    struct raw_tensor t;
    cr_assert(raw_tensor(&t, path, e->string));
    const float *p = weight_by_name(b, e->string);
    cr_assert_not_null(p, "no vt_weights pointer for %s", e->string);
    cr_assert_eq(memcmp(p, t.data, t.nbytes), 0, "%s differs from the file", e->string);
    raw_free(&t);
    n++;
  }
  /* 4 code levels, 13 per encoder layer, 20 per decoder layer, 33 others */
  cr_assert_eq(n, 4 + 13 * 2 + 20 * 2 + 33);
  /* a sample by value: the first element of tok_emb as the bytes say */
  struct raw_tensor t;
  cr_assert(raw_tensor(&t, path, "tok_emb.weight"));
  float f0;
  memcpy(&f0, t.data, sizeof f0);
  cr_assert_eq(b->w.tok_emb[0], f0);
  cr_assert_neq(f0, 0.0f);
  raw_free(&t);
  raw_free(&r);
  cr_assert_null(b->w.enc[2].fc1_w, "no layer beyond n_enc_layers");
  cr_assert_null(b->w.code_emb[4]);
  vt_bundle_free(b);
}

/* ---- catalogue ------------------------------------------------------------------------------ */

struct product_line {
  char *f[10];
};

static struct product_line *parse_products(char ***lines_out, int *n_out) {
  char path[PATHLEN];
  int n;
  fixture_path(path, "catalog/products.tsv");
  char **lines = read_lines(path, &n);
  struct product_line *p = calloc((size_t)n, sizeof *p);
  for (int i = 1; i < n; i++) {
    char *s = lines[i];
    for (int k = 0; k < 10; k++) p[i - 1].f[k] = strsep(&s, "\t");
    cr_assert_null(s, "line %d has more than 10 fields", i + 1);
  }
  *lines_out = lines;
  *n_out = n - 1;
  return p;
}

Test(catalog, products_match_the_file) {
  vt_bundle *b = load_fixture_bundle();
  vt_catalog *c = load_fixture_catalog(b);
  char **lines;
  int n;
  struct product_line *p = parse_products(&lines, &n);
  char path[PATHLEN];
  fixture_path(path, "catalog/manifest.json");
  cJSON *m = json_load(path);
  cr_assert_eq(c->n_products, n);
  cr_assert_eq(c->n_products, cJSON_GetObjectItem(m, "n_products")->valueint);
  cr_assert_eq(c->n_products, 300);
  cr_assert_eq(c->d_retrieval, b->cfg.d_retrieval);
  cr_assert_eq(c->code_levels, b->cfg.code_levels);
  cr_assert_str_eq(c->catalog_version, "fixture-1");
  cr_assert_str_eq(c->model_version, b->model_version);
  int n_rel = 0;
  for (int i = 0; i < n; i++) {
    cr_assert_eq(atoi(p[i].f[0]), i);
    cr_assert_str_eq(c->ids[i], p[i].f[1]);
    cr_assert_str_eq(c->titles[i], p[i].f[9]);
    cr_assert_eq(c->stock[i], atoi(p[i].f[2]));
    cr_assert_eq(c->popularity[i], atoi(p[i].f[7]));
    cr_assert_eq(c->log_pop[i], (float)log1p((double)atoi(p[i].f[7])));
    uint32_t reg = 0;
    for (int r = 0; r < b->n_regions; r++) {
      char *s = strdup(p[i].f[3]), *save = NULL;
      for (char *w = strtok_r(s, ",", &save); w; w = strtok_r(NULL, ",", &save))
        if (strcmp(w, b->regions[r].name) == 0) reg |= 1u << r;
      free(s);
    }
    cr_assert_eq(c->regions[i], reg, "line %d regions", i + 2);
    const char *sn[] = {"winter", "spring", "summer", "autumn"};
    uint8_t sea = 0;
    for (int k = 0; k < 4; k++)
      if (strstr(p[i].f[4], sn[k])) sea |= (uint8_t)(1u << k);
    cr_assert_eq(c->seasons[i], sea, "line %d seasons", i + 2);
    char *s = p[i].f[6];
    for (int l = 0; l < c->code_levels; l++) {
      long v = strtol(s, &s, 10);
      if (*s == ',') s++;
      cr_assert_eq(c->codes[i * c->code_levels + l], v);
      cr_assert(v >= 0 && v < b->cfg.codebook);
    }
    /* related: idx:weight pairs in file order, weights the float32 the writer printed */
    int k = c->rel_off[i];
    s = p[i].f[8];
    while (*s) {
      long idx = strtol(s, &s, 10);
      cr_assert_eq(*s, ':');
      float w = (float)strtod(s + 1, &s);
      if (*s == ',') s++;
      cr_assert_lt(k, c->rel_off[i + 1]);
      cr_assert_eq(c->rel_idx[k], idx);
      cr_assert_eq(c->rel_w[k], w);
      k++;
    }
    cr_assert_eq(k, c->rel_off[i + 1]);
    n_rel += c->rel_off[i + 1] - c->rel_off[i];
  }
  cr_assert_gt(n_rel, 0);
  cJSON_Delete(m);
  free(p);
  free_lines(lines, n + 1);
  vt_catalog_free(c);
  vt_bundle_free(b);
}

Test(catalog, keyword_index_is_ascending_and_consistent) {
  vt_bundle *b = load_fixture_bundle();
  vt_catalog *c = load_fixture_catalog(b);
  char **lines;
  int n;
  struct product_line *p = parse_products(&lines, &n);
  int n_kw = b->keywords.n, listed = 0;
  cr_assert_eq(c->kw_off[0], 0);
  for (int k = 0; k < n_kw; k++) {
    cr_assert_leq(c->kw_off[k], c->kw_off[k + 1]);
    for (int i = c->kw_off[k] + 1; i < c->kw_off[k + 1]; i++)
      cr_assert_lt(c->kw_prod[i - 1], c->kw_prod[i], "keyword %d not ascending", k);
  }
  /* every (product, keyword) of the file is in the index, and nothing else is */
  for (int i = 0; i < n; i++) {
    char *s = strdup(p[i].f[5]), *save = NULL;
    for (char *w = strtok_r(s, ",", &save); w; w = strtok_r(NULL, ",", &save)) {
      int k = atoi(w), found = 0;
      cr_assert(k >= 0 && k < n_kw);
      for (int j = c->kw_off[k]; j < c->kw_off[k + 1]; j++) found |= c->kw_prod[j] == i;
      cr_assert(found, "product %d missing from keyword %d", i, k);
      listed++;
    }
    free(s);
  }
  cr_assert_gt(listed, 0);
  cr_assert_eq(c->kw_off[n_kw], listed);
  free(p);
  free_lines(lines, n + 1);
  vt_catalog_free(c);
  vt_bundle_free(b);
}

Test(catalog, embeddings_equal_the_file_bytes) {
  vt_bundle *b = load_fixture_bundle();
  vt_catalog *c = load_fixture_catalog(b);
  char path[PATHLEN];
  struct raw_tensor r;
  fixture_path(path, "catalog/embeddings.safetensors");
  cr_assert(raw_tensor(&r, path, "product_embeddings"));
  cr_assert_eq(r.nbytes, (size_t)c->n_products * (size_t)c->d_retrieval * sizeof(float));
  cr_assert_eq(memcmp(c->emb, r.data, r.nbytes), 0);
  raw_free(&r);
  vt_catalog_free(c);
  vt_bundle_free(b);
}

Test(catalog, find_round_trips_every_id) {
  vt_bundle *b = load_fixture_bundle();
  vt_catalog *c = load_fixture_catalog(b);
  for (int i = 0; i < c->n_products; i++)
    cr_assert_eq(vt_catalog_find(c, c->ids[i], strlen(c->ids[i])), i, "id %s", c->ids[i]);
  cr_assert_eq(vt_catalog_find(c, "nope", 4), -1);
  cr_assert_eq(vt_catalog_find(c, "", 0), -1);
  char longer[64];
  snprintf(longer, sizeof longer, "%sx", c->ids[1]);
  cr_assert_eq(vt_catalog_find(c, longer, strlen(longer)), -1);
  cr_assert_eq(vt_catalog_find(c, longer, strlen(c->ids[1])), 1, "only len bytes count");
  cr_assert_eq(vt_catalog_find(c, c->ids[1], strlen(c->ids[1]) - 1), -1);
  vt_catalog_free(c);
  vt_bundle_free(b);
}

/* ---- corrupted copies ------------------------------------------------------------------------ */

static char g_tmp[PATHLEN], g_bundle[PATHLEN], g_catalog[PATHLEN];

static void copy_dir(const char *src, const char *dst) {
  DIR *d = opendir(src);
  cr_assert(d, "cannot open %s", src);
  cr_assert_eq(mkdir(dst, 0700), 0);
  struct dirent *e;
  while ((e = readdir(d))) {
    char a[PATHLEN], b[PATHLEN];
    if (e->d_name[0] == '.') continue;
    join(a, src, e->d_name);
    join(b, dst, e->d_name);
    copy_file(a, b);
  }
  closedir(d);
}

static void rm_dir(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d))) {
    char p[PATHLEN];
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    if ((size_t)snprintf(p, sizeof p, "%s/%s", dir, e->d_name) >= sizeof p) continue;
    struct stat sb;
    if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode)) rm_dir(p);
    else unlink(p);
  }
  closedir(d);
  rmdir(dir);
}

static void setup_copy(void) {
  char src[PATHLEN];
  snprintf(g_tmp, sizeof g_tmp, "/tmp/vt_loading_XXXXXX");
  cr_assert_not_null(mkdtemp(g_tmp));
  join(g_bundle, g_tmp, "bundle");
  join(g_catalog, g_tmp, "catalog");
  fixture_path(src, "bundle");
  copy_dir(src, g_bundle);
  fixture_path(src, "catalog");
  copy_dir(src, g_catalog);
}

static void teardown_copy(void) {
  if (g_tmp[0]) rm_dir(g_tmp);
}

TestSuite(corrupt, .init = setup_copy, .fini = teardown_copy);

static void in(char *out, const char *dir, const char *name) { join(out, dir, name); }

/* Records a rewritten file's size and sha256 in its directory's manifest, so that the loader
 * gets past the checksums to the check a test is about. */
static void refresh(const char *dir, const char *name) {
  char mpath[PATHLEN], fpath[PATHLEN], hex[65];
  struct stat sb;
  in(mpath, dir, "manifest.json");
  in(fpath, dir, name);
  cr_assert_eq(vt_sha256_file(hex, fpath, NULL), 0);
  cr_assert_eq(stat(fpath, &sb), 0);
  cJSON *m = json_load(mpath);
  cJSON *e = cJSON_GetObjectItem(cJSON_GetObjectItem(m, "files"), name);
  cr_assert(e);
  cJSON_ReplaceItemInObject(e, "sha256", cJSON_CreateString(hex));
  cJSON_ReplaceItemInObject(e, "bytes", cJSON_CreateNumber((double)sb.st_size));
  json_save(mpath, m);
  cJSON_Delete(m);
}

static int load_copy_bundle(vt_err *err) {
  vt_bundle *b = (vt_bundle *)(uintptr_t)1; /* must be reset to NULL on failure */
  int rc = vt_bundle_load(&b, g_bundle, err);
  cr_assert_eq(rc != 0, b == NULL, "*out is set exactly on success");
  vt_bundle_free(b);
  return rc;
}

static int load_copy_catalog(vt_err *err) {
  vt_bundle *b = NULL;
  vt_catalog *c = (vt_catalog *)(uintptr_t)1;
  cr_assert_eq(vt_bundle_load(&b, g_bundle, err), 0, "%s", err->msg);
  int rc = vt_catalog_load(&c, g_catalog, b, err);
  cr_assert_eq(rc != 0, c == NULL);
  vt_catalog_free(c);
  vt_bundle_free(b);
  return rc;
}

Test(corrupt, pristine_copy_loads) {
  vt_err err = {0};
  cr_assert_eq(load_copy_bundle(&err), 0, "%s", err.msg);
  cr_assert_eq(load_copy_catalog(&err), 0, "%s", err.msg);
}

Test(corrupt, flipped_byte_is_a_sha256_mismatch) {
  char path[PATHLEN];
  size_t n;
  in(path, g_bundle, "model.safetensors");
  char *buf = read_all(path, &n);
  buf[n / 2] ^= 0x01;
  write_all(path, buf, n);
  free(buf);
  vt_err err = {0};
  cr_assert_eq(load_copy_bundle(&err), VT_EFORMAT);
  assert_msg_has(err, "model.safetensors");
  assert_msg_has(err, "sha256");
}

Test(corrupt, truncated_file) {
  char path[PATHLEN];
  size_t n;
  in(path, g_bundle, "model.safetensors");
  char *buf = read_all(path, &n);
  write_all(path, buf, n - 4);
  free(buf);
  vt_err err = {0};
  cr_assert_eq(load_copy_bundle(&err), VT_EFORMAT);
  assert_msg_has(err, path);
  assert_msg_has(err, "truncated");
}

Test(corrupt, missing_file) {
  char path[PATHLEN];
  in(path, g_bundle, "themes.tsv");
  cr_assert_eq(unlink(path), 0);
  vt_err err = {0};
  cr_assert_eq(load_copy_bundle(&err), VT_EIO);
  assert_msg_has(err, path);
  assert_msg_has(err, "missing");
}

Test(corrupt, missing_directory) {
  vt_err err = {0};
  vt_bundle *b = NULL;
  cr_assert_eq(vt_bundle_load(&b, "/nonexistent/vitrine", &err), VT_EIO);
  assert_msg_has(err, "/nonexistent/vitrine/manifest.json");
  cr_assert_null(b);
}

/* Applies edit to dir/manifest.json. */
static void edit_manifest(const char *dir, void (*edit)(cJSON *)) {
  char mpath[PATHLEN];
  in(mpath, dir, "manifest.json");
  cJSON *m = json_load(mpath);
  edit(m);
  json_save(mpath, m);
  cJSON_Delete(m);
}

static void set_version_2(cJSON *m) { cJSON_ReplaceItemInObject(m, "format_version", cJSON_CreateNumber(2)); }
static void set_format(cJSON *m) { cJSON_ReplaceItemInObject(m, "format", cJSON_CreateString("vitrine-catalog")); }
static void set_d_ff(cJSON *m) { cJSON_ReplaceItemInObject(cJSON_GetObjectItem(m, "config"), "d_ff", cJSON_CreateNumber(81)); }
static void set_vocab_size(cJSON *m) { cJSON_ReplaceItemInObject(cJSON_GetObjectItem(m, "config"), "vocab_size", cJSON_CreateNumber(84)); }
static void add_config_field(cJSON *m) { cJSON_AddNumberToObject(cJSON_GetObjectItem(m, "config"), "d_modle", 36); }
static void unlist_vocab(cJSON *m) { cJSON_DeleteItemFromObject(cJSON_GetObjectItem(m, "files"), "vocab.txt"); }
static void drop_region(cJSON *m) { cJSON_DeleteItemFromArray(cJSON_GetObjectItem(m, "regions"), 3); }

Test(corrupt, format_version_2) {
  edit_manifest(g_bundle, set_version_2);
  vt_err err = {0};
  cr_assert_eq(load_copy_bundle(&err), VT_EFORMAT);
  assert_msg_has(err, "manifest.json");
  assert_msg_has(err, "format_version 2");
}

Test(corrupt, wrong_format) {
  edit_manifest(g_bundle, set_format);
  vt_err err = {0};
  cr_assert_eq(load_copy_bundle(&err), VT_EFORMAT);
  assert_msg_has(err, "manifest.json: format is not 'vitrine-bundle'");
}

Test(corrupt, manifest_not_json) {
  char path[PATHLEN];
  in(path, g_bundle, "manifest.json");
  write_all(path, "{\"format\": ", 11);
  vt_err err = {0};
  cr_assert_eq(load_copy_bundle(&err), VT_EFORMAT);
  assert_msg_has(err, path);
  assert_msg_has(err, "not valid JSON");
}

Test(corrupt, config_d_ff_mismatches_the_tensors) {
  edit_manifest(g_bundle, set_d_ff);
  vt_err err = {0};
  cr_assert_eq(load_copy_bundle(&err), VT_EFORMAT);
  assert_msg_has(err, "model.safetensors");
  /* the first tensor in state_dict order whose shape involves d_ff */
  assert_msg_has(err, "tensor enc.0.ffn.fc1.weight has shape [80, 36], the config implies [81, 36]");
}

Test(corrupt, config_unknown_field) {
  edit_manifest(g_bundle, add_config_field);
  vt_err err = {0};
  cr_assert_eq(load_copy_bundle(&err), VT_EFORMAT);
  assert_msg_has(err, "bad config");
  assert_msg_has(err, "d_modle");
}

Test(corrupt, vocab_size_disagrees) {
  edit_manifest(g_bundle, set_vocab_size);
  vt_err err = {0};
  cr_assert_eq(load_copy_bundle(&err), VT_EFORMAT);
  assert_msg_has(err, "vocab.txt");
  assert_msg_has(err, "vocab_size 84");
}

Test(corrupt, required_file_not_listed) {
  edit_manifest(g_bundle, unlist_vocab);
  vt_err err = {0};
  cr_assert_eq(load_copy_bundle(&err), VT_EFORMAT);
  assert_msg_has(err, "the manifest does not list vocab.txt");
}

Test(corrupt, regions_fewer_than_n_regions) {
  edit_manifest(g_bundle, drop_region);
  vt_err err = {0};
  cr_assert_eq(load_copy_bundle(&err), VT_EFORMAT);
  assert_msg_has(err, "regions must list n_regions=4 entries");
}

/* Replaces field `field` of line `line_no` (1-based) of dir/name, then refreshes the manifest. */
static void set_field(const char *dir, const char *name, int line_no, int field, const char *value) {
  char path[PATHLEN], out[4096] = "";
  int n;
  in(path, dir, name);
  char **lines = read_lines(path, &n);
  cr_assert_leq(line_no, n);
  char *s = lines[line_no - 1], *f;
  for (int k = 0; (f = strsep(&s, "\t")); k++) {
    if (k) strcat(out, "\t");
    strcat(out, k == field ? value : f);
  }
  free(lines[line_no - 1]);
  lines[line_no - 1] = strdup(out);
  write_lines(path, lines, n);
  free_lines(lines, n);
  refresh(dir, name);
}

Test(corrupt, phrase_word_outside_vocab) {
  set_field(g_bundle, "themes.tsv", 2, 1, "zzz unknownword");
  vt_err err = {0};
  cr_assert_eq(load_copy_bundle(&err), VT_EFORMAT);
  assert_msg_has(err, "themes.tsv:2: phrase 'zzz unknownword' has words outside vocab.txt");
}

Test(corrupt, phrase_table_bad_id) {
  set_field(g_bundle, "keywords.tsv", 3, 0, "7");
  vt_err err = {0};
  cr_assert_eq(load_copy_bundle(&err), VT_EFORMAT);
  assert_msg_has(err, "keywords.tsv:3: expected '2<TAB>text'");
}

Test(corrupt, duplicate_phrase) {
  char path[PATHLEN];
  int n;
  in(path, g_bundle, "themes.tsv");
  char **lines = read_lines(path, &n);
  char dup[512];
  snprintf(dup, sizeof dup, "%s", strchr(lines[0], '\t') + 1);
  free_lines(lines, n);
  set_field(g_bundle, "themes.tsv", 5, 1, dup);
  vt_err err = {0};
  cr_assert_eq(load_copy_bundle(&err), VT_EFORMAT);
  assert_msg_has(err, "themes.tsv: duplicate phrase 4");
}

Test(corrupt, last_line_without_newline) {
  char path[PATHLEN], want[64];
  size_t n;
  int lines = 0;
  in(path, g_bundle, "keywords.tsv");
  char *buf = read_all(path, &n);
  for (size_t i = 0; i < n; i++) lines += buf[i] == '\n';
  write_all(path, buf, n - 1);
  free(buf);
  refresh(g_bundle, "keywords.tsv");
  vt_err err = {0};
  cr_assert_eq(load_copy_bundle(&err), VT_EFORMAT);
  snprintf(want, sizeof want, "keywords.tsv:%d:", lines);
  assert_msg_has(err, want);
  assert_msg_has(err, "no newline");
}

Test(corrupt, nan_weight) {
  char path[PATHLEN];
  size_t n, off;
  vt_safetensors *st = NULL;
  in(path, g_bundle, "model.safetensors");
  cr_assert_eq(vt_st_open(&st, path, NULL), 0);
  off = (size_t)((const char *)vt_st_get(st, "pos_emb.weight")->data - (const char *)st->map) + 4 * 5;
  vt_st_close(st);
  char *buf = read_all(path, &n);
  float nan = NAN;
  memcpy(buf + off, &nan, sizeof nan);
  write_all(path, buf, n);
  free(buf);
  refresh(g_bundle, "model.safetensors");
  vt_err err = {0};
  cr_assert_eq(load_copy_bundle(&err), VT_EFORMAT);
  assert_msg_has(err, "model.safetensors: tensor pos_emb.weight has NaN or Inf values");
}

/* A safetensors writer for the tests: tensors in the given order, the header padded with
 * spaces so the data starts at `data_mod` modulo 8 (0 is what the Python writer makes). */
struct wt {
  const char *name, *dtype;
  int ndim;
  int64_t shape[4];
  const void *data;
  size_t nbytes;
};

static void write_st(const char *path, const struct wt *t, int n, int data_mod) {
  cJSON *h = cJSON_CreateObject();
  size_t off = 0;
  for (int i = 0; i < n; i++) {
    cJSON *e = cJSON_AddObjectToObject(h, t[i].name), *shape = cJSON_AddArrayToObject(e, "shape");
    cJSON *o = cJSON_AddArrayToObject(e, "data_offsets");
    cJSON_AddStringToObject(e, "dtype", t[i].dtype);
    for (int k = 0; k < t[i].ndim; k++) cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t[i].shape[k]));
    cJSON_AddItemToArray(o, cJSON_CreateNumber((double)off));
    cJSON_AddItemToArray(o, cJSON_CreateNumber((double)(off + t[i].nbytes)));
    off += t[i].nbytes;
  }
  char *js = cJSON_PrintUnformatted(h);
  size_t hlen = strlen(js);
  while ((8 + hlen) % 8 != (size_t)data_mod) hlen++;
  FILE *f = fopen(path, "wb");
  cr_assert(f);
  unsigned char len8[8];
  for (int i = 0; i < 8; i++) len8[i] = (unsigned char)(hlen >> (8 * i));
  fwrite(len8, 1, 8, f);
  fputs(js, f);
  for (size_t i = strlen(js); i < hlen; i++) fputc(' ', f);
  for (int i = 0; i < n; i++) fwrite(t[i].data, 1, t[i].nbytes, f);
  cr_assert_eq(fclose(f), 0);
  free(js);
  cJSON_Delete(h);
}

/* Rewrites the copy's model.safetensors from the fixture's tensors: without `drop`, with an
 * extra tensor if `extra`, with tok_emb.weight as BF16 if `bf16`, data at `data_mod` mod 8. */
static void rewrite_model(const char *drop, int extra, int bf16, int data_mod) {
  char src[PATHLEN], dst[PATHLEN];
  vt_safetensors *st = NULL;
  fixture_path(src, "bundle/model.safetensors");
  in(dst, g_bundle, "model.safetensors");
  cr_assert_eq(vt_st_open(&st, src, NULL), 0);
  struct wt *t = calloc((size_t)st->n + 1, sizeof *t);
  uint16_t *half = NULL;
  static const float extra_data[3] = {1, 2, 3};
  int n = 0;
  for (int i = 0; i < st->n; i++) {
    const vt_tensor *s = &st->tensors[i];
    if (drop && strcmp(s->name, drop) == 0) continue;
    t[n] = (struct wt){s->name, "F32", s->ndim, {s->shape[0], s->shape[1]}, s->data, s->nbytes};
    if (bf16 && strcmp(s->name, "tok_emb.weight") == 0) {
      half = malloc((size_t)s->numel * 2);
      for (int64_t k = 0; k < s->numel; k++) {
        uint32_t u;
        memcpy(&u, (const float *)s->data + k, 4);
        half[k] = (uint16_t)(u >> 16); /* truncation: exactly representable on widening */
      }
      t[n].dtype = "BF16";
      t[n].data = half;
      t[n].nbytes = (size_t)s->numel * 2;
    }
    n++;
  }
  if (extra) t[n++] = (struct wt){"extra.weight", "F32", 1, {3}, extra_data, sizeof extra_data};
  write_st(dst, t, n, data_mod);
  free(half);
  free(t);
  vt_st_close(st);
  refresh(g_bundle, "model.safetensors");
}

Test(corrupt, missing_tensor) {
  rewrite_model("ln_dec.bias", 0, 0, 0);
  vt_err err = {0};
  cr_assert_eq(load_copy_bundle(&err), VT_EFORMAT);
  assert_msg_has(err, "model.safetensors: missing tensor ln_dec.bias");
}

Test(corrupt, unexpected_tensor) {
  rewrite_model(NULL, 1, 0, 0);
  vt_err err = {0};
  cr_assert_eq(load_copy_bundle(&err), VT_EFORMAT);
  assert_msg_has(err, "model.safetensors: unexpected tensor extra.weight");
}

Test(corrupt, bf16_and_unaligned_tensors_are_converted) {
  rewrite_model(NULL, 0, 1, 2); /* data at 2 mod 8: no float32 is 4-byte aligned */
  vt_err err = {0};
  vt_bundle *b = NULL, *ref = load_fixture_bundle();
  cr_assert_eq(vt_bundle_load(&b, g_bundle, &err), 0, "%s", err.msg);
  cr_assert_eq(b->n_owned, 4 + 13 * 2 + 20 * 2 + 33, "every tensor is a converted copy");
  cr_assert_eq(b->n_params, ref->n_params);
  size_t n = (size_t)ref->cfg.vocab_size * (size_t)ref->cfg.d_model;
  for (size_t k = 0; k < n; k++) {
    uint32_t u;
    float want;
    memcpy(&u, &ref->w.tok_emb[k], 4);
    u &= 0xFFFF0000u;
    memcpy(&want, &u, 4);
    cr_assert_eq(b->w.tok_emb[k], want, "tok_emb[%zu]", k);
  }
  n = (size_t)ref->cfg.d_ff * (size_t)ref->cfg.d_model;
  cr_assert_eq(memcmp(b->w.dec[1].fc1_w, ref->w.dec[1].fc1_w, n * sizeof(float)), 0);
  cr_assert_eq(((uintptr_t)b->w.dec[1].fc1_w) % sizeof(float), 0);
  vt_bundle_free(b);
  vt_bundle_free(ref);
}

static void set_keywords_sha(cJSON *m) {
  cJSON_ReplaceItemInObject(m, "keywords_sha256", cJSON_CreateString(
      "0000000000000000000000000000000000000000000000000000000000000000"));
}
static void set_model_version(cJSON *m) { cJSON_ReplaceItemInObject(m, "model_version", cJSON_CreateString("student-000000000000")); }
static void swap_regions(cJSON *m) {
  cJSON *r = cJSON_GetObjectItem(m, "regions");
  cJSON_ReplaceItemInArray(r, 0, cJSON_CreateString("us"));
  cJSON_ReplaceItemInArray(r, 1, cJSON_CreateString("eu"));
}
static void set_codebook(cJSON *m) { cJSON_ReplaceItemInObject(m, "codebook", cJSON_CreateNumber(64)); }
static void set_n_products(cJSON *m) { cJSON_ReplaceItemInObject(m, "n_products", cJSON_CreateNumber(301)); }

Test(corrupt, catalog_unknown_region) {
  set_field(g_catalog, "products.tsv", 3, 3, "eu,mars");
  vt_err err = {0};
  cr_assert_eq(load_copy_catalog(&err), VT_EFORMAT);
  char want[PATHLEN];
  in(want, g_catalog, "products.tsv:3: unknown region 'mars'");
  assert_msg_has(err, want);
}

Test(corrupt, catalog_unknown_season) {
  set_field(g_catalog, "products.tsv", 4, 4, "winter,monsoon");
  vt_err err = {0};
  cr_assert_eq(load_copy_catalog(&err), VT_EFORMAT);
  assert_msg_has(err, "products.tsv:4: unknown season 'monsoon'");
}

Test(corrupt, catalog_related_out_of_range) {
  set_field(g_catalog, "products.tsv", 2, 8, "5:0.5,300:0.25");
  vt_err err = {0};
  cr_assert_eq(load_copy_catalog(&err), VT_EFORMAT);
  assert_msg_has(err, "products.tsv:2: related entry '300:0.25' out of range");
}

Test(corrupt, catalog_related_nan_weight) {
  set_field(g_catalog, "products.tsv", 2, 8, "5:nan");
  vt_err err = {0};
  cr_assert_eq(load_copy_catalog(&err), VT_EFORMAT);
  assert_msg_has(err, "products.tsv:2: related entry '5:nan' out of range");
}

Test(corrupt, catalog_code_out_of_range) {
  set_field(g_catalog, "products.tsv", 10, 6, "1,2,32,0");
  vt_err err = {0};
  cr_assert_eq(load_copy_catalog(&err), VT_EFORMAT);
  assert_msg_has(err, "products.tsv:10: codes must be 4 ints in 0..31");
}

Test(corrupt, catalog_keyword_out_of_range) {
  set_field(g_catalog, "products.tsv", 7, 5, "3,50");
  vt_err err = {0};
  cr_assert_eq(load_copy_catalog(&err), VT_EFORMAT);
  assert_msg_has(err, "products.tsv:7: keyword id 50 out of range");
}

Test(corrupt, catalog_wrong_index) {
  set_field(g_catalog, "products.tsv", 5, 0, "4x");
  vt_err err = {0};
  cr_assert_eq(load_copy_catalog(&err), VT_EFORMAT);
  assert_msg_has(err, "products.tsv:5: expected 10 fields starting with index 3");
}

Test(corrupt, catalog_negative_popularity) {
  set_field(g_catalog, "products.tsv", 6, 7, "-1");
  vt_err err = {0};
  cr_assert_eq(load_copy_catalog(&err), VT_EFORMAT);
  assert_msg_has(err, "products.tsv:6: popularity must be >= 0");
}

Test(corrupt, catalog_duplicate_id) {
  set_field(g_catalog, "products.tsv", 9, 1, "p00000");
  vt_err err = {0};
  cr_assert_eq(load_copy_catalog(&err), VT_EFORMAT);
  assert_msg_has(err, "products.tsv:9: duplicate product id p00000 (also on line 2)");
}

Test(corrupt, catalog_wrong_header) {
  set_field(g_catalog, "products.tsv", 1, 9, "name");
  vt_err err = {0};
  cr_assert_eq(load_copy_catalog(&err), VT_EFORMAT);
  assert_msg_has(err, "products.tsv: missing or wrong header line");
}

Test(corrupt, catalog_other_keywords_sha256) {
  edit_manifest(g_catalog, set_keywords_sha);
  vt_err err = {0};
  cr_assert_eq(load_copy_catalog(&err), VT_EFORMAT);
  assert_msg_has(err, "keywords_sha256 does not match the bundle's keywords.tsv");
}

Test(corrupt, catalog_other_model_version) {
  edit_manifest(g_catalog, set_model_version);
  vt_err err = {0};
  cr_assert_eq(load_copy_catalog(&err), VT_EFORMAT);
  assert_msg_has(err, "embeddings were made by model student-000000000000");
}

Test(corrupt, catalog_other_regions) {
  edit_manifest(g_catalog, swap_regions);
  vt_err err = {0};
  cr_assert_eq(load_copy_catalog(&err), VT_EFORMAT);
  assert_msg_has(err, "do not match the bundle's");
}

Test(corrupt, catalog_other_codebook) {
  edit_manifest(g_catalog, set_codebook);
  vt_err err = {0};
  cr_assert_eq(load_copy_catalog(&err), VT_EFORMAT);
  assert_msg_has(err, "codebook 64, the bundle's config says 32");
}

Test(corrupt, catalog_product_count) {
  edit_manifest(g_catalog, set_n_products);
  vt_err err = {0};
  cr_assert_eq(load_copy_catalog(&err), VT_EFORMAT);
  assert_msg_has(err, "products.tsv: 300 products, the manifest says 301");
}

Test(corrupt, catalog_embeddings_shape) {
  char path[PATHLEN];
  float *z = calloc(300 * 21, sizeof *z);
  struct wt t = {"product_embeddings", "F32", 2, {300, 21}, z, 300 * 21 * sizeof *z};
  in(path, g_catalog, "embeddings.safetensors");
  write_st(path, &t, 1, 0);
  free(z);
  refresh(g_catalog, "embeddings.safetensors");
  vt_err err = {0};
  cr_assert_eq(load_copy_catalog(&err), VT_EFORMAT);
  assert_msg_has(err, "embeddings.safetensors: product_embeddings must be (300, 20)");
}

/* ---- raw safetensors ------------------------------------------------------------------------ */

static char g_st[PATHLEN];

static void setup_st(void) {
  snprintf(g_tmp, sizeof g_tmp, "/tmp/vt_st_XXXXXX");
  cr_assert_not_null(mkdtemp(g_tmp));
  join(g_st, g_tmp, "t.safetensors");
}

TestSuite(safetensors, .init = setup_st, .fini = teardown_copy);

/* header (its length given explicitly, so it can lie), then data */
static void write_raw(const char *header, uint64_t hlen, const void *data, size_t n) {
  FILE *f = fopen(g_st, "wb");
  cr_assert(f);
  unsigned char len8[8];
  for (int i = 0; i < 8; i++) len8[i] = (unsigned char)(hlen >> (8 * i));
  fwrite(len8, 1, 8, f);
  fputs(header, f);
  if (n) fwrite(data, 1, n, f);
  cr_assert_eq(fclose(f), 0);
}

static vt_err open_bad(const char *header, const void *data, size_t n, int want) {
  vt_safetensors *st = (vt_safetensors *)(uintptr_t)1;
  vt_err err = {0};
  write_raw(header, strlen(header), data, n);
  cr_assert_eq(vt_st_open(&st, g_st, &err), want, "%s: %s", header, err.msg);
  cr_assert_null(st);
  assert_msg_has(err, g_st);
  return err;
}

static const unsigned char zeros[64];

Test(safetensors, widens_every_dtype) {
  const uint16_t f16[] = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x7C00, 0x3555};
  const uint16_t bf16[] = {0x3F80, 0xC0A0};
  const int32_t i32[] = {-7, 123456};
  const int64_t i64[] = {-3, 1LL << 40};
  const float f32[] = {0.25f, -1e-3f};
  struct wt t[] = {
      {"h", "F16", 2, {2, 3}, f16, sizeof f16}, {"b", "BF16", 1, {2}, bf16, sizeof bf16},
      {"i", "I32", 1, {2}, i32, sizeof i32},    {"l", "I64", 1, {2}, i64, sizeof i64},
      {"f", "F32", 1, {2}, f32, sizeof f32},    {"s", "F32", 0, {0}, f32, sizeof(float)},
  };
  write_st(g_st, t, 6, 0);
  vt_safetensors *st = NULL;
  vt_err err = {0};
  cr_assert_eq(vt_st_open(&st, g_st, &err), 0, "%s", err.msg);
  cr_assert_eq(st->n, 6);
  cr_assert_str_eq(st->tensors[0].name, "h", "header order");
  cr_assert_eq(st->n_meta, 0);
  const vt_tensor *h = vt_st_get(st, "h");
  cr_assert_eq(h->dtype, VT_F16);
  cr_assert_eq(h->ndim, 2);
  cr_assert_eq(h->shape[1], 3);
  cr_assert_eq(h->numel, 6);
  float *x = vt_tensor_to_f32(h);
  cr_assert_eq(x[0], 1.0f);
  cr_assert_eq(x[1], -2.0f);
  cr_assert_eq(x[2], 65504.0f);
  cr_assert_eq(x[3], ldexpf(1.0f, -24), "the smallest subnormal");
  cr_assert(isinf(x[4]) && x[4] > 0);
  cr_assert_float_eq(x[5], 1.0f / 3.0f, 1e-3);
  free(x);
  x = vt_tensor_to_f32(vt_st_get(st, "b"));
  cr_assert_eq(x[0], 1.0f);
  cr_assert_eq(x[1], -5.0f);
  free(x);
  x = vt_tensor_to_f32(vt_st_get(st, "i"));
  cr_assert_eq(x[0], -7.0f);
  cr_assert_eq(x[1], 123456.0f);
  free(x);
  x = vt_tensor_to_f32(vt_st_get(st, "l"));
  cr_assert_eq(x[0], -3.0f);
  cr_assert_eq(x[1], ldexpf(1.0f, 40));
  free(x);
  x = vt_tensor_to_f32(vt_st_get(st, "f"));
  cr_assert_eq(memcmp(x, f32, sizeof f32), 0);
  free(x);
  const vt_tensor *s = vt_st_get(st, "s");
  cr_assert_eq(s->ndim, 0, "a scalar");
  cr_assert_eq(s->numel, 1);
  cr_assert_null(vt_st_get(st, "nope"));
  vt_st_close(st);
}

Test(safetensors, metadata) {
  const char *hdr = "{\"__metadata__\":{\"format\":\"x\",\"n\":\"3\"},"
                    "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
  write_raw(hdr, strlen(hdr), zeros, 8);
  vt_safetensors *st = NULL;
  vt_err err = {0};
  cr_assert_eq(vt_st_open(&st, g_st, &err), 0, "%s", err.msg);
  cr_assert_eq(st->n, 1);
  cr_assert_str_eq(vt_st_meta(st, "format"), "x");
  cr_assert_str_eq(vt_st_meta(st, "n"), "3");
  cr_assert_null(vt_st_meta(st, "model"));
  vt_st_close(st);
}

Test(safetensors, header_length_beyond_the_file) {
  const char *hdr = "{}";
  write_raw(hdr, 1000, NULL, 0);
  vt_safetensors *st = NULL;
  vt_err err = {0};
  cr_assert_eq(vt_st_open(&st, g_st, &err), VT_EFORMAT);
  assert_msg_has(err, g_st);
  assert_msg_has(err, "header length 1000 exceeds the file");
}

Test(safetensors, shorter_than_the_length_field) {
  write_all(g_st, "abc", 3);
  vt_safetensors *st = NULL;
  vt_err err = {0};
  cr_assert_eq(vt_st_open(&st, g_st, &err), VT_EFORMAT);
  assert_msg_has(err, "truncated (no safetensors header)");
}

Test(safetensors, missing_file) {
  vt_safetensors *st = NULL;
  vt_err err = {0};
  cr_assert_eq(vt_st_open(&st, "/nonexistent/x.safetensors", &err), VT_EIO);
  assert_msg_has(err, "/nonexistent/x.safetensors: cannot read");
}

Test(safetensors, invalid_json) {
  vt_err e = open_bad("{\"a\": {\"dtype\": \"F32\",", NULL, 0, VT_EFORMAT);
  assert_msg_has(e, "header is not valid JSON");
  e = open_bad("{}  xx", NULL, 0, VT_EFORMAT);
  assert_msg_has(e, "header is not valid JSON");
  e = open_bad("[1, 2]", NULL, 0, VT_EFORMAT);
  assert_msg_has(e, "header is not a JSON object");
  e = open_bad("{\"\xff\": 1}", NULL, 0, VT_EFORMAT);
  assert_msg_has(e, "invalid UTF-8");
}

Test(safetensors, unknown_dtype) {
  vt_err e = open_bad("{\"w\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", zeros, 8,
                      VT_EFORMAT);
  assert_msg_has(e, "tensor w has unsupported dtype F64");
}

Test(safetensors, offsets_outside_the_file) {
  vt_err e = open_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[100],\"data_offsets\":[0,400]}}", zeros,
                      16, VT_EFORMAT);
  assert_msg_has(e, "tensor w data [0,400] lies outside the file (16 data bytes)");
  e = open_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", zeros, 16,
               VT_EFORMAT);
  assert_msg_has(e, "lies outside the file");
}

Test(safetensors, bytes_disagree_with_shape) {
  vt_err e = open_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}}", zeros, 16,
                      VT_EFORMAT);
  assert_msg_has(e, "tensor w has 16 bytes for shape [3] F32");
}

Test(safetensors, overlapping_tensors) {
  vt_err e = open_bad("{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]},"
                      "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                      zeros, 16, VT_EFORMAT);
  assert_msg_has(e, "tensors a and b overlap");
}

Test(safetensors, bad_shape_and_malformed_entries) {
  vt_err e = open_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", zeros, 8,
                      VT_EFORMAT);
  assert_msg_has(e, "tensor w has a bad shape [-1]");
  e = open_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", zeros, 8,
               VT_EFORMAT);
  assert_msg_has(e, "bad shape");
  e = open_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", zeros, 8, VT_EFORMAT);
  assert_msg_has(e, "tensor w has a malformed entry");
  e = open_bad("{\"w\":[1,2]}", zeros, 8, VT_EFORMAT);
  assert_msg_has(e, "tensor w has a malformed entry");
  e = open_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
               zeros, 8, VT_EFORMAT);
  assert_msg_has(e, "tensor w appears twice");
}

Test(safetensors, touching_and_empty_tensors_do_not_overlap) {
  const char *hdr = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                    "\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[8,8]},"
                    "\"b\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[8,16]}}";
  write_raw(hdr, strlen(hdr), zeros, 16);
  vt_safetensors *st = NULL;
  vt_err err = {0};
  cr_assert_eq(vt_st_open(&st, g_st, &err), 0, "%s", err.msg);
  cr_assert_eq(vt_st_get(st, "e")->numel, 0);
  float *x = vt_tensor_to_f32(vt_st_get(st, "e"));
  cr_assert_not_null(x, "an empty tensor still converts");
  free(x);
  vt_st_close(st);
}

/* ---- a learned ranker (manifest "ranker" of kind "learned") --------------------------------- */
Test(bundle, learned_ranker_loads_its_weights) {
  char path[PATHLEN];
  vt_err err = {0};
  vt_bundle *b = NULL;
  fixture_path(path, "learned/bundle");
  cr_assert_eq(vt_bundle_load(&b, path, &err), 0, "%s", err.msg);
  fixture_path(path, "learned/bundle/manifest.json");
  cJSON *m = json_load(path);
  const cJSON *r = cJSON_GetObjectItem(m, "ranker");
  const int H = cJSON_GetObjectItem(r, "hidden")->valueint, F = VT_RANKER_FEATURES;
  cr_assert_eq(b->rank_model.hidden, H);
  cr_assert_gt(H, 0);
  cr_assert_eq(b->rank_model.cooc_half, (float)cJSON_GetObjectItem(r, "cooc_half")->valuedouble);
  cr_assert_eq(b->rank_model.b2, (float)cJSON_GetObjectItem(r, "b2")->valuedouble);
  cr_assert_eq(b->rank_decay, (float)cJSON_GetObjectItem(r, "decay")->valuedouble);
  for (int j = 0; j < H; j++) {
    const cJSON *row = cJSON_GetArrayItem(cJSON_GetObjectItem(r, "w1"), j);
    for (int i = 0; i < F; i++)
      cr_assert_eq(b->rank_model.w1[j * F + i], (float)cJSON_GetArrayItem(row, i)->valuedouble,
                   "w1[%d][%d]", j, i);
    cr_assert_eq(b->rank_model.b1[j],
                 (float)cJSON_GetArrayItem(cJSON_GetObjectItem(r, "b1"), j)->valuedouble);
    cr_assert_eq(b->rank_model.w2[j],
                 (float)cJSON_GetArrayItem(cJSON_GetObjectItem(r, "w2"), j)->valuedouble);
  }
  cJSON_Delete(m);
  vt_bundle_free(b);
}

/* The copy's manifest gets a valid learned ranker (2 hidden units), then mutation g_bad. */
static int g_bad;

static cJSON *numbers(int n, double v) {
  cJSON *a = cJSON_CreateArray();
  for (int i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(v + 0.125 * i));
  return a;
}

static void set_learned_ranker(cJSON *m) {
  static const char *const names[] = VT_RANKER_FEATURE_NAMES;
  const int F = VT_RANKER_FEATURES;
  cJSON *r = cJSON_CreateObject(), *fs = cJSON_CreateArray(), *w1 = cJSON_CreateArray();
  for (int i = 0; i < F; i++)
    cJSON_AddItemToArray(fs, cJSON_CreateString(g_bad == 1 && i == 3 ? "cooc_saturated" : names[i]));
  for (int j = 0; j < 2; j++) cJSON_AddItemToArray(w1, numbers(g_bad == 3 && j == 1 ? F - 1 : F, -0.5));
  cJSON_AddStringToObject(r, "kind", g_bad == 6 ? "forest" : "learned");
  cJSON_AddNumberToObject(r, "decay", 0.5);
  if (g_bad != 2) cJSON_AddItemToObject(r, "features", fs);
  else cJSON_Delete(fs);
  cJSON_AddNumberToObject(r, "hidden", g_bad == 4 ? VT_RANKER_MAX_HIDDEN + 1 : 2);
  cJSON_AddNumberToObject(r, "cooc_half", g_bad == 5 ? 0.0 : 0.25);
  cJSON_AddItemToObject(r, "w1", w1);
  cJSON_AddItemToObject(r, "b1", numbers(2, 0.25));
  if (g_bad == 7) cJSON_AddStringToObject(r, "w2", "[1, 2]");
  else cJSON_AddItemToObject(r, "w2", numbers(2, 1.0));
  cJSON_AddNumberToObject(r, "b2", 0.0);
  cJSON_ReplaceItemInObject(m, "ranker", r);
}

Test(corrupt, learned_ranker_loads) {
  g_bad = 0;
  edit_manifest(g_bundle, set_learned_ranker);
  vt_err err = {0};
  vt_bundle *b = NULL;
  cr_assert_eq(vt_bundle_load(&b, g_bundle, &err), 0, "%s", err.msg);
  cr_assert_eq(b->rank_model.hidden, 2);
  cr_assert_eq(b->rank_model.cooc_half, 0.25f);
  cr_assert_eq(b->rank_model.w1[1 * VT_RANKER_FEATURES + 4], -0.5f + 0.125f * 4);
  cr_assert_eq(b->rank_model.w2[1], 1.125f);
  cr_assert_eq(b->rank_decay, 0.5f);
  vt_bundle_free(b);
}

Test(corrupt, malformed_learned_ranker_is_refused_naming_the_field) {
  static const char *const field[] = {NULL,           "ranker.features[3]", "ranker.features",
                                      "ranker.w1[1]", "ranker.hidden",      "ranker.cooc_half",
                                      "ranker.kind",  "ranker.w2"};
  char orig[PATHLEN], mpath[PATHLEN];
  in(mpath, g_bundle, "manifest.json");
  in(orig, g_tmp, "manifest.orig");
  copy_file(mpath, orig);
  for (g_bad = 1; g_bad <= 7; g_bad++) {
    copy_file(orig, mpath);
    edit_manifest(g_bundle, set_learned_ranker);
    vt_err err = {0};
    cr_assert_eq(load_copy_bundle(&err), VT_EFORMAT, "mutation %d loaded", g_bad);
    assert_msg_has(err, mpath);
    assert_msg_has(err, field[g_bad]);
  }
}
