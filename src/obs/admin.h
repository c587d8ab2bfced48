/*
 * admin.h - the admin API (ADMIN_TOKEN): read and change pools at run time,
 * drain and enable nodes.
 */
#ifndef LX_ADMIN_H
#define LX_ADMIN_H

#include "../http/server.h"
#include "../proxy/gateway.h"

/* Handles every request whose path starts with /admin/ (auth included). */
void lx_obs_admin(struct lx_worker *w, struct lx_http_req *req, const char *rid);

#endif /* LX_ADMIN_H */
