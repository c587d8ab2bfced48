/*
 * engine.c - continuous batching on one timer; see engine.h for the model.
 *
 * State machine of a sequence:
 *   NEW --submit--> WAITING --admit--> PREFILL --first token--> DECODE
 *   DECODE --last token--> DONE (on_done); any state --cancel--> DONE
 * A sequence whose only token is the first goes PREFILL -> DONE.
 *
 * Invariants: n_waiting/n_prefill/n_decode are the lengths of the three
 * lists; kv_used is the sum of kv_blocks of PREFILL and DECODE sequences and
 * never exceeds kv_total; n_prefill + n_decode <= max_num_seqs.
 *
 * One tick does, in order: the decode step (if due), the first tokens of
 * sequences whose prefill (plus ttft_ms) is over, admission, and arming the
 * timer for the earliest next event. Callbacks run inside the first two; a
 * callback may cancel its own sequence, and may submit new ones (a pipelined
 * request handled inside resp_end), which only touches the waiting list.
 *
 * The prefix cache is a hash set of block chain hashes with LRU eviction,
 * bounded by the KV capacity in blocks; a sequence's leading blocks that are
 * in the set are hits (vLLM always recomputes at least the last prompt
 * token). Blocks enter the set with the sequence's first token.
 */
#include "engine.h"

#include <math.h>
#include <string.h>

#include "../src/core/log.h"

/* Timers tick in whole ms: treat anything due within this as due now. */
#define TICK_SLACK_MS 1.0

struct pc_entry {
    uint64_t hash;
    struct pc_entry *hnext; /* bucket chain */
    struct lx_list lru;     /* most recent at the head */
};

struct prefix_cache {
    struct pc_entry *pool;     /* cap entries */
    struct pc_entry **buckets; /* mask + 1 heads */
    size_t mask;
    size_t cap;  /* entries, = KV capacity in blocks */
    size_t used; /* pool entries handed out so far */
    struct lx_list lru;
};

struct sim_engine {
    uv_timer_t timer;
    const struct sim_conf *conf;
    struct sim_engine_ops ops;
    void *ctx;
    struct lx_list waiting, prefill, decode;
    unsigned n_waiting, n_prefill, n_decode;
    uint64_t kv_used, kv_total; /* blocks */
    double prefill_free_ms;     /* the prefill unit is busy until then */
    double next_step_ms;        /* end of the current decode step */
    bool in_tick;
    bool frozen;
    struct prefix_cache pc;
    struct sim_engine_stats st;
};

double sim_now_ms(void)
{
    return (double)uv_hrtime() / 1e6;
}

/* ---- prefix cache ------------------------------------------------------- */

static void pc_init(struct prefix_cache *pc, size_t cap)
{
    size_t nb = 16;

    while (nb < cap)
        nb <<= 1;
    pc->cap = cap;
    pc->used = 0;
    pc->mask = nb - 1;
    pc->pool = cap ? lx_calloc(cap, sizeof(*pc->pool)) : NULL;
    pc->buckets = lx_calloc(nb, sizeof(*pc->buckets));
    lx_list_init(&pc->lru);
}

static void pc_deinit(struct prefix_cache *pc)
{
    free(pc->pool);
    free(pc->buckets);
}

static struct pc_entry *pc_find(struct prefix_cache *pc, uint64_t hash)
{
    for (struct pc_entry *e = pc->buckets[hash & pc->mask]; e; e = e->hnext)
        if (e->hash == hash)
            return e;
    return NULL;
}

/* True when <hash> is cached; it then becomes the most recently used. */
static bool pc_touch(struct prefix_cache *pc, uint64_t hash)
{
    struct pc_entry *e = pc_find(pc, hash);

    if (!e)
        return false;
    lx_list_remove(&e->lru);
    lx_list_push_back(&pc->lru, &e->lru); /* tail = most recent */
    return true;
}

static void pc_insert(struct prefix_cache *pc, uint64_t hash)
{
    struct pc_entry *e, **pp;

    if (pc->cap == 0 || pc_touch(pc, hash))
        return;
    if (pc->used < pc->cap) {
        e = &pc->pool[pc->used++];
    } else {
        /* Evict the least recently used block (the list head). */
        e = container_of(lx_list_first(&pc->lru), struct pc_entry, lru);
        lx_list_remove(&e->lru);
        for (pp = &pc->buckets[e->hash & pc->mask]; *pp != e; pp = &(*pp)->hnext)
            ;
        *pp = e->hnext;
    }
    e->hash = hash;
    e->hnext = pc->buckets[hash & pc->mask];
    pc->buckets[hash & pc->mask] = e;
    lx_list_push_back(&pc->lru, &e->lru);
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
    if (was != SIM_SEQ_WAITING) {
        LX_ASSERT(eng->kv_used >= seq->kv_blocks);
        eng->kv_used -= seq->kv_blocks;
        seq->kv_blocks = 0;
    }
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
        for (size_t i = 0; i < seq->n_blocks; i++)
            pc_insert(&eng->pc, seq->blocks[i]);
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
        uint32_t need = blocks_for(eng, (uint64_t)seq->prompt_tokens + seq->max_tokens);
        size_t max_hit, hit = 0;
        unsigned compute;
        double start;

        if (eng->kv_used + need > eng->kv_total)
            break; /* FIFO: the head waits for room, and so do the rest */
        lx_list_remove(&seq->link);
        eng->n_waiting--;
        eng->kv_used += need;
        seq->kv_blocks = need;

        max_hit = seq->prompt_tokens ? (seq->prompt_tokens - 1) / conf->block_size : 0;
        max_hit = LX_MIN(max_hit, seq->n_blocks);
        while (hit < max_hit && pc_touch(&eng->pc, seq->blocks[hit]))
            hit++;
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
    pc_init(&eng->pc, (size_t)eng->kv_total);
    sim_hist_init(&eng->st.ttft, SIM_HIST_TTFT);
    sim_hist_init(&eng->st.e2e, SIM_HIST_E2E);
    sim_hist_init(&eng->st.itl, SIM_HIST_ITL);
    uv_timer_init(loop, &eng->timer);
    return eng;
}

static void on_timer_closed(uv_handle_t *h)
{
    struct sim_engine *eng = container_of((uv_timer_t *)h, struct sim_engine, timer);

    pc_deinit(&eng->pc);
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
    st->kv_blocks_used = eng->kv_used;
    st->kv_blocks_total = eng->kv_total;
    st->block_size = eng->conf->block_size;
    return st;
}
