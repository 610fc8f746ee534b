/* Hostile test module: tries to read /etc/passwd and /secret.txt for every batch and reports what happened in the output record's payload. Without a
 * WASI grant it is refused at load; with one (and no preopened directory) it gets no file. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "transform.h"

bool exports_dataweaver_transform_transformer_init(transform_string_t *config, transform_string_t *err) {
  (void)err;
  transform_string_free(config);
  return true;
}

static void try_open(const char *path, char *msg, size_t cap) {
  FILE *f = fopen(path, "r");
  size_t used = strlen(msg);
  if (f) {
    char buf[64] = {0};
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    snprintf(msg + used, cap - used, "%s: OPENED (%zu bytes read); ", path, n);
  } else {
    snprintf(msg + used, cap - used, "%s: %s; ", path, strerror(errno));
  }
}

void exports_dataweaver_transform_transformer_process(exports_dataweaver_transform_transformer_list_event_t *batch, exports_dataweaver_transform_transformer_batch_result_t *ret) {
  char msg[512] = {0};
  try_open("/etc/passwd", msg, sizeof msg);
  try_open("/secret.txt", msg, sizeof msg);
  for (size_t i = 0; i < batch->len; i++) {
    transform_list_u8_free(&batch->ptr[i].payload);
    size_t n = strlen(msg);
    batch->ptr[i].payload.ptr = (uint8_t *)strdup(msg);
    batch->ptr[i].payload.len = n;
  }
  ret->events.ptr = batch->ptr;
  ret->events.len = batch->len;
  ret->errors.ptr = NULL;
  ret->errors.len = 0;
}
