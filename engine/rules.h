/* The merchandising rules people edit (docs/RULES.md): `rules.txt` beside the catalogue, loaded
 * with it (vt_catalog_load), so a reload swaps catalogue and rules together and a broken rules
 * file refuses the reload, naming `rules.txt:LINE`.
 *
 * Each rule is applied where it is cheapest, once per catalogue generation, never per request:
 *   products (deny, unavailable by region or by season): folded into the catalogue's regions and
 *     seasons masks, which the page op already filters on;
 *   products and keywords unavailable in a (region, season): tables of blocked regions by season
 *     (vt_shelf.prod_block, kw_block) that the page op reads where it filters products and ranks
 *     a section's finished keywords;
 *   themes unavailable in a (region, season), and placements that allow only some themes: the
 *     same kind of table and a per-theme mask of the sections allowing it (vt_theme_rules), read
 *     where a request's finished themes are ranked into sections;
 *   themes, keywords and brand terms (deny): the theme and keyword tries are rebuilt without
 *     them (phrase ids kept), and the engines decode under those, so they never enter a beam;
 *   seasons by region and date: a table (region, month, day) -> season that replaces the
 *     bundle's calendar (and a tropical region's fixed season) where a range covers the date.
 * Not an engine-layer file of gRPC: the server and the CLI both go through vt_catalog_load. */
#ifndef VITRINE_ENGINE_RULES_H
#define VITRINE_ENGINE_RULES_H

#include <stddef.h>
#include <stdint.h>

#include "bundle.h"
#include "status.h"

struct vt_catalog;

/* A rule line whose effect depends on the request (or is kept for the audit log to name it):
 * product, keyword and theme rules with the regions and seasons they hold in, allow-only
 * placements. regions / seasons 0: all. */
enum {
  VT_RULE_DENY_PRODUCT = 0, /* id: product */
  VT_RULE_PRODUCT,          /* unavailable product (id) region=.. and/or season=.. */
  VT_RULE_KEYWORD,          /* unavailable keyword (id) */
  VT_RULE_THEME,            /* unavailable theme (id) */
  VT_RULE_ALLOW,            /* allow-only section (section) theme (id) */
  VT_RULE_DENY_PHRASE       /* deny theme, keyword or term (id -1): every request */
};
typedef struct vt_rule_scope {
  int32_t line, kind, id, section; /* section: 1-based, allow-only only */
  uint32_t regions;
  uint8_t seasons;
} vt_rule_scope;

#define VT_RULES_FILE "rules.txt"
#define VT_RULES_MAX_BYTES (16 << 20) /* a larger rules file is refused */
#define VT_RULES_VERSION_MAX 64       /* bytes of a `version` line's text */

typedef struct vt_rules {
  char *name;    /* for messages: the file's path */
  char *version; /* the `version` line, else the first 12 hex of the file's sha256 */
  int n_lines;   /* rules (lines that are not blank or comments) */
  int n_regions;
  int8_t *season; /* (n_regions, 12, 31): season of (region, month - 1, day - 1), -1: the
                     bundle's calendar */
  uint8_t *theme_denied, *keyword_denied; /* (n_themes), (n_keywords): 1 = never generated */
  int n_themes, n_keywords;
  int n_themes_denied, n_keywords_denied, n_products_denied, n_products_limited,
      n_keywords_limited, n_themes_limited, n_sections_restricted;
  /* the tries without the denied phrases; n_nodes 0: nothing denied, the bundle's trie */
  vt_trie theme_trie, keyword_trie;
  /* products: regions and seasons a product loses (bits as in vt_catalog) */
  int n_products;
  uint32_t *product_regions_off; /* (n_products) */
  uint8_t *product_seasons_off;  /* (n_products) */
  /* in a (region, season) only: bit r of [i * 4 + s] set: not shown in region r in season s;
   * NULL when no rule needs it (vt_shelf.kw_block, prod_block) */
  uint32_t *kw_block;    /* (n_keywords * 4) */
  uint32_t *prod_block;  /* (n_products * 4) */
  uint32_t *theme_block; /* (n_themes * 4) */
  /* allow-only: bit k of theme_allow[t]: theme t may be shown in section k (0-based) of a page;
   * bit k of restricted: section k shows only the themes that allow it (vt_theme_rules) */
  uint32_t *theme_allow; /* (n_themes), NULL without allow-only rules */
  uint32_t restricted;
  /* for the audit log (serve/audit.h), which names the lines that acted on a request:
   * text[i]: line i's rule, its words joined by one space, comment dropped (NULL: blank or a
   * comment; [0] unused); season_line: the `season` line setting each (region, month, day) cell,
   * 0: none; scoped: the lines of vt_rule_scope, sorted by (kind, id, line);
   * cat_regions / cat_seasons: the catalogue's masks before vt_rules_apply folded the product
   * rules in (NULL until then), so a product a rule removed can be told from one the catalogue
   * never had there */
  int n_text;
  char **text;           /* (n_text + 1) */
  int32_t *season_line;  /* (n_regions, 12, 31) */
  int n_scoped;
  vt_rule_scope *scoped; /* (n_scoped) */
  uint32_t *cat_regions; /* (n_products) */
  uint8_t *cat_seasons;  /* (n_products) */
} vt_rules;

/* Parses rules text (len bytes, name for messages) against bundle b and catalogue c (product ids).
 * A bad line is VT_EFORMAT "name:LINE: problem" naming the unknown region, season, phrase, term or
 * id. Builds the pruned tries. text needs no final newline and no NUL. */
int vt_rules_parse(vt_rules **out, const char *text, size_t len, const char *name,
                   const vt_bundle *b, const struct vt_catalog *c, vt_err *err);
void vt_rules_free(vt_rules *r);

/* Reads dir/rules.txt when it exists (absent: *out = NULL, VT_OK) and parses it. */
int vt_rules_load(vt_rules **out, const char *dir, const vt_bundle *b,
                  const struct vt_catalog *c, vt_err *err);

/* Folds r's product rules into c's regions and seasons masks and hands r to c (c->rules, freed
 * with c). r may be NULL (no rules). */
void vt_rules_apply(struct vt_catalog *c, vt_rules *r);

/* The season (0 winter .. 3 autumn) at ts in region `region`: a `season` rule covering the date
 * wins, else the bundle's calendar (season_offset, fixed_season). r may be NULL. */
int vt_rules_season(const vt_rules *r, const vt_bundle *b, int region, int64_t ts);

/* The `season` line that decides the season at ts in region (0: none, the bundle's calendar or
 * the region's fixed season decides). r may be NULL. */
int vt_rules_season_line(const vt_rules *r, int region, int64_t ts);

/* The first line of kind (VT_RULE_*) about id that holds in region and season, from index *at
 * (start with 0; *at is left after the match, for the next call); 0: none left. */
int vt_rules_find(const vt_rules *r, int kind, int id, int region, int season, int *at);

/* The version reported in GetInfo, answers, metrics and logs: "" without rules. */
const char *vt_rules_version(const vt_rules *r);

#endif
