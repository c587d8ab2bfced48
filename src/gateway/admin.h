/*
 * admin.h - the admin API (ADMIN_TOKEN): read and change pools at run time,
 * drain and enable nodes. The user's view is docs/ADMIN.md.
 *
 * Every change builds a new registry snapshot and installs it on every worker
 * and on the health thread; requests in flight keep the snapshot they started
 * with. Changes are serialised by one process-wide lock (the admin lock),
 * which also guards gw->reg and gw->health: whoever replaces gw->reg (the
 * admin API, the SIGHUP reload) holds it.
 */
#ifndef LX_ADMIN_H
#define LX_ADMIN_H

#include "../http/server.h"
#include "gateway.h"

struct lx_health;

/*
 * Handles every request whose path starts with /admin/ (auth included), on
 * worker <w>'s loop. Borrows <req> until it answers; the work itself (the
 * lock, the config file write with its fsyncs) runs on the libuv threadpool,
 * so a worker's loop never waits for it.
 */
void lx_admin_handle(struct lx_worker *w, struct lx_http_req *req, const char *rid);

/* The admin lock, for code outside this module that replaces gw->reg (the
 * SIGHUP reload). Not recursive. Any thread. */
void lx_admin_lock(void);
void lx_admin_unlock(void);

/*
 * Tells the admin API that a reload installed the pools of <conf> (borrowed,
 * copied): later admin changes start from them. Call with the admin lock held.
 */
void lx_admin_reloaded(const struct lx_conf *conf);

/* lx_gateway_set_health() under the admin lock. Call once, after
 * lx_health_start(). */
void lx_admin_set_health(struct lx_gateway *gw, struct lx_health *health);

/*
 * Refuses every later admin change (503): call before lx_gateway_stop(), so
 * that no change is installed on workers that are closing. Waits for a change
 * in progress to finish. Any thread.
 */
void lx_admin_shutdown(void);

#endif /* LX_ADMIN_H */
