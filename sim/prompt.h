/*
 * prompt.h - llmux-sim's stand-in for a tokenizer and a language model:
 * counts prompt tokens, hashes them into KV blocks for the prefix cache, and
 * makes up the output as a function of the context.
 *
 * Tokens: a text of N bytes is ceil(N / 4) tokens, each token being the next
 * 4 bytes of the text (the last one shorter). A chat message is 4 tokens of
 * template (derived from its role) plus its content's tokens, and a chat
 * prompt ends with the generation prompt: the 4 template tokens of an
 * assistant message. A completions prompt is its string, its strings one
 * after another, or its token ids. Every full block of block_size tokens gets
 * a chain hash: hash(previous block's chain hash, the block's tokens), as
 * vLLM's prefix caching does, so two prompts share cached blocks exactly as
 * far as they share leading tokens.
 *
 * Output: the model (struct sim_ctx) keeps a rolling hash over the bytes of
 * the rendered context: a completion's prompt, or a chat rendered through a
 * made-up template ("<|im_start|>ROLE\nCONTENT<|im_end|>\n" per message, the
 * generation prompt being "<|im_start|>assistant\n"). Each output token is a
 * three-letter word and a space (4 bytes: one token) picked from a fixed list
 * by the state; its bytes are then fed into the state. So the next word is a
 * function of all the text before it, as with a real model at temperature 0:
 * a prompt that ends with the first k words of an answer (a completion's
 * prompt plus that text, or a chat whose final assistant message is left
 * open) goes on with word k of that answer, byte for byte. The output text,
 * resent as the assistant message of the next turn, is the same tokens
 * again, so the chain of a prompt followed by its output
 * (sim_prompt_push_output) is the chain of the next turn's prompt up to the
 * end of the answer.
 *
 * Pure functions over caller-owned state; no globals. Feeding and generating
 * cost O(bytes): a word is O(1), never a rehash of the context.
 */
#ifndef SIM_PROMPT_H
#define SIM_PROMPT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../src/core/buf.h"

#define SIM_CHAT_TOKENS_PER_MESSAGE 4
#define SIM_WORD_BYTES 4 /* an output word, its space included: one token */
/* Token ids (/tokenize): a text piece's id is its 1 to 4 bytes read as a
 * little-endian number (below 2^32); template and media tokens have ids from
 * here up, and no text. */
#define SIM_TOKEN_SPECIAL (1ull << 32)

/*
 * The model's context: a hash of every byte fed so far, whatever the
 * pieces they were fed in (feeding "ab" then "c" is feeding "abc"). Whole
 * 8-byte words are folded into <h>; the bytes after them wait in <tail>.
 */
struct sim_ctx {
    uint64_t h;        /* hash of the whole 8-byte words so far */
    uint64_t tail;     /* the 0..7 bytes after them, byte i at bits 8i; zero above */
    unsigned tail_len; /* bytes in <tail> */
};

/* How a chat's rendering ends (vLLM's add_generation_prompt and
 * continue_final_message). */
enum sim_chat_end {
    SIM_CHAT_GENERATION_PROMPT,    /* the assistant's header follows (the default) */
    SIM_CHAT_NO_GENERATION_PROMPT, /* add_generation_prompt false: nothing follows */
    SIM_CHAT_CONTINUE_FINAL,       /* the last message, an assistant's, is left open */
};

struct sim_prompt {
    uint64_t tokens;         /* prompt tokens so far */
    uint64_t partial_tokens; /* of them, the answer's beginning the prompt ends with */
    struct sim_ctx ctx;      /* the rendered text so far */
    uint64_t *blocks;        /* chain hashes of full blocks, owned; n_blocks entries */
    size_t n_blocks;
    size_t max_blocks;   /* hashes kept at most (later blocks are only counted) */
    unsigned block_size; /* tokens per block */
    unsigned in_block;   /* tokens in the current, unfinished block */
    uint64_t block_acc;  /* running hash of the current block */
    uint64_t chain;      /* chain hash of the last full block */
    struct lx_buf *ids;  /* borrowed, or NULL: each token's id is appended to it in
                            decimal, followed by a comma (for /tokenize) */
};

/* An empty context. */
void sim_ctx_init(struct sim_ctx *c);
/* Feeds <len> bytes of <data> (borrowed) into <c>. */
void sim_ctx_feed(struct sim_ctx *c, const void *data, size_t len);
/* The word (SIM_WORD_BYTES bytes, not NUL-terminated, static) the model
 * says next in context <c>; <c> does not change. */
const char *sim_ctx_predict(const struct sim_ctx *c);
/* Says the next word: returns it, as sim_ctx_predict, and feeds it to <c>. */
const char *sim_ctx_generate(struct sim_ctx *c);
/* A 64-bit digest of everything fed to <c> (the state the next word is
 * picked by); embeddings and scores are made from it. */
uint64_t sim_ctx_digest(const struct sim_ctx *c);

/* Starts an empty prompt; keeps hashes of at most <max_blocks> blocks. */
void sim_prompt_init(struct sim_prompt *p, unsigned block_size, size_t max_blocks);
/* Frees the block hashes; <p> may be initialised again. */
void sim_prompt_deinit(struct sim_prompt *p);
/* Appends one token (not text: the context does not change). */
void sim_prompt_push_token(struct sim_prompt *p, uint64_t token);
/* Appends the ceil(len / 4) tokens of <s>, and feeds its bytes to the context. */
void sim_prompt_push_text(struct sim_prompt *p, const char *s, size_t len);

/*
 * Tokenizes and renders a chat request's "messages" (borrowed) into <p>,
 * ending as <end> says. With SIM_CHAT_CONTINUE_FINAL the last message must
 * be an assistant's; its content's tokens are p->partial_tokens. Returns 0,
 * or LX_EINVAL with a message for the client in <err>.
 */
int sim_prompt_chat(struct sim_prompt *p, const json_t *messages, enum sim_chat_end end, char *err,
                    size_t errlen);
/*
 * Tokenizes a completions request's "prompt" (borrowed) into <p>. With
 * <find_partial> and a string prompt, p->partial_tokens is the number of
 * words the prompt ends with that are, each, the word the model says after
 * the text before it: the part of an answer a resumed request resends (an
 * ordinary prompt has none, but by chance). Costs one prediction per 4
 * bytes. Returns 0, or LX_EINVAL with a message for the client in <err>.
 */
int sim_prompt_completion(struct sim_prompt *p, const json_t *prompt, bool find_partial, char *err,
                          size_t errlen);

/* A 64-bit hash of <len> bytes, with <seed>. */
uint64_t sim_hash(const void *data, size_t len, uint64_t seed);
/* splitmix64's finaliser: a good 64-bit mix. */
uint64_t sim_mix64(uint64_t x);

/* Appends the model's next <n> words to <p>, tokens and context (extends
 * its block chain past the prompt, as the KV cache holds the generated
 * tokens). */
void sim_prompt_push_output(struct sim_prompt *p, unsigned n);
/* Appends the end-of-sequence token: an output token without text. */
void sim_prompt_push_eos(struct sim_prompt *p);

/* The text of token <id> (see SIM_TOKEN_SPECIAL) into <out>: its bytes up
 * to the last non-zero one (so a text without NUL bytes comes back exactly),
 * or nothing for a special id. Returns the length, 0 to 4. */
size_t sim_token_bytes(uint64_t id, char out[4]);

#endif /* SIM_PROMPT_H */
