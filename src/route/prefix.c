/*
 * prefix.c - prompt blocks and the per-node block index; see prefix.h.
 */
#include "prefix.h"

#include <stdatomic.h>
#include <string.h>
#include <uv.h>

#include "../core/lx.h"

#define TOKENS_PER_BLOCK (LX_PREFIX_BLOCK_BYTES / 4) /* ~4 bytes of text per token */
#define MAX_NODE_BLOCKS (1u << 24)

static uint64_t node_tokens = 262144;
static uint64_t max_total = 1u << 20;
static atomic_uint_fast64_t total_blocks; /* granted to every index, all nodes */

void lx_prefix_set_policy(uint64_t tokens, uint64_t max_blocks)
{
    node_tokens = tokens;
    max_total = max_blocks;
}

/* ---- chained block hashes ------------------------------------------------ */

struct hasher {
    uint64_t chain;
    size_t fill;
    unsigned char buf[LX_PREFIX_BLOCK_BYTES];
    uint64_t *out;
    size_t n, max;
};

static uint64_t rotl(uint64_t x, int r)
{
    return (x << r) | (x >> (64 - r));
}

/* The hash of one block chained to the previous one: 8-byte words mixed
 * (murmur-style), the same on every machine of one byte order. */
static void emit(struct hasher *hs, const unsigned char *b)
{
    uint64_t h = hs->chain ^ 0x9E3779B97F4A7C15ULL;

    for (size_t i = 0; i < LX_PREFIX_BLOCK_BYTES; i += 8) {
        uint64_t w;

        memcpy(&w, b + i, 8);
        h = rotl(h ^ (w * 0x87C37B91114253D5ULL), 31) * 0x4CF5AD432745937FULL;
    }
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDULL;
    h ^= h >> 33;
    hs->chain = h;
    hs->out[hs->n++] = h;
}

static void feed(struct hasher *hs, const char *p, size_t len)
{
    while (len > 0 && hs->n < hs->max) {
        size_t k;

        if (hs->fill == 0 && len >= LX_PREFIX_BLOCK_BYTES) {
            emit(hs, (const unsigned char *)p);
            p += LX_PREFIX_BLOCK_BYTES;
            len -= LX_PREFIX_BLOCK_BYTES;
            continue;
        }
        k = LX_MIN(LX_PREFIX_BLOCK_BYTES - hs->fill, len);
        memcpy(hs->buf + hs->fill, p, k);
        hs->fill += k;
        p += k;
        len -= k;
        if (hs->fill == LX_PREFIX_BLOCK_BYTES) {
            emit(hs, hs->buf);
            hs->fill = 0;
        }
    }
}

/* Separators that JSON text never holds raw: fields cannot run together.
 * Stops the walk once the block limit is reached. */
static bool on_message(void *arg, struct lx_slice role, struct lx_slice content)
{
    struct hasher *hs = arg;

    feed(hs, role.p ? role.p : "", role.len);
    feed(hs, "\x1e", 1);
    feed(hs, content.p ? content.p : "", content.len);
    feed(hs, "\x1f", 1);
    return hs->n < hs->max;
}

size_t lx_prefix_blocks(const struct lx_body_scan *scan, uint64_t *out, size_t max)
{
    struct hasher hs = {.out = out, .max = max};

    if (scan && scan->messages.p) {
        lx_body_scan_messages(scan->messages, on_message, &hs);
    } else if (scan && scan->prompt.p) {
        struct lx_slice p = scan->prompt;

        if (p.len >= 2 && p.p[0] == '"') { /* a string: its contents */
            p.p++;
            p.len -= 2;
        }
        feed(&hs, p.p, p.len);
    }
    return hs.n;
}

/* ---- the per-node index ---------------------------------------------------- */

struct pc_entry {
    uint64_t hash;
    uint32_t chain;        /* next in its bucket, 0 = none */
    uint32_t older, newer; /* LRU neighbours, 0 = none */
};

struct prefix_cache {
    struct lx_node_cache base; /* first: nodes/ frees it through base.free */
    uv_mutex_t lock;
    unsigned gen;              /* node->cache_gen this content belongs to */
    uint32_t want;             /* the node's capacity when sized (wanted_cap) */
    uint32_t cap, n;           /* entries granted (<= want) / in use (e[1..n]) */
    uint32_t mask;             /* buckets - 1 */
    uint32_t newest, oldest;   /* LRU ends, 0 = empty */
    uint32_t *bucket;
    struct pc_entry *e;        /* e[0] unused: index 0 means none */
};

static void cache_release(struct prefix_cache *c)
{
    atomic_fetch_sub(&total_blocks, c->cap);
    free(c->bucket);
    free(c->e);
    c->bucket = NULL;
    c->e = NULL;
    c->cap = c->n = c->mask = 0;
    c->newest = c->oldest = 0;
}

static void cache_free(struct lx_node_cache *base)
{
    struct prefix_cache *c = (struct prefix_cache *)base;

    cache_release(c);
    uv_mutex_destroy(&c->lock);
    free(c);
}

static struct prefix_cache *cache_of(struct lx_node *node)
{
    struct lx_node_cache *cur = atomic_load(&node->prefix_cache);
    struct prefix_cache *c;

    if (cur)
        return (struct prefix_cache *)cur;
    c = lx_calloc(1, sizeof(*c));
    c->base.free = cache_free;
    uv_mutex_init(&c->lock);
    c->gen = atomic_load(&node->cache_gen);
    if (!atomic_compare_exchange_strong(&node->prefix_cache, &cur, &c->base)) {
        cache_free(&c->base);
        return (struct prefix_cache *)cur;
    }
    return c;
}

/* The capacity <node> should have, in blocks. */
static uint32_t wanted_cap(const struct lx_node *node)
{
    uint64_t tokens = atomic_load(&node->scraped_cache_tokens);

    if (!tokens)
        tokens = node_tokens;
    return (uint32_t)LX_MIN(tokens / TOKENS_PER_BLOCK, MAX_NODE_BLOCKS);
}

/* Under c->lock: empty, sized for <node>, within the process-wide cap. */
static void cache_reset(struct prefix_cache *c, const struct lx_node *node)
{
    uint32_t want = wanted_cap(node), grant, nb = 1;
    uint_fast64_t total;

    cache_release(c);
    total = atomic_load(&total_blocks);
    do {
        grant = total >= max_total ? 0 : (uint32_t)LX_MIN(want, max_total - total);
    } while (!atomic_compare_exchange_weak(&total_blocks, &total, total + grant));
    c->gen = atomic_load(&node->cache_gen);
    c->want = want;
    if (!grant)
        return;
    while (nb < grant * 2)
        nb <<= 1;
    c->bucket = lx_calloc(nb, sizeof(*c->bucket));
    c->e = lx_malloc(((size_t)grant + 1) * sizeof(*c->e));
    c->mask = nb - 1;
    c->cap = grant;
}

/* Under c->lock: the index is current for <node>: not lost, and sized for
 * its capacity (which changes once, when the first scrape tells it). */
static void cache_check(struct prefix_cache *c, const struct lx_node *node)
{
    if (!c->e || c->gen != atomic_load(&node->cache_gen) || c->want != wanted_cap(node))
        cache_reset(c, node);
}

static uint32_t find(const struct prefix_cache *c, uint64_t h)
{
    uint32_t i = c->cap ? c->bucket[h & c->mask] : 0;

    while (i && c->e[i].hash != h)
        i = c->e[i].chain;
    return i;
}

static void lru_unlink(struct prefix_cache *c, uint32_t i)
{
    struct pc_entry *x = &c->e[i];

    if (x->older)
        c->e[x->older].newer = x->newer;
    else
        c->oldest = x->newer;
    if (x->newer)
        c->e[x->newer].older = x->older;
    else
        c->newest = x->older;
}

static void lru_push_newest(struct prefix_cache *c, uint32_t i)
{
    c->e[i].older = c->newest;
    c->e[i].newer = 0;
    if (c->newest)
        c->e[c->newest].newer = i;
    else
        c->oldest = i;
    c->newest = i;
}

static void bucket_unlink(struct prefix_cache *c, uint32_t i)
{
    uint32_t *pp = &c->bucket[c->e[i].hash & c->mask];

    while (*pp != i)
        pp = &c->e[*pp].chain;
    *pp = c->e[i].chain;
}

static void touch(struct prefix_cache *c, uint64_t h)
{
    uint32_t i = find(c, h);

    if (i) {
        if (c->newest != i) {
            lru_unlink(c, i);
            lru_push_newest(c, i);
        }
        return;
    }
    if (c->n < c->cap) {
        i = ++c->n;
    } else {
        i = c->oldest; /* the least recently sent block goes */
        lru_unlink(c, i);
        bucket_unlink(c, i);
    }
    c->e[i].hash = h;
    c->e[i].chain = c->bucket[h & c->mask];
    c->bucket[h & c->mask] = i;
    lru_push_newest(c, i);
}

size_t lx_prefix_match(struct lx_node *node, const uint64_t *h, size_t n)
{
    struct prefix_cache *c;
    size_t lo = 0, hi = n;

    if (n == 0 || !atomic_load(&node->prefix_cache))
        return 0;
    c = cache_of(node);
    uv_mutex_lock(&c->lock);
    cache_check(c, node);
    /* Prefix-closed (prefix.h): the largest k whose block k-1 is held. */
    while (lo < hi) {
        size_t mid = lo + (hi - lo + 1) / 2;

        if (find(c, h[mid - 1]))
            lo = mid;
        else
            hi = mid - 1;
    }
    uv_mutex_unlock(&c->lock);
    return lo;
}

void lx_prefix_insert(struct lx_node *node, const uint64_t *h, size_t n)
{
    struct prefix_cache *c;

    if (n == 0)
        return;
    c = cache_of(node);
    uv_mutex_lock(&c->lock);
    cache_check(c, node);
    if (c->cap) {
        /* Last to first: the leading blocks end up the most recent. */
        for (size_t i = n; i-- > 0;)
            touch(c, h[i]);
    }
    uv_mutex_unlock(&c->lock);
}

size_t lx_prefix_count(const struct lx_node *node)
{
    struct prefix_cache *c = (struct prefix_cache *)atomic_load(&node->prefix_cache);
    size_t n;

    if (!c)
        return 0;
    uv_mutex_lock(&c->lock);
    cache_check(c, node);
    n = c->n;
    uv_mutex_unlock(&c->lock);
    return n;
}
