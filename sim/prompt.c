/*
 * prompt.c - token counting, block hashing, chat rendering and the made-up
 * model; see prompt.h.
 *
 * The numbers need not match a real tokenizer, only be deterministic, cheap
 * (a 10 MiB prompt is hashed in a few ms) and proportional to the text, so
 * that prefill time, KV use and prefix-cache hits behave as on vLLM. The
 * tokens and the context are two views of the same text, kept apart: tokens
 * are 4-byte pieces counted from the start of each text (so "ab" + "cd" is
 * not the tokens of "abcd"), while the context is the bytes alone (it is).
 * That is what lets a prompt of any length be continued exactly.
 */
#include "prompt.h"

#include <string.h>

#include "../src/core/lx.h"

#define TOKEN_BYTES 4
#define CTX_SEED 0x243f6a8885a308d3ULL
#define EOS_TOKEN UINT64_MAX /* text tokens are below 5 << 32 */
#define NON_TEXT_PART_TOKENS 16

/* The made-up chat template's bytes around a message's role and content. */
#define TPL_START "<|im_start|>"
#define TPL_ROLE_END "\n"
#define TPL_END "<|im_end|>\n"
#define FEED_LIT(c, lit) sim_ctx_feed((c), (lit), sizeof(lit) - 1)

/*
 * Output tokens: 64 three-letter words, each with its trailing space, so that
 * every output token is exactly one 4-byte token of the sim's tokenizer: the
 * text a client gets back tokenizes into the very tokens that were generated
 * (as a real model's output re-tokenizes, near enough, into its own tokens),
 * and a later turn that resends it hits the blocks the node cached for it.
 */
static const char *const words[] = {
    "the ", "and ", "for ", "was ", "are ", "but ", "not ", "you ", "all ", "any ", "can ",
    "had ", "her ", "one ", "our ", "out ", "day ", "get ", "has ", "him ", "his ", "how ",
    "man ", "new ", "now ", "old ", "see ", "two ", "way ", "who ", "boy ", "did ", "its ",
    "let ", "put ", "say ", "she ", "too ", "use ", "map ", "key ", "row ", "set ", "log ",
    "run ", "bit ", "net ", "web ", "box ", "cup ", "sky ", "sea ", "sun ", "red ", "fox ",
    "owl ", "oak ", "elm ", "ivy ", "fig ", "tea ", "ice ", "fog ", "dew ",
};

uint64_t sim_mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

uint64_t sim_hash(const void *data, size_t len, uint64_t seed)
{
    const unsigned char *p = data;
    uint64_t h = sim_mix64(seed ^ (len * 0x9e3779b97f4a7c15ULL));
    uint64_t w;

    for (; len >= 8; p += 8, len -= 8) {
        memcpy(&w, p, 8);
        h = (h ^ sim_mix64(w)) * 0x9e3779b97f4a7c15ULL;
        h ^= h >> 29;
    }
    w = 0;
    memcpy(&w, p, len);
    h ^= sim_mix64(w ^ ((uint64_t)len << 56));
    return sim_mix64(h);
}

/* ---- the model ----------------------------------------------------------- */

/* Byte i at bits 8i whatever the host's byte order, so the state (and the
 * text it makes) is the same everywhere. Compilers make this one load. */
static uint64_t load_le64(const unsigned char *s)
{
    uint64_t w = 0;

    for (unsigned i = 0; i < 8; i++)
        w |= (uint64_t)s[i] << (8 * i);
    return w;
}

static void ctx_absorb(struct sim_ctx *c, uint64_t w)
{
    c->h = sim_mix64(c->h ^ w) + 0x9e3779b97f4a7c15ULL;
}

void sim_ctx_init(struct sim_ctx *c)
{
    c->h = CTX_SEED;
    c->tail = 0;
    c->tail_len = 0;
}

void sim_ctx_feed(struct sim_ctx *c, const void *data, size_t len)
{
    const unsigned char *s = data;

    /* Top up a started word; then either nothing is left or the tail is
     * empty, and whole words go straight from <s>. */
    for (; len > 0 && c->tail_len > 0; s++, len--) {
        c->tail |= (uint64_t)*s << (8 * c->tail_len);
        if (++c->tail_len == 8) {
            ctx_absorb(c, c->tail);
            c->tail = 0;
            c->tail_len = 0;
        }
    }
    for (; len >= 8; s += 8, len -= 8)
        ctx_absorb(c, load_le64(s));
    for (; len > 0; s++, len--)
        c->tail |= (uint64_t)*s << (8 * c->tail_len++);
}

uint64_t sim_ctx_digest(const struct sim_ctx *c)
{
    /* The tail's length sits above its at most 7 bytes: "a" and "a\0"
     * differ. */
    uint64_t t = sim_mix64(c->tail ^ ((uint64_t)c->tail_len << 56) ^ 0x452821e638d01377ULL);

    return sim_mix64(c->h ^ t);
}

const char *sim_ctx_predict(const struct sim_ctx *c)
{
    return words[sim_ctx_digest(c) % ARRAY_SIZE(words)];
}

const char *sim_ctx_generate(struct sim_ctx *c)
{
    const char *w = sim_ctx_predict(c);

    sim_ctx_feed(c, w, SIM_WORD_BYTES);
    return w;
}

/* ---- tokens -------------------------------------------------------------- */

void sim_prompt_init(struct sim_prompt *p, unsigned block_size, size_t max_blocks)
{
    memset(p, 0, sizeof(*p));
    p->block_size = block_size;
    p->max_blocks = max_blocks;
    sim_ctx_init(&p->ctx);
}

void sim_prompt_deinit(struct sim_prompt *p)
{
    free(p->blocks);
    p->blocks = NULL;
    p->n_blocks = 0;
}

/* Appends <token> (what the block hashes see), whose id (what /tokenize
 * shows) is <id>. */
static void push(struct sim_prompt *p, uint64_t token, uint64_t id)
{
    uint64_t t = sim_mix64(token + 0x632be59bd9b4e019ULL);

    if (p->ids) {
        lx_buf_append_u64(p->ids, id);
        lx_buf_append(p->ids, ",", 1);
    }
    p->tokens++;
    p->block_acc = sim_mix64(p->block_acc ^ t) + p->in_block;
    if (++p->in_block < p->block_size)
        return;
    p->chain = sim_mix64(p->chain ^ sim_mix64(p->block_acc ^ 0xa0761d6478bd642fULL));
    if (p->n_blocks < p->max_blocks) {
        if (!p->blocks)
            p->blocks = lx_malloc(p->max_blocks * sizeof(*p->blocks));
        p->blocks[p->n_blocks++] = p->chain;
    }
    p->block_acc = 0;
    p->in_block = 0;
}

void sim_prompt_push_token(struct sim_prompt *p, uint64_t token)
{
    push(p, token, token);
}

/* The id of a token that is not text (template, media): the special range,
 * above every text piece's id. */
static uint64_t special_id(uint64_t token)
{
    return SIM_TOKEN_SPECIAL + token % 65536;
}

/* The tokens of <s>, without touching the context. */
static void push_text_tokens(struct sim_prompt *p, const char *s, size_t len)
{
    while (len > 0) {
        size_t n = LX_MIN(len, (size_t)TOKEN_BYTES);
        uint64_t tok = (uint64_t)n << 32;

        /* The token is its bytes: equal text, equal tokens; its id is the
         * bytes alone, little-endian (sim_token_bytes inverts it). */
        for (size_t i = 0; i < n; i++)
            tok |= (uint64_t)(unsigned char)s[i] << (8 * i);
        push(p, tok, tok & 0xffffffffu);
        s += n;
        len -= n;
    }
}

void sim_prompt_push_text(struct sim_prompt *p, const char *s, size_t len)
{
    push_text_tokens(p, s, len);
    sim_ctx_feed(&p->ctx, s, len);
}

/* ---- chat ---------------------------------------------------------------- */

/* Text of one message's "content": a string, null, or an array of parts. */
static int push_content(struct sim_prompt *p, const json_t *content, size_t idx, char *err,
                        size_t errlen)
{
    size_t i;
    const json_t *part;

    if (!content || json_is_null(content))
        return 0;
    if (json_is_string(content)) {
        sim_prompt_push_text(p, json_string_value(content), json_string_length(content));
        return 0;
    }
    if (!json_is_array(content)) {
        snprintf(err, errlen, "messages[%zu].content must be a string or an array of parts", idx);
        return LX_EINVAL;
    }
    json_array_foreach(content, i, part)
    {
        const json_t *text = json_object_get(part, "text");
        const json_t *type = json_object_get(part, "type");
        const char *tname;
        size_t tlen;

        if (!json_is_object(part) || !json_is_string(type)) {
            snprintf(err, errlen, "messages[%zu].content[%zu] must be an object with a type", idx,
                     i);
            return LX_EINVAL;
        }
        if (json_is_string(text)) {
            sim_prompt_push_text(p, json_string_value(text), json_string_length(text));
            continue;
        }
        /* Images and other media: a fixed cost, derived from the type, and
         * a placeholder in the rendered text. */
        tname = json_string_value(type);
        tlen = json_string_length(type);
        for (unsigned k = 0; k < NON_TEXT_PART_TOKENS; k++) {
            uint64_t tok = sim_hash(tname, tlen, k);

            push(p, tok, special_id(tok));
        }
        FEED_LIT(&p->ctx, "<|");
        sim_ctx_feed(&p->ctx, tname, tlen);
        FEED_LIT(&p->ctx, "|>");
    }
    return 0;
}

/* The chat template's tokens and text that open a message of <role>. */
static void push_header(struct sim_prompt *p, const char *role, size_t len)
{
    for (unsigned k = 0; k < SIM_CHAT_TOKENS_PER_MESSAGE; k++) {
        uint64_t tok = sim_hash(role, len, 0x7e3 + k);

        push(p, tok, special_id(tok));
    }
    FEED_LIT(&p->ctx, TPL_START);
    sim_ctx_feed(&p->ctx, role, len);
    FEED_LIT(&p->ctx, TPL_ROLE_END);
}

static bool role_is(const json_t *role, const char *name)
{
    size_t n = strlen(name);

    return json_string_length(role) == n && memcmp(json_string_value(role), name, n) == 0;
}

int sim_prompt_chat(struct sim_prompt *p, const json_t *messages, enum sim_chat_end end, char *err,
                    size_t errlen)
{
    size_t i, last;
    const json_t *msg;

    if (!json_is_array(messages) || json_array_size(messages) == 0) {
        snprintf(err, errlen, "messages must be a non-empty array");
        return LX_EINVAL;
    }
    last = json_array_size(messages) - 1;
    json_array_foreach(messages, i, msg)
    {
        const json_t *role = json_object_get(msg, "role");
        bool open = end == SIM_CHAT_CONTINUE_FINAL && i == last;
        uint64_t before;
        int rc;

        if (!json_is_object(msg) || !json_is_string(role)) {
            snprintf(err, errlen, "messages[%zu] must be an object with a string role", i);
            return LX_EINVAL;
        }
        if (open && !role_is(role, "assistant")) {
            /* vLLM's words (its check before applying a chat template). */
            snprintf(err, errlen,
                     "Cannot set `continue_final_message` to True when the last message is not "
                     "from the assistant.");
            return LX_EINVAL;
        }
        push_header(p, json_string_value(role), json_string_length(role));
        before = p->tokens;
        rc = push_content(p, json_object_get(msg, "content"), i, err, errlen);
        if (rc)
            return rc;
        /* The message continued is left open: no end marker, and its
         * content is the part of the answer already given. */
        if (open)
            p->partial_tokens = p->tokens - before;
        else
            FEED_LIT(&p->ctx, TPL_END);
    }
    /* The generation prompt (add_generation_prompt): the header of an
     * assistant message, the same as the next turn's history, or a
     * continuation of this answer, will have before this answer. */
    if (end == SIM_CHAT_GENERATION_PROMPT)
        push_header(p, "assistant", 9);
    return 0;
}

/* ---- completions --------------------------------------------------------- */

static bool is_token_id(const json_t *v)
{
    return json_is_integer(v) && json_integer_value(v) >= 0;
}

/* A token id: one token, and its 8 bytes in the context. */
static void push_token_id(struct sim_prompt *p, const json_t *v)
{
    uint64_t id = (uint64_t)json_integer_value(v);
    unsigned char b[8];

    for (unsigned i = 0; i < 8; i++)
        b[i] = (unsigned char)(id >> (8 * i));
    sim_ctx_feed(&p->ctx, b, sizeof(b));
    sim_prompt_push_token(p, id);
}

/*
 * A string prompt whose trailing model words are counted: the 4-byte pieces
 * that end the text (counted back from its end, whatever its length) are
 * checked one by one against the model's prediction at that point.
 */
static void push_text_finding_partial(struct sim_prompt *p, const char *s, size_t len)
{
    size_t lead = len % SIM_WORD_BYTES;
    uint64_t run = 0;

    push_text_tokens(p, s, len);
    sim_ctx_feed(&p->ctx, s, lead);
    for (size_t i = lead; i < len; i += SIM_WORD_BYTES) {
        if (memcmp(sim_ctx_predict(&p->ctx), s + i, SIM_WORD_BYTES) == 0)
            run++;
        else
            run = 0;
        sim_ctx_feed(&p->ctx, s + i, SIM_WORD_BYTES);
    }
    p->partial_tokens = run;
}

int sim_prompt_completion(struct sim_prompt *p, const json_t *prompt, bool find_partial, char *err,
                          size_t errlen)
{
    size_t i, j;
    const json_t *v, *w;

    if (json_is_string(prompt)) {
        if (find_partial)
            push_text_finding_partial(p, json_string_value(prompt), json_string_length(prompt));
        else
            sim_prompt_push_text(p, json_string_value(prompt), json_string_length(prompt));
    } else if (json_is_array(prompt) && json_array_size(prompt) > 0) {
        json_array_foreach(prompt, i, v)
        {
            if (json_is_string(v)) {
                sim_prompt_push_text(p, json_string_value(v), json_string_length(v));
            } else if (is_token_id(v)) {
                push_token_id(p, v);
            } else if (json_is_array(v)) {
                json_array_foreach(v, j, w)
                {
                    if (!is_token_id(w))
                        goto bad;
                    push_token_id(p, w);
                }
            } else {
                goto bad;
            }
        }
    } else {
        goto bad;
    }
    if (p->tokens == 0) {
        snprintf(err, errlen, "The decoder prompt cannot be empty");
        return LX_EINVAL;
    }
    return 0;
bad:
    snprintf(err, errlen, "prompt must be a string, an array of strings, or an array of token ids");
    return LX_EINVAL;
}

/* ---- output -------------------------------------------------------------- */

void sim_prompt_push_output(struct sim_prompt *p, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        sim_prompt_push_text(p, sim_ctx_predict(&p->ctx), SIM_WORD_BYTES);
}

void sim_prompt_push_eos(struct sim_prompt *p)
{
    sim_prompt_push_token(p, EOS_TOKEN);
}

size_t sim_token_bytes(uint64_t id, char out[4])
{
    size_t n = 0;

    if (id >= SIM_TOKEN_SPECIAL)
        return 0;
    for (size_t i = 0; i < 4; i++)
        if ((id >> (8 * i)) & 0xff)
            n = i + 1;
    for (size_t i = 0; i < n; i++)
        out[i] = (char)(id >> (8 * i));
    return n;
}
