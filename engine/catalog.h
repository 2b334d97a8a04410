/* The catalogue (docs/BUNDLE.md): products, attributes, statistics and product embeddings,
 * loaded separately from the model and checked against the bundle it is used with. */
#ifndef VITRINE_ENGINE_CATALOG_H
#define VITRINE_ENGINE_CATALOG_H

#include <stdint.h>

#include "bundle.h"
#include "status.h"

typedef struct vt_catalog {
  char *dir;
  char *catalog_version, *model_version;
  int n_products, d_retrieval, code_levels;
  char **ids, **titles;  /* (P) */
  int32_t *stock;        /* (P) */
  uint32_t *regions;     /* (P) bit r set: sold in region r (bundle's region order) */
  uint8_t *seasons;      /* (P) bit s set: suits season s (0 winter .. 3 autumn) */
  int32_t *codes;        /* (P, code_levels) */
  int32_t *popularity;   /* (P) */
  float *log_pop;        /* (P) (float)log1p((double)popularity) */
  int32_t *kw_off;       /* (n_keywords + 1): keyword k's products kw_prod[kw_off[k] ..], ascending */
  int32_t *kw_prod;
  int32_t *rel_off;      /* (P + 1): product a's related products rel_idx[rel_off[a] ..], file order */
  int32_t *rel_idx;
  float *rel_w;
  float *emb;            /* (P, d_retrieval) */
  /* dir/rules.txt (engine/rules.h), NULL when there is none: its product rules are already folded
   * into regions and seasons above; its pruned tries and season table are read by the engine */
  struct vt_rules *rules;
  /* private: id hash, the mapping */
  int32_t *id_hash;
  int id_hash_size;
  vt_safetensors *st;
} vt_catalog;

/* Loads and validates a catalogue for bundle b (regions, keyword table sha256, n_keywords, code
 * levels and codebook, d_retrieval, and model_version must match), then the rules file beside it
 * when there is one (a bad one refuses the whole load as `DIR/rules.txt:LINE: problem`). */
int vt_catalog_load(vt_catalog **out, const char *dir, const vt_bundle *b, vt_err *err);
void vt_catalog_free(vt_catalog *c);

/* Product index of an id (len bytes), or -1. */
int vt_catalog_find(const vt_catalog *c, const char *id, size_t len);

#endif
