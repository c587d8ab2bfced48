/*
 * mailbox.c - see mailbox.h.
 */
#include "mailbox.h"

#include "lx.h"

static void deliver_all(struct lx_mailbox *mb)
{
    struct lx_mail *list, *rev = NULL;

    uv_mutex_lock(&mb->lock);
    list = mb->head;
    mb->head = NULL;
    uv_mutex_unlock(&mb->lock);
    /* Linked newest first: reverse to deliver in posting order. */
    while (list) {
        struct lx_mail *next = list->next;

        list->next = rev;
        rev = list;
        list = next;
    }
    while (rev) {
        struct lx_mail *next = rev->next;

        rev->next = NULL;
        rev->deliver(rev);
        rev = next;
    }
}

static void on_async(uv_async_t *a)
{
    deliver_all(container_of(a, struct lx_mailbox, async));
}

int lx_mailbox_init(struct lx_mailbox *mb, uv_loop_t *loop)
{
    int rc;

    mb->head = NULL;
    mb->closed = false;
    rc = uv_mutex_init(&mb->lock);
    if (rc < 0)
        return rc;
    rc = uv_async_init(loop, &mb->async, on_async);
    if (rc < 0)
        uv_mutex_destroy(&mb->lock);
    return rc;
}

void lx_mailbox_post(struct lx_mailbox *mb, struct lx_mail *m)
{
    bool closed;

    uv_mutex_lock(&mb->lock);
    m->next = mb->head;
    mb->head = m;
    closed = mb->closed;
    uv_mutex_unlock(&mb->lock);
    if (!closed)
        uv_async_send(&mb->async);
}

void lx_mailbox_close(struct lx_mailbox *mb)
{
    uv_mutex_lock(&mb->lock);
    mb->closed = true;
    uv_mutex_unlock(&mb->lock);
    deliver_all(mb);
    uv_close((uv_handle_t *)&mb->async, NULL);
}

void lx_mailbox_deinit(struct lx_mailbox *mb)
{
    uv_mutex_destroy(&mb->lock);
}
