/*
 * health.h - the control thread: active health probes and the vLLM /metrics
 * scraper, for every node of the registry.
 *
 * One thread with its own libuv loop and its own upstream pool. Every node has
 * its own probe and its own scrape in flight at most, each with its own
 * timeout, so a slow node never delays another. Results go to the nodes'
 * atomics (lx_node_set_healthy, scraped_*); workers read them lock-free.
 */
#ifndef LX_HEALTH_H
#define LX_HEALTH_H

#include "../conf/conf.h"
#include "node.h"

struct lx_health;

/* Starts the control thread for <reg> (a reference is taken). NULL on error. */
struct lx_health *lx_health_start(const struct lx_conf *conf, struct lx_registry *reg);
/* Replaces the registry being watched (thread-safe; a reference is taken). */
void lx_health_set_registry(struct lx_health *h, struct lx_registry *reg);
/* Stops the thread, joins it, frees everything. */
void lx_health_stop(struct lx_health *h);

#endif /* LX_HEALTH_H */
