/*
 * fuzz_error_shape.c - libFuzzer target for the reshaping of a node's error
 * answer (a node can send any bytes). The first byte picks the status
 * (400..655). Invariants: what is written is one JSON object with an
 * "error" object whose "message" is a string; a body that is not reshaped
 * is a JSON object whose "error" is an object.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/error_shape.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct lx_buf out;
    char *body;
    json_t *j;

    if (size < 1)
        return 0;
    body = malloc(size - 1 ? size - 1 : 1);
    memcpy(body, data + 1, size - 1);
    lx_buf_init(&out, 0);
    if (lx_error_shape(400 + data[0], body, size - 1, &out)) {
        j = json_loadb(out.data, out.len, 0, NULL);
        if (!j || !json_is_string(json_object_get(json_object_get(j, "error"), "message")))
            abort();
        json_decref(j);
    } else {
        j = json_loadb(body, size - 1, 0, NULL);
        if (!j || !json_is_object(json_object_get(j, "error")))
            abort();
        json_decref(j);
    }
    lx_buf_deinit(&out);
    free(body);
    return 0;
}
