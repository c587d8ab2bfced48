/*
 * list.h - the one intrusive doubly linked list (after the Linux kernel's
 * list.h and libuv's QUEUE).
 *
 * A list is a head sentinel, a `struct lx_list` of its own; an element embeds a
 * `struct lx_list` and is recovered with container_of. The list is circular:
 * an empty head points to itself both ways, so insertion and removal are O(1)
 * without a NULL case.
 *
 * An element that is not in a list points to itself (after lx_list_init or
 * lx_list_remove) or is all zero (calloc'd): lx_list_linked() is false for
 * both and lx_list_remove() on it does nothing, so removing twice is safe.
 *
 * Not thread-safe: the owner of the head serialises access.
 */
#ifndef LX_LIST_H
#define LX_LIST_H

#include <stdbool.h>
#include <stddef.h>

#include "lx.h"

struct lx_list {
    struct lx_list *prev, *next;
};

/* Makes <n> an empty list head, or an unlinked element. */
static inline void lx_list_init(struct lx_list *n)
{
    n->prev = n->next = n;
}

/* True when the list headed by <h> has no element. */
static inline bool lx_list_empty(const struct lx_list *h)
{
    return h->next == h;
}

/* True when the element <n> is in a list. */
static inline bool lx_list_linked(const struct lx_list *n)
{
    return n->next != NULL && n->next != n;
}

/* Links <n> (not in a list) right after <pos>, a head or an element. */
static inline void lx_list_insert_after(struct lx_list *pos, struct lx_list *n)
{
    n->prev = pos;
    n->next = pos->next;
    pos->next->prev = n;
    pos->next = n;
}

/* Appends <n> to the list headed by <h>. */
static inline void lx_list_push_back(struct lx_list *h, struct lx_list *n)
{
    lx_list_insert_after(h->prev, n);
}

/* Prepends <n> to the list headed by <h>. */
static inline void lx_list_push_front(struct lx_list *h, struct lx_list *n)
{
    lx_list_insert_after(h, n);
}

/* Unlinks <n> from its list, if it is in one; <n> then points to itself. */
static inline void lx_list_remove(struct lx_list *n)
{
    if (!lx_list_linked(n))
        return;
    n->prev->next = n->next;
    n->next->prev = n->prev;
    lx_list_init(n);
}

/* The first element of the list headed by <h>, NULL when empty. */
static inline struct lx_list *lx_list_first(const struct lx_list *h)
{
    return lx_list_empty(h) ? NULL : h->next;
}

/* Unlinks and returns the first element, NULL when empty. */
static inline struct lx_list *lx_list_pop_front(struct lx_list *h)
{
    struct lx_list *n = lx_list_first(h);

    if (n)
        lx_list_remove(n);
    return n;
}

/* Walks the list headed by <h> front to back, <pos> being each element. */
#define lx_list_for_each(pos, h) for ((pos) = (h)->next; (pos) != (h); (pos) = (pos)->next)

/* The same, but the body may remove <pos> (only <pos>): <tmp> holds the next. */
#define lx_list_for_each_safe(pos, tmp, h)                                                         \
    for ((pos) = (h)->next, (tmp) = (pos)->next; (pos) != (h); (pos) = (tmp), (tmp) = (pos)->next)

#endif /* LX_LIST_H */
