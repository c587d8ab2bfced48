/*
 * test_sim_prompt.c - llmux-sim's tokenizer and made-up model (sim/prompt.c):
 * the context hash is the same however its bytes are split; a word depends
 * on the whole context; a completions prompt that ends with the first k
 * words of its own answer goes on with word k, whatever the prompt's length
 * mod 4, and counts those k words as the partial answer; a chat continued
 * with continue_final_message renders as the original with its generation
 * prompt followed by the partial answer, tokens and prefix blocks included;
 * the continue_final_message refusal; /tokenize's ids give the text back.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "../../sim/prompt.h"
#include "../../src/core/lx.h"
#include "unit_util.h"

#define BS 4          /* tokens per block: small, so that short prompts have blocks */
#define MAX_BLOCKS 64 /* block hashes kept */

/* The first <n> words the model says after <c>, into <out> (4n + 1 bytes). */
static void say(const struct sim_ctx *c, unsigned n, char *out)
{
    struct sim_ctx x = *c;

    for (unsigned i = 0; i < n; i++)
        memcpy(out + SIM_WORD_BYTES * i, sim_ctx_generate(&x), SIM_WORD_BYTES);
    out[SIM_WORD_BYTES * n] = '\0';
}

/* Field by field: the struct has padding. */
static void assert_ctx_equal(const struct sim_ctx *a, const struct sim_ctx *b)
{
    assert_int_equal(a->h, b->h);
    assert_int_equal(a->tail, b->tail);
    assert_int_equal(a->tail_len, b->tail_len);
}

static void test_feed_does_not_depend_on_the_split(void **state)
{
    char text[64];
    uint64_t r = 7;

    ut_fill_text(text, sizeof(text) - 1, "split");
    for (size_t len = 0; len < sizeof(text); len++) {
        struct sim_ctx whole, parts;

        sim_ctx_init(&whole);
        sim_ctx_feed(&whole, text, len);
        /* The same bytes in random pieces, empty ones included. */
        sim_ctx_init(&parts);
        for (size_t at = 0; at < len;) {
            size_t n;

            r = ut_mix64(r);
            n = LX_MIN((size_t)(r % 11), len - at);
            sim_ctx_feed(&parts, text + at, n);
            at += n;
        }
        assert_ctx_equal(&whole, &parts);
        assert_ptr_equal(sim_ctx_predict(&whole), sim_ctx_predict(&parts));
    }
}

static void test_words_are_one_token_and_depend_on_every_byte(void **state)
{
    char text[40], other[40];
    unsigned differ = 0;

    ut_fill_text(text, sizeof(text) - 1, "ctx");
    for (size_t i = 0; i < sizeof(text) - 1; i++) {
        struct sim_ctx a, b;
        char wa[4 * 8 + 1], wb[4 * 8 + 1];

        memcpy(other, text, sizeof(text));
        other[i] ^= 1;
        sim_ctx_init(&a);
        sim_ctx_init(&b);
        sim_ctx_feed(&a, text, sizeof(text) - 1);
        sim_ctx_feed(&b, other, sizeof(other) - 1);
        say(&a, 8, wa);
        say(&b, 8, wb);
        differ += strcmp(wa, wb) != 0;
        for (unsigned k = 0; k < 8; k++) {
            const char *w = wa + SIM_WORD_BYTES * k;

            assert_true(w[0] >= 'a' && w[0] <= 'z' && w[1] >= 'a' && w[1] <= 'z');
            assert_true(w[2] >= 'a' && w[2] <= 'z' && w[3] == ' ');
        }
    }
    /* A one-bit change anywhere changes the next 8 words (all 39 times: a
     * chance of 1 in 64^8 each otherwise). */
    assert_int_equal(differ, sizeof(text) - 1);
}

static void test_predict_then_feed_is_generate(void **state)
{
    struct sim_ctx a, b;

    sim_ctx_init(&a);
    sim_ctx_feed(&a, "abc", 3);
    b = a;
    for (unsigned i = 0; i < 20; i++) {
        const char *w = sim_ctx_predict(&a);

        assert_ptr_equal(sim_ctx_predict(&a), w); /* no change */
        sim_ctx_feed(&a, w, SIM_WORD_BYTES);
        assert_ptr_equal(sim_ctx_generate(&b), w);
        assert_ctx_equal(&a, &b);
    }
}

static json_t *str(const char *s, size_t len)
{
    json_t *v = json_stringn(s, len);

    assert_non_null(v);
    return v;
}

static void prompt_free(void *p)
{
    sim_prompt_deinit(p);
    free(p);
}

static struct sim_prompt *new_prompt(void)
{
    struct sim_prompt *p = malloc(sizeof(*p));

    assert_non_null(p);
    sim_prompt_init(p, BS, MAX_BLOCKS);
    return ut_track(p, prompt_free);
}

static void completion(struct sim_prompt *p, const char *s, size_t len, bool find_partial)
{
    json_t *v = str(s, len);
    char err[256];

    assert_int_equal(sim_prompt_completion(p, v, find_partial, err, sizeof(err)), 0);
    json_decref(v);
}

/*
 * Prompt P, answer w0..w11. Prompt P + w0..wk-1 says wk..w11, counts k
 * partial tokens, and has ceil(len(P) / 4) + k tokens; for every len(P) % 4.
 */
static void test_completion_continues_exactly(void **state)
{
    enum { N = 12 };

    for (size_t len = 5; len < 9; len++) {
        char p[16], answer[4 * N + 1], rest[4 * N + 1], cont[16 + 4 * N];
        struct sim_prompt *orig = new_prompt();

        /* No output word in it: its own partial answer is none. */
        memset(p, 'q', len);
        completion(orig, p, len, true);
        assert_int_equal(orig->partial_tokens, 0);
        say(&orig->ctx, N, answer);
        for (unsigned k = 0; k <= N; k++) {
            struct sim_prompt *c = new_prompt();

            memcpy(cont, p, len);
            memcpy(cont + len, answer, SIM_WORD_BYTES * k);
            completion(c, cont, len + SIM_WORD_BYTES * k, true);
            assert_int_equal(c->partial_tokens, k);
            assert_int_equal(c->tokens, (len + 3) / 4 + k);
            say(&c->ctx, N - k, rest);
            assert_string_equal(rest, answer + SIM_WORD_BYTES * k);
            /* Without the search, the same context but no partial. */
            ut_release(c);
            c = new_prompt();
            completion(c, cont, len + SIM_WORD_BYTES * k, false);
            assert_int_equal(c->partial_tokens, 0);
            say(&c->ctx, N - k, rest);
            assert_string_equal(rest, answer + SIM_WORD_BYTES * k);
            ut_release(c);
        }
        /* A word that is not the model's breaks the run: only what follows
         * it counts. */
        memcpy(cont, p, len);
        memcpy(cont + len, answer, sizeof(answer) - 1);
        memcpy(cont + len + 4 * 3, "zoo ", 4); /* not an output word */
        {
            struct sim_prompt *c = new_prompt();
            char w[5];

            completion(c, cont, len + 4 * 4, true);
            assert_int_equal(c->partial_tokens, 0);
            say(&c->ctx, 1, w);
            memcpy(cont + len + 4 * 4, w, 4);
            ut_release(c);
            c = new_prompt();
            completion(c, cont, len + 4 * 5, true);
            assert_int_equal(c->partial_tokens, 1);
            ut_release(c);
        }
        ut_release(orig);
    }
}

static json_t *parse_json(const char *json)
{
    json_error_t e;
    json_t *v = json_loads(json, 0, &e);

    assert_non_null(v);
    return v;
}

static int chat(struct sim_prompt *p, json_t *msgs, enum sim_chat_end end, char *err, size_t len)
{
    int rc = sim_prompt_chat(p, msgs, end, err, len);

    json_decref(msgs);
    return rc;
}

#define HISTORY                                                                                    \
    "{\"role\":\"system\",\"content\":\"be brief\"},"                                              \
    "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"look: \"},"                     \
    "{\"type\":\"image_url\",\"image_url\":{\"url\":\"x\"}}]}"

/*
 * Messages M with the generation prompt say C = w0..w9. M + an open
 * assistant message w0..wk-1 (continue_final_message) says wk..w9, has k
 * more prompt tokens, k partial ones, and the original's blocks of its
 * prompt and first k words.
 */
static void test_chat_continues_exactly(void **state)
{
    enum { N = 10 };
    char err[256], answer[4 * N + 1], rest[4 * N + 1], buf[512];
    struct sim_prompt *orig = new_prompt(), *full = new_prompt();

    assert_int_equal(
        chat(orig, parse_json("[" HISTORY "]"), SIM_CHAT_GENERATION_PROMPT, err, sizeof(err)), 0);
    assert_int_equal(orig->partial_tokens, 0);
    /* 4 + 2, 4 + 2 + 16, and 4 of generation prompt. */
    assert_int_equal(orig->tokens, 6 + 22 + 4);
    say(&orig->ctx, N, answer);
    /* The original's chain past its prompt, as the engine caches it. */
    assert_int_equal(
        chat(full, parse_json("[" HISTORY "]"), SIM_CHAT_GENERATION_PROMPT, err, sizeof(err)), 0);
    sim_prompt_push_output(full, N);
    for (unsigned k = 0; k <= N; k++) {
        struct sim_prompt *c = new_prompt();

        snprintf(buf, sizeof(buf), "[" HISTORY ",{\"role\":\"assistant\",\"content\":\"%.*s\"}]",
                 (int)(SIM_WORD_BYTES * k), answer);
        assert_int_equal(chat(c, parse_json(buf), SIM_CHAT_CONTINUE_FINAL, err, sizeof(err)), 0);
        assert_int_equal(c->tokens, orig->tokens + k);
        assert_int_equal(c->partial_tokens, k);
        say(&c->ctx, N - k, rest);
        assert_string_equal(rest, answer + SIM_WORD_BYTES * k);
        assert_int_equal(c->n_blocks, c->tokens / BS);
        assert_memory_equal(c->blocks, full->blocks, c->n_blocks * sizeof(uint64_t));
        ut_release(c);
    }
    ut_release(full);
    ut_release(orig);
}

static void test_chat_ends(void **state)
{
    char err[256], a[4 * 4 + 1], b[4 * 4 + 1];
    struct sim_prompt *gen = new_prompt(), *none = new_prompt(), *c = new_prompt();

    assert_int_equal(chat(gen, parse_json("[{\"role\":\"user\",\"content\":\"hi\"}]"),
                          SIM_CHAT_GENERATION_PROMPT, err, sizeof(err)),
                     0);
    assert_int_equal(chat(none, parse_json("[{\"role\":\"user\",\"content\":\"hi\"}]"),
                          SIM_CHAT_NO_GENERATION_PROMPT, err, sizeof(err)),
                     0);
    /* Without the generation prompt: 4 tokens fewer, another context. */
    assert_int_equal(gen->tokens, none->tokens + 4);
    say(&gen->ctx, 4, a);
    say(&none->ctx, 4, b);
    assert_string_not_equal(a, b);
    /* An assistant message left open is not one closed then followed by
     * the generation prompt. */
    assert_int_equal(chat(c, parse_json("[{\"role\":\"assistant\",\"content\":\"hi\"}]"),
                          SIM_CHAT_CONTINUE_FINAL, err, sizeof(err)),
                     0);
    say(&c->ctx, 4, b);
    assert_string_not_equal(a, b);
    ut_release(c);
    c = new_prompt();
    assert_int_equal(chat(c,
                          parse_json("[{\"role\":\"assistant\",\"content\":\"a\"},"
                                     "{\"role\":\"user\",\"content\":\"hi\"}]"),
                          SIM_CHAT_CONTINUE_FINAL, err, sizeof(err)),
                     LX_EINVAL);
    assert_string_equal(err, "Cannot set `continue_final_message` to True when the last "
                             "message is not from the assistant.");
    ut_release(c);
    ut_release(none);
    ut_release(gen);
}

/* A token-id prompt has a context too (its ids' bytes) and no partial. */
static void test_token_ids(void **state)
{
    char err[256], a[4 * 4 + 1], b[4 * 4 + 1];
    struct sim_prompt *p = new_prompt(), *q = new_prompt();
    json_t *ids = parse_json("[1, 2, 3]"), *other = parse_json("[1, 2, 4]");

    assert_int_equal(sim_prompt_completion(p, ids, true, err, sizeof(err)), 0);
    assert_int_equal(sim_prompt_completion(q, other, true, err, sizeof(err)), 0);
    assert_int_equal(p->tokens, 3);
    assert_int_equal(p->partial_tokens, 0);
    say(&p->ctx, 4, a);
    say(&q->ctx, 4, b);
    assert_string_not_equal(a, b);
    json_decref(ids);
    json_decref(other);
    ut_release(q);
    ut_release(p);
}

static void ids_free(void *p)
{
    lx_buf_deinit(p);
    free(p);
}

/* The ids of <p>'s tokens, recorded as "id,id,...," in <ids>, into <out>. */
static size_t read_ids(const struct lx_buf *ids, uint64_t *out, size_t max)
{
    size_t n = 0;

    for (const char *s = ids->data, *end = ids->data + ids->len; s < end; s++) {
        char *comma;

        assert_true(n < max);
        out[n++] = strtoull(s, &comma, 10);
        assert_int_equal(*comma, ',');
        s = comma;
    }
    return n;
}

/* /tokenize's ids: one per token, a text piece's id gives its bytes back
 * (so detokenizing the ids of a text is the text), template and media
 * tokens are special ids without text. */
static void test_ids_give_the_text_back(void **state)
{
    static const char text[] = "Hello, w\xc3\xb6rld! 12345";
    struct sim_prompt *p = new_prompt();
    struct lx_buf *ids = ut_track(malloc(sizeof(*ids)), ids_free);
    uint64_t id[64];
    char back[64], piece[4], err[256];
    size_t n, len = 0;

    lx_buf_init(ids, 0);
    p->ids = ids;
    sim_prompt_push_text(p, text, sizeof(text) - 1);
    n = read_ids(ids, id, ARRAY_SIZE(id));
    assert_int_equal(n, p->tokens);
    assert_int_equal(n, (sizeof(text) - 1 + 3) / 4);
    for (size_t i = 0; i < n; i++) {
        size_t k = sim_token_bytes(id[i], piece);

        assert_true(id[i] < SIM_TOKEN_SPECIAL && k >= 1 && k <= 4);
        memcpy(back + len, piece, k);
        len += k;
    }
    assert_int_equal(len, sizeof(text) - 1);
    assert_memory_equal(back, text, len);
    /* A chat: 4 special ids per message and for the generation prompt. */
    ut_release(p);
    p = new_prompt();
    lx_buf_reset(ids);
    p->ids = ids;
    assert_int_equal(chat(p, parse_json("[{\"role\":\"user\",\"content\":\"abcdefgh\"}]"),
                          SIM_CHAT_GENERATION_PROMPT, err, sizeof(err)),
                     0);
    n = read_ids(ids, id, ARRAY_SIZE(id));
    assert_int_equal(n, 4 + 2 + 4);
    assert_int_equal(n, p->tokens);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(id[i] >= SIM_TOKEN_SPECIAL, i < 4 || i >= 6);
    assert_int_equal(sim_token_bytes(id[0], piece), 0);
    assert_int_equal(sim_token_bytes(0x64636261, piece), 4);
    assert_memory_equal(piece, "abcd", 4);
    ut_release(ids);
    ut_release(p);
}

static int teardown(void **state)
{
    ut_release_all();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_feed_does_not_depend_on_the_split),
        cmocka_unit_test(test_words_are_one_token_and_depend_on_every_byte),
        cmocka_unit_test(test_predict_then_feed_is_generate),
        cmocka_unit_test_teardown(test_completion_continues_exactly, teardown),
        cmocka_unit_test_teardown(test_chat_continues_exactly, teardown),
        cmocka_unit_test_teardown(test_chat_ends, teardown),
        cmocka_unit_test_teardown(test_token_ids, teardown),
        cmocka_unit_test_teardown(test_ids_give_the_text_back, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
