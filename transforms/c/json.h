/* A strict JSON scanner (RFC 8259) for transforms: validates a document and reports the
 * spans of an object's members, so a transform can copy what it keeps byte for byte.
 * Header-only; no allocation except in json_decode_string. */
#ifndef DW_JSON_H
#define DW_JSON_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define JSON_MAX_DEPTH 128

typedef struct { const uint8_t *s; size_t n; size_t i; } json_cursor;
typedef struct { size_t start, end; } json_span;

static void json_ws(json_cursor *c) {
  while (c->i < c->n && (c->s[c->i] == ' ' || c->s[c->i] == '\t' || c->s[c->i] == '\n' || c->s[c->i] == '\r')) c->i++;
}

/* Valid UTF-8 (no overlongs, no surrogates, at most U+10FFFF). */
static int json_utf8_ok(const uint8_t *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    uint8_t b = s[i];
    if (b < 0x80) { i++; continue; }
    size_t len; uint32_t cp;
    if ((b & 0xE0) == 0xC0) { len = 2; cp = b & 0x1F; }
    else if ((b & 0xF0) == 0xE0) { len = 3; cp = b & 0x0F; }
    else if ((b & 0xF8) == 0xF0) { len = 4; cp = b & 0x07; }
    else return 0;
    if (i + len > n) return 0;
    for (size_t k = 1; k < len; k++) {
      if ((s[i + k] & 0xC0) != 0x80) return 0;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)) return 0;
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp < 0xE000)) return 0;
    i += len;
  }
  return 1;
}

static int json_hex4(json_cursor *c, uint32_t *v) {
  *v = 0;
  for (int k = 0; k < 4; k++) {
    if (c->i >= c->n) return 0;
    uint8_t h = c->s[c->i++];
    uint32_t d;
    if (h >= '0' && h <= '9') d = h - '0';
    else if (h >= 'a' && h <= 'f') d = h - 'a' + 10;
    else if (h >= 'A' && h <= 'F') d = h - 'A' + 10;
    else return 0;
    *v = *v * 16 + d;
  }
  return 1;
}

/* At an opening quote: skips the string. */
static int json_skip_string(json_cursor *c) {
  c->i++;
  while (c->i < c->n) {
    uint8_t b = c->s[c->i++];
    if (b == '"') return 1;
    if (b < 0x20) return 0;
    if (b == '\\') {
      if (c->i >= c->n) return 0;
      uint8_t e = c->s[c->i++];
      if (e == 'u') {
        uint32_t hi, lo;
        if (!json_hex4(c, &hi)) return 0;
        if (hi >= 0xD800 && hi < 0xDC00) {
          if (c->i + 2 > c->n || c->s[c->i] != '\\' || c->s[c->i + 1] != 'u') return 0;
          c->i += 2;
          if (!json_hex4(c, &lo) || lo < 0xDC00 || lo >= 0xE000) return 0;
        } else if (hi >= 0xDC00 && hi < 0xE000) {
          return 0;
        }
      } else if (!strchr("\"\\/bfnrt", e) || e == 0) {
        return 0;
      }
    }
  }
  return 0;
}

static size_t json_digits(json_cursor *c) {
  size_t start = c->i;
  while (c->i < c->n && c->s[c->i] >= '0' && c->s[c->i] <= '9') c->i++;
  return c->i - start;
}

static int json_skip_number(json_cursor *c) {
  if (c->s[c->i] == '-') c->i++;
  if (c->i >= c->n) return 0;
  if (c->s[c->i] == '0') c->i++;
  else if (c->s[c->i] >= '1' && c->s[c->i] <= '9') json_digits(c);
  else return 0;
  if (c->i < c->n && c->s[c->i] == '.') { c->i++; if (!json_digits(c)) return 0; }
  if (c->i < c->n && (c->s[c->i] == 'e' || c->s[c->i] == 'E')) {
    c->i++;
    if (c->i < c->n && (c->s[c->i] == '+' || c->s[c->i] == '-')) c->i++;
    if (!json_digits(c)) return 0;
  }
  return 1;
}

static int json_skip_lit(json_cursor *c, const char *w) {
  size_t l = strlen(w);
  if (c->i + l > c->n || memcmp(c->s + c->i, w, l) != 0) return 0;
  c->i += l;
  return 1;
}

/* Skips one value starting at c->i (no leading whitespace). */
static int json_skip_value(json_cursor *c, int depth) {
  if (c->i >= c->n || depth > JSON_MAX_DEPTH) return 0;
  uint8_t b = c->s[c->i];
  if (b == '"') return json_skip_string(c);
  if (b == 't') return json_skip_lit(c, "true");
  if (b == 'f') return json_skip_lit(c, "false");
  if (b == 'n') return json_skip_lit(c, "null");
  if (b == '-' || (b >= '0' && b <= '9')) return json_skip_number(c);
  if (b == '[' || b == '{') {
    uint8_t close = b == '[' ? ']' : '}';
    c->i++;
    json_ws(c);
    if (c->i < c->n && c->s[c->i] == close) { c->i++; return 1; }
    for (;;) {
      json_ws(c);
      if (b == '{') {
        if (c->i >= c->n || c->s[c->i] != '"' || !json_skip_string(c)) return 0;
        json_ws(c);
        if (c->i >= c->n || c->s[c->i] != ':') return 0;
        c->i++;
        json_ws(c);
      }
      if (!json_skip_value(c, depth + 1)) return 0;
      json_ws(c);
      if (c->i >= c->n) return 0;
      if (c->s[c->i] == ',') { c->i++; continue; }
      if (c->s[c->i] == close) { c->i++; return 1; }
      return 0;
    }
  }
  return 0;
}

/* Validates a whole document: one value, surrounding whitespace only, valid UTF-8. */
static int json_valid(const uint8_t *s, size_t n, json_span *value) {
  if (!json_utf8_ok(s, n)) return 0;
  json_cursor c = {s, n, 0};
  json_ws(&c);
  value->start = c.i;
  if (!json_skip_value(&c, 0)) return 0;
  value->end = c.i;
  json_ws(&c);
  return c.i == n;
}

/* The members of a valid object span: calls f(key, value, ctx) for each, in order. */
typedef void (*json_member_fn)(const uint8_t *s, json_span key, json_span value, void *ctx);
static void json_members(const uint8_t *s, json_span obj, json_member_fn f, void *ctx) {
  json_cursor c = {s, obj.end, obj.start + 1};
  for (;;) {
    json_ws(&c);
    if (c.s[c.i] == '}') return;
    json_span k = {c.i, 0};
    json_skip_string(&c);
    k.end = c.i;
    json_ws(&c);
    c.i++; /* ':' */
    json_ws(&c);
    json_span v = {c.i, 0};
    json_skip_value(&c, 0);
    v.end = c.i;
    f(s, k, v, ctx);
    json_ws(&c);
    if (c.s[c.i] == ',') c.i++;
  }
}

/* The elements of a valid array span: calls f(element, ctx) for each, in order. */
typedef void (*json_element_fn)(const uint8_t *s, json_span element, void *ctx);
static void json_elements(const uint8_t *s, json_span arr, json_element_fn f, void *ctx) {
  json_cursor c = {s, arr.end, arr.start + 1};
  for (;;) {
    json_ws(&c);
    if (c.s[c.i] == ']') return;
    json_span e = {c.i, 0};
    json_skip_value(&c, 0);
    e.end = c.i;
    f(s, e, ctx);
    json_ws(&c);
    if (c.s[c.i] == ',') c.i++;
  }
}

static void json_put_utf8(uint8_t **o, uint32_t cp) {
  uint8_t *p = *o;
  if (cp < 0x80) *p++ = (uint8_t)cp;
  else if (cp < 0x800) { *p++ = 0xC0 | (cp >> 6); *p++ = 0x80 | (cp & 0x3F); }
  else if (cp < 0x10000) { *p++ = 0xE0 | (cp >> 12); *p++ = 0x80 | ((cp >> 6) & 0x3F); *p++ = 0x80 | (cp & 0x3F); }
  else { *p++ = 0xF0 | (cp >> 18); *p++ = 0x80 | ((cp >> 12) & 0x3F); *p++ = 0x80 | ((cp >> 6) & 0x3F); *p++ = 0x80 | (cp & 0x3F); }
  *o = p;
}

/* Decodes a valid string span (with its quotes) into a malloc'd buffer; *len gets its
 * length. The decoded text is never longer than the span. */
static uint8_t *json_decode_string(const uint8_t *s, json_span sp, size_t *len) {
  uint8_t *out = malloc(sp.end - sp.start + 1), *o = out;
  json_cursor c = {s, sp.end - 1, sp.start + 1};
  while (c.i < c.n) {
    uint8_t b = s[c.i++];
    if (b != '\\') { *o++ = b; continue; }
    uint8_t e = s[c.i++];
    switch (e) {
      case 'b': *o++ = '\b'; break;
      case 'f': *o++ = '\f'; break;
      case 'n': *o++ = '\n'; break;
      case 'r': *o++ = '\r'; break;
      case 't': *o++ = '\t'; break;
      case 'u': {
        uint32_t hi, lo;
        json_hex4(&c, &hi);
        if (hi >= 0xD800 && hi < 0xDC00) {
          c.i += 2;
          json_hex4(&c, &lo);
          hi = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
        }
        json_put_utf8(&o, hi);
        break;
      }
      default: *o++ = e;
    }
  }
  *len = (size_t)(o - out);
  return out;
}

/* True if the span is a string whose decoded text is `want`. */
static int json_string_is(const uint8_t *s, json_span sp, const char *want) {
  if (s[sp.start] != '"') return 0;
  size_t len;
  uint8_t *d = json_decode_string(s, sp, &len);
  int eq = len == strlen(want) && memcmp(d, want, len) == 0;
  free(d);
  return eq;
}

/* A growable byte buffer. */
typedef struct { uint8_t *p; size_t len, cap; } json_buf;

static void json_put(json_buf *b, const void *data, size_t n) {
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 64;
    while (cap < b->len + n) cap *= 2;
    b->p = realloc(b->p, cap);
    b->cap = cap;
  }
  memcpy(b->p + b->len, data, n);
  b->len += n;
}

/* Appends `s` as a JSON string literal. */
static void json_put_string(json_buf *b, const uint8_t *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  json_put(b, "\"", 1);
  for (size_t i = 0; i < n; i++) {
    uint8_t c = s[i];
    if (c == '"') json_put(b, "\\\"", 2);
    else if (c == '\\') json_put(b, "\\\\", 2);
    else if (c == '\n') json_put(b, "\\n", 2);
    else if (c == '\r') json_put(b, "\\r", 2);
    else if (c == '\t') json_put(b, "\\t", 2);
    else if (c < 0x20) { char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]}; json_put(b, e, 6); }
    else json_put(b, &c, 1);
  }
  json_put(b, "\"", 1);
}

#endif
