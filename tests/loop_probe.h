/*
 * loop_probe.h - a libuv loop's sockets seen from outside, for the tests that
 * drive the node client (tests/unit/test_upstream.c,
 * tests/fuzz/fuzz_upstream_response.c): how many handles are left, which TCP
 * handles are open, how many bytes wait unread on them or queued to write.
 * Header-only (static inline): each test binary takes what it uses.
 */
#ifndef LX_TESTS_LOOP_PROBE_H
#define LX_TESTS_LOOP_PROBE_H

#include <stddef.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <uv.h>

struct loop_probe {
    int handles;   /* every handle of the loop, closing or not */
    int open_tcp;  /* TCP handles not closing */
    int unread;    /* bytes on those sockets not read yet */
    size_t queued; /* bytes queued on them to write */
};

static inline void loop_probe_on_walk(uv_handle_t *h, void *arg)
{
    struct loop_probe *p = arg;
    uv_os_fd_t fd;
    int n = 0;

    p->handles++;
    if (h->type != UV_TCP || uv_is_closing(h))
        return;
    p->open_tcp++;
    p->queued += uv_stream_get_write_queue_size((uv_stream_t *)h);
    if (uv_fileno(h, &fd) == 0 && ioctl(fd, FIONREAD, &n) == 0)
        p->unread += n;
}

static inline struct loop_probe loop_probe(uv_loop_t *loop)
{
    struct loop_probe p = {0, 0, 0, 0};

    uv_walk(loop, loop_probe_on_walk, &p);
    return p;
}

static inline void loop_probe_on_walk_sndbuf(uv_handle_t *h, void *arg)
{
    uv_os_fd_t fd;

    if (h->type == UV_TCP && !uv_is_closing(h) && uv_fileno(h, &fd) == 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, arg, sizeof(int));
}

/* Sets SO_SNDBUF to <bytes> on every open TCP socket of <loop> (autotuning
 * would grow it to megabytes), so that a big write does not fit at once. */
static inline void loop_probe_set_sndbuf(uv_loop_t *loop, int bytes)
{
    uv_walk(loop, loop_probe_on_walk_sndbuf, &bytes);
}

#endif /* LX_TESTS_LOOP_PROBE_H */
