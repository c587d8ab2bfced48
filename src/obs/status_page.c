/*
 * status_page.c - GET /status; see status_page.h. (Being written: 501.)
 */
#include "status_page.h"

void lx_obs_status_page(struct lx_worker *w, struct lx_http_req *req, const char *rid)
{
    lx_http_resp_error(req, 501, "server_error", "not_implemented", NULL, 0,
                       "the status page is not implemented yet");
}
