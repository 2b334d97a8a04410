/* Bundle loader (docs/BUNDLE.md): the manifest, the vocabulary, the phrase tables and their
 * tries, and the model weights. It accepts what train/bundle.py's load_bundle accepts and refuses
 * what it refuses, with the same kind of message: the file's path first, then the problem. */
#include "bundle.h"
#include "kernels/decode.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "text.h"

/* F32 tensors are used in place, which reads the file's little-endian floats natively. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "vitrine's loaders assume a little-endian host"
#endif

#define PATH_MAX_LEN VT_PATH_MAX

static const char *const specials[VT_N_SPECIALS] = {"<pad>", "<bos>", "<sep>", "<eos>", "<unk>"};

int vt_path_join(char *out, const char *dir, const char *name, vt_err *err) {
  size_t n = strlen(dir);
  const char *sep = n && dir[n - 1] == '/' ? "" : "/";
  if ((size_t)snprintf(out, PATH_MAX_LEN, "%s%s%s", dir, sep, name) >= PATH_MAX_LEN)
    return vt_fail(err, VT_EINVAL, "%s: path too long", dir);
  return 0;
}

const cJSON *vt_json_get(const cJSON *o, const char *key) {
  return cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
}

/* ---- files ------------------------------------------------------------------------------- */

/* Strict UTF-8, as Python's decoder: no overlongs, surrogates or code points past U+10FFFF.
 * Returns the offset of the first bad byte, or n. */
static size_t utf8_check(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned c = s[i], min, cp;
    size_t len;
    if (c < 0x80) { i++; continue; }
    if ((c & 0xE0) == 0xC0) { len = 2; min = 0x80; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { len = 3; min = 0x800; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { len = 4; min = 0x10000; cp = c & 0x07; }
    else return i;
    if (n - i < len) return i;
    for (size_t k = 1; k < len; k++) {
      if ((s[i + k] & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += len;
  }
  return n;
}

/* The whole file, NUL-terminated; *len excludes the terminator. */
static int read_file(char **out, size_t *len, const char *path, vt_err *err) {
  FILE *f = fopen(path, "rb");
  char *buf = NULL;
  size_t cap = 0, n = 0;
  *out = NULL;
  if (!f) return vt_fail(err, VT_EIO, "%s: cannot read (%s)", path, strerror(errno));
  for (;;) {
    if (cap - n < 65536 + 1) {
      char *nb = realloc(buf, cap ? cap * 2 : 65536 * 2);
      if (!nb) {
        free(buf);
        fclose(f);
        return vt_fail(err, VT_ENOMEM, "%s: out of memory reading it", path);
      }
      buf = nb;
      cap = cap ? cap * 2 : 65536 * 2;
    }
    size_t got = fread(buf + n, 1, cap - n - 1, f);
    n += got;
    if (got == 0) break;
  }
  if (ferror(f)) {
    free(buf);
    fclose(f);
    return vt_fail(err, VT_EIO, "%s: cannot read (%s)", path, strerror(errno));
  }
  fclose(f);
  buf[n] = '\0';
  *out = buf;
  *len = n;
  return 0;
}

int vt_lines_read(vt_lines *l, const char *path, vt_err *err) {
  size_t len, bad;
  int rc, cap = 0;
  memset(l, 0, sizeof *l);
  if ((rc = read_file(&l->buf, &len, path, err)) != 0) return rc;
  /* a NUL would silently cut a C string short; Python would keep it, so refuse rather than
   * read something else than the writer meant */
  if (memchr(l->buf, '\0', len)) {
    rc = vt_fail(err, VT_EFORMAT, "%s: cannot read (NUL byte at offset %zu)", path,
                 (size_t)((char *)memchr(l->buf, '\0', len) - l->buf));
    goto fail;
  }
  if ((bad = utf8_check((const unsigned char *)l->buf, len)) != len) {
    rc = vt_fail(err, VT_EFORMAT, "%s: cannot read (invalid UTF-8 at byte %zu)", path, bad);
    goto fail;
  }
  char *p = l->buf, *end = l->buf + len;
  while (p < end) {
    char *q = p;
    while (q < end && *q != '\n' && *q != '\r') q++;
    if (q == end) {
      rc = vt_fail(err, VT_EFORMAT, "%s:%d: the last line has no newline - truncated?", path,
                   l->n + 1);
      goto fail;
    }
    if (l->n == cap) {
      cap = cap ? cap * 2 : 256;
      char **nl = realloc(l->line, (size_t)cap * sizeof *nl);
      if (!nl) {
        rc = vt_fail(err, VT_ENOMEM, "%s: out of memory reading it", path);
        goto fail;
      }
      l->line = nl;
    }
    l->line[l->n++] = p;
    int crlf = *q == '\r' && q + 1 < end && q[1] == '\n';
    *q = '\0';
    p = q + 1 + crlf;
  }
  return 0;
fail:
  vt_lines_free(l);
  return rc;
}

void vt_lines_free(vt_lines *l) {
  free(l->buf);
  free(l->line);
  memset(l, 0, sizeof *l);
}

int vt_sha256_file(char out[65], const char *path, vt_err *err) {
  static const char hex[] = "0123456789abcdef";
  unsigned char md[EVP_MAX_MD_SIZE], *buf = NULL;
  unsigned int md_len = 0;
  int rc = VT_EIO;
  EVP_MD_CTX *ctx = NULL;
  FILE *f = fopen(path, "rb");
  out[0] = '\0';
  if (!f) return vt_fail(err, VT_EIO, "%s: cannot read (%s)", path, strerror(errno));
  if (!(buf = malloc(1 << 20)) || !(ctx = EVP_MD_CTX_new())) {
    rc = vt_fail(err, VT_ENOMEM, "%s: out of memory hashing it", path);
    goto fail;
  }
  if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
    rc = vt_fail(err, VT_EINTERNAL, "%s: sha256 is not available", path);
    goto fail;
  }
  size_t got;
  while ((got = fread(buf, 1, 1 << 20, f)) > 0)
    if (EVP_DigestUpdate(ctx, buf, got) != 1) {
      rc = vt_fail(err, VT_EINTERNAL, "%s: sha256 failed", path);
      goto fail;
    }
  if (ferror(f)) {
    rc = vt_fail(err, VT_EIO, "%s: cannot read (%s)", path, strerror(errno));
    goto fail;
  }
  if (EVP_DigestFinal_ex(ctx, md, &md_len) != 1 || md_len != 32) {
    rc = vt_fail(err, VT_EINTERNAL, "%s: sha256 failed", path);
    goto fail;
  }
  for (unsigned i = 0; i < 32; i++) {
    out[2 * i] = hex[md[i] >> 4];
    out[2 * i + 1] = hex[md[i] & 15];
  }
  out[64] = '\0';
  rc = 0;
fail:
  EVP_MD_CTX_free(ctx);
  free(buf);
  fclose(f);
  return rc;
}

/* A JSON value as Python's %r would show it, near enough for a message ("null" if absent). */
static const char *json_repr(char *buf, size_t n, const cJSON *j) {
  char *s = j ? cJSON_PrintUnformatted(j) : NULL;
  snprintf(buf, n, "%s", s ? s : "null");
  free(s);
  return buf;
}

/* An integer-valued JSON number in [min, max]. */
static int json_int(const cJSON *j, long long min, long long max, long long *out) {
  if (!cJSON_IsNumber(j)) return 0;
  double d = j->valuedouble;
  if (!(d >= (double)min && d <= (double)max) || d != floor(d)) return 0;
  *out = (long long)d;
  return 1;
}

static int verify_file(const char *dir, const cJSON *entry, vt_err *err) {
  char path[PATH_MAX_LEN], hex[65], repr[128];
  struct stat sb;
  long long bytes;
  int rc;
  if ((rc = vt_path_join(path, dir, entry->string, err)) != 0) return rc;
  if (!cJSON_IsObject(entry))
    return vt_fail(err, VT_EFORMAT, "%s/manifest.json: files entry %s is not an object", dir,
                   entry->string);
  if (stat(path, &sb) != 0) {
    if (errno == ENOENT || errno == ENOTDIR)
      return vt_fail(err, VT_EIO, "%s: missing (listed in the manifest)", path);
    return vt_fail(err, VT_EIO, "%s: cannot read (%s)", path, strerror(errno));
  }
  if (!S_ISREG(sb.st_mode)) return vt_fail(err, VT_EIO, "%s: cannot read (not a regular file)", path);
  const cJSON *jb = vt_json_get(entry, "bytes");
  if (!json_int(jb, 0, INT64_MAX / 2, &bytes) || bytes != (long long)sb.st_size)
    return vt_fail(err, VT_EFORMAT, "%s: %lld bytes, the manifest says %s - truncated or replaced",
                   path, (long long)sb.st_size, json_repr(repr, sizeof repr, jb));
  if ((rc = vt_sha256_file(hex, path, err)) != 0) return rc;
  const cJSON *js = vt_json_get(entry, "sha256");
  if (!cJSON_IsString(js) || strcmp(js->valuestring, hex) != 0)
    return vt_fail(err, VT_EFORMAT, "%s: sha256 does not match the manifest - corrupt", path);
  return 0;
}

int vt_manifest_read(cJSON **out, const char *dir, const char *format, const char *const *required,
                     vt_err *err) {
  char path[PATH_MAX_LEN], repr[128];
  char *buf = NULL;
  size_t len;
  cJSON *m = NULL;
  const char *end = NULL;
  int rc;
  *out = NULL;
  if ((rc = vt_path_join(path, dir, "manifest.json", err)) != 0) goto fail;
  if ((rc = read_file(&buf, &len, path, err)) != 0) goto fail;
  if (memchr(buf, '\0', len)) {
    rc = vt_fail(err, VT_EFORMAT, "%s: not valid JSON (NUL byte)", path);
    goto fail;
  }
  /* end is the error position on failure (cJSON's global error pointer is not thread-safe) */
  if (!(m = cJSON_ParseWithOpts(buf, &end, 1))) {
    rc = vt_fail(err, VT_EFORMAT, "%s: not valid JSON (error near byte %zu)", path,
                 end ? (size_t)(end - buf) : (size_t)0);
    goto fail;
  }
  const cJSON *f = vt_json_get(m, "format");
  if (!cJSON_IsObject(m) || !cJSON_IsString(f) || strcmp(f->valuestring, format) != 0) {
    rc = vt_fail(err, VT_EFORMAT, "%s: format is not '%s'", path, format);
    goto fail;
  }
  const cJSON *v = vt_json_get(m, "format_version");
  if (!cJSON_IsNumber(v) || v->valuedouble != 1.0) {
    rc = vt_fail(err, VT_EFORMAT, "%s: format_version %s, this reader knows 1", path,
                 json_repr(repr, sizeof repr, v));
    goto fail;
  }
  const cJSON *files = vt_json_get(m, "files"), *e;
  if (files && !cJSON_IsNull(files) && !cJSON_IsObject(files)) {
    rc = vt_fail(err, VT_EFORMAT, "%s: files is not an object", path);
    goto fail;
  }
  if (cJSON_IsObject(files))
    cJSON_ArrayForEach(e, files) if ((rc = verify_file(dir, e, err)) != 0) goto fail;
  for (; required && *required; required++)
    if (!cJSON_IsObject(files) || !vt_json_get(files, *required)) {
      rc = vt_fail(err, VT_EFORMAT, "%s: the manifest does not list %s", path, *required);
      goto fail;
    }
  *out = m;
  m = NULL;
  rc = 0;
fail:
  cJSON_Delete(m);
  free(buf);
  return rc;
}

/* ---- manifest fields ------------------------------------------------------------------------ */

/* train/model.py's Config: vocab_size and n_regions are required, the rest have these defaults.
 * The bounds are the engine's: layers and levels fit its fixed arrays, regions its bitmask, and
 * n_time_buckets covers the bucket index, which is clamped to 128. */
static const struct {
  const char *name;
  size_t off;
  int def, min, max;
} cfg_fields[] = {
#define F(n, d, lo, hi) {#n, offsetof(vt_config, n), d, lo, hi}
    F(vocab_size, -1, 1, 1 << 24),   F(n_regions, -1, 1, 32),
    F(d_model, 64, 1, 1 << 16),      F(n_heads, 4, 1, 1 << 16),
    F(n_enc_layers, 2, 0, VT_MAX_LAYERS), F(n_dec_layers, 1, 0, VT_MAX_LAYERS),
    F(d_ff, 256, 1, 1 << 20),        F(n_queries, 4, 1, 1 << 16),
    F(d_retrieval, 64, 1, 1 << 16),  F(max_events, 64, 1, 1 << 20),
    F(max_dec_len, 16, 1, 1 << 16),  F(code_levels, 4, 1, VT_MAX_LEVELS),
    F(codebook, 64, 1, 1 << 24),     F(t2v_dim, 8, 1, 1 << 16),
    F(n_time_buckets, 129, 129, 1 << 16), F(max_query_tokens, 8, 1, 1 << 16),
#undef F
};
#define N_CFG (int)(sizeof cfg_fields / sizeof cfg_fields[0])

static int parse_config(vt_config *cfg, const cJSON *j, const char *mpath, vt_err *err) {
  int seen[N_CFG] = {0};
  const cJSON *it;
  if (!cJSON_IsObject(j)) return vt_fail(err, VT_EFORMAT, "%s: bad config (not an object)", mpath);
  cJSON_ArrayForEach(it, j) {
    int k;
    long long v;
    for (k = 0; k < N_CFG; k++)
      if (strcmp(it->string, cfg_fields[k].name) == 0) break;
    if (k == N_CFG)
      return vt_fail(err, VT_EFORMAT, "%s: bad config (unexpected field %s)", mpath, it->string);
    if (!json_int(it, cfg_fields[k].min, cfg_fields[k].max, &v))
      return vt_fail(err, VT_EFORMAT, "%s: bad config (%s must be an integer in %d..%d)", mpath,
                     it->string, cfg_fields[k].min, cfg_fields[k].max);
    *(int *)((char *)cfg + cfg_fields[k].off) = (int)v;
    seen[k] = 1;
  }
  for (int k = 0; k < N_CFG; k++) {
    if (seen[k]) continue;
    if (cfg_fields[k].def < 0)
      return vt_fail(err, VT_EFORMAT, "%s: bad config (missing %s)", mpath, cfg_fields[k].name);
    *(int *)((char *)cfg + cfg_fields[k].off) = cfg_fields[k].def;
  }
  if (cfg->d_model % cfg->n_heads)
    return vt_fail(err, VT_EFORMAT, "%s: bad config (d_model %d is not a multiple of n_heads %d)",
                   mpath, cfg->d_model, cfg->n_heads);
  return 0;
}

/* An optional object of optional integer settings (decode, limits): Python falls back to its
 * defaults for whatever is absent. */
static int parse_ints(const cJSON *m, const char *obj, const char *const *keys, int *const *vals,
                      const char *mpath, vt_err *err) {
  const cJSON *o = vt_json_get(m, obj);
  if (!o || cJSON_IsNull(o)) return 0;
  if (!cJSON_IsObject(o)) return vt_fail(err, VT_EFORMAT, "%s: %s is not an object", mpath, obj);
  for (int i = 0; keys[i]; i++) {
    const cJSON *j = vt_json_get(o, keys[i]);
    long long v;
    if (!j) continue;
    if (!json_int(j, 1, 1 << 24, &v))
      return vt_fail(err, VT_EFORMAT, "%s: %s.%s must be a positive integer", mpath, obj, keys[i]);
    *vals[i] = (int)v;
  }
  return 0;
}

int vt_bundle_check_calibration(const vt_bundle *b, float strength, vt_err *err) {
  if (!(strength >= 0.0f && strength <= 1.0f))
    return vt_fail(err, VT_EINVAL, "calibration must be in 0..1, not %g", (double)strength);
  if (strength > 0.0f && b->cfg.codebook > VT_CALIB_CATEGORIES)
    return vt_fail(err, VT_EINVAL,
                   "calibration needs a codebook of at most %d entries (its categories are the "
                   "first semantic code), not %d",
                   VT_CALIB_CATEGORIES, b->cfg.codebook);
  return 0;
}

/* n finite numbers of the JSON array a into out (NULL a, or another length: refused). */
static int json_floats(const cJSON *a, int n, float *out) {
  if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != n) return 0;
  int i = 0;
  const cJSON *v;
  cJSON_ArrayForEach(v, a) {
    if (!cJSON_IsNumber(v) || !isfinite((float)v->valuedouble)) return 0;
    out[i++] = (float)v->valuedouble;
  }
  return 1;
}

/* A ranker of kind "learned" (docs/BUNDLE.md): its feature list must be the engine's, in order. */
static int parse_learned_ranker(vt_ranker_model *lm, const cJSON *r, const char *mpath,
                                vt_err *err) {
  static const char *const names[] = VT_RANKER_FEATURE_NAMES;
  const int F = VT_RANKER_FEATURES;
  const cJSON *fs = vt_json_get(r, "features"), *hd = vt_json_get(r, "hidden"), *v;
  const cJSON *ch = vt_json_get(r, "cooc_half"), *b2 = vt_json_get(r, "b2");
  long long H;
  if (!cJSON_IsArray(fs) || cJSON_GetArraySize(fs) != F)
    return vt_fail(err, VT_EFORMAT, "%s: ranker.features must list the engine's %d features",
                   mpath, F);
  int i = 0;
  cJSON_ArrayForEach(v, fs) {
    if (!cJSON_IsString(v) || strcmp(v->valuestring, names[i]) != 0)
      return vt_fail(err, VT_EFORMAT, "%s: ranker.features[%d] must be \"%s\"", mpath, i,
                     names[i]);
    i++;
  }
  if (!json_int(hd, 0, VT_RANKER_MAX_HIDDEN, &H))
    return vt_fail(err, VT_EFORMAT, "%s: ranker.hidden must be an integer 0..%d", mpath,
                   VT_RANKER_MAX_HIDDEN);
  lm->hidden = (int32_t)H;
  if (!cJSON_IsNumber(ch) || !(ch->valuedouble > 0.0) || !isfinite((float)ch->valuedouble) ||
      (float)ch->valuedouble <= 0.0f)
    return vt_fail(err, VT_EFORMAT, "%s: ranker.cooc_half must be a finite number > 0", mpath);
  lm->cooc_half = (float)ch->valuedouble;
  if (!cJSON_IsNumber(b2) || !isfinite((float)b2->valuedouble))
    return vt_fail(err, VT_EFORMAT, "%s: ranker.b2 must be a finite number", mpath);
  lm->b2 = (float)b2->valuedouble;
  if (!json_floats(vt_json_get(r, "w2"), H ? (int)H : F, lm->w2))
    return vt_fail(err, VT_EFORMAT, "%s: ranker.w2 must be a list of %d finite numbers", mpath,
                   H ? (int)H : F);
  if (!json_floats(vt_json_get(r, "b1"), (int)H, lm->b1))
    return vt_fail(err, VT_EFORMAT, "%s: ranker.b1 must be a list of %d finite numbers", mpath,
                   (int)H);
  const cJSON *w1 = vt_json_get(r, "w1");
  if (!cJSON_IsArray(w1) || cJSON_GetArraySize(w1) != H)
    return vt_fail(err, VT_EFORMAT, "%s: ranker.w1 must be a list of %d rows", mpath, (int)H);
  i = 0;
  cJSON_ArrayForEach(v, w1) {
    if (!json_floats(v, F, lm->w1 + (size_t)i * F))
      return vt_fail(err, VT_EFORMAT, "%s: ranker.w1[%d] must be a list of %d finite numbers",
                     mpath, i, F);
    i++;
  }
  return 0;
}

static int parse_settings(vt_bundle *b, const cJSON *m, const char *mpath, vt_err *err) {
  static const char *const decode_keys[] = {"theme_beam", "keyword_beam", NULL};
  static const char *const limit_keys[] = {"max_sections", "max_keywords_per_section",
                                           "max_products_per_section", "max_query_bytes", NULL};
  static const char *const rank_keys[] = {"again", "cooc", "popularity", "decay", "calibration",
                                          NULL};
  int *const decode_vals[] = {&b->theme_beam, &b->keyword_beam};
  int *const limit_vals[] = {&b->max_sections, &b->max_keywords_per_section,
                             &b->max_products_per_section, &b->max_query_bytes};
  float *const rank_vals[] = {&b->rank_again, &b->rank_cooc, &b->rank_popularity, &b->rank_decay,
                              &b->rank_calibration};
  int rc;

  /* the defaults of train/cascade.py (THEME_BEAM, KEYWORD_BEAM, DEFAULT_RANKER) and
   * train/data.py (LIMITS) */
  b->theme_beam = b->keyword_beam = 8;
  b->rank_again = b->rank_cooc = b->rank_popularity = 0.0f;
  b->rank_decay = 0.8f;
  memset(&b->rank_model, 0, sizeof b->rank_model);
  b->rank_model.hidden = -1;
  b->max_sections = 16;
  b->max_keywords_per_section = 16;
  b->max_products_per_section = 64;
  b->max_query_bytes = 1024;
  if ((rc = parse_ints(m, "decode", decode_keys, decode_vals, mpath, err)) != 0) return rc;
  if ((rc = parse_ints(m, "limits", limit_keys, limit_vals, mpath, err)) != 0) return rc;
  const cJSON *r = vt_json_get(m, "ranker");
  if (r && !cJSON_IsNull(r)) {
    if (!cJSON_IsObject(r)) return vt_fail(err, VT_EFORMAT, "%s: ranker is not an object", mpath);
    for (int i = 0; rank_keys[i]; i++) {
      const cJSON *j = vt_json_get(r, rank_keys[i]);
      if (!j) continue;
      if (!cJSON_IsNumber(j) || !isfinite((float)j->valuedouble))
        return vt_fail(err, VT_EFORMAT, "%s: ranker.%s must be a finite number", mpath,
                       rank_keys[i]);
      *rank_vals[i] = (float)j->valuedouble;
    }
    const cJSON *kind = vt_json_get(r, "kind");
    if (kind && !(cJSON_IsString(kind) && (strcmp(kind->valuestring, "mix") == 0 ||
                                           strcmp(kind->valuestring, "learned") == 0)))
      return vt_fail(err, VT_EFORMAT, "%s: ranker.kind must be \"mix\" or \"learned\"", mpath);
    if (kind && strcmp(kind->valuestring, "learned") == 0 &&
        (rc = parse_learned_ranker(&b->rank_model, r, mpath, err)) != 0)
      return rc;
  }
  vt_err ce = {0};
  if (vt_bundle_check_calibration(b, b->rank_calibration, &ce))
    return vt_fail(err, VT_EFORMAT, "%s: ranker.%s", mpath, ce.msg);
  const cJSON *mv = vt_json_get(m, "model_version");
  if (!cJSON_IsString(mv)) return vt_fail(err, VT_EFORMAT, "%s: model_version is not a string", mpath);
  if (!(b->model_version = strdup(mv->valuestring)))
    return vt_fail(err, VT_ENOMEM, "%s: out of memory", mpath);
  return 0;
}

static int parse_regions(vt_bundle *b, const cJSON *m, const char *mpath, vt_err *err) {
  const cJSON *rs = vt_json_get(m, "regions"), *r;
  if (!cJSON_IsArray(rs) || cJSON_GetArraySize(rs) != b->cfg.n_regions)
    return vt_fail(err, VT_EFORMAT, "%s: regions must list n_regions=%d entries", mpath,
                   b->cfg.n_regions);
  if (!(b->regions = calloc((size_t)b->cfg.n_regions, sizeof *b->regions)))
    return vt_fail(err, VT_ENOMEM, "%s: out of memory", mpath);
  cJSON_ArrayForEach(r, rs) {
    int i = b->n_regions;
    const cJSON *name = vt_json_get(r, "name");
    const cJSON *off = vt_json_get(r, "season_offset");
    const cJSON *fix = vt_json_get(r, "fixed_season");
    long long o, fs = -1;
    if (!cJSON_IsString(name) || !name->valuestring[0])
      return vt_fail(err, VT_EFORMAT, "%s: regions[%d] has no name", mpath, i);
    for (int k = 0; k < i; k++)
      if (strcmp(b->regions[k].name, name->valuestring) == 0)
        return vt_fail(err, VT_EFORMAT, "%s: region %s is listed twice", mpath, name->valuestring);
    if (!json_int(off, -1000000, 1000000, &o))
      return vt_fail(err, VT_EFORMAT, "%s: region %s: season_offset must be an integer", mpath,
                     name->valuestring);
    /* null means "none", as in train/calendar.py */
    if (fix && !cJSON_IsNull(fix) && (!json_int(fix, -1000000, 3, &fs)))
      return vt_fail(err, VT_EFORMAT, "%s: region %s: fixed_season must be -1 or a season 0..3",
                     mpath, name->valuestring);
    if (!(b->regions[i].name = strdup(name->valuestring)))
      return vt_fail(err, VT_ENOMEM, "%s: out of memory", mpath);
    b->n_regions++;
    /* Python's % is never negative: keep the engine's C % from seeing a negative offset */
    b->regions[i].season_offset = (int)(((o % 4) + 4) % 4);
    b->regions[i].fixed_season = fs < 0 ? -1 : (int)fs;
  }
  return 0;
}

/* ---- vocabulary and phrases --------------------------------------------------------------- */

static uint32_t hash_bytes(const char *s, size_t n) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
  return h;
}

/* Exact lookup: the token id, or -1. */
static int vocab_find(const vt_bundle *b, const char *w, size_t len) {
  uint32_t mask = (uint32_t)b->vocab_hash_size - 1;
  for (uint32_t h = hash_bytes(w, len) & mask;; h = (h + 1) & mask) {
    int id = b->vocab_hash[h];
    if (id < 0) return -1;
    /* by length first: `w` is len bytes, not a C string, and may hold a NUL */
    if (strlen(b->vocab[id]) == len && memcmp(b->vocab[id], w, len) == 0) return id;
  }
}

int vt_vocab_lookup(const vt_bundle *b, const char *word, size_t len) {
  int id = vocab_find(b, word, len);
  return id < 0 ? VT_TOK_UNK : id;
}

static int load_vocab(vt_bundle *b, const char *path, vt_err *err) {
  vt_lines l;
  int rc;
  if ((rc = vt_lines_read(&l, path, err)) != 0) return rc;
  for (int i = 0; i < VT_N_SPECIALS; i++)
    if (i >= l.n || strcmp(l.line[i], specials[i]) != 0) {
      rc = vt_fail(err, VT_EFORMAT, "%s: the first tokens must be <pad> <bos> <sep> <eos> <unk>",
                   path);
      goto fail;
    }
  if (l.n != b->cfg.vocab_size) {
    rc = vt_fail(err, VT_EFORMAT, "%s: %d tokens, the config says vocab_size %d", path, l.n,
                 b->cfg.vocab_size);
    goto fail;
  }
  int size = 8;
  while (size < 2 * l.n) size *= 2; /* at most half full: short probe chains */
  b->vocab = calloc((size_t)l.n, sizeof *b->vocab);
  b->vocab_hash = malloc((size_t)size * sizeof *b->vocab_hash);
  if (!b->vocab || !b->vocab_hash) {
    rc = vt_fail(err, VT_ENOMEM, "%s: out of memory", path);
    goto fail;
  }
  b->vocab_hash_size = size;
  memset(b->vocab_hash, 0xff, (size_t)size * sizeof *b->vocab_hash);
  for (int i = 0; i < l.n; i++) {
    size_t len = strlen(l.line[i]);
    if (vocab_find(b, l.line[i], len) >= 0) {
      rc = vt_fail(err, VT_EFORMAT, "%s:%d: duplicate token '%s'", path, i + 1, l.line[i]);
      goto fail;
    }
    if (!(b->vocab[i] = strdup(l.line[i]))) {
      rc = vt_fail(err, VT_ENOMEM, "%s: out of memory", path);
      goto fail;
    }
    uint32_t h = hash_bytes(l.line[i], len) & (uint32_t)(size - 1);
    while (b->vocab_hash[h] >= 0) h = (h + 1) & (uint32_t)(size - 1);
    b->vocab_hash[h] = i;
  }
  rc = 0;
fail:
  vt_lines_free(&l);
  return rc;
}

/* `i<TAB>text` lines, ids 0.. in order. */
static int load_table(vt_phrases *p, const char *path, vt_err *err) {
  vt_lines l;
  int rc;
  if ((rc = vt_lines_read(&l, path, err)) != 0) return rc;
  if (!(p->text = calloc((size_t)l.n + 1, sizeof *p->text))) {
    rc = vt_fail(err, VT_ENOMEM, "%s: out of memory", path);
    goto fail;
  }
  for (int i = 0; i < l.n; i++) {
    char want[16], *tab = strchr(l.line[i], '\t');
    snprintf(want, sizeof want, "%d", i);
    if (!tab || strchr(tab + 1, '\t') || (size_t)(tab - l.line[i]) != strlen(want) ||
        strncmp(l.line[i], want, strlen(want)) != 0) {
      rc = vt_fail(err, VT_EFORMAT, "%s:%d: expected '%d<TAB>text'", path, i + 1, i);
      goto fail;
    }
    if (!(p->text[i] = strdup(tab + 1))) {
      rc = vt_fail(err, VT_ENOMEM, "%s: out of memory", path);
      goto fail;
    }
    p->n++;
  }
  rc = 0;
fail:
  vt_lines_free(&l);
  return rc;
}

/* The next word of the NUL-terminated *s, split at whitespace as the query tokeniser splits
 * (text.h: Python's str.split()); moves *s past it. 0 when there is none. */
static int next_word(const char **s, const char **w, size_t *len) {
  const char *p = *s;
  size_t n = strlen(p);
  uint32_t cp;
  int k;
  while (n && vt_is_space((k = vt_utf8_next(p, n, &cp), cp))) {
    p += k;
    n -= (size_t)k;
  }
  if (!n) {
    *s = p;
    return 0;
  }
  *w = p;
  while (n && !vt_is_space((k = vt_utf8_next(p, n, &cp), cp))) {
    p += k;
    n -= (size_t)k;
  }
  *len = (size_t)(p - *w);
  *s = p;
  return 1;
}

/* The token of a word's ASCII-lowercase form, UNK if none; -2 if out of memory. */
static int lower_lookup(const vt_bundle *b, const char *w, size_t len) {
  char small[128], *low = len < sizeof small ? small : malloc(len);
  if (!low) return -2;
  for (size_t k = 0; k < len; k++) low[k] = w[k] >= 'A' && w[k] <= 'Z' ? (char)(w[k] - 'A' + 'a') : w[k];
  int id = vt_vocab_lookup(b, low, len);
  if (low != small) free(low);
  return id;
}

/* Token ids of every phrase: each word must be in the vocabulary as written, and its token is
 * that of its A-Z-lowercased form (Vocab.encode; UNK if that is not a token). */
static int encode_table(const vt_bundle *b, vt_phrases *p, const char *path, vt_err *err) {
  size_t total = 0;
  for (int i = 0; i < p->n; i++) total += strlen(p->text[i]) / 2 + 1;
  p->tok_off = malloc(((size_t)p->n + 1) * sizeof *p->tok_off);
  p->tok = malloc((total ? total : 1) * sizeof *p->tok);
  if (!p->tok_off || !p->tok) return vt_fail(err, VT_ENOMEM, "%s: out of memory", path);
  int32_t n = 0;
  p->tok_off[0] = 0;
  for (int i = 0; i < p->n; i++) {
    const char *s = p->text[i];
    int bad = !*s;
    const char *w;
    size_t len;
    while (!bad && next_word(&s, &w, &len)) {
      if (vocab_find(b, w, len) < 0) {
        bad = 1;
        break;
      }
      int id = lower_lookup(b, w, len);
      if (id == -2) return vt_fail(err, VT_ENOMEM, "%s: out of memory", path);
      p->tok[n++] = id;
    }
    if (bad)
      return vt_fail(err, VT_EFORMAT, "%s:%d: phrase '%s' has words outside vocab.txt", path, i + 1,
                     p->text[i]);
    p->tok_off[i + 1] = n;
  }
  return 0;
}

static void phrases_free(vt_phrases *p) {
  if (p->text)
    for (int i = 0; i < p->n; i++) free(p->text[i]);
  free(p->text);
  free(p->tok_off);
  free(p->tok);
  memset(p, 0, sizeof *p);
}

/* ---- tries ----------------------------------------------------------------------------------- */

/* qsort has no context argument in C11, so each element carries its own (and vt_trie_build
 * stays reentrant). */
struct trie_key {
  int id, terminator;
  const vt_phrases *p;
};

/* Token d of phrase i with the terminator appended. */
static int seq_at(const vt_phrases *p, int i, int d, int term) {
  int len = p->tok_off[i + 1] - p->tok_off[i];
  return d < len ? p->tok[p->tok_off[i] + d] : term;
}

static int seq_cmp(const void *x, const void *y) {
  const struct trie_key *ka = x, *kb = y;
  const vt_phrases *p = ka->p;
  int a = ka->id, b = kb->id, term = ka->terminator;
  int la = p->tok_off[a + 1] - p->tok_off[a] + 1, lb = p->tok_off[b + 1] - p->tok_off[b] + 1;
  for (int d = 0; d < la && d < lb; d++) {
    int ta = seq_at(p, a, d, term), tb = seq_at(p, b, d, term);
    if (ta != tb) return ta < tb ? -1 : 1;
  }
  if (la != lb) return la < lb ? -1 : 1;
  return a < b ? -1 : a > b; /* equal sequences (duplicates) in id order */
}

/* Python builds a dict trie and numbers it breadth first, children in token order. Breadth-first
 * with sorted children is the same as numbering the distinct prefixes by (length, lexicographic
 * order), which is computed here from the sorted sequences: sequence k (in sorted order) adds the
 * nodes for its prefixes longer than its common prefix with sequence k-1. Every node but the root
 * is the child of exactly one edge, and edges are ordered like their children, so edge e leads to
 * node e + 1. */
int vt_trie_build(vt_trie *t, const vt_phrases *p, int terminator, vt_err *err) {
  struct trie_key *keys = NULL;
  int *order = NULL, *lcp = NULL, *first = NULL, *last = NULL, *nodes = NULL;
  int rc = VT_ENOMEM, n = p->n, maxlen = 0;
  int64_t total = 1;

  memset(t, 0, sizeof *t);
  t->terminator = terminator;
  for (int i = 0; i < n; i++) {
    for (int d = p->tok_off[i]; d < p->tok_off[i + 1]; d++)
      if (p->tok[d] == terminator) {
        rc = vt_fail(err, VT_EFORMAT, "phrase %d contains the terminator token %d", i, terminator);
        goto fail;
      }
    int len = p->tok_off[i + 1] - p->tok_off[i] + 1;
    if (len > maxlen) maxlen = len;
  }
  keys = malloc(((size_t)n + 1) * sizeof *keys);
  order = malloc(((size_t)n + 1) * sizeof *order);
  lcp = malloc(((size_t)n + 1) * sizeof *lcp);
  first = malloc(((size_t)n + 1) * sizeof *first); /* nodes[first[k] + d - 1]: node of (k, d) */
  last = malloc(((size_t)maxlen + 2) * sizeof *last);
  if (!keys || !order || !lcp || !first || !last) {
    vt_fail(err, VT_ENOMEM, "out of memory building a trie");
    goto fail;
  }
  for (int i = 0; i < n; i++) keys[i] = (struct trie_key){i, terminator, p};
  qsort(keys, (size_t)n, sizeof *keys, seq_cmp);
  for (int i = 0; i < n; i++) order[i] = keys[i].id;

  int dup = -1;
  for (int k = 0; k < n; k++) {
    int a = k ? order[k - 1] : -1, b = order[k], lb = p->tok_off[b + 1] - p->tok_off[b] + 1, d = 0;
    if (k) {
      int la = p->tok_off[a + 1] - p->tok_off[a] + 1;
      while (d < la && d < lb && seq_at(p, a, d, terminator) == seq_at(p, b, d, terminator)) d++;
      /* Python reports the first phrase (in id order) whose sequence was seen before */
      if (d == lb && d == la && (dup < 0 || b < dup)) dup = b;
    }
    lcp[k] = d;
    first[k] = (int)(total > INT32_MAX ? INT32_MAX : total);
    total += lb - d;
  }
  if (dup >= 0) {
    rc = vt_fail(err, VT_EFORMAT, "duplicate phrase %d ('%s')", dup, p->text ? p->text[dup] : "");
    goto fail;
  }
  if (total > INT32_MAX) {
    vt_fail(err, VT_ENOMEM, "trie too large");
    goto fail;
  }
  /* first[k] is only a running index here; ids are assigned level by level below */
  t->n_nodes = (int)total;
  t->n_edges = t->n_nodes - 1;
  nodes = malloc((size_t)t->n_nodes * sizeof *nodes);
  t->indptr = calloc((size_t)t->n_nodes + 1, sizeof *t->indptr);
  t->token = malloc(((size_t)t->n_edges + 1) * sizeof *t->token);
  t->child = malloc(((size_t)t->n_edges + 1) * sizeof *t->child);
  t->phrase = malloc((size_t)t->n_nodes * sizeof *t->phrase);
  if (!nodes || !t->indptr || !t->token || !t->child || !t->phrase) {
    vt_fail(err, VT_ENOMEM, "out of memory building a trie");
    goto fail;
  }
  /* breadth-first ids: depth by depth, sequences in sorted order */
  int next = 1;
  for (int d = 1; d <= maxlen; d++)
    for (int k = 0; k < n; k++) {
      int i = order[k], len = p->tok_off[i + 1] - p->tok_off[i] + 1;
      if (d > lcp[k] && d <= len) nodes[first[k] + (d - lcp[k]) - 1] = next++;
    }
  /* parents and tokens: walk the sorted sequences, keeping the node of each depth on the path */
  t->phrase[0] = -1;
  last[0] = 0;
  for (int k = 0; k < n; k++) {
    int i = order[k], len = p->tok_off[i + 1] - p->tok_off[i] + 1;
    for (int d = lcp[k] + 1; d <= len; d++) {
      int id = nodes[first[k] + (d - lcp[k]) - 1];
      last[d] = id;
      t->token[id - 1] = seq_at(p, i, d - 1, terminator);
      t->child[id - 1] = id;
      t->phrase[id] = d == len ? i : -1;
      t->indptr[last[d - 1] + 1]++; /* one more child of the parent */
    }
  }
  for (int s = 0; s < t->n_nodes; s++) t->indptr[s + 1] += t->indptr[s];
  rc = 0;
fail:
  free(keys);
  free(order);
  free(lcp);
  free(first);
  free(last);
  free(nodes);
  if (rc) vt_trie_free(t);
  return rc;
}

void vt_trie_free(vt_trie *t) {
  free(t->indptr);
  free(t->token);
  free(t->child);
  free(t->phrase);
  memset(t, 0, sizeof *t);
}

/* ---- weights --------------------------------------------------------------------------------- */

struct expect {
  char name[64];
  int ndim;
  int64_t shape[2];
  const float **slot;
};

static void expect(struct expect *e, int *n, const float **slot, int64_t d0, int64_t d1,
                   const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static void expect(struct expect *e, int *n, const float **slot, int64_t d0, int64_t d1,
                   const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e[*n].name, sizeof e[*n].name, fmt, ap);
  va_end(ap);
  e[*n].ndim = d1 < 0 ? 1 : 2;
  e[*n].shape[0] = d0;
  e[*n].shape[1] = d1;
  e[*n].slot = slot;
  (*n)++;
}

/* Every tensor the config implies, in the order of the PyTorch model's state_dict (so the first
 * mismatch reported is the one Python reports). Returns the count; e has room for it. */
static int expected_tensors(struct expect *e, vt_weights *w, const vt_config *c) {
  int n = 0;
  const int64_t C = c->d_model, F = c->d_ff, NO = -1;
#define LIN(field_w, field_b, out, in, name) \
  expect(e, &n, &(field_w), out, in, "%s.weight", name); \
  expect(e, &n, &(field_b), out, NO, "%s.bias", name)
#define LN(field_w, field_b, name) LIN(field_w, field_b, C, NO, name)
  char name[64];
  expect(e, &n, &w->t2v_w, c->t2v_dim, NO, "t2v_w");
  expect(e, &n, &w->t2v_b, c->t2v_dim, NO, "t2v_b");
  expect(e, &n, &w->queries, c->n_queries, C, "queries");
  for (int l = 0; l < c->code_levels; l++)
    expect(e, &n, &w->code_emb[l], c->codebook + 2, C, "code_emb.%d.weight", l);
  expect(e, &n, &w->action_emb, VT_N_ACTIONS + 1, C, "action_emb.weight");
  expect(e, &n, &w->region_emb, c->n_regions, C, "region_emb.weight");
  LIN(w->time_w, w->time_b, C, c->t2v_dim + 6, "time_proj");
  LN(w->ln_emb_w, w->ln_emb_b, "ln_emb");
  for (int i = 0; i < c->n_enc_layers; i++) {
    vt_enc_layer *L = &w->enc[i];
    expect(e, &n, &L->time_bias, c->n_heads, c->n_time_buckets, "enc.%d.time_bias", i);
#define ENC(f_w, f_b, out, in, sub) \
  snprintf(name, sizeof name, "enc.%d.%s", i, sub); \
  LIN(L->f_w, L->f_b, out, in, name)
    ENC(ln1_w, ln1_b, C, NO, "ln1");
    ENC(ln2_w, ln2_b, C, NO, "ln2");
    ENC(qkv_w, qkv_b, 3 * C, C, "attn.qkv");
    ENC(proj_w, proj_b, C, C, "attn.proj");
    ENC(fc1_w, fc1_b, F, C, "ffn.fc1");
    ENC(fc2_w, fc2_b, C, F, "ffn.fc2");
#undef ENC
  }
  LN(w->ln_enc_w, w->ln_enc_b, "ln_enc");
  expect(e, &n, &w->qf_rms1_w, C, NO, "qf_rms1.weight");
  expect(e, &n, &w->qf_rms2_w, C, NO, "qf_rms2.weight");
  LIN(w->qf_q_w, w->qf_q_b, C, C, "qf_attn.q");
  LIN(w->qf_kv_w, w->qf_kv_b, 2 * C, C, "qf_attn.kv");
  LIN(w->qf_proj_w, w->qf_proj_b, C, C, "qf_attn.proj");
  LIN(w->qf_fc1_w, w->qf_fc1_b, F, C, "qf_ffn.fc1");
  LIN(w->qf_fc2_w, w->qf_fc2_b, C, F, "qf_ffn.fc2");
  LN(w->ln_mem_w, w->ln_mem_b, "ln_mem");
  expect(e, &n, &w->tok_emb, c->vocab_size, C, "tok_emb.weight");
  expect(e, &n, &w->pos_emb, c->max_dec_len, C, "pos_emb.weight");
  for (int j = 0; j < c->n_dec_layers; j++) {
    vt_dec_layer *L = &w->dec[j];
#define DEC(f_w, f_b, out, in, sub) \
  snprintf(name, sizeof name, "dec.%d.%s", j, sub); \
  LIN(L->f_w, L->f_b, out, in, name)
    DEC(ln1_w, ln1_b, C, NO, "ln1");
    DEC(ln2_w, ln2_b, C, NO, "ln2");
    DEC(ln3_w, ln3_b, C, NO, "ln3");
    DEC(sa_qkv_w, sa_qkv_b, 3 * C, C, "self_attn.qkv");
    DEC(sa_proj_w, sa_proj_b, C, C, "self_attn.proj");
    DEC(ca_q_w, ca_q_b, C, C, "cross_attn.q");
    DEC(ca_kv_w, ca_kv_b, 2 * C, C, "cross_attn.kv");
    DEC(ca_proj_w, ca_proj_b, C, C, "cross_attn.proj");
    DEC(fc1_w, fc1_b, F, C, "ffn.fc1");
    DEC(fc2_w, fc2_b, C, F, "ffn.fc2");
#undef DEC
  }
  LN(w->ln_dec_w, w->ln_dec_b, "ln_dec");
  LIN(w->user_w, w->user_b, c->d_retrieval, C, "user_proj");
  LIN(w->prod_w, w->prod_b, c->d_retrieval, C, "prod_proj");
#undef LN
#undef LIN
  return n;
}

static void shape_str(char *buf, size_t n, const int64_t *shape, int ndim) {
  size_t used = (size_t)snprintf(buf, n, "[");
  for (int i = 0; i < ndim && used < n; i++)
    used += (size_t)snprintf(buf + used, n - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
  if (used < n) snprintf(buf + used, n - used, "]");
}

static int load_weights(vt_bundle *b, const char *path, vt_err *err) {
  const vt_config *c = &b->cfg;
  int max = 16 + c->code_levels + 13 * c->n_enc_layers + 20 * c->n_dec_layers + 64, rc;
  struct expect *e = calloc((size_t)max, sizeof *e);
  if (!e) return vt_fail(err, VT_ENOMEM, "%s: out of memory", path);
  int n = expected_tensors(e, &b->w, c);
  if ((rc = vt_st_open(&b->st, path, err)) != 0) goto fail;
  if (!(b->owned = calloc((size_t)n, sizeof *b->owned)) ||
      !(b->wref = calloc((size_t)n, sizeof *b->wref))) {
    rc = vt_fail(err, VT_ENOMEM, "%s: out of memory", path);
    goto fail;
  }
  /* missing before unexpected, each reported by its first name in sorted order, as Python */
  const char *worst = NULL;
  for (int i = 0; i < n; i++)
    if (!vt_st_get(b->st, e[i].name) && (!worst || strcmp(e[i].name, worst) < 0)) worst = e[i].name;
  if (worst) {
    rc = vt_fail(err, VT_EFORMAT, "%s: missing tensor %s", path, worst);
    goto fail;
  }
  for (int k = 0; k < b->st->n; k++) {
    const char *name = b->st->tensors[k].name;
    int i;
    for (i = 0; i < n && strcmp(e[i].name, name) != 0; i++) {}
    if (i == n && (!worst || strcmp(name, worst) < 0)) worst = name;
  }
  if (worst) {
    rc = vt_fail(err, VT_EFORMAT, "%s: unexpected tensor %s", path, worst);
    goto fail;
  }
  for (int i = 0; i < n; i++) {
    const vt_tensor *t = vt_st_get(b->st, e[i].name);
    if (t->ndim != e[i].ndim || t->shape[0] != e[i].shape[0] ||
        (e[i].ndim == 2 && t->shape[1] != e[i].shape[1])) {
      char have[160], want[64];
      shape_str(have, sizeof have, t->shape, t->ndim);
      shape_str(want, sizeof want, e[i].shape, e[i].ndim);
      rc = vt_fail(err, VT_EFORMAT, "%s: tensor %s has shape %s, the config implies %s", path,
                   e[i].name, have, want);
      goto fail;
    }
    const float *data = t->data;
    /* in place when the file already holds aligned float32, which is what the writer makes */
    if (t->dtype != VT_F32 || ((uintptr_t)t->data & (sizeof(float) - 1))) {
      float *conv = vt_tensor_to_f32(t);
      if (!conv) {
        rc = vt_fail(err, VT_ENOMEM, "%s: out of memory converting tensor %s", path, e[i].name);
        goto fail;
      }
      b->owned[b->n_owned++] = conv;
      data = conv;
    }
    for (int64_t k = 0; k < t->numel; k++)
      if (!isfinite(data[k])) {
        rc = vt_fail(err, VT_EFORMAT, "%s: tensor %s has NaN or Inf values", path, e[i].name);
        goto fail;
      }
    *e[i].slot = data;
    b->wref[b->n_wref++] = (vt_weight_ref){
        .data = data, .numel = t->numel, .slot = (int)(e[i].slot - (const float **)&b->w)};
    b->n_params += t->numel;
  }
  b->weight_bytes = (size_t)b->n_params * sizeof(float); /* resident as float32 */
  rc = 0;
fail:
  free(e);
  return rc;
}

/* ---- the bundle ------------------------------------------------------------------------------ */

int vt_bundle_load(vt_bundle **out, const char *dir, vt_err *err) {
  static const char *const required[] = {"model.safetensors", "vocab.txt", "themes.tsv",
                                         "keywords.tsv", NULL};
  char mpath[PATH_MAX_LEN], path[PATH_MAX_LEN], tpath[PATH_MAX_LEN], kpath[PATH_MAX_LEN];
  vt_bundle *b = NULL;
  cJSON *m = NULL;
  int rc;

  *out = NULL;
  if ((rc = vt_path_join(mpath, dir, "manifest.json", err)) != 0 ||
      (rc = vt_path_join(tpath, dir, "themes.tsv", err)) != 0 ||
      (rc = vt_path_join(kpath, dir, "keywords.tsv", err)) != 0)
    goto fail;
  if (!(b = calloc(1, sizeof *b)) || !(b->dir = strdup(dir))) {
    rc = vt_fail(err, VT_ENOMEM, "%s: out of memory", dir);
    goto fail;
  }
  if ((rc = vt_manifest_read(&m, dir, "vitrine-bundle", required, err)) != 0) goto fail;
  if ((rc = parse_config(&b->cfg, vt_json_get(m, "config"), mpath, err)) != 0 ||
      (rc = parse_settings(b, m, mpath, err)) != 0)
    goto fail;
  /* the manifest's sha256 of keywords.tsv was just checked against the file */
  const cJSON *kf = vt_json_get(vt_json_get(m, "files"),
                                                     "keywords.tsv");
  snprintf(b->keywords_sha256, sizeof b->keywords_sha256, "%s",
           vt_json_get(kf, "sha256")->valuestring);

  if ((rc = vt_path_join(path, dir, "vocab.txt", err)) != 0 || (rc = load_vocab(b, path, err)) != 0)
    goto fail;
  if ((rc = load_table(&b->themes, tpath, err)) != 0 ||
      (rc = load_table(&b->keywords, kpath, err)) != 0 ||
      (rc = encode_table(b, &b->themes, tpath, err)) != 0 ||
      (rc = encode_table(b, &b->keywords, kpath, err)) != 0)
    goto fail;
  if ((rc = parse_regions(b, m, mpath, err)) != 0) goto fail;
  struct {
    vt_trie *t;
    const vt_phrases *p;
    int term;
    const char *path;
  } tries[2] = {{&b->theme_trie, &b->themes, VT_TOK_SEP, tpath},
                {&b->keyword_trie, &b->keywords, VT_TOK_EOS, kpath}};
  for (int i = 0; i < 2; i++)
    if ((rc = vt_trie_build(tries[i].t, tries[i].p, tries[i].term, err)) != 0) {
      if (err) {
        char why[sizeof err->msg];
        snprintf(why, sizeof why, "%s", err->msg);
        vt_fail(err, rc, "%s: %s", tries[i].path, why);
      }
      goto fail;
    }
  if ((rc = vt_path_join(path, dir, "model.safetensors", err)) != 0 ||
      (rc = load_weights(b, path, err)) != 0)
    goto fail;
  *out = b;
  b = NULL;
  rc = 0;
fail:
  cJSON_Delete(m);
  vt_bundle_free(b);
  return rc;
}

void vt_bundle_free(vt_bundle *b) {
  if (!b) return;
  free(b->dir);
  free(b->model_version);
  if (b->regions)
    for (int i = 0; i < b->n_regions; i++) free(b->regions[i].name);
  free(b->regions);
  if (b->vocab)
    for (int i = 0; i < b->cfg.vocab_size; i++) free(b->vocab[i]);
  free(b->vocab);
  free(b->vocab_hash);
  phrases_free(&b->themes);
  phrases_free(&b->keywords);
  vt_trie_free(&b->theme_trie);
  vt_trie_free(&b->keyword_trie);
  for (int i = 0; i < b->n_owned; i++) free(b->owned[i]);
  free(b->owned);
  free(b->wref);
  vt_st_close(b->st);
  free(b);
}
