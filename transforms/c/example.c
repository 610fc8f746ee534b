/* The example transform in C (see transforms/README.md for what it does). The types and
 * the ABI glue come from `wit-bindgen c` (generated into gen/ by build.sh). */
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "transform.h"

typedef dataweaver_transform_types_event_t event_t;
typedef dataweaver_transform_types_record_error_t record_error_t;

static uint8_t *host;
static size_t host_len;

static void set_err(transform_string_t *err, const char *msg) { transform_string_dup(err, msg); }

bool exports_dataweaver_transform_transformer_init(transform_string_t *config, transform_string_t *err) {
  json_span doc;
  int ok = json_valid(config->ptr, config->len, &doc) && config->ptr[doc.start] == '{';
  if (!ok) {
    transform_string_free(config);
    set_err(err, "config is not JSON");
    return false;
  }
  /* Find "host" (the last one wins, as in every JSON library). */
  struct { json_span v; int found; } h = {{0, 0}, 0};
  void on_member(const uint8_t *s, json_span k, json_span v, void *ctx);
  json_members(config->ptr, doc, on_member, &h);
  if (!h.found || config->ptr[h.v.start] != '"') {
    transform_string_free(config);
    set_err(err, "config: `host` (a string) is required");
    return false;
  }
  free(host);
  host = json_decode_string(config->ptr, h.v, &host_len);
  transform_string_free(config);
  return true;
}

void on_member(const uint8_t *s, json_span k, json_span v, void *ctx) {
  struct { json_span v; int found; } *h = ctx;
  if (json_string_is(s, k, "host")) { h->v = v; h->found = 1; }
}

/* Output list of events, grown as records are produced. */
typedef struct { event_t *ptr; size_t len, cap; } events_t;
typedef struct { record_error_t *ptr; size_t len, cap; } errors_t;

static void dup_bytes(uint8_t **dst, size_t *dst_len, const uint8_t *src, size_t len) {
  *dst = len ? malloc(len) : NULL;
  if (len) memcpy(*dst, src, len);
  *dst_len = len;
}

/* A copy of `in` with a new topic and payload (owned by the new event). */
static void push_event(events_t *out, const event_t *in, const uint8_t *topic, size_t topic_len, json_buf payload) {
  if (out->len == out->cap) {
    out->cap = out->cap ? out->cap * 2 : 16;
    out->ptr = realloc(out->ptr, out->cap * sizeof(event_t));
  }
  event_t *e = &out->ptr[out->len++];
  e->ts_ns = in->ts_ns;
  dup_bytes(&e->source.ptr, &e->source.len, in->source.ptr, in->source.len);
  dup_bytes(&e->topic.ptr, &e->topic.len, topic, topic_len);
  e->key.is_some = in->key.is_some;
  if (in->key.is_some) dup_bytes(&e->key.val.ptr, &e->key.val.len, in->key.val.ptr, in->key.val.len);
  e->headers.len = in->headers.len;
  e->headers.ptr = in->headers.len ? malloc(in->headers.len * sizeof(*e->headers.ptr)) : NULL;
  for (size_t i = 0; i < in->headers.len; i++) {
    dup_bytes(&e->headers.ptr[i].name.ptr, &e->headers.ptr[i].name.len, in->headers.ptr[i].name.ptr, in->headers.ptr[i].name.len);
    dup_bytes(&e->headers.ptr[i].value.ptr, &e->headers.ptr[i].value.len, in->headers.ptr[i].value.ptr, in->headers.ptr[i].value.len);
  }
  e->payload.ptr = payload.p;
  e->payload.len = payload.len;
}

/* Rebuilding an object: every member but "host", then "host". */
typedef struct { json_buf *b; int first; } rebuild_t;

static void copy_member(const uint8_t *s, json_span k, json_span v, void *ctx) {
  rebuild_t *r = ctx;
  if (json_string_is(s, k, "host")) return;
  if (!r->first) json_put(r->b, ",", 1);
  r->first = 0;
  json_put(r->b, s + k.start, k.end - k.start);
  json_put(r->b, ":", 1);
  json_put(r->b, s + v.start, v.end - v.start);
}

static json_buf with_host(const uint8_t *s, json_span obj) {
  json_buf b = {0};
  json_put(&b, "{", 1);
  rebuild_t r = {&b, 1};
  json_members(s, obj, copy_member, &r);
  if (!r.first) json_put(&b, ",", 1);
  json_put(&b, "\"host\":", 7);
  json_put_string(&b, host, host_len);
  json_put(&b, "}", 1);
  return b;
}

/* What the transform needs from a record's top-level members. */
typedef struct { json_span level, service, batch; int has_level, has_service, has_batch; } fields_t;

static void find_fields(const uint8_t *s, json_span k, json_span v, void *ctx) {
  fields_t *f = ctx;
  if (json_string_is(s, k, "level")) { f->level = v; f->has_level = 1; }
  else if (json_string_is(s, k, "service")) { f->service = v; f->has_service = 1; }
  else if (json_string_is(s, k, "batch")) { f->batch = v; f->has_batch = 1; }
}

typedef struct { events_t *out; const event_t *in; const uint8_t *topic; size_t topic_len; } split_t;

static void split_element(const uint8_t *s, json_span e, void *ctx) {
  split_t *sp = ctx;
  json_buf b;
  if (s[e.start] == '{') {
    b = with_host(s, e);
  } else {
    b = (json_buf){0};
    json_put(&b, "{\"value\":", 9);
    json_put(&b, s + e.start, e.end - e.start);
    json_put(&b, ",\"host\":", 8);
    json_put_string(&b, host, host_len);
    json_put(&b, "}", 1);
  }
  push_event(sp->out, sp->in, sp->topic, sp->topic_len, b);
}

static void push_error(errors_t *errs, size_t index, const char *reason) {
  if (errs->len == errs->cap) {
    errs->cap = errs->cap ? errs->cap * 2 : 8;
    errs->ptr = realloc(errs->ptr, errs->cap * sizeof(record_error_t));
  }
  record_error_t *r = &errs->ptr[errs->len++];
  r->index = (uint32_t)index;
  transform_string_dup(&r->reason, reason);
}

static void transform_one(const event_t *in, size_t index, events_t *out, errors_t *errs) {
  const uint8_t *s = in->payload.ptr;
  json_span doc;
  if (!json_valid(s, in->payload.len, &doc)) { push_error(errs, index, "malformed JSON"); return; }
  if (s[doc.start] != '{') { push_error(errs, index, "payload is not a JSON object"); return; }
  fields_t f = {0};
  json_members(s, doc, find_fields, &f);
  if (f.has_level && json_string_is(s, f.level, "debug")) return;
  const uint8_t *topic = in->topic.ptr;
  size_t topic_len = in->topic.len;
  uint8_t *decoded = NULL;
  if (f.has_service && s[f.service.start] == '"') {
    decoded = json_decode_string(s, f.service, &topic_len);
    topic = decoded;
  }
  if (f.has_batch && s[f.batch.start] == '[') {
    split_t sp = {out, in, topic, topic_len};
    json_elements(s, f.batch, split_element, &sp);
  } else {
    push_event(out, in, topic, topic_len, with_host(s, doc));
  }
  free(decoded);
}

void exports_dataweaver_transform_transformer_process(exports_dataweaver_transform_transformer_list_event_t *batch, exports_dataweaver_transform_transformer_batch_result_t *ret) {
  events_t out = {0};
  errors_t errs = {0};
  for (size_t i = 0; i < batch->len; i++) transform_one(&batch->ptr[i], i, &out, &errs);
  exports_dataweaver_transform_transformer_list_event_free(batch);
  ret->events.ptr = out.ptr;
  ret->events.len = out.len;
  ret->errors.ptr = errs.ptr;
  ret->errors.len = errs.len;
}
