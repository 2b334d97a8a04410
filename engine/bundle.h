/* The bundle (model, vocabulary, phrase tables, tries) as docs/BUNDLE.md specifies it.
 * vt_bundle_load validates everything it reads (format and version, sha256 and size of every file,
 * tensor names and shapes against the config, NaN/Inf, vocabulary and phrase tables) and refuses
 * a bad bundle with a message that names the file and the problem. */
#ifndef VITRINE_ENGINE_BUNDLE_H
#define VITRINE_ENGINE_BUNDLE_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/decode.h"
#include "safetensors.h"
#include "status.h"

#define VT_MAX_LEVELS 8
#define VT_MAX_LAYERS 16
#define VT_TOK_PAD 0
#define VT_TOK_BOS 1
#define VT_TOK_SEP 2
#define VT_TOK_EOS 3
#define VT_TOK_UNK 4
#define VT_N_SPECIALS 5
#define VT_N_ACTIONS 4   /* view, search, cart, purchase; the context token is action 4 */
#define VT_ACTION_CONTEXT 4

typedef struct vt_config {
  int vocab_size, n_regions, d_model, n_heads, n_enc_layers, n_dec_layers, d_ff, n_queries,
      d_retrieval, max_events, max_dec_len, code_levels, codebook, t2v_dim, n_time_buckets,
      max_query_tokens;
} vt_config;

/* A prefix trie in CSR form, built from a phrase table exactly as train/vocab.py builds it
 * (breadth-first node ids, children in ascending token id, the terminator's child node carries
 * the phrase id). */
typedef struct vt_trie {
  int n_nodes, n_edges, terminator;
  int32_t *indptr; /* (n_nodes + 1) */
  int32_t *token;  /* (n_edges) */
  int32_t *child;  /* (n_edges) */
  int32_t *phrase; /* (n_nodes): phrase id completed at this node, else -1 */
} vt_trie;

typedef struct vt_phrases {
  int n;
  char **text;      /* (n) */
  int32_t *tok_off; /* (n + 1): phrase i's tokens are tok[tok_off[i] .. tok_off[i+1]-1] */
  int32_t *tok;
} vt_phrases;

typedef struct vt_region {
  char *name;
  int season_offset; /* 0 north, 2 south */
  int fixed_season;  /* -1, or the season all year (tropical) */
} vt_region;

typedef struct vt_enc_layer {
  const float *ln1_w, *ln1_b, *qkv_w, *qkv_b, *proj_w, *proj_b, *time_bias, *ln2_w, *ln2_b,
      *fc1_w, *fc1_b, *fc2_w, *fc2_b;
} vt_enc_layer;

typedef struct vt_dec_layer {
  const float *ln1_w, *ln1_b, *sa_qkv_w, *sa_qkv_b, *sa_proj_w, *sa_proj_b, *ln2_w, *ln2_b,
      *ca_q_w, *ca_q_b, *ca_kv_w, *ca_kv_b, *ca_proj_w, *ca_proj_b, *ln3_w, *ln3_b, *fc1_w,
      *fc1_b, *fc2_w, *fc2_b;
} vt_dec_layer;

/* Pointers to every weight (names as in docs/BUNDLE.md), float32. */
typedef struct vt_weights {
  const float *code_emb[VT_MAX_LEVELS], *action_emb, *region_emb, *t2v_w, *t2v_b, *time_w,
      *time_b, *ln_emb_w, *ln_emb_b;
  vt_enc_layer enc[VT_MAX_LAYERS];
  const float *ln_enc_w, *ln_enc_b;
  const float *queries, *qf_rms1_w, *qf_rms2_w, *qf_q_w, *qf_q_b, *qf_kv_w, *qf_kv_b, *qf_proj_w,
      *qf_proj_b, *qf_fc1_w, *qf_fc1_b, *qf_fc2_w, *qf_fc2_b, *ln_mem_w, *ln_mem_b;
  const float *tok_emb, *pos_emb;
  vt_dec_layer dec[VT_MAX_LAYERS];
  const float *ln_dec_w, *ln_dec_b, *user_w, *user_b, *prod_w, *prod_b;
} vt_weights;

/* One weight tensor: where it is on the host, how many floats, and which pointer of vt_weights
 * (viewed as an array of `const float *`) points at it — so a backend can place a copy of every
 * weight and build its own vt_weights. */
typedef struct vt_weight_ref {
  const float *data;
  int64_t numel;
  int slot;
} vt_weight_ref;

typedef struct vt_bundle {
  char *dir;
  char *model_version;
  vt_config cfg;
  int theme_beam, keyword_beam;                         /* manifest "decode" */
  float rank_again, rank_cooc, rank_popularity, rank_decay; /* manifest "ranker" */
  float rank_calibration; /* manifest ranker.calibration, 0..1 (kernels/calib.h); 0: off */
  vt_ranker_model rank_model; /* manifest "ranker" of kind "learned"; hidden -1: kind "mix" */
  int max_sections, max_keywords_per_section, max_products_per_section, max_query_bytes;
  int n_regions;
  vt_region *regions;
  char **vocab; /* (vocab_size) */
  vt_phrases themes, keywords;
  vt_trie theme_trie, keyword_trie;
  char keywords_sha256[65]; /* of keywords.tsv, which a catalogue must match */
  int64_t n_params;
  size_t weight_bytes;
  vt_weights w;
  vt_weight_ref *wref; /* (n_wref) every tensor of w */
  int n_wref;
  /* private: the mapping, converted buffers, the vocabulary hash */
  vt_safetensors *st;
  float **owned;
  int n_owned;
  int32_t *vocab_hash;
  int vocab_hash_size;
} vt_bundle;

int vt_bundle_load(vt_bundle **out, const char *dir, vt_err *err);
void vt_bundle_free(vt_bundle *b);

/* 0 when `strength` can be the ranker's calibration with this bundle (0..1; above 0 the codebook
 * must have at most VT_CALIB_CATEGORIES entries), else VT_EINVAL with the reason. */
int vt_bundle_check_calibration(const vt_bundle *b, float strength, vt_err *err);

/* Token id of a word (exact, case-sensitive, len bytes), or VT_TOK_UNK. */
int vt_vocab_lookup(const vt_bundle *b, const char *word, size_t len);

/* Builds a trie from phrase token sequences; terminator appended to each. 0 or VT_ENOMEM /
 * VT_EFORMAT (duplicate phrase). */
int vt_trie_build(vt_trie *t, const vt_phrases *p, int terminator, vt_err *err);
void vt_trie_free(vt_trie *t);

/* sha256 of a file as 64 lowercase hex chars + NUL; 0 or VT_EIO. */
int vt_sha256_file(char out[65], const char *path, vt_err *err);

/* ---- shared by the bundle and catalogue loaders (bundle.c, catalog.c), not by the engine ---- */
struct cJSON;

#define VT_PATH_MAX 4096

/* out = dir/name (out holds VT_PATH_MAX bytes); VT_EINVAL if too long. */
int vt_path_join(char *out, const char *dir, const char *name, vt_err *err);

/* A member of a JSON object; NULL when absent or when o is not an object. */
const struct cJSON *vt_json_get(const struct cJSON *o, const char *key);

/* Reads dir/manifest.json, checks its format and format_version 1, verifies the size and sha256
 * of every file it lists and that each name in `required` (NULL-terminated) is listed. */
int vt_manifest_read(struct cJSON **out, const char *dir, const char *format,
                     const char *const *required, vt_err *err);

/* A UTF-8 text file split into lines (\n, \r\n or \r ends a line, as Python's text mode reads
 * it); line[i] points into buf. A last line without its newline is refused as truncated. */
typedef struct vt_lines {
  char *buf;
  char **line;
  int n;
} vt_lines;
int vt_lines_read(vt_lines *l, const char *path, vt_err *err);
void vt_lines_free(vt_lines *l);

#endif
