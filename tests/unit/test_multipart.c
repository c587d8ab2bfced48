/*
 * test_multipart.c - the multipart/form-data parser
 * (src/http/multipart.c): the boundary from a Content-Type, parts with and
 * without headers, names and filenames, preamble, padding and epilogue; the
 * refusals (no boundary line, unterminated parts and headers, a header line
 * without a colon, LF-only lines, too many parts); and garbage: random bytes
 * and mutations of a good body, each in an exact-size allocation so that a
 * one-byte over-read is caught under ASan, never crash and never give a part
 * outside the body.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "../../src/http/multipart.h"
#include "../../src/core/lx.h"
#include "unit_util.h"

#define MAX 8

static int parse(const char *body, size_t len, const char *boundary, struct lx_mp_part *parts)
{
    const char *why = NULL;
    int n = lx_mp_parse(body, len, boundary, strlen(boundary), parts, MAX, &why);

    if (n < 0)
        assert_non_null(why);
    return n;
}

static void assert_part(const struct lx_mp_part *p, const char *name, const char *filename,
                        const char *data, size_t len)
{
    assert_int_equal(p->name_len, strlen(name));
    assert_memory_equal(p->name, name, p->name_len);
    if (filename) {
        assert_non_null(p->filename);
        assert_int_equal(p->filename_len, strlen(filename));
        assert_memory_equal(p->filename, filename, p->filename_len);
    } else {
        assert_null(p->filename);
    }
    assert_int_equal(p->len, len);
    assert_memory_equal(p->data, data, len);
}

static void test_boundary(void **state)
{
    static const struct {
        const char *ctype, *boundary; /* NULL: refused */
    } cases[] = {
        {"multipart/form-data; boundary=abc", "abc"},
        {"Multipart/Form-Data;boundary=\"a b;c\"", "a b;c"},
        {"multipart/form-data; charset=utf-8; BOUNDARY=x-y_z", "x-y_z"},
        {"multipart/form-data ; boundary = abc ", "abc"},
        {"multipart/form-data", NULL},
        {"multipart/form-data; boundary=", NULL},
        {"multipart/form-data; boundary=\"\"", NULL},
        {"multipart/mixed; boundary=abc", NULL},
        {"application/json", NULL},
        {"", NULL},
        {"multipart/form-data; boundary=\"unterminated", "unterminated"},
        {"multipart/form-data; boundary=a\x01"
         "b",
         NULL},
        {"multipart/form-data; boundary=0123456789012345678901234567890123456789012345678901234567"
         "890123456789",
         "0123456789012345678901234567890123456789012345678901234567890123456789"},
        {"multipart/form-data; boundary=0123456789012345678901234567890123456789012345678901234567"
         "8901234567890",
         NULL},
    };

    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        const char *ct = cases[i].ctype, *b = NULL, *why = NULL;
        size_t blen = 0;
        int rc = lx_mp_boundary(ct, strlen(ct), &b, &blen, &why);

        if (!cases[i].boundary) {
            assert_int_equal(rc, LX_EPROTO);
            assert_non_null(why);
            continue;
        }
        assert_int_equal(rc, 0);
        assert_int_equal(blen, strlen(cases[i].boundary));
        assert_memory_equal(b, cases[i].boundary, blen);
    }
}

static void test_parts(void **state)
{
    static const char body[] = "preamble, ignored\r\n"
                               "--XyZ  \t\r\n"
                               "Content-Disposition: form-data; name=\"model\"\r\n"
                               "\r\n"
                               "whisper-1\r\n"
                               "--XyZ\r\n"
                               "content-disposition: form-data; name=file; filename=\"a;b.wav\"\r\n"
                               "Content-Type: audio/wav\r\n"
                               "\r\n"
                               "RIFF--XyZ\r\n-XyZ not a delimiter\0\xff\r\n"
                               "--XyZ\r\n"
                               "\r\n"
                               "no headers\r\n"
                               "--XyZ--\r\n"
                               "epilogue, ignored\r\n--XyZ\r\n";
    static const char file[] = "RIFF--XyZ\r\n-XyZ not a delimiter\0\xff";
    struct lx_mp_part parts[MAX];

    assert_int_equal(parse(body, sizeof(body) - 1, "XyZ", parts), 3);
    assert_part(&parts[0], "model", NULL, "whisper-1", 9);
    assert_part(&parts[1], "file", "a;b.wav", file, sizeof(file) - 1);
    assert_null(parts[2].name);
    assert_int_equal(parts[2].len, 10);
    assert_ptr_equal(lx_mp_find(parts, 3, "file"), &parts[1]);
    assert_null(lx_mp_find(parts, 3, "fil"));
    /* No preamble, an empty part, and the close delimiter right away. */
    static const char empty[] = "--b\r\nContent-Disposition: form-data; name=\"\"\r\n\r\n\r\n--b--";
    assert_int_equal(parse(empty, sizeof(empty) - 1, "b", parts), 1);
    assert_int_equal(parts[0].len, 0);
    assert_int_equal(parse("--b--", 5, "b", parts), 0);
}

static void test_refusals(void **state)
{
    static const char *const bodies[] = {
        "",
        "no boundary at all",
        "--b",                                                       /* ends after the delimiter */
        "--b\r\n",                                                   /* no headers end, no data */
        "--b\r\nContent-Disposition: form-data; name=x\r\n\r\ndata", /* no closing boundary */
        "--b\r\nContent-Disposition: form-data; name=x\r\n\r\ndata\r\n--b", /* nor a last CRLF */
        "--b\r\nno colon here\r\n\r\ndata\r\n--b--",
        "--b\r\n: empty name\r\n\r\ndata\r\n--b--",
        "--b\r\nContent-Disposition: attachment; name=x\r\n\r\ndata\r\n--b--",
        "--b\nContent-Disposition: form-data; name=x\n\ndata\n--b--", /* LF only */
        "--bx\r\n\r\ndata\r\n--b--", /* a longer boundary is not this one */
    };
    struct lx_mp_part parts[MAX];
    char big[LX_MP_MAX_HEAD + 64];
    size_t n;

    for (size_t i = 0; i < ARRAY_SIZE(bodies); i++)
        assert_int_equal(parse(bodies[i], strlen(bodies[i]), "b", parts), LX_EPROTO);
    /* One part too many. */
    n = 0;
    for (int i = 0; i <= MAX; i++)
        n += (size_t)sprintf(big + n, "--b\r\n\r\n%d\r\n", i);
    n += (size_t)sprintf(big + n, "--b--");
    assert_int_equal(parse(big, n, "b", parts), LX_E2BIG);
    /* Headers over the bound. */
    memcpy(big, "--b\r\nX: ", 8);
    memset(big + 8, 'a', sizeof(big) - 8);
    assert_int_equal(parse(big, sizeof(big), "b", parts), LX_EPROTO);
}

/* Every part lies inside the body. */
static void assert_inside(const char *body, size_t len, const struct lx_mp_part *parts, int n)
{
    for (int i = 0; i < n; i++) {
        assert_true(parts[i].data >= body && parts[i].data + parts[i].len <= body + len);
        if (parts[i].name)
            assert_true(parts[i].name >= body && parts[i].name + parts[i].name_len <= body + len);
        if (parts[i].filename)
            assert_true(parts[i].filename >= body &&
                        parts[i].filename + parts[i].filename_len <= body + len);
    }
}

static void test_garbage(void **state)
{
    static const char good[] =
        "--q\r\nContent-Disposition: form-data; name=\"a\"; filename=\"f\"\r\n"
        "\r\nxy\r\n--q\r\nContent-Disposition: form-data; name=b\r\n\r\n"
        "1\r\n--q--\r\n";
    static const char alphabet[] = "-q\r\n:;=\" aCD";
    uint64_t r = 42;

    for (int round = 0; round < 20000; round++) {
        struct lx_mp_part parts[MAX];
        size_t len;
        char *body;
        int n;

        r = ut_mix64(r);
        len = r % (2 * sizeof(good));
        body = ut_track(malloc(len ? len : 1), free);
        if (round % 2) {
            /* Random bytes, mostly from the syntax's own alphabet. */
            for (size_t i = 0; i < len; i++) {
                r = ut_mix64(r);
                body[i] = r % 4 ? alphabet[r % (sizeof(alphabet) - 1)] : (char)(r >> 8);
            }
        } else {
            /* The good body, cut short and with a few bytes changed. */
            len = LX_MIN(len, sizeof(good) - 1);
            memcpy(body, good, len);
            for (int k = 0; k < 3 && len; k++) {
                r = ut_mix64(r);
                body[r % len] = alphabet[(r >> 20) % (sizeof(alphabet) - 1)];
            }
        }
        n = parse(body, len, "q", parts);
        assert_true(n == LX_EPROTO || n == LX_E2BIG || (n >= 0 && n <= MAX));
        assert_inside(body, len, parts, n);
        ut_release(body);
    }
}

static int teardown(void **state)
{
    ut_release_all();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_boundary),
        cmocka_unit_test(test_parts),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test_teardown(test_garbage, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
