/*
 * prefix.h - what each node's prefix cache likely holds, by blocks of the
 * prompt; used by cache_aware.
 *
 * Blocks: the canonical prompt (chat: each message's role and content, in
 * order; completions: the prompt) is cut into LX_PREFIX_BLOCK_BYTES blocks with chained hashes:
 * block i's hash covers blocks 0..i, so two prompts share exactly the hashes
 * of their common leading blocks. A partial last block is not hashed (vLLM
 * caches full blocks only). The text is the JSON as sent, escapes kept: the
 * same client sends the same bytes for the same history.
 *
 * Index: one per node (hung on struct lx_node, so one for the whole process:
 * the turns of a conversation arrive on any worker), mapping block hashes to
 * "sent to this node", in LRU order, at most the node's cache capacity in
 * blocks: vllm:cache_config_info when the node exports it, else
 * CACHE_AWARE_NODE_TOKENS. A node that goes unhealthy or restarts (its
 * prefix-cache counter goes back) starts empty; a removed node's index is
 * freed with it. Each index has its own lock, held for hash-table work only.
 * Memory: 32 bytes per indexed block (a 24-byte entry, two 4-byte buckets),
 * allocated for the node's capacity at first use; the process-wide total is
 * capped at CACHE_AWARE_INDEX_MAX_BLOCKS.
 *
 * An index entry says "llmux sent this node these blocks recently", not
 * "the node holds them": evictions inside vLLM are estimated by the LRU.
 * Insertion touches a prompt's blocks from the last to the first, so the
 * leading blocks are always the most recent and a node's set of blocks is
 * closed under prefixes: the longest cached prefix is found by binary search.
 */
#ifndef LX_PREFIX_H
#define LX_PREFIX_H

#include <stddef.h>
#include <stdint.h>

#include "../http/body_scan.h"
#include "../nodes/node.h"

#define LX_PREFIX_BLOCK_BYTES 128   /* about 32 tokens */
#define LX_PREFIX_MAX_BLOCKS 16384  /* hashed per prompt: its first 2 MiB */
#define LX_PREFIX_ENTRY_BYTES 32    /* memory per indexed block */

/* Process-wide, set once at start: a node's capacity in tokens when it does
 * not export vllm:cache_config_info, and the cap on indexed blocks. */
void lx_prefix_set_policy(uint64_t node_tokens, uint64_t max_blocks);

/* Writes the chained hashes of <scan>'s prompt (may be NULL) into <out>
 * (at most <max>); returns how many. */
size_t lx_prefix_blocks(const struct lx_body_scan *scan, uint64_t *out, size_t max);

/* How many leading blocks of <h> (<n>) <node> likely holds. */
size_t lx_prefix_match(struct lx_node *node, const uint64_t *h, size_t n);
/* <node> was sent the blocks <h> (<n>): they become its most recent. */
void lx_prefix_insert(struct lx_node *node, const uint64_t *h, size_t n);
/* Blocks indexed for <node> now (/stats). */
size_t lx_prefix_count(const struct lx_node *node);

#endif /* LX_PREFIX_H */
