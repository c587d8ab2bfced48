/*
 * engine.c - continuous batching on one timer; see engine.h for the model.
 *
 * State machine of a sequence:
 *   NEW --submit--> WAITING --admit--> PREFILL --first token--> DECODE
 *   DECODE --last token--> DONE (on_done); any state --cancel--> DONE
 * A sequence whose only token is the first goes PREFILL -> DONE.
 *
 * Invariants: n_waiting/n_prefill/n_decode are the lengths of the three
 * lists; a block's ref is the number of PREFILL and DECODE sequences that
 * hold it; pool.n_free counts the blocks with ref 0 (never used, or queued);
 * n_prefill + n_decode <= max_num_seqs.
 *
 * One tick does, in order: the decode step (if due), the first tokens of
 * sequences whose prefill (plus ttft_ms) is over, admission, and arming the
 * timer for the earliest next event. Callbacks run inside the first two; a
 * callback may cancel its own sequence, and may submit new ones (a pipelined
 * request handled inside resp_end), which only touches the waiting list.
 *
 * The prefix cache is vLLM's (v1 block pool): the KV pool's blocks, each
 * with a reference count, in a hash table by chain hash once full. Running
 * sequences hold blocks; a block no sequence holds goes to the tail of the
 * free queue and keeps its hash, so it can still be hit until a new
 * sequence takes it from the head of the queue (LRU eviction). A sequence's
 * hits are its leading blocks in the table, at most (prompt - 1) /
 * block_size (vLLM always recomputes the last prompt token); it shares them.
 * Its prompt's full blocks get their hashes at admission, the full blocks
 * of its generated tokens when it leaves the batch (the last token, never
 * fed back, is not in the cache). Hits and queries are counted in tokens,
 * once per sequence, at admission.
 */
#include "engine.h"

#include <math.h>
#include <string.h>

#include "../src/core/log.h"

/* Timers tick in whole ms: treat anything due within this as due now. */
#define TICK_SLACK_MS 1.0

/*
 * One KV block of the pool. A block is held (ref > 0) by the running
 * sequences that use it, or free (ref == 0): then it is in the free queue,
 * least recently freed first. A block with a chain hash (hashed) is in the
 * hash table whether held or free: a free hashed block is a cached prefix
 * block, kept until the block is taken for something else.
 */
struct kv_block {
    uint64_t hash;
    struct kv_block *hnext; /* bucket chain, while hashed */
    struct lx_list free;    /* the free queue, while ref == 0 */
    uint32_t ref;
    bool hashed;
};

struct kv_pool {
    struct kv_block *blocks;   /* cap entries */
    struct kv_block **buckets; /* mask + 1 heads */
    size_t mask;
    size_t cap;         /* blocks in all, = KV capacity in blocks */
    size_t fresh;       /* blocks[fresh..cap) were never used: free, not queued */
    size_t n_free;      /* free blocks: never used + queued */
    struct lx_list lru; /* free queue: head = next to be taken (and evicted) */
};

struct sim_engine {
    uv_timer_t timer;
    const struct sim_conf *conf;
    struct sim_engine_ops ops;
    void *ctx;
    struct lx_list waiting, prefill, decode;
    unsigned n_waiting, n_prefill, n_decode;
    uint64_t kv_total;      /* blocks */
    double prefill_free_ms; /* the prefill unit is busy until then */
    double next_step_ms;    /* end of the current decode step */
    bool in_tick;
    bool frozen;
    struct kv_pool pool;
    struct sim_engine_stats st;
};

double sim_now_ms(void)
{
    return (double)uv_hrtime() / 1e6;
}

/* ---- KV pool and prefix cache -------------------------------------------- */

static void pool_init(struct kv_pool *pool, size_t cap)
{
    size_t nb = 16;

    while (nb < cap)
        nb <<= 1;
    pool->cap = cap;
    pool->fresh = 0;
    pool->n_free = cap;
    pool->mask = nb - 1;
    /* calloc: pages of blocks never used are never touched. */
    pool->blocks = cap ? lx_calloc(cap, sizeof(*pool->blocks)) : NULL;
    pool->buckets = lx_calloc(nb, sizeof(*pool->buckets));
    lx_list_init(&pool->lru);
}

static void pool_deinit(struct kv_pool *pool)
{
    free(pool->blocks);
    free(pool->buckets);
}

/* The cached block with chain hash <hash>, held or free; NULL if none. */
static struct kv_block *pool_find(struct kv_pool *pool, uint64_t hash)
{
    for (struct kv_block *b = pool->buckets[hash & pool->mask]; b; b = b->hnext)
        if (b->hash == hash)
            return b;
    return NULL;
}

static void pool_unhash(struct kv_pool *pool, struct kv_block *b)
{
    struct kv_block **pp = &pool->buckets[b->hash & pool->mask];

    while (*pp != b)
        pp = &(*pp)->hnext;
    *pp = b->hnext;
    b->hnext = NULL;
    b->hashed = false;
}

/* Gives the full block <b> its chain hash, unless another block has it. */
static void pool_hash(struct kv_pool *pool, struct kv_block *b, uint64_t hash)
{
    if (b->hashed || pool_find(pool, hash))
        return;
    b->hash = hash;
    b->hashed = true;
    b->hnext = pool->buckets[hash & pool->mask];
    pool->buckets[hash & pool->mask] = b;
}

/* A sequence takes cached block <b> (a prefix hit): it is no longer free. */
static struct kv_block *pool_take(struct kv_pool *pool, struct kv_block *b)
{
    if (b->ref++ == 0) {
        lx_list_remove(&b->free);
        pool->n_free--;
    }
    return b;
}

/* A new block for a sequence: one never used, else the head of the free
 * queue, whose cached prefix (if any) is evicted. n_free must be > 0. */
static struct kv_block *pool_alloc(struct kv_pool *pool)
{
    struct kv_block *b;

    LX_ASSERT(pool->n_free > 0);
    if (pool->fresh < pool->cap) {
        b = &pool->blocks[pool->fresh++];
    } else {
        b = container_of(lx_list_first(&pool->lru), struct kv_block, free);
        lx_list_remove(&b->free);
        if (b->hashed)
            pool_unhash(pool, b);
    }
    pool->n_free--;
    b->ref = 1;
    return b;
}

static void pool_put(struct kv_pool *pool, struct kv_block *b)
{
    LX_ASSERT(b->ref > 0);
    if (--b->ref == 0) {
        lx_list_push_back(&pool->lru, &b->free); /* tail = freed last */
        pool->n_free++;
    }
}

/* ---- sequences ------------------------------------------------------------ */

static unsigned running(const struct sim_engine *eng)
{
    return eng->n_prefill + eng->n_decode;
}

static double step_ms(const struct sim_engine *eng)
{
    if (eng->conf->fast)
        return 0;
    return eng->conf->decode_ms + eng->conf->decode_ms_per_seq * running(eng);
}

static uint32_t blocks_for(const struct sim_engine *eng, uint64_t tokens)
{
    return (uint32_t)((tokens + eng->conf->block_size - 1) / eng->conf->block_size);
}

/*
 * <seq> leaves the batch. The blocks it has computed (the prompt, and every
 * generated token but the last, which is never fed back) keep their chain
 * hashes: the next turn of a conversation, which resends this answer, finds
 * them. Its blocks go back to the free queue last block first, so that a
 * sequence's tail is evicted before its head (as vLLM frees them).
 */
static void seq_release(struct sim_engine *eng, struct sim_seq *seq)
{
    unsigned bs = eng->conf->block_size;
    uint64_t computed = (uint64_t)seq->prompt_tokens + (seq->generated ? seq->generated - 1 : 0);
    size_t n = LX_MIN((size_t)(computed / bs), seq->n_blocks);

    n = LX_MIN(n, (size_t)seq->kv_blocks);
    for (size_t i = seq->prompt_tokens / bs; i < n; i++)
        pool_hash(&eng->pool, seq->kv[i], seq->blocks[i]);
    for (size_t i = seq->kv_blocks; i-- > 0;)
        pool_put(&eng->pool, seq->kv[i]);
    free(seq->kv);
    seq->kv = NULL;
    seq->kv_blocks = 0;
}

/* Takes <seq> out of its list; returns the state it was in. */
static enum sim_seq_state seq_unlink(struct sim_engine *eng, struct sim_seq *seq)
{
    enum sim_seq_state was = seq->state;

    switch (was) {
    case SIM_SEQ_WAITING:
        eng->n_waiting--;
        break;
    case SIM_SEQ_PREFILL:
        eng->n_prefill--;
        break;
    case SIM_SEQ_DECODE:
        eng->n_decode--;
        break;
    default:
        return was;
    }
    lx_list_remove(&seq->link);
    if (was != SIM_SEQ_WAITING)
        seq_release(eng, seq);
    seq->state = SIM_SEQ_DONE;
    return was;
}

/*
 * One token out for <seq> at <now>. Runs a callback: <seq> may be gone on
 * return.
 */
static void emit(struct sim_engine *eng, struct sim_seq *seq, double now)
{
    struct sim_engine_stats *st = &eng->st;

    seq->generated++;
    st->generation_tokens++;
    if (seq->generated == 1)
        sim_hist_observe(&st->ttft, (now - seq->arrive_ms) / 1000.0);
    else
        sim_hist_observe(&st->itl, (now - seq->last_token_ms) / 1000.0);
    seq->last_token_ms = now;
    if (seq->generated < seq->max_tokens) {
        eng->ops.on_token(seq, eng->ctx);
        return;
    }
    seq_unlink(eng, seq);
    if (seq->finish_stop)
        st->success_stop++;
    else
        st->success_length++;
    sim_hist_observe(&st->e2e, (now - seq->arrive_ms) / 1000.0);
    eng->ops.on_done(seq, eng->ctx);
}

/* Every decoding sequence gets one token. */
static void decode_step(struct sim_engine *eng, double now)
{
    struct lx_list *n, *next;

    lx_list_for_each_safe(n, next, &eng->decode) {
        if (eng->frozen)
            break;
        emit(eng, container_of(n, struct sim_seq, link), now);
    }
}

/* Sequences whose prefill (and extra ttft) is over: first token, then decode. */
static void first_tokens(struct sim_engine *eng, double now)
{
    struct lx_list *n, *next;

    lx_list_for_each_safe(n, next, &eng->prefill) {
        struct sim_seq *seq = container_of(n, struct sim_seq, link);

        if (eng->frozen)
            break;
        if (seq->first_token_ms > now + TICK_SLACK_MS)
            continue;
        eng->st.prompt_tokens += seq->prompt_tokens;
        if (eng->n_decode == 0)
            eng->next_step_ms = now + step_ms(eng);
        lx_list_remove(&seq->link);
        eng->n_prefill--;
        lx_list_push_back(&eng->decode, &seq->link);
        eng->n_decode++;
        seq->state = SIM_SEQ_DECODE;
        emit(eng, seq, now);
    }
}

static void admit(struct sim_engine *eng, double now)
{
    const struct sim_conf *conf = eng->conf;

    while (!lx_list_empty(&eng->waiting) && running(eng) < conf->max_num_seqs) {
        struct sim_seq *seq = container_of(lx_list_first(&eng->waiting), struct sim_seq, link);
        struct kv_pool *pool = &eng->pool;
        uint32_t total = blocks_for(eng, (uint64_t)seq->prompt_tokens + seq->max_tokens);
        size_t max_hit, hit = 0, evictable = 0, cached;
        unsigned compute;
        double start;

        /* The prefix hit: the leading blocks in the cache, at most
         * (prompt - 1) / block_size (vLLM recomputes the last prompt token). */
        max_hit = seq->prompt_tokens ? (seq->prompt_tokens - 1) / conf->block_size : 0;
        max_hit = LX_MIN(max_hit, seq->n_blocks);
        for (; hit < max_hit; hit++) {
            const struct kv_block *b = pool_find(pool, seq->blocks[hit]);

            if (!b)
                break;
            evictable += b->ref == 0;
        }
        /* Hit blocks are shared, not allocated; those that are free stop
         * being free. The rest is taken from the free blocks. */
        if (total - hit + evictable > pool->n_free)
            break; /* FIFO: the head waits for room, and so do the rest */
        lx_list_remove(&seq->link);
        eng->n_waiting--;
        seq->kv = lx_malloc(total * sizeof(*seq->kv));
        seq->kv_blocks = total;
        for (size_t i = 0; i < hit; i++)
            seq->kv[i] = pool_take(pool, pool_find(pool, seq->blocks[i]));
        for (size_t i = hit; i < total; i++)
            seq->kv[i] = pool_alloc(pool);
        /* The prompt's full blocks are cached from now on (vLLM caches a
         * block when it is scheduled). */
        cached = LX_MIN((size_t)(seq->prompt_tokens / conf->block_size), seq->n_blocks);
        for (size_t i = hit; i < cached; i++)
            pool_hash(pool, seq->kv[i], seq->blocks[i]);

        seq->hit_tokens = (unsigned)(hit * conf->block_size);
        eng->st.prefix_queries += seq->prompt_tokens;
        eng->st.prefix_hits += seq->hit_tokens;

        compute = seq->prompt_tokens - seq->hit_tokens;
        start = LX_MAX(now, eng->prefill_free_ms);
        if (!conf->fast && conf->prefill_tps > 0)
            eng->prefill_free_ms = start + compute * 1000.0 / conf->prefill_tps;
        else
            eng->prefill_free_ms = start;
        seq->first_token_ms = eng->prefill_free_ms + seq->ttft_extra_ms;
        seq->state = SIM_SEQ_PREFILL;
        lx_list_push_back(&eng->prefill, &seq->link);
        eng->n_prefill++;
    }
}

static void on_tick(uv_timer_t *t);

/* Arms the timer for the earliest next event, or stops it when idle. */
static void schedule(struct sim_engine *eng)
{
    double next = INFINITY, delay;
    struct lx_list *n;

    if (eng->frozen) {
        uv_timer_stop(&eng->timer);
        return;
    }
    if (!lx_list_empty(&eng->decode))
        next = eng->next_step_ms;
    lx_list_for_each(n, &eng->prefill) {
        struct sim_seq *seq = container_of(n, struct sim_seq, link);

        next = LX_MIN(next, seq->first_token_ms);
    }
    if (isinf(next)) {
        /* Idle, or only waiting sequences that cannot be admitted until a
         * running one ends (which ticks again): no wakeups. */
        uv_timer_stop(&eng->timer);
        return;
    }
    uv_update_time(eng->timer.loop);
    delay = next - sim_now_ms();
    uv_timer_start(&eng->timer, on_tick, delay > 0 ? (uint64_t)ceil(delay) : 0, 0);
}

static void on_tick(uv_timer_t *t)
{
    struct sim_engine *eng = container_of(t, struct sim_engine, timer);
    double now = sim_now_ms();

    if (eng->frozen)
        return;
    eng->in_tick = true;
    if (!lx_list_empty(&eng->decode) && now + TICK_SLACK_MS >= eng->next_step_ms) {
        double step = step_ms(eng);

        decode_step(eng, now);
        /* Keep the cadence: timers fire on whole ms, so steps are timed
         * from when they were due, unless the loop fell a step behind. */
        if (now - eng->next_step_ms > step)
            eng->next_step_ms = now + step;
        else
            eng->next_step_ms += step;
    }
    first_tokens(eng, now);
    if (!eng->frozen)
        admit(eng, now);
    eng->in_tick = false;
    schedule(eng);
}

/* Something changed outside a tick: run one soon (never inside the call). */
static void kick(struct sim_engine *eng)
{
    if (eng->in_tick || eng->frozen)
        return;
    uv_timer_start(&eng->timer, on_tick, 0, 0);
}

/* ---- public --------------------------------------------------------------- */

struct sim_engine *sim_engine_new(uv_loop_t *loop, const struct sim_conf *conf,
                                  const struct sim_engine_ops *ops, void *ctx)
{
    struct sim_engine *eng = lx_calloc(1, sizeof(*eng));

    eng->conf = conf;
    eng->ops = *ops;
    eng->ctx = ctx;
    lx_list_init(&eng->waiting);
    lx_list_init(&eng->prefill);
    lx_list_init(&eng->decode);
    eng->kv_total = conf->kv_cache_tokens / conf->block_size;
    pool_init(&eng->pool, (size_t)eng->kv_total);
    sim_hist_init(&eng->st.ttft, SIM_HIST_TTFT);
    sim_hist_init(&eng->st.e2e, SIM_HIST_E2E);
    sim_hist_init(&eng->st.itl, SIM_HIST_ITL);
    uv_timer_init(loop, &eng->timer);
    return eng;
}

static void on_timer_closed(uv_handle_t *h)
{
    struct sim_engine *eng = container_of((uv_timer_t *)h, struct sim_engine, timer);

    pool_deinit(&eng->pool);
    free(eng);
}

void sim_engine_close(struct sim_engine *eng)
{
    eng->frozen = true;
    uv_close((uv_handle_t *)&eng->timer, on_timer_closed);
}

void sim_engine_submit(struct sim_engine *eng, struct sim_seq *seq)
{
    LX_ASSERT(seq->state == SIM_SEQ_NEW && seq->max_tokens >= 1);
    seq->generated = 0;
    seq->hit_tokens = 0;
    seq->kv = NULL;
    seq->kv_blocks = 0;
    seq->arrive_ms = sim_now_ms();
    seq->state = SIM_SEQ_WAITING;
    lx_list_push_back(&eng->waiting, &seq->link);
    eng->n_waiting++;
    kick(eng);
}

void sim_engine_cancel(struct sim_engine *eng, struct sim_seq *seq)
{
    enum sim_seq_state was = seq_unlink(eng, seq);

    if (was == SIM_SEQ_WAITING || was == SIM_SEQ_PREFILL || was == SIM_SEQ_DECODE) {
        eng->st.aborted++;
        kick(eng);
    }
}

void sim_engine_count_pooling(struct sim_engine *eng, unsigned prompt_tokens)
{
    eng->st.prompt_tokens += prompt_tokens;
    eng->st.success_stop++;
}

void sim_engine_freeze(struct sim_engine *eng)
{
    eng->frozen = true;
    uv_timer_stop(&eng->timer);
}

const struct sim_engine_stats *sim_engine_stats(struct sim_engine *eng)
{
    struct sim_engine_stats *st = &eng->st;

    st->running = running(eng);
    st->waiting = eng->n_waiting;
    st->kv_blocks_used = eng->pool.cap - eng->pool.n_free;
    st->kv_blocks_total = eng->kv_total;
    st->block_size = eng->conf->block_size;
    return st;
}
