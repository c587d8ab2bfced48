/*
 * test_list.c - the intrusive list (src/core/list.h): FIFO order, pushing at
 * either end, inserting after an element, removal from the front, middle and
 * back, removing twice, a zeroed element counting as unlinked, popping, and
 * removing while walking.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "../../src/core/list.h"

struct item {
    int v;
    struct lx_list link;
};

/* Writes the values of the list headed by <h> into <out> (at most <cap>) and
 * returns how many there are; also checks the back links. */
static size_t values(const struct lx_list *h, int *out, size_t cap)
{
    const struct lx_list *n, *prev = h;
    size_t i = 0;

    for (n = h->next; n != h; n = n->next) {
        assert_ptr_equal(n->prev, prev);
        if (i < cap)
            out[i] = container_of(n, struct item, link)->v;
        i++;
        prev = n;
    }
    assert_ptr_equal(h->prev, prev);
    return i;
}

#define assert_values(h, ...)                                                                      \
    do {                                                                                           \
        const int want_[] = {__VA_ARGS__};                                                         \
        int got_[16];                                                                              \
        assert_int_equal(values((h), got_, ARRAY_SIZE(got_)), ARRAY_SIZE(want_));                  \
        assert_memory_equal(got_, want_, sizeof(want_));                                           \
    } while (0)

static void test_empty(void **state)
{
    struct lx_list h;

    lx_list_init(&h);
    assert_true(lx_list_empty(&h));
    assert_false(lx_list_linked(&h));
    assert_null(lx_list_first(&h));
    assert_null(lx_list_pop_front(&h));
    assert_int_equal(values(&h, NULL, 0), 0);
}

static void test_push_back_is_fifo(void **state)
{
    struct item it[4];
    struct lx_list h, *n;

    lx_list_init(&h);
    for (int i = 0; i < 4; i++) {
        it[i].v = i;
        lx_list_push_back(&h, &it[i].link);
        assert_true(lx_list_linked(&it[i].link));
    }
    assert_false(lx_list_empty(&h));
    assert_values(&h, 0, 1, 2, 3);
    for (int i = 0; i < 4; i++) {
        n = lx_list_pop_front(&h);
        assert_ptr_equal(n, &it[i].link);
        assert_false(lx_list_linked(n));
    }
    assert_true(lx_list_empty(&h));
}

static void test_push_front_and_insert_after(void **state)
{
    struct item it[5];
    struct lx_list h;

    lx_list_init(&h);
    for (int i = 0; i < 5; i++)
        it[i].v = i;
    lx_list_push_back(&h, &it[1].link);
    lx_list_push_front(&h, &it[0].link);
    lx_list_push_back(&h, &it[3].link);
    lx_list_insert_after(&it[1].link, &it[2].link);
    lx_list_insert_after(h.prev, &it[4].link); /* after the last = at the back */
    assert_values(&h, 0, 1, 2, 3, 4);
    assert_ptr_equal(lx_list_first(&h), &it[0].link);
}

static void test_remove_anywhere_and_twice(void **state)
{
    struct item it[5];
    struct lx_list h;

    lx_list_init(&h);
    for (int i = 0; i < 5; i++) {
        it[i].v = i;
        lx_list_push_back(&h, &it[i].link);
    }
    lx_list_remove(&it[2].link); /* middle */
    assert_values(&h, 0, 1, 3, 4);
    lx_list_remove(&it[0].link); /* front */
    assert_values(&h, 1, 3, 4);
    lx_list_remove(&it[4].link); /* back */
    assert_values(&h, 1, 3);
    /* Removed elements point to themselves; removing again changes nothing. */
    assert_false(lx_list_linked(&it[2].link));
    lx_list_remove(&it[2].link);
    lx_list_remove(&it[0].link);
    assert_values(&h, 1, 3);
    /* A removed element can be pushed again. */
    lx_list_push_back(&h, &it[2].link);
    assert_values(&h, 1, 3, 2);
    lx_list_remove(&it[1].link);
    lx_list_remove(&it[3].link);
    lx_list_remove(&it[2].link);
    assert_true(lx_list_empty(&h));
}

static void test_zeroed_element_is_unlinked(void **state)
{
    struct item it, other;
    struct lx_list h;

    memset(&it, 0, sizeof(it));
    assert_false(lx_list_linked(&it.link));
    lx_list_remove(&it.link); /* a no-op, not a NULL dereference */
    lx_list_init(&h);
    other.v = 7;
    lx_list_push_back(&h, &other.link);
    it.v = 8;
    lx_list_push_back(&h, &it.link);
    assert_values(&h, 7, 8);
}

static void test_for_each_safe_removes(void **state)
{
    struct item it[6];
    struct lx_list h, *n, *tmp;
    int seen = 0;

    lx_list_init(&h);
    for (int i = 0; i < 6; i++) {
        it[i].v = i;
        lx_list_push_back(&h, &it[i].link);
    }
    /* Drop the even ones while walking. */
    lx_list_for_each_safe(n, tmp, &h) {
        struct item *x = container_of(n, struct item, link);

        seen++;
        if (x->v % 2 == 0)
            lx_list_remove(n);
    }
    assert_int_equal(seen, 6);
    assert_values(&h, 1, 3, 5);
    seen = 0;
    lx_list_for_each(n, &h)
        seen += container_of(n, struct item, link)->v;
    assert_int_equal(seen, 9);
    /* Emptying the whole list while walking. */
    lx_list_for_each_safe(n, tmp, &h)
        lx_list_remove(n);
    assert_true(lx_list_empty(&h));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_push_back_is_fifo),
        cmocka_unit_test(test_push_front_and_insert_after),
        cmocka_unit_test(test_remove_anywhere_and_twice),
        cmocka_unit_test(test_zeroed_element_is_unlinked),
        cmocka_unit_test(test_for_each_safe_removes),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
