/*
 * prompt.c - token counting, block hashing and made-up output; see prompt.h.
 *
 * The numbers need not match a real tokenizer, only be deterministic, cheap
 * (a 10 MiB prompt is hashed in a few ms) and proportional to the text, so
 * that prefill time, KV use and prefix-cache hits behave as on vLLM.
 */
#include "prompt.h"

#include <string.h>

#include "../src/core/lx.h"

#define TOKEN_BYTES 4

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

void sim_prompt_init(struct sim_prompt *p, unsigned block_size, size_t max_blocks)
{
    memset(p, 0, sizeof(*p));
    p->block_size = block_size;
    p->max_blocks = max_blocks;
    p->hash = 0x6a09e667f3bcc908ULL;
}

void sim_prompt_deinit(struct sim_prompt *p)
{
    free(p->blocks);
    p->blocks = NULL;
    p->n_blocks = 0;
}

void sim_prompt_push_token(struct sim_prompt *p, uint64_t token)
{
    uint64_t t = sim_mix64(token + 0x632be59bd9b4e019ULL);

    p->tokens++;
    p->hash = sim_mix64(p->hash ^ t) + 0x9e3779b97f4a7c15ULL;
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

void sim_prompt_push_text(struct sim_prompt *p, const char *s, size_t len)
{
    while (len > 0) {
        size_t n = LX_MIN(len, (size_t)TOKEN_BYTES);
        uint64_t tok = (uint64_t)n << 32;

        /* The token is its bytes: equal text, equal tokens. */
        for (size_t i = 0; i < n; i++)
            tok |= (uint64_t)(unsigned char)s[i] << (8 * i);
        sim_prompt_push_token(p, tok);
        s += n;
        len -= n;
    }
}

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

        if (!json_is_object(part) || !json_is_string(type)) {
            snprintf(err, errlen, "messages[%zu].content[%zu] must be an object with a type", idx,
                     i);
            return LX_EINVAL;
        }
        if (json_is_string(text))
            sim_prompt_push_text(p, json_string_value(text), json_string_length(text));
        else
            /* Images and other media: a fixed cost, derived from the type. */
            for (unsigned k = 0; k < 16; k++)
                sim_prompt_push_token(
                    p, sim_hash(json_string_value(type), json_string_length(type), k));
    }
    return 0;
}

/* The chat template's tokens that open a message of <role>. */
static void push_role(struct sim_prompt *p, const char *role, size_t len)
{
    for (unsigned k = 0; k < SIM_CHAT_TOKENS_PER_MESSAGE; k++)
        sim_prompt_push_token(p, sim_hash(role, len, 0x7e3 + k));
}

int sim_prompt_chat(struct sim_prompt *p, const json_t *messages, char *err, size_t errlen)
{
    size_t i;
    const json_t *msg;

    if (!json_is_array(messages) || json_array_size(messages) == 0) {
        snprintf(err, errlen, "messages must be a non-empty array");
        return LX_EINVAL;
    }
    json_array_foreach(messages, i, msg)
    {
        const json_t *role = json_object_get(msg, "role");
        int rc;

        if (!json_is_object(msg) || !json_is_string(role)) {
            snprintf(err, errlen, "messages[%zu] must be an object with a string role", i);
            return LX_EINVAL;
        }
        push_role(p, json_string_value(role), json_string_length(role));
        rc = push_content(p, json_object_get(msg, "content"), i, err, errlen);
        if (rc)
            return rc;
    }
    /* The generation prompt (add_generation_prompt): the tokens that open
     * an assistant message, the same as the next turn's history will have
     * before this answer. */
    push_role(p, "assistant", 9);
    return 0;
}

static bool is_token_id(const json_t *v)
{
    return json_is_integer(v) && json_integer_value(v) >= 0;
}

int sim_prompt_completion(struct sim_prompt *p, const json_t *prompt, char *err, size_t errlen)
{
    size_t i, j;
    const json_t *v, *w;

    if (json_is_string(prompt)) {
        sim_prompt_push_text(p, json_string_value(prompt), json_string_length(prompt));
    } else if (json_is_array(prompt) && json_array_size(prompt) > 0) {
        json_array_foreach(prompt, i, v)
        {
            if (json_is_string(v)) {
                sim_prompt_push_text(p, json_string_value(v), json_string_length(v));
            } else if (is_token_id(v)) {
                sim_prompt_push_token(p, (uint64_t)json_integer_value(v));
            } else if (json_is_array(v)) {
                json_array_foreach(v, j, w)
                {
                    if (!is_token_id(w))
                        goto bad;
                    sim_prompt_push_token(p, (uint64_t)json_integer_value(w));
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

static const char *output_word(uint64_t seed, unsigned i)
{
    return words[sim_mix64(seed ^ ((uint64_t)i * 0x9e3779b97f4a7c15ULL)) % ARRAY_SIZE(words)];
}

int sim_output_token(struct lx_buf *out, uint64_t seed, unsigned i)
{
    return lx_buf_append(out, output_word(seed, i), TOKEN_BYTES);
}

void sim_prompt_push_output(struct sim_prompt *p, uint64_t seed, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        sim_prompt_push_text(p, output_word(seed, i), TOKEN_BYTES);
}
