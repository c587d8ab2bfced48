/*
 * fuzz_body_scan.c - libFuzzer target for lx_body_scan.
 *
 * The input is copied to an exact-size allocation so ASan catches a read one
 * byte past the body. Beyond not crashing, the scan must keep its promises:
 * on success every slice lies inside the body and end is in range; on failure
 * end is still in range and nothing is reported. The scan is repeated to check
 * it is a pure function of its input.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
 *       tests/fuzz/fuzz_body_scan.c src/http/body_scan.c -o fuzz_body_scan
 *   ./fuzz_body_scan -max_total_time=60 corpus-copy/ tests/fuzz/corpus/body_scan
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http/body_scan.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_slice(struct lx_slice s, const char *body, size_t len)
{
    if (!s.p) {
        if (s.len)
            abort();
        return;
    }
    if (s.p < body || s.p > body + len || s.len > (size_t)(body + len - s.p))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct lx_body_scan r, again;
    char *body = malloc(size ? size : 1);
    int rc;

    if (!body)
        return 0;
    if (size)
        memcpy(body, data, size);
    rc = lx_body_scan(size ? body : NULL, size, &r);
    if (rc > 0 || rc < LX_SCAN_TRAILING || !lx_body_scan_strerror(rc))
        abort();
    if (r.end > size)
        abort();
    if (rc == LX_SCAN_OK) {
        if (r.end < 2 || body[r.end - 1] != '}')
            abort();
        check_slice(r.model, body, size);
        check_slice(r.model_value, body, size);
        check_slice(r.stream_options, body, size);
        check_slice(r.messages, body, size);
        check_slice(r.prompt, body, size);
        check_slice(r.user, body, size);
        check_slice(r.max_tokens, body, size);
        if (r.model_is_string) {
            if (!r.model_present || !r.model.p || r.model_value.p != r.model.p - 1 ||
                r.model_value.len != r.model.len + 2)
                abort();
        } else if (r.model.p || r.model_has_escape) {
            abort();
        }
        if (r.model_present != (r.model_value.p != NULL))
            abort();
        if (r.model_has_escape && !memchr(r.model.p, '\\', r.model.len))
            abort();
        if (r.stream && !r.stream_present)
            abort();
        if (r.include_usage && (!r.stream_options.p || r.stream_options.p[0] != '{'))
            abort();
    } else {
        if (r.model_present || r.model.p || r.messages.p || r.stream || r.include_usage)
            abort();
    }
    if (lx_body_scan(size ? body : NULL, size, &again) != rc || memcmp(&r, &again, sizeof(r)))
        abort();
    free(body);
    return 0;
}
