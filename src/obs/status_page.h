/*
 * status_page.h - GET /status: a live HTML status page, no external assets.
 */
#ifndef LX_STATUS_PAGE_H
#define LX_STATUS_PAGE_H

#include "../http/server.h"
#include "../proxy/gateway.h"

void lx_obs_status_page(struct lx_worker *w, struct lx_http_req *req, const char *rid);

#endif /* LX_STATUS_PAGE_H */
