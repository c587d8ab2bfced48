/*
 * strategies.h - the one list of routing strategies (an X-macro).
 *
 * conf validates names and writes its help and error messages from it;
 * route builds its table of ops from it (src/route/router.c), each X(name)
 * standing for `lx_strategy_<name>` in src/route/<name>.c. Adding a strategy
 * is one line here plus that file. The order is the one --help shows.
 */
#ifndef LX_STRATEGIES_H
#define LX_STRATEGIES_H

/* X(name): a strategy, by its canonical name. */
#define LX_STRATEGIES(X)                                                                           \
    X(round_robin)                                                                                 \
    X(least_loaded)                                                                                \
    X(latency_based)                                                                               \
    X(random)                                                                                      \
    X(real_time_metrics)                                                                           \
    X(power_of_two)                                                                                \
    X(cache_aware)

/* A(alias, name): another name accepted for strategy <name>. */
#define LX_STRATEGY_ALIASES(A) A(least_connection, least_loaded)

#endif /* LX_STRATEGIES_H */
