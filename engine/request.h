/* Requests and storefronts: the engine's input and output, and their JSON forms (the same fields
 * the gRPC API carries). Parsing validates exactly as train/data.py validate_request does and
 * answers VT_EINVAL with a message naming the field ("events[3].action must be one of ..."). */
#ifndef VITRINE_ENGINE_REQUEST_H
#define VITRINE_ENGINE_REQUEST_H

#include <stdint.h>

#include "bundle.h"
#include "catalog.h"
#include "kernels/decode.h"
#include "status.h"

#define VT_MAX_QUERY_TOKENS 32
#define VT_ITEM_NONE (-2)    /* the event has no item */
#define VT_ITEM_UNKNOWN (-1) /* an item id the catalogue does not know (cold start) */

typedef struct vt_event {
  int64_t ts;
  int action;  /* 0 view, 1 search, 2 cart, 3 purchase */
  int item;    /* catalogue index, VT_ITEM_UNKNOWN or VT_ITEM_NONE */
  int n_query; /* query tokens kept (<= max_query_tokens) */
  int32_t query[VT_MAX_QUERY_TOKENS];
} vt_event;

typedef struct vt_request {
  int64_t now;
  int region;
  char *shopper_id;
  int n_events;     /* kept: the newest max_events, in ascending ts (stable) order */
  vt_event *events;
  int dropped;      /* older events dropped for exceeding max_events */
  int sections, keywords_per_section, products_per_section;
  int n_exclude;    /* excluded products that exist in the catalogue (indices) */
  int32_t *exclude;
} vt_request;

/* Parses and validates a JSON request. r is zeroed first; free with vt_request_free. */
int vt_request_parse(vt_request *r, const char *json, size_t len, const vt_bundle *b,
                     const vt_catalog *c, vt_err *err);
void vt_request_free(vt_request *r);

/* The query tokeniser (train/vocab.py's Vocab.encode): s (n bytes of UTF-8) split into words at
 * whitespace (text.h: the characters Python's str.split() splits on), A-Z lowercased (nothing
 * else), each word's vocabulary id or VT_TOK_UNK; at most max. Returns the count, -1 when out of
 * memory. */
int vt_request_tokenize(const vt_bundle *b, const char *s, size_t n, int32_t *out, int max);

/* vt_storefront (and its limits VT_MAX_SECTIONS, ...) is the page step's output: kernels/decode.h */

/* The storefront as JSON (malloc'd, NUL-terminated; NULL if out of memory): the fields of
 * train/cascade.py's answer. pretty: indented. */
char *vt_storefront_json(const vt_storefront *s, const vt_bundle *b, const vt_catalog *c,
                         int pretty);

#endif
