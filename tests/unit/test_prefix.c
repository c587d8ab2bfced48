/*
 * test_prefix.c - the prompt block index of cache_aware (src/route/prefix.c):
 * chained block hashes (common leading blocks shared exactly, a partial
 * last block not hashed, role and content boundaries that moved bytes cannot
 * forge, chat and completions, the block limits, JSON
 * escapes kept), the longest cached prefix, LRU eviction at a node's
 * capacity keeping every prompt's held blocks a prefix, a capacity change,
 * a lost cache (cache_gen), the process-wide cap, and concurrent updates.
 *
 * Nodes are struct lx_node made here and freed with lx_node_unref(), which
 * frees their index: nothing else of a node matters to prefix.c but its
 * cache_gen and scraped_cache_tokens. A node's capacity in blocks is
 * tokens / 32 (a block of 128 bytes is about 32 tokens). Bodies are copied
 * into exact-size allocations, so a one-byte over-read fails under ASan.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "../../src/core/log.h"
#include "../../src/http/body_scan.h"
#include "../../src/nodes/node.h"
#include "../../src/route/prefix.h"
#include "unit_util.h"

#define B LX_PREFIX_BLOCK_BYTES
#define TOKENS(blocks) ((uint64_t)(blocks)*32) /* capacity of <blocks> blocks */
#define DEFAULT_TOKENS 262144
#define DEFAULT_MAX_BLOCKS (1u << 20)

/* ---- helpers ---------------------------------------------------------- */

/* Nodes and memory a test made, released in teardown if a failed
 * assertion jumped over the test's own cleanup (unit_util.h). */
static void node_free(void *node)
{
    lx_node_unref(node);
}

static struct lx_node *new_node(uint64_t cache_tokens)
{
    struct lx_node *n = ut_track(calloc(1, sizeof(*n)), node_free);

    atomic_init(&n->refs, 1);
    atomic_init(&n->scraped_cache_tokens, cache_tokens);
    return n;
}

static int setup(void **state)
{
    lx_prefix_set_policy(DEFAULT_TOKENS, DEFAULT_MAX_BLOCKS);
    return 0;
}

static int teardown(void **state)
{
    ut_release_all();
    return 0;
}

/* The block hashes of the JSON <body> (at most <max> into <out>). */
static size_t blocks_of(const char *body, uint64_t *out, size_t max)
{
    size_t len = strlen(body), n;
    char *copy = ut_track(malloc(len), free);
    struct lx_body_scan scan;

    memcpy(copy, body, len);
    assert_int_equal(lx_body_scan(copy, len, &scan), LX_SCAN_OK);
    n = lx_prefix_blocks(&scan, out, max);
    ut_release(copy);
    return n;
}

/* A completions body whose "prompt" string holds <text> (no escapes needed). */
static char *completion(const char *text)
{
    size_t n = strlen(text) + 64;
    char *b = ut_track(malloc(n), free);

    snprintf(b, n, "{\"model\":\"m\",\"prompt\":\"%s\"}", text);
    return b;
}

/* A chat body of <n> messages, roles and contents as JSON string contents,
 * and the canonical prompt (role, 0x1e, content, 0x1f each) into <canon>
 * (may be NULL) when the contents hold no escape. */
static char *chat(const char *const *roles, const char *const *contents, size_t n, char **canon)
{
    size_t cap = 64, len = 0, clen = 0;
    char *b, *c = NULL;

    for (size_t i = 0; i < n; i++)
        cap += strlen(roles[i]) + strlen(contents[i]) + 32;
    b = ut_track(malloc(cap), free);
    if (canon)
        c = *canon = ut_track(malloc(cap), free);
    len = (size_t)snprintf(b, cap, "{\"model\":\"m\",\"messages\":[");
    for (size_t i = 0; i < n; i++) {
        len += (size_t)snprintf(b + len, cap - len, "%s{\"role\":\"%s\",\"content\":\"%s\"}",
                                i ? "," : "", roles[i], contents[i]);
        if (c)
            clen += (size_t)snprintf(c + clen, cap - clen, "%s\x1e%s\x1f", roles[i], contents[i]);
    }
    snprintf(b + len, cap - len, "]}");
    return b;
}

/* How many leading entries <a> and <b> share. */
static size_t common(const uint64_t *a, size_t na, const uint64_t *b, size_t nb)
{
    size_t i = 0;

    while (i < na && i < nb && a[i] == b[i])
        i++;
    return i;
}

/* Whether any hash of <a> appears in <b>. */
static bool any_shared(const uint64_t *a, size_t na, const uint64_t *b, size_t nb)
{
    for (size_t i = 0; i < na; i++)
        for (size_t j = 0; j < nb; j++)
            if (a[i] == b[j])
                return true;
    return false;
}

/* Whether <node> holds the block <h> (a one-block prompt matches or not). */
static bool holds(struct lx_node *node, uint64_t h)
{
    return lx_prefix_match(node, &h, 1) == 1;
}

/* Synthetic block hashes of a prompt whose block i is tok[i]: chained as
 * lx_prefix_blocks chains them, so equal hashes mean equal prefixes. */
static void chain(const uint32_t *tok, size_t n, uint64_t *h)
{
    uint64_t x = 0x5eed;

    for (size_t i = 0; i < n; i++)
        h[i] = x = ut_mix64(x ^ tok[i]);
}

/* <n> hashes of a prompt that shares nothing with another <seed>'s. */
static void prompt_hashes(uint32_t seed, size_t n, uint64_t *h)
{
    uint32_t tok[64];

    assert_true(n <= 64);
    for (size_t i = 0; i < n; i++)
        tok[i] = seed * 1000 + (uint32_t)i;
    chain(tok, n, h);
}

/* ---- chained block hashes ---------------------------------------------- */

/* Only full blocks are hashed; a block's hash depends on its bytes and
 * those before it, not on what follows. */
static void test_partial_block_not_hashed(void **state)
{
    static const size_t lens[] = {0, 1, B - 1, B, B + 1, 2 * B - 1, 2 * B, 1000};
    uint64_t h[16], first[16];
    char text[1001];

    ut_fill_text(text, 1000, "Once upon a time");
    assert_int_equal(blocks_of(completion(text), first, 16), 1000 / B);
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        size_t n;

        ut_fill_text(text, lens[i], "Once upon a time");
        n = blocks_of(completion(text), h, 16);
        assert_int_equal(n, lens[i] / B);
        assert_int_equal(common(h, n, first, 1000 / B), n);
    }
    /* A chat prompt: "user" 0x1e content 0x1f, 6 bytes more than its content. */
    for (size_t len = B - 8; len <= B; len++) {
        const char *roles[] = {"user"};
        const char *contents[] = {text};

        ut_fill_text(text, len, "hello");
        assert_int_equal(blocks_of(chat(roles, contents, 1, NULL), h, 16), (len + 6) / B);
    }
}

/* Two prompts share exactly the hashes of their common full leading blocks:
 * one differing byte changes its block and every block after it. */
static void test_common_prefix_shared_exactly(void **state)
{
    static const size_t same[] = {0, 1, 100, B - 1, B, B + 1, 300, 3 * B, 1023};
    char a[1025], b[1025];
    uint64_t ha[8], hb[8];

    ut_fill_text(a, 1024, "");
    for (size_t i = 0; i < sizeof(same) / sizeof(same[0]); i++) {
        size_t k = same[i], na, nb;

        memcpy(b, a, sizeof(a));
        b[k] = b[k] == 'x' ? 'y' : 'x';
        na = blocks_of(completion(a), ha, 8);
        nb = blocks_of(completion(b), hb, 8);
        assert_int_equal(na, 8);
        assert_int_equal(nb, 8);
        assert_int_equal(common(ha, na, hb, nb), k / B);
        /* Chained: past the difference no block is shared anywhere. */
        assert_false(any_shared(ha + k / B, na - k / B, hb + k / B, nb - k / B));
    }
}

/* Chat: only the messages' roles and contents count, in order: not the
 * JSON layout, key order, other keys or other fields. */
static void test_chat_canonical(void **state)
{
    char sys[301], q[301], body[1400];
    const char *roles[] = {"system", "user"};
    const char *contents[] = {sys, q};
    uint64_t ref[8], h[8];
    size_t n;

    ut_fill_text(sys, 300, "You are a helpful assistant.");
    ut_fill_text(q, 300, "What is a prefix cache?");
    n = blocks_of(chat(roles, contents, 2, NULL), ref, 8);
    assert_int_equal(n, (300 + 8 + 300 + 6) / B);
    snprintf(body, sizeof(body),
             "{ \"stream\": true, \"messages\" : [ {\"content\" : \"%s\", \"name\": \"x\",\n"
             "  \"role\":\"system\"} ,\n{\"role\": \"user\", \"content\": \"%s\"} ],"
             " \"model\": \"other\", \"max_tokens\": 5 }",
             sys, q);
    assert_int_equal(blocks_of(body, h, 8), n);
    assert_memory_equal(h, ref, n * sizeof(h[0]));
    /* Another role is another prompt. */
    roles[1] = "assistant";
    blocks_of(chat(roles, contents, 2, NULL), h, 8);
    assert_int_equal(common(h, n, ref, n), (300 + 8) / B);
    /* Non-string content (parts): its raw JSON text. */
    snprintf(
        body, sizeof(body),
        "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"%s\"}]}]}",
        q);
    assert_int_equal(
        blocks_of(body, h, 8),
        (strlen("user\x1e[{\"type\":\"text\",\"text\":\"") + strlen(q) + strlen("\"}]\x1f")) / B);
}

/* Moving bytes between a role and a content, between a message and the
 * next, or splitting a message cannot make two prompts hash alike: each
 * variant below holds the same letters, "user" c "user" x, in other fields,
 * and differs from the others in its first block. The separators are bytes
 * JSON text never holds raw: written as an escape, they are other bytes. */
static void test_boundaries_not_forgeable(void **state)
{
    const char *c = "abcdefghijklmnopqrst";
    char x[301], cus[64], cuser[64], userc[64], cux[400], esc[400], prompt[400];
    const char *r0[] = {"user", "user"}, *t0[] = {c, x};
    const char *r1[] = {"userab", "user"}, *t1[] = {c + 2, x};
    const char *r2[] = {"user", "er"}, *t2[] = {cus, x};
    const char *r3[] = {"user"}, *t3[] = {cux};
    const char *r4[] = {"user", ""}, *t4[] = {cuser, x};
    const char *r5[] = {"", "user"}, *t5[] = {userc, x};
    const char *r6[] = {"user"}, *t6[] = {esc};
    char *bodies[8];
    uint64_t h[8][4];

    ut_fill_text(x, 300, "xyz");
    snprintf(cus, sizeof(cus), "%sus", c);
    snprintf(cuser, sizeof(cuser), "%suser", c);
    snprintf(userc, sizeof(userc), "user%s", c);
    snprintf(cux, sizeof(cux), "%suser%s", c, x);
    snprintf(esc, sizeof(esc), "%s\\u001fuser\\u001e%s", c, x);
    snprintf(prompt, sizeof(prompt), "user%suser%s", c, x);
    bodies[0] = chat(r0, t0, 2, NULL);
    bodies[1] = chat(r1, t1, 2, NULL); /* role and content */
    bodies[2] = chat(r2, t2, 2, NULL); /* content and the next role */
    bodies[3] = chat(r3, t3, 1, NULL); /* one message for two */
    bodies[4] = chat(r4, t4, 2, NULL); /* an empty role */
    bodies[5] = chat(r5, t5, 2, NULL); /* an empty content */
    bodies[6] = chat(r6, t6, 1, NULL); /* the separators, escaped */
    bodies[7] = completion(prompt);    /* the same letters as a completion */
    for (int i = 0; i < 8; i++)
        assert_true(blocks_of(bodies[i], h[i], 4) >= 2);
    for (int i = 0; i < 8; i++)
        for (int j = i + 1; j < 8; j++)
            if (h[i][0] == h[j][0])
                fail_msg("prompts %d and %d share their first block", i, j);
}

/* Completions: a string prompt by its contents (the quotes are not part of
 * it), any other prompt by its raw JSON text; a body with both "messages"
 * and "prompt" is a chat. */
static void test_completions(void **state)
{
    char text[401], body[1000];
    const char *roles[] = {"user"};
    const char *contents[] = {text};
    uint64_t ref[4], h[4];

    ut_fill_text(text, 400, "Once upon a time");
    assert_int_equal(blocks_of(completion(text), ref, 4), 3);
    snprintf(body, sizeof(body), "{\"max_tokens\":9,\"prompt\" : \"%s\",\"model\":\"x\"}", text);
    assert_int_equal(blocks_of(body, h, 4), 3);
    assert_memory_equal(h, ref, sizeof(h[0]) * 3);
    /* An array prompt: raw, brackets and quotes included (2 bytes more). */
    snprintf(body, sizeof(body), "{\"prompt\":[\"%s\"]}", text);
    assert_int_equal(blocks_of(body, h, 4), (400 + 4) / B);
    assert_int_not_equal(h[0], ref[0]);
    /* Both fields: the messages count. */
    snprintf(body, sizeof(body),
             "{\"prompt\":\"%s\",\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}]}", "ignored",
             text);
    assert_int_equal(blocks_of(body, h, 4), (400 + 6) / B);
    blocks_of(chat(roles, contents, 1, NULL), ref, 4);
    assert_memory_equal(h, ref, sizeof(h[0]) * 3);
    /* No prompt at all. */
    assert_int_equal(blocks_of("{\"model\":\"m\"}", h, 4), 0);
    assert_int_equal(lx_prefix_blocks(NULL, h, 4), 0);
}

/* At most <max> hashes are written, the first ones of the prompt; a whole
 * prompt of LX_PREFIX_MAX_BLOCKS blocks and more gives LX_PREFIX_MAX_BLOCKS
 * with that as <max>. Buffers are exact-size heap blocks, so a write past
 * <max> fails under ASan, and sentinels show it otherwise. */
static void test_max_blocks(void **state)
{
    size_t big = (size_t)LX_PREFIX_MAX_BLOCKS * B + 3 * B + 5;
    char *text = ut_track(malloc(big + 1), free);
    uint64_t *all = ut_track(malloc((LX_PREFIX_MAX_BLOCKS + 1) * sizeof(*all)), free);
    uint64_t *three = ut_track(malloc(3 * sizeof(*three)), free);
    char *body;

    ut_fill_text(text, big, "a very long document");
    body = completion(text);
    ut_release(text);
    all[LX_PREFIX_MAX_BLOCKS] = 0x5e471e1;
    assert_int_equal(blocks_of(body, all, LX_PREFIX_MAX_BLOCKS), LX_PREFIX_MAX_BLOCKS);
    assert_int_equal(all[LX_PREFIX_MAX_BLOCKS], 0x5e471e1);
    assert_int_equal(blocks_of(body, three, 3), 3);
    assert_memory_equal(three, all, 3 * sizeof(*three));
    assert_int_equal(blocks_of(body, three, 1), 1);
    assert_int_equal(three[0], all[0]);
    three[0] = 7;
    assert_int_equal(blocks_of(body, three, 0), 0);
    assert_int_equal(three[0], 7);
}

/* The JSON text as sent: an escape is hashed as written, so two spellings
 * of one string are two prompts, and a block is 128 bytes of escapes. */
static void test_escapes_kept(void **state)
{
    char head[11], tail[291], a[400], b[400], e[64 * 6 + 1];
    uint64_t ha[4], hb[4];

    ut_fill_text(head, 10, "say");
    ut_fill_text(tail, 290, "");
    snprintf(a, sizeof(a), "%s\\\"hi\\\"%s", head, tail);       /* 306 bytes */
    snprintf(b, sizeof(b), "%s\\u0022hi\\u0022%s", head, tail); /* the same string: 314 */
    assert_int_equal(blocks_of(completion(a), ha, 4), 2);
    assert_int_equal(blocks_of(completion(b), hb, 4), 2);
    assert_int_not_equal(ha[0], hb[0]);
    assert_int_not_equal(ha[1], hb[1]);
    /* The same bytes, the same hashes. */
    assert_int_equal(blocks_of(completion(b), ha, 4), 2);
    assert_memory_equal(ha, hb, sizeof(ha[0]) * 2);
    /* 64 escapes of "A" are 384 bytes: 3 blocks; 64 letters: none. */
    for (int i = 0; i < 64; i++)
        memcpy(e + i * 6, "\\u0041", 6);
    e[64 * 6] = '\0';
    assert_int_equal(blocks_of(completion(e), ha, 4), 3);
    memset(e, 'A', 64);
    e[64] = '\0';
    assert_int_equal(blocks_of(completion(e), ha, 4), 0);
}

/* ---- the index: longest prefix ----------------------------------------- */

#define N_TEXTS 6

/* Conversations sharing a system prompt, their turns, and an unrelated
 * prompt; after some are inserted, every prompt's match is the longest run
 * of full blocks it shares with an inserted one (from the canonical text). */
static void test_longest_prefix(void **state)
{
    char sys[601], q1[201], a1[301], q2[201], q3[201], other[401];
    const char *r_sys[] = {"system", "user", "assistant", "user"};
    const char *t_turn1[] = {sys, q1};
    const char *t_turn2[] = {sys, q1, a1, q2};
    const char *t_sibling[] = {sys, q3};
    const char *r_other[] = {"user"};
    const char *t_other[] = {other};
    char *canon[N_TEXTS], *body[N_TEXTS];
    uint64_t h[N_TEXTS][16];
    size_t n[N_TEXTS];
    struct lx_node *node = new_node(0);
    const bool inserted[N_TEXTS] = {false, true, false, true, false, false};

    ut_fill_text(sys, 600, "You are a helpful assistant.");
    ut_fill_text(q1, 200, "first question");
    ut_fill_text(a1, 300, "first answer");
    ut_fill_text(q2, 200, "second question");
    ut_fill_text(q3, 200, "another first question");
    ut_fill_text(other, 400, "unrelated");
    body[0] = chat(r_sys, t_turn1, 2, &canon[0]);   /* turn 1 */
    body[1] = chat(r_sys, t_turn2, 4, &canon[1]);   /* turn 2: turn 1 + answer + question */
    body[2] = chat(r_sys, t_sibling, 2, &canon[2]); /* another conversation, same system */
    body[3] = chat(r_other, t_other, 1, &canon[3]); /* unrelated */
    body[4] = chat(r_sys, t_turn2, 3, &canon[4]);   /* turn 2 without the question */
    body[5] = chat(r_sys, t_turn2, 1, &canon[5]);   /* the system prompt alone */
    for (int i = 0; i < N_TEXTS; i++) {
        n[i] = blocks_of(body[i], h[i], 16);
        assert_int_equal(n[i], strlen(canon[i]) / B);
    }
    /* Nothing sent yet: no match, nothing allocated. */
    assert_int_equal(lx_prefix_match(node, h[1], n[1]), 0);
    assert_null(atomic_load(&node->prefix_cache));
    assert_int_equal(lx_prefix_count(node), 0);
    for (int i = 0; i < N_TEXTS; i++)
        if (inserted[i])
            lx_prefix_insert(node, h[i], n[i]);
    assert_int_equal(lx_prefix_count(node), n[1] + n[3]);
    for (int i = 0; i < N_TEXTS; i++) {
        size_t want = 0;

        for (int j = 0; j < N_TEXTS; j++) {
            size_t k = 0, full;

            if (!inserted[j])
                continue;
            while (canon[i][k] && canon[i][k] == canon[j][k])
                k++;
            full = k / B;
            full = full < n[i] ? full : n[i];
            full = full < n[j] ? full : n[j];
            want = full > want ? full : want;
        }
        assert_int_equal(lx_prefix_match(node, h[i], n[i]), want);
    }
    assert_int_equal(lx_prefix_match(node, h[1], n[1]), n[1]);
    assert_int_equal(lx_prefix_match(node, h[0], n[0]), n[0]);
    assert_true(lx_prefix_match(node, h[2], n[2]) >= 600 / B);
    assert_int_equal(lx_prefix_match(node, h[1], 0), 0);
    /* Inserting again changes nothing but recency. */
    lx_prefix_insert(node, h[1], n[1]);
    assert_int_equal(lx_prefix_count(node), n[1] + n[3]);
    ut_release(node);
}

/* ---- the index: LRU at capacity ---------------------------------------- */

/* Inserts <fresh> (6 blocks) into a node of capacity 10 holding <old> (6
 * blocks) and more: afterwards all of <fresh> is held, and of <old> its
 * first 4 blocks only, its deepest 2 evicted. */
static void insert_evicting(struct lx_node *node, const uint64_t *fresh, const uint64_t *old)
{
    lx_prefix_insert(node, fresh, 6);
    assert_int_equal(lx_prefix_count(node), 10);
    assert_int_equal(lx_prefix_match(node, fresh, 6), 6);
    assert_int_equal(lx_prefix_match(node, old, 6), 4);
    for (int i = 0; i < 6; i++)
        assert_int_equal(holds(node, old[i]), i < 4);
}

/* Capacity 10 blocks: a prompt inserted last to first keeps its leading
 * blocks the most recent, so the oldest prompt's deep blocks go first and
 * what is left of it is a prefix. Inserting a prompt again refreshes it; a
 * match does not. */
static void test_lru_evicts_deep_blocks_first(void **state)
{
    struct lx_node *node = new_node(TOKENS(10));
    uint64_t a[6], b[6], c[25], d[2];

    prompt_hashes(1, 6, a);
    prompt_hashes(2, 6, b);
    prompt_hashes(3, 25, c);
    prompt_hashes(4, 2, d);
    lx_prefix_insert(node, a, 6);
    assert_int_equal(lx_prefix_count(node), 6);
    insert_evicting(node, b, a);
    /* a again: whole; the oldest of b, its deepest blocks, make room. */
    insert_evicting(node, a, b);
    /* Matched, b stays the oldest: two new blocks evict two of it. */
    for (int i = 0; i < 3; i++)
        lx_prefix_match(node, b, 6);
    lx_prefix_insert(node, d, 2);
    assert_int_equal(lx_prefix_match(node, b, 6), 2);
    assert_int_equal(lx_prefix_match(node, a, 6), 6);
    assert_int_equal(lx_prefix_match(node, d, 2), 2);
    /* A prompt longer than the capacity keeps its first 10 blocks. */
    lx_prefix_insert(node, c, 25);
    assert_int_equal(lx_prefix_count(node), 10);
    assert_int_equal(lx_prefix_match(node, c, 25), 10);
    assert_int_equal(lx_prefix_match(node, a, 6), 0);
    assert_int_equal(lx_prefix_match(node, b, 6), 0);
    assert_int_equal(lx_prefix_match(node, d, 2), 0);
    ut_release(node);
}

#define TREE_PROMPTS 400
#define TREE_MAX 24

/* Random prompts on a tree of shared prefixes (a few system prompts, many
 * branches), capacity 50: after every insert the node holds at most 50
 * blocks, all of the last prompt up to the capacity, and of every prompt a
 * prefix (a block held means its parent is held). */
static void test_lru_stays_prefix_closed(void **state)
{
    struct lx_node *node = new_node(TOKENS(50));
    uint64_t(*h)[TREE_MAX] = ut_track(malloc(sizeof(uint64_t[TREE_PROMPTS][TREE_MAX])), free);
    size_t n[TREE_PROMPTS];
    uint64_t rnd = 42;

    for (int p = 0; p < TREE_PROMPTS; p++) {
        uint32_t tok[TREE_MAX];

        n[p] = 1 + (rnd = ut_mix64(rnd)) % TREE_MAX;
        for (size_t i = 0; i < n[p]; i++)
            tok[i] = (uint32_t)((rnd = ut_mix64(rnd)) % (i < 3 ? 2 : i < 6 ? 4 : 1000));
        chain(tok, n[p], h[p]);
    }
    for (int round = 0; round < 3 * TREE_PROMPTS; round++) {
        int p = (int)((rnd = ut_mix64(rnd)) % TREE_PROMPTS);

        lx_prefix_insert(node, h[p], n[p]);
        assert_true(lx_prefix_count(node) <= 50);
        assert_int_equal(lx_prefix_match(node, h[p], n[p]), n[p]);
        if (round % 40)
            continue;
        for (int q = 0; q < TREE_PROMPTS; q++) {
            size_t m = lx_prefix_match(node, h[q], n[q]);

            for (size_t i = 0; i < n[q]; i++)
                if (holds(node, h[q][i]) != (i < m))
                    fail_msg("prompt %d: block %zu held %d, longest prefix %zu", q, i,
                             holds(node, h[q][i]), m);
        }
    }
    assert_int_equal(lx_prefix_count(node), 50);
    ut_release(h);
    ut_release(node);
}

/* The capacity follows the scraped cache size (else the configured
 * default); a new size starts the index afresh at that size. */
static void test_capacity_change(void **state)
{
    struct lx_node *node = new_node(TOKENS(10));
    uint64_t a[40];

    prompt_hashes(1, 40, a);
    lx_prefix_insert(node, a, 40);
    assert_int_equal(lx_prefix_count(node), 10);
    atomic_store(&node->scraped_cache_tokens, TOKENS(30));
    assert_int_equal(lx_prefix_count(node), 0);
    lx_prefix_insert(node, a, 40);
    assert_int_equal(lx_prefix_count(node), 30);
    assert_int_equal(lx_prefix_match(node, a, 40), 30);
    atomic_store(&node->scraped_cache_tokens, TOKENS(5));
    assert_int_equal(lx_prefix_match(node, a, 40), 0);
    lx_prefix_insert(node, a, 40);
    assert_int_equal(lx_prefix_match(node, a, 40), 5);
    /* Not scraped: the default, here 7 blocks. */
    lx_prefix_set_policy(TOKENS(7), DEFAULT_MAX_BLOCKS);
    atomic_store(&node->scraped_cache_tokens, 0);
    lx_prefix_insert(node, a, 40);
    assert_int_equal(lx_prefix_count(node), 7);
    /* Below one block of tokens: nothing indexed. */
    atomic_store(&node->scraped_cache_tokens, 31);
    lx_prefix_insert(node, a, 40);
    assert_int_equal(lx_prefix_count(node), 0);
    assert_int_equal(lx_prefix_match(node, a, 40), 0);
    ut_release(node);
}

/* A lost cache (cache_gen changed: the node went down or restarted) starts
 * empty, at the next look, and fills again. */
static void test_cache_gen_clears(void **state)
{
    struct lx_node *node = new_node(TOKENS(100));
    struct lx_node *other = new_node(TOKENS(100));
    uint64_t a[8], b[5];

    prompt_hashes(1, 8, a);
    prompt_hashes(2, 5, b);
    lx_prefix_insert(node, a, 8);
    lx_prefix_insert(other, a, 8);
    assert_int_equal(lx_prefix_match(node, a, 8), 8);
    atomic_fetch_add(&node->cache_gen, 1);
    assert_int_equal(lx_prefix_match(node, a, 8), 0);
    assert_int_equal(lx_prefix_count(node), 0);
    assert_int_equal(lx_prefix_match(other, a, 8), 8);
    lx_prefix_insert(node, a, 3);
    assert_int_equal(lx_prefix_match(node, a, 8), 3);
    /* Bumped between two inserts: only the second one's blocks. */
    atomic_fetch_add(&node->cache_gen, 1);
    lx_prefix_insert(node, b, 5);
    assert_int_equal(lx_prefix_count(node), 5);
    assert_int_equal(lx_prefix_match(node, a, 8), 0);
    assert_int_equal(lx_prefix_match(node, b, 5), 5);
    ut_release(other);
    ut_release(node);
}

/* The process-wide cap: each index is granted its capacity while the total
 * allows, then what is left, then nothing; a freed node gives its share
 * back, which an index holding nothing takes at its next use. */
static void test_process_cap(void **state)
{
    struct lx_node *n1, *n2, *n3, *n4;
    uint64_t a[40];

    lx_prefix_set_policy(TOKENS(10), 25);
    prompt_hashes(1, 40, a);
    n1 = new_node(0);
    n2 = new_node(0);
    n3 = new_node(0);
    n4 = new_node(0);
    lx_prefix_insert(n1, a, 40);
    lx_prefix_insert(n2, a, 40);
    lx_prefix_insert(n3, a, 40);
    lx_prefix_insert(n4, a, 40);
    assert_int_equal(lx_prefix_count(n1), 10);
    assert_int_equal(lx_prefix_count(n2), 10);
    assert_int_equal(lx_prefix_count(n3), 5);
    assert_int_equal(lx_prefix_count(n4), 0);
    assert_int_equal(lx_prefix_match(n4, a, 40), 0);
    ut_release(n1);
    lx_prefix_insert(n4, a, 40);
    assert_int_equal(lx_prefix_count(n4), 10);
    assert_int_equal(lx_prefix_match(n4, a, 40), 10);
    /* A node growing gives back its old share before taking the new one:
     * n2 asks 20, 25 - 5 - 10 = 10 left plus its own 10. */
    atomic_store(&n2->scraped_cache_tokens, TOKENS(20));
    lx_prefix_insert(n2, a, 40);
    assert_int_equal(lx_prefix_count(n2), 10);
    ut_release(n4);
    atomic_fetch_add(&n2->cache_gen, 1);
    lx_prefix_insert(n2, a, 40);
    assert_int_equal(lx_prefix_count(n2), 20);
    ut_release(n2);
    ut_release(n3);
    /* Everything given back: a node gets its whole capacity again. */
    lx_prefix_set_policy(TOKENS(10), 10);
    n1 = new_node(0);
    lx_prefix_insert(n1, a, 40);
    assert_int_equal(lx_prefix_count(n1), 10);
    ut_release(n1);
}

/* ---- concurrent updates ------------------------------------------------ */

#define THREADS 4
#define CONC_PROMPTS 64
#define CONC_MAX 32
#define CONC_CAP 200

struct conc {
    struct lx_node *node;
    uint64_t (*h)[CONC_MAX];
    size_t *n;
    uint64_t stop_ms;
    int id;
    long ops;
    int bad; /* a match out of bounds */
};

static void conc_worker(void *arg)
{
    struct conc *c = arg;
    uint64_t rnd = (uint64_t)c->id * 7919 + 1;

    do { /* one round at least, however late the thread starts */
        for (int k = 0; k < 64; k++) {
            int p = (int)((rnd = ut_mix64(rnd)) % CONC_PROMPTS);
            size_t m;

            if (rnd & 1) {
                lx_prefix_insert(c->node, c->h[p], c->n[p]);
            } else {
                m = lx_prefix_match(c->node, c->h[p], c->n[p]);
                c->bad += m > c->n[p];
            }
            if (lx_prefix_count(c->node) > CONC_CAP)
                c->bad++;
            /* Thread 0 now and then loses the cache, as a health check would. */
            if (c->id == 0 && (rnd >> 8) % 5000 == 0)
                atomic_fetch_add(&c->node->cache_gen, 1);
            c->ops++;
        }
    } while (lx_now_ms() < c->stop_ms);
}

/* Four threads inserting and matching prompts with shared prefixes on one
 * node for half a second, its capacity well below the prompts' blocks so
 * eviction runs all the time: no crash (ASan, TSan), every match within
 * bounds, and afterwards a count that is the number of blocks found held,
 * each prompt's held blocks a prefix. */
static void test_concurrent_updates(void **state)
{
    struct lx_node *node = new_node(TOKENS(CONC_CAP));
    uint64_t(*h)[CONC_MAX] = ut_track(malloc(sizeof(uint64_t[CONC_PROMPTS][CONC_MAX])), free);
    size_t n[CONC_PROMPTS], held = 0, count;
    struct conc c[THREADS];
    uv_thread_t tid[THREADS];
    uint64_t rnd = 7, *seen = ut_track(calloc(CONC_PROMPTS * CONC_MAX, sizeof(*seen)), free);
    size_t n_seen = 0;

    for (int p = 0; p < CONC_PROMPTS; p++) {
        uint32_t tok[CONC_MAX];

        n[p] = 1 + (rnd = ut_mix64(rnd)) % CONC_MAX;
        for (size_t i = 0; i < n[p]; i++)
            tok[i] = (uint32_t)((rnd = ut_mix64(rnd)) % (i < 4 ? 2 : 50));
        chain(tok, n[p], h[p]);
    }
    for (int i = 0; i < THREADS; i++) {
        c[i] = (struct conc){node, h, n, lx_now_ms() + 500, i, 0, 0};
        assert_int_equal(uv_thread_create(&tid[i], conc_worker, &c[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        assert_int_equal(uv_thread_join(&tid[i]), 0);
        assert_int_equal(c[i].bad, 0);
        assert_true(c[i].ops >= 64);
    }
    /* Every distinct block once: held ones are what the count says. */
    for (int p = 0; p < CONC_PROMPTS; p++) {
        size_t m = lx_prefix_match(node, h[p], n[p]);

        for (size_t i = 0; i < n[p]; i++) {
            bool dup = false;

            assert_int_equal(holds(node, h[p][i]), i < m);
            for (size_t j = 0; j < n_seen && !dup; j++)
                dup = seen[j] == h[p][i];
            if (dup)
                continue;
            seen[n_seen++] = h[p][i];
            held += holds(node, h[p][i]);
        }
    }
    count = lx_prefix_count(node);
    assert_true(count <= CONC_CAP);
    assert_int_equal(count, held);
    ut_release(seen);
    ut_release(h);
    ut_release(node);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_partial_block_not_hashed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_common_prefix_shared_exactly, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chat_canonical, setup, teardown),
        cmocka_unit_test_setup_teardown(test_boundaries_not_forgeable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_completions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_max_blocks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_escapes_kept, setup, teardown),
        cmocka_unit_test_setup_teardown(test_longest_prefix, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lru_evicts_deep_blocks_first, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lru_stays_prefix_closed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_capacity_change, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cache_gen_clears, setup, teardown),
        cmocka_unit_test_setup_teardown(test_process_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_updates, setup, teardown),
    };

    lx_log_set_level(LX_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
