/*
 * mailbox.h - hands work from any thread to one libuv loop.
 *
 * A mail is embedded in the object it concerns. Posting it (any thread)
 * makes its deliver callback run on the mailbox's loop, in posting order.
 * The lock is held only to link a mail, never while one is delivered.
 */
#ifndef LX_MAILBOX_H
#define LX_MAILBOX_H

#include <stdbool.h>
#include <uv.h>

struct lx_mail {
    struct lx_mail *next;
    void (*deliver)(struct lx_mail *m);  /* runs on the mailbox's loop */
};

struct lx_mailbox {
    uv_async_t async;
    uv_mutex_t lock;
    struct lx_mail *head;  /* under lock; newest first */
    bool closed;           /* under lock: lx_mailbox_close() ran */
};

/* 0 or a libuv error. */
int lx_mailbox_init(struct lx_mailbox *mb, uv_loop_t *loop);
/* Any thread. <m> must not be posted again before it is delivered. */
void lx_mailbox_post(struct lx_mailbox *mb, struct lx_mail *m);
/* On the loop's thread: delivers what is pending and closes the handle; a
 * mail posted afterwards is never delivered (nor signalled to the closed
 * handle). lx_mailbox_deinit() once the loop has closed the handle. */
void lx_mailbox_close(struct lx_mailbox *mb);
void lx_mailbox_deinit(struct lx_mailbox *mb);

#endif /* LX_MAILBOX_H */
