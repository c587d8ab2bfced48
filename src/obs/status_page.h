/*
 * status_page.h - GET /status: a live HTML status page, no external assets.
 */
#ifndef LX_STATUS_PAGE_H
#define LX_STATUS_PAGE_H

#include "../http/server.h"
#include "endpoints.h"

/*
 * Answers GET or HEAD with the status page: one constant, self-contained HTML
 * document (inline CSS and script) whose script polls GET /stats and renders
 * it, asking for the client token when /stats answers 401. The page holds no
 * data, so it needs no auth. Sends Cache-Control: no-store and a
 * Content-Security-Policy that allows only the page itself and same-origin
 * fetches. Other methods get 405 (counted as a bad request in the view's metrics).
 * Borrows <v>, <rid> (echoed as X-Request-Id); ends the response on <req>.
 * Runs on the answering worker's loop; any worker, any number at once.
 */
void lx_obs_status_page(const struct lx_obs_view *v, struct lx_http_req *req, const char *rid);

#endif /* LX_STATUS_PAGE_H */
