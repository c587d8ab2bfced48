/*
 * failure.c - the failure table; see failure.h.
 */
#include "failure.h"

const struct lx_fail_kind lx_fail_kinds[LX_FAIL__N] = {
    [LX_FAIL_CONNECT] = {"connect", 502, "upstream_unreachable", "the node could not be reached",
                         true},
    [LX_FAIL_TIMEOUT] = {"timeout", 504, "upstream_timeout", "the node did not answer in time",
                         true},
    [LX_FAIL_STATUS_5XX] = {"status_5xx", 502, "upstream_error",
                            "every node tried answered with an error", true},
    [LX_FAIL_PROTOCOL] = {"protocol", 502, "upstream_protocol_error",
                          "the node's answer broke the HTTP protocol", true},
    [LX_FAIL_STREAM_BROKEN] = {"stream_broken", 502, "stream_broken",
                               "the node's stream broke before it finished", false},
};
