/*
 * prompt.h - llmux-sim's stand-in for a tokenizer: counts prompt tokens,
 * hashes them into KV blocks for the prefix cache, and makes up the output.
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
 * Output: token i of a completion is a three-letter word and a space (4
 * bytes: one token) picked by hash(prompt, i) from a fixed list: the same
 * prompt always gives the same text, and that text, resent as the assistant
 * message of the next turn, is the same tokens again. So the chain of a
 * prompt followed by its output (sim_prompt_push_output) is the chain of the
 * next turn's prompt up to the end of the answer.
 *
 * Pure functions over caller-owned state; no globals.
 */
#ifndef SIM_PROMPT_H
#define SIM_PROMPT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "../src/core/buf.h"

#define SIM_CHAT_TOKENS_PER_MESSAGE 4

struct sim_prompt {
    uint64_t tokens;  /* prompt tokens so far */
    uint64_t hash;    /* of the whole token sequence (seeds the output) */
    uint64_t *blocks; /* chain hashes of full blocks, owned; n_blocks entries */
    size_t n_blocks;
    size_t max_blocks;   /* hashes kept at most (later blocks are only counted) */
    unsigned block_size; /* tokens per block */
    unsigned in_block;   /* tokens in the current, unfinished block */
    uint64_t block_acc;  /* running hash of the current block */
    uint64_t chain;      /* chain hash of the last full block */
};

/* Starts an empty prompt; keeps hashes of at most <max_blocks> blocks. */
void sim_prompt_init(struct sim_prompt *p, unsigned block_size, size_t max_blocks);
/* Frees the block hashes; <p> may be initialised again. */
void sim_prompt_deinit(struct sim_prompt *p);
void sim_prompt_push_token(struct sim_prompt *p, uint64_t token);
/* Appends the ceil(len / 4) tokens of <s>. */
void sim_prompt_push_text(struct sim_prompt *p, const char *s, size_t len);

/*
 * Tokenizes a chat request's "messages" (borrowed) or a completions
 * request's "prompt" (borrowed) into <p>. Returns 0, or LX_EINVAL with a
 * message for the client in <err>.
 */
int sim_prompt_chat(struct sim_prompt *p, const json_t *messages, char *err, size_t errlen);
int sim_prompt_completion(struct sim_prompt *p, const json_t *prompt, char *err, size_t errlen);

/* A 64-bit hash of <len> bytes, with <seed>. */
uint64_t sim_hash(const void *data, size_t len, uint64_t seed);
/* splitmix64's finaliser: a good 64-bit mix. */
uint64_t sim_mix64(uint64_t x);

/* Appends the text of output token <i> for a prompt hashing to <seed>. */
int sim_output_token(struct lx_buf *out, uint64_t seed, unsigned i);
/* Pushes output tokens 0..n-1 for <seed> onto <p> (extends its block chain
 * past the prompt, as the KV cache holds the generated tokens). */
void sim_prompt_push_output(struct sim_prompt *p, uint64_t seed, unsigned n);

#endif /* SIM_PROMPT_H */
