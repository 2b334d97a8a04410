/* safetensors reader: mmap the file, validate the header the way train/bundle.py's
 * read_safetensors does, and expose tensors as pointers into the mapping. */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* The same cap as the Python reader: a header this large is corruption, not a model. */
#define ST_MAX_HEADER (100u * 1024u * 1024u)
/* JSON numbers are doubles; integers up to 2^53 are exact, which bounds offsets and dims. */
#define ST_MAX_INT 9007199254740992.0

static const struct {
  const char *name;
  enum vt_dtype dtype;
  size_t size;
} dtypes[] = {
    {"F32", VT_F32, 4}, {"F16", VT_F16, 2}, {"BF16", VT_BF16, 2}, {"I64", VT_I64, 8}, {"I32", VT_I32, 4},
};

static size_t dtype_size(enum vt_dtype d) {
  for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
    if (dtypes[i].dtype == d) return dtypes[i].size;
  return 0;
}

static const char *dtype_name(enum vt_dtype d) {
  for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
    if (dtypes[i].dtype == d) return dtypes[i].name;
  return "?";
}

/* Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF), as Python's decoder,
 * so a header Python refuses to decode is refused here too. */
static int utf8_valid(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned c = s[i];
    size_t len;
    unsigned min, cp;
    if (c < 0x80) { i++; continue; }
    if ((c & 0xE0) == 0xC0) { len = 2; min = 0x80; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { len = 3; min = 0x800; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { len = 4; min = 0x10000; cp = c & 0x07; }
    else return 0;
    if (n - i < len) return 0;
    for (size_t k = 1; k < len; k++) {
      if ((s[i + k] & 0xC0) != 0x80) return 0;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    i += len;
  }
  return 1;
}

/* A JSON number that is a non-negative integer (Python's isinstance(x, int) and x >= 0). */
static int json_uint(const cJSON *j, uint64_t *out) {
  if (!cJSON_IsNumber(j)) return 0;
  double d = j->valuedouble;
  if (!(d >= 0 && d <= ST_MAX_INT) || d != floor(d)) return 0;
  *out = (uint64_t)d;
  return 1;
}

static void fmt_shape(char *buf, size_t n, const int64_t *shape, int ndim) {
  size_t used = 0;
  used += (size_t)snprintf(buf, n, "[");
  for (int i = 0; i < ndim && used < n; i++)
    used += (size_t)snprintf(buf + used, n - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
  if (used < n) snprintf(buf + used, n - used, "]");
}

struct span {
  uint64_t b, e;
  const char *name;
};

/* Sorted as Python sorts (b, e, name) tuples, so the same overlapping pair is reported. */
static int span_cmp(const void *x, const void *y) {
  const struct span *a = x, *b = y;
  if (a->b != b->b) return a->b < b->b ? -1 : 1;
  if (a->e != b->e) return a->e < b->e ? -1 : 1;
  return strcmp(a->name, b->name);
}

/* Fills t from one header entry; the data section is [data, data + data_len). */
static int parse_entry(vt_tensor *t, const cJSON *info, const char *path, const unsigned char *data,
                       uint64_t data_len, vt_err *err) {
  const char *name = t->name;
  const cJSON *dt = cJSON_IsObject(info) ? cJSON_GetObjectItemCaseSensitive(info, "dtype") : NULL;
  const cJSON *shape = cJSON_IsObject(info) ? cJSON_GetObjectItemCaseSensitive(info, "shape") : NULL;
  const cJSON *offs =
      cJSON_IsObject(info) ? cJSON_GetObjectItemCaseSensitive(info, "data_offsets") : NULL;
  if (!dt || !shape || !cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2)
    return vt_fail(err, VT_EFORMAT, "%s: tensor %s has a malformed entry", path, name);
  size_t i, item = 0;
  for (i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
    if (cJSON_IsString(dt) && strcmp(dt->valuestring, dtypes[i].name) == 0) break;
  if (i == sizeof dtypes / sizeof dtypes[0]) {
    char *s = cJSON_PrintUnformatted(dt);
    vt_fail(err, VT_EFORMAT, "%s: tensor %s has unsupported dtype %s", path, name,
            cJSON_IsString(dt) ? dt->valuestring : s ? s : "?");
    free(s);
    return VT_EFORMAT;
  }
  t->dtype = dtypes[i].dtype;
  item = dtypes[i].size;

  int ndim = cJSON_IsArray(shape) ? cJSON_GetArraySize(shape) : -1;
  int bad = ndim < 0;
  const cJSON *d;
  int k = 0;
  if (!bad) {
    cJSON_ArrayForEach(d, shape) {
      uint64_t v;
      if (!json_uint(d, &v)) { bad = 1; break; }
      if (k < VT_MAX_DIMS) t->shape[k] = (int64_t)v;
      k++;
    }
  }
  if (bad) {
    char *s = cJSON_PrintUnformatted(shape);
    vt_fail(err, VT_EFORMAT, "%s: tensor %s has a bad shape %s", path, name, s ? s : "?");
    free(s);
    return VT_EFORMAT;
  }
  if (ndim > VT_MAX_DIMS)
    return vt_fail(err, VT_EFORMAT, "%s: tensor %s has %d dimensions, this reader supports %d",
                   path, name, ndim, VT_MAX_DIMS);
  t->ndim = ndim;

  uint64_t b, e;
  if (!json_uint(cJSON_GetArrayItem(offs, 0), &b) || !json_uint(cJSON_GetArrayItem(offs, 1), &e) ||
      b > e || e > data_len) {
    char *s = cJSON_PrintUnformatted(offs);
    vt_fail(err, VT_EFORMAT,
            "%s: tensor %s data %s lies outside the file (%llu data bytes) - truncated?", path,
            name, s ? s : "?", (unsigned long long)data_len);
    free(s);
    return VT_EFORMAT;
  }
  /* numel * item must equal the byte range; an overflowing product cannot, so it is refused */
  uint64_t numel = 1;
  int overflow = 0;
  for (k = 0; k < ndim; k++) {
    uint64_t v = (uint64_t)t->shape[k];
    if (v && numel > UINT64_MAX / v) overflow = 1;
    else numel *= v;
  }
  if (overflow || numel > UINT64_MAX / item || e - b != numel * item) {
    char sh[160];
    fmt_shape(sh, sizeof sh, t->shape, ndim);
    return vt_fail(err, VT_EFORMAT, "%s: tensor %s has %llu bytes for shape %s %s", path, name,
                   (unsigned long long)(e - b), sh, dtype_name(t->dtype));
  }
  t->numel = (int64_t)numel;
  t->nbytes = (size_t)(e - b);
  t->data = data + b;
  return 0;
}

static int parse_header(vt_safetensors *st, const char *hdr, size_t hlen, uint64_t data_len,
                        vt_err *err) {
  const char *path = st->path;
  const unsigned char *data = (const unsigned char *)st->map + 8 + hlen;
  struct span *spans = NULL;
  cJSON *root = NULL;
  const char *end = NULL;
  int rc = VT_EFORMAT;

  if (!utf8_valid((const unsigned char *)hdr, hlen)) {
    vt_fail(err, VT_EFORMAT, "%s: header is not valid JSON (invalid UTF-8)", path);
    goto fail;
  }
  root = cJSON_ParseWithLengthOpts(hdr, hlen, &end, 0);
  if (root) {
    /* cJSON stops after the value; Python refuses anything but whitespace after it */
    for (const char *p = end; p < hdr + hlen; p++)
      if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
        vt_fail(err, VT_EFORMAT, "%s: header is not valid JSON (extra data at byte %zu)", path,
                (size_t)(p - hdr));
        goto fail;
      }
  } else { /* end is the error position (cJSON's global error pointer is not thread-safe) */
    vt_fail(err, VT_EFORMAT, "%s: header is not valid JSON (error near byte %zu)", path,
            end ? (size_t)(end - hdr) : (size_t)0);
    goto fail;
  }
  if (!cJSON_IsObject(root)) {
    vt_fail(err, VT_EFORMAT, "%s: header is not a JSON object", path);
    goto fail;
  }

  int n = 0, n_meta = 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, root) {
    if (strcmp(it->string, "__metadata__") != 0) n++;
    else if (cJSON_IsObject(it)) n_meta += cJSON_GetArraySize(it);
  }
  rc = VT_ENOMEM;
  st->tensors = calloc((size_t)n + 1, sizeof *st->tensors);
  st->meta_keys = calloc((size_t)n_meta + 1, sizeof *st->meta_keys);
  st->meta_values = calloc((size_t)n_meta + 1, sizeof *st->meta_values);
  spans = calloc((size_t)n + 1, sizeof *spans);
  if (!st->tensors || !st->meta_keys || !st->meta_values || !spans) {
    vt_fail(err, VT_ENOMEM, "%s: out of memory reading the header", path);
    goto fail;
  }

  cJSON_ArrayForEach(it, root) {
    if (strcmp(it->string, "__metadata__") == 0) {
      /* Python keeps any value; only string pairs mean anything to a reader */
      const cJSON *kv;
      if (!cJSON_IsObject(it)) continue;
      cJSON_ArrayForEach(kv, it) {
        if (!cJSON_IsString(kv)) continue;
        st->meta_keys[st->n_meta] = strdup(kv->string);
        st->meta_values[st->n_meta] = strdup(kv->valuestring);
        st->n_meta++;
        if (!st->meta_keys[st->n_meta - 1] || !st->meta_values[st->n_meta - 1]) {
          vt_fail(err, VT_ENOMEM, "%s: out of memory reading the header", path);
          goto fail;
        }
      }
      continue;
    }
    /* a duplicated key would be silently shadowed by a JSON parser: refuse it */
    if (vt_st_get(st, it->string)) {
      rc = vt_fail(err, VT_EFORMAT, "%s: tensor %s appears twice in the header", path, it->string);
      goto fail;
    }
    vt_tensor *t = &st->tensors[st->n];
    if (!(t->name = strdup(it->string))) {
      vt_fail(err, VT_ENOMEM, "%s: out of memory reading the header", path);
      goto fail;
    }
    st->n++;
    if ((rc = parse_entry(t, it, path, data, data_len, err)) != 0) goto fail;
    spans[st->n - 1].b = (uint64_t)((const unsigned char *)t->data - data);
    spans[st->n - 1].e = spans[st->n - 1].b + t->nbytes;
    spans[st->n - 1].name = t->name;
  }

  qsort(spans, (size_t)st->n, sizeof *spans, span_cmp);
  for (int i = 0; i + 1 < st->n; i++)
    if (spans[i + 1].b < spans[i].e) {
      rc = vt_fail(err, VT_EFORMAT, "%s: tensors %s and %s overlap", path, spans[i].name,
                   spans[i + 1].name);
      goto fail;
    }
  rc = 0;
fail:
  free(spans);
  cJSON_Delete(root);
  return rc;
}

int vt_st_open(vt_safetensors **out, const char *path, vt_err *err) {
  vt_safetensors *st = NULL;
  int fd = -1, rc;
  struct stat sb;

  *out = NULL;
  if (!(st = calloc(1, sizeof *st)) || !(st->path = strdup(path))) {
    rc = vt_fail(err, VT_ENOMEM, "%s: out of memory", path);
    goto fail;
  }
  if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0 || fstat(fd, &sb) != 0) {
    rc = vt_fail(err, VT_EIO, "%s: cannot read (%s)", path, strerror(errno));
    goto fail;
  }
  if (!S_ISREG(sb.st_mode)) {
    rc = vt_fail(err, VT_EIO, "%s: cannot read (not a regular file)", path);
    goto fail;
  }
  if (sb.st_size < 8) {
    rc = vt_fail(err, VT_EFORMAT, "%s: truncated (no safetensors header)", path);
    goto fail;
  }
  st->size = (size_t)sb.st_size;
  st->map = mmap(NULL, st->size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (st->map == MAP_FAILED) {
    st->map = NULL;
    rc = vt_fail(err, VT_EIO, "%s: cannot map (%s)", path, strerror(errno));
    goto fail;
  }
  close(fd);
  fd = -1;

  const unsigned char *p = st->map;
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | p[i]; /* little-endian on any host */
  if (hlen > st->size - 8 || hlen > ST_MAX_HEADER) {
    rc = vt_fail(err, VT_EFORMAT, "%s: header length %llu exceeds the file", path,
                 (unsigned long long)hlen);
    goto fail;
  }
  if ((rc = parse_header(st, (const char *)p + 8, (size_t)hlen, st->size - 8 - hlen, err)) != 0)
    goto fail;
  *out = st;
  return 0;
fail:
  if (fd >= 0) close(fd);
  vt_st_close(st);
  return rc;
}

void vt_st_close(vt_safetensors *st) {
  if (!st) return;
  if (st->map) munmap(st->map, st->size);
  if (st->tensors)
    for (int i = 0; i < st->n; i++) free(st->tensors[i].name);
  for (int i = 0; i < st->n_meta; i++) {
    free(st->meta_keys[i]);
    free(st->meta_values[i]);
  }
  /* a strdup that failed mid-pair leaves one of the two set */
  if (st->meta_keys) free(st->meta_keys[st->n_meta]);
  if (st->meta_values) free(st->meta_values[st->n_meta]);
  free(st->meta_keys);
  free(st->meta_values);
  free(st->tensors);
  free(st->path);
  free(st);
}

const vt_tensor *vt_st_get(const vt_safetensors *st, const char *name) {
  for (int i = 0; i < st->n; i++)
    if (strcmp(st->tensors[i].name, name) == 0) return &st->tensors[i];
  return NULL;
}

const char *vt_st_meta(const vt_safetensors *st, const char *key) {
  for (int i = 0; i < st->n_meta; i++)
    if (strcmp(st->meta_keys[i], key) == 0) return st->meta_values[i];
  return NULL;
}

/* IEEE half to single, subnormals, infinities and NaN included. */
static float half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (man << 13);
  } else if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else { /* subnormal: normalise the mantissa */
      int e = -1;
      do { man <<= 1; e++; } while (!(man & 0x400));
      bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3FF) << 13);
    }
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

float *vt_tensor_to_f32(const vt_tensor *t) {
  size_t item = dtype_size(t->dtype);
  if (!item || t->numel < 0 || t->nbytes != (size_t)t->numel * item) return NULL;
  /* at least one element so an empty tensor still gets a pointer that can be freed */
  float *out = malloc(((size_t)t->numel ? (size_t)t->numel : 1) * sizeof *out);
  if (!out) return NULL;
  const unsigned char *p = t->data;
  /* bytes are assembled explicitly: the data is little-endian and need not be aligned */
  for (size_t i = 0; i < (size_t)t->numel; i++, p += item) {
    switch (t->dtype) {
    case VT_F32: {
      uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
      memcpy(&out[i], &u, sizeof u);
      break;
    }
    case VT_F16: out[i] = half_to_float((uint16_t)(p[0] | p[1] << 8)); break;
    case VT_BF16: {
      uint32_t u = ((uint32_t)p[0] | (uint32_t)p[1] << 8) << 16;
      memcpy(&out[i], &u, sizeof u);
      break;
    }
    case VT_I32: {
      uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
      out[i] = (float)(int32_t)u;
      break;
    }
    case VT_I64: {
      uint64_t u = 0;
      for (int k = 7; k >= 0; k--) u = (u << 8) | p[k];
      out[i] = (float)(int64_t)u;
      break;
    }
    }
  }
  return out;
}
