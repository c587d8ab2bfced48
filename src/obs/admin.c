/*
 * admin.c - the admin API; see admin.h. (Being written: answers 501.)
 */
#include "admin.h"

void lx_obs_admin(struct lx_worker *w, struct lx_http_req *req, const char *rid)
{
    lx_http_resp_error(req, 501, "server_error", "not_implemented", NULL, 0,
                       "the admin API is not implemented yet");
}
