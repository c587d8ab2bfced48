/*
 * engine.h - llmux-sim's model of one vLLM engine: continuous batching,
 * KV-cache admission and a prefix cache, driven by one libuv timer.
 *
 * A sequence (struct sim_seq) is embedded in its owner (the API's call) and
 * goes WAITING -> PREFILL -> DECODE -> done, or leaves at any point through
 * sim_engine_cancel(). The engine never allocates or frees a sequence; it
 * only links it into one of its three lists.
 *
 * Timing model (all times in ms on a monotonic clock):
 *   admission   FIFO; the head of the queue enters the batch when
 *               running < max_num_seqs and the KV pool has room for its
 *               ceil((prompt + completion) / block_size) blocks, reserved up
 *               front for the whole sequence (so nothing is ever preempted)
 *               less its prefix hit, whose cached blocks it shares. A head
 *               that does not fit blocks those behind it.
 *   KV pool     as vLLM's: one pool of blocks for running sequences and the
 *               prefix cache. A block no running sequence holds is free;
 *               a free block that still has its chain hash is a cached
 *               prefix block until it is taken for a new sequence (free
 *               blocks are taken least recently freed first).
 *   prefill     (prompt - prefix_hit) / prefill_tps seconds; prefills run
 *               one after another (the GPU computes one prefill at a time),
 *               decoding goes on beside them. The first token is out when
 *               the prefill ends, plus the request's extra ttft_ms.
 *   decode      one step every decode_ms + decode_ms_per_seq * running ms;
 *               each sequence that had its first token before the step
 *               started gets one more token.
 * When nothing is running or waiting the timer is stopped.
 *
 * Threading: one loop, one thread. Callbacks (on_token, on_done) run from the
 * engine's timer, never inside sim_engine_submit/cancel. A callback may
 * cancel its own sequence (and free it) but no other.
 */
#ifndef SIM_ENGINE_H
#define SIM_ENGINE_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "../src/core/list.h"
#include "metrics.h"

/* The knobs of one simulated node; filled from the command line. */
struct sim_conf {
    const char *host;
    int port;
    const char *model;        /* served model name */
    const char *name;         /* node name for logs; NULL = host:port */
    unsigned max_num_seqs;    /* batch size limit */
    uint64_t kv_cache_tokens; /* KV-cache capacity, tokens */
    unsigned block_size;      /* tokens per KV block */
    unsigned max_model_len;   /* prompt + completion limit, tokens */
    double prefill_tps;       /* prompt tokens per second; 0 = instant */
    double decode_ms;         /* decode step at batch 1, ms */
    double decode_ms_per_seq; /* extra step time per running sequence, ms */
    unsigned max_tokens;      /* default completion length */
    double error_rate;        /* 0..1 share of requests answered 500 */
    uint64_t seed;            /* PRNG seed for error_rate */
    bool hang;                /* never answer */
    uint64_t die_after;       /* exit(1) after this many answers; 0 = never */
    uint64_t slow_start_ms;   /* 503 for this long after start; 0 = off */
    uint64_t keep_alive_ms;   /* idle keep-alive connection timeout; 0 = none */
    int64_t drop_after;       /* close every inference request's connection after this
                                 many tokens, unless x-sim says; -1 = off */
    bool fast;                /* no prefill or decode time at all */
};

struct kv_block;

enum sim_seq_state { SIM_SEQ_NEW, SIM_SEQ_WAITING, SIM_SEQ_PREFILL, SIM_SEQ_DECODE, SIM_SEQ_DONE };

struct sim_seq {
    struct lx_list link; /* in the engine list of its state */
    enum sim_seq_state state;
    /* Set by the owner before sim_engine_submit(). */
    unsigned prompt_tokens;
    unsigned max_tokens; /* tokens to generate, >= 1 */
    /* Borrowed: chain hashes of the full blocks of the prompt followed by
     * its whole completion (max_tokens tokens, as the next turn of a
     * conversation would resend them). */
    const uint64_t *blocks;
    size_t n_blocks;
    double ttft_extra_ms; /* held back this long after the prefill */
    bool finish_stop;     /* finish_reason "stop" (else "length"), for metrics */
    /* Engine state. */
    unsigned generated;    /* tokens out so far */
    unsigned hit_tokens;   /* prompt tokens found in the prefix cache */
    struct kv_block **kv;  /* while running: its kv_blocks KV blocks, in order */
    uint32_t kv_blocks;    /* KV blocks held while running (hits included) */
    double arrive_ms;      /* submit time */
    double first_token_ms; /* when the first token is due (PREFILL) */
    double last_token_ms;  /* when the latest token came out */
};

struct sim_engine;

struct sim_engine_ops {
    /* seq->generated just grew; more tokens will follow. */
    void (*on_token)(struct sim_seq *seq, void *ctx);
    /* The last token (seq->generated == max_tokens) is out and the sequence
     * has left the engine: the owner may free it. */
    void (*on_done)(struct sim_seq *seq, void *ctx);
};

/* Counters and gauges for /metrics and /sim/stats. */
struct sim_engine_stats {
    unsigned running; /* sequences in PREFILL or DECODE */
    unsigned waiting;
    uint64_t kv_blocks_used;
    uint64_t kv_blocks_total;
    unsigned block_size;        /* tokens per KV block */
    uint64_t prefix_queries;    /* prompt tokens looked up, total */
    uint64_t prefix_hits;       /* prompt tokens found, total */
    uint64_t prompt_tokens;     /* prefilled prompt tokens, total */
    uint64_t generation_tokens; /* generated tokens, total */
    uint64_t success_length;    /* finished with "length" */
    uint64_t success_stop;      /* finished with "stop" */
    uint64_t aborted;           /* cancelled before their last token */
    uint64_t preempted;         /* always 0: KV is reserved up front */
    struct sim_hist ttft;       /* seconds, submit to first token */
    struct sim_hist e2e;        /* seconds, submit to last token */
    struct sim_hist itl;        /* seconds between tokens of one sequence */
};

/*
 * Creates an engine on <loop> for <conf> (borrowed, must outlive it). Returns
 * a new engine; free it with sim_engine_close().
 */
struct sim_engine *sim_engine_new(uv_loop_t *loop, const struct sim_conf *conf,
                                  const struct sim_engine_ops *ops, void *ctx);
/* Stops the timer and frees the engine once the timer handle is closed.
 * Sequences still linked are dropped without callbacks. */
void sim_engine_close(struct sim_engine *eng);
/* Queues <seq> (borrowed until on_done or sim_engine_cancel). */
void sim_engine_submit(struct sim_engine *eng, struct sim_seq *seq);
/* Takes <seq> out wherever it is and frees its KV blocks. No callback. */
void sim_engine_cancel(struct sim_engine *eng, struct sim_seq *seq);
/*
 * Counts a request answered without a sequence (embeddings, scores,
 * classification, pooling): its <prompt_tokens> as prefilled and one request
 * finished with "stop", as vLLM counts a pooling request.
 */
void sim_engine_count_pooling(struct sim_engine *eng, unsigned prompt_tokens);
/* Stops all progress for good (the node is about to die). */
void sim_engine_freeze(struct sim_engine *eng);
/* Current counters; the gauges are refreshed by this call. */
const struct sim_engine_stats *sim_engine_stats(struct sim_engine *eng);
/* Milliseconds on the engine's monotonic clock. */
double sim_now_ms(void);

#endif /* SIM_ENGINE_H */
