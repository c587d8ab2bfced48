/*
 * resume.c - stream resume; see resume.h.
 */
#include "resume.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "../core/lx.h"
#include "../http/body_scan.h"

#define FIRST_MAX 16384 /* a first event longer than this is not kept: no resume */

void lx_resume_init(struct lx_resume *r, bool chat)
{
    memset(r, 0, sizeof(*r));
    r->chat = chat;
    lx_buf_init(&r->text, LX_RESUME_TEXT_MAX);
    lx_buf_init(&r->first, FIRST_MAX);
}

void lx_resume_deinit(struct lx_resume *r)
{
    lx_buf_deinit(&r->text);
    lx_buf_deinit(&r->first);
    json_decref(r->first_json);
}

void lx_resume_reset(struct lx_resume *r)
{
    bool chat = r->chat;

    lx_resume_deinit(r);
    lx_resume_init(r, chat);
}

/* The first <needle> (a quoted key, "...") in [p, end). The keys looked
 * for are near where the search starts, so a memchr for the key's first
 * letter and a compare beat memmem's set-up. */
static const char *find(const char *p, const char *end, const char *needle)
{
    size_t n = strlen(needle);
    const char *q = p + 1;

    while (q < end && (q = memchr(q, needle[1], (size_t)(end - q))) != NULL) {
        if ((size_t)(end - q) < n - 1)
            return NULL;
        if (q[-1] == needle[0] && memcmp(q, needle + 1, n - 1) == 0)
            return q - 1;
        q++;
    }
    return NULL;
}

/* The value after "key" (found at or after <p>): its first byte, or NULL. */
static const char *value_after(const char *p, const char *end, const char *key)
{
    const char *q = find(p, end, key);

    if (!q)
        return NULL;
    q += strlen(key);
    while (q < end && (*q == ' ' || *q == ':' || *q == '\t'))
        q++;
    return q < end ? q : NULL;
}

/* The raw contents of the JSON string value of "key", escapes kept; false
 * when the key is absent or its value is not a string. */
static const char *string_end(const char *q, const char *end);

static bool string_after(const char *p, const char *end, const char *key, struct lx_slice *out)
{
    const char *q = value_after(p, end, key), *e;

    if (!q || *q != '"' || !(e = string_end(q, end)))
        return false;
    *out = (struct lx_slice){q + 1, (size_t)(e - q - 1)};
    return true;
}

/* The end of the JSON string that starts at <q> (its opening quote): the
 * closing quote, or NULL. */
static const char *string_end(const char *q, const char *end)
{
    for (q++; q < end; q++) {
        if (*q == '\\')
            q++;
        else if (*q == '"')
            return q;
    }
    return NULL;
}

/* A chat delta that is {"content":"..."} and nothing else (vLLM's token
 * events): its content, without searching for the other kinds of delta. */
static bool plain_delta(const char *d, const char *end, struct lx_slice *out)
{
    static const char key[] = "\"content\":\"";
    const char *q = d, *e;

    while (q < end && *q != '{')
        q++;
    if ((size_t)(end - q) < sizeof(key) || memcmp(q + 1, key, sizeof(key) - 1) != 0)
        return false;
    q += sizeof(key) - 1; /* at the opening quote */
    e = string_end(q, end);
    if (!e || e + 1 >= end || e[1] != '}')
        return false;
    *out = (struct lx_slice){q + 1, (size_t)(e - q - 1)};
    return true;
}

void lx_resume_note(struct lx_resume *r, const char *ev, size_t len)
{
    const char *end = ev + len, *ch = find(ev, end, "\"choices\""), *d, *v;
    struct lx_slice s = {NULL, 0};

    if (!ch || r->inexact)
        return;
    if (!r->first.len && lx_buf_append(&r->first, ev, len) < 0)
        r->inexact = true;
    if (r->chat) {
        d = find(ch, end, "\"delta\"");
        if (!d)
            return;
        if (!plain_delta(d + 7, end, &s)) {
            /* Tool calls and reasoning stream as deltas of their own that
             * a continuation request cannot carry. */
            v = value_after(d, end, "\"tool_calls\"");
            if (v && *v == '[' && (v + 1 < end && v[1] != ']'))
                r->inexact = true;
            if (string_after(d, end, "\"reasoning_content\"", &s) ||
                string_after(d, end, "\"reasoning\"", &s))
                r->inexact = true;
            if (!string_after(d, end, "\"content\"", &s))
                s.len = 0;
        }
        ch = s.p ? s.p + s.len : d;
    } else if (string_after(ch, end, "\"text\"", &s)) {
        ch = s.p + s.len;
    } else {
        s.len = 0;
    }
    if (s.len) {
        if (lx_buf_append(&r->text, s.p, s.len) < 0)
            r->inexact = true;
        r->tokens++;
    }
    if (string_after(ch, end, "\"finish_reason\"", &s))
        r->finished = true;
}

/* The JSON text of an event's data line: [*p, *end) without "data:" and
 * the blank line; false when the event is not one data line. */
static bool event_data(const char *ev, size_t len, const char **p, const char **end)
{
    const char *e = ev + len;

    while (e > ev && (e[-1] == '\n' || e[-1] == '\r'))
        e--;
    if (len < 5 || memcmp(ev, "data:", 5) != 0)
        return false;
    ev += 5;
    if (ev < e && *ev == ' ')
        ev++;
    if (memchr(ev, '\n', (size_t)(e - ev)) || memchr(ev, '\r', (size_t)(e - ev)))
        return false;
    *p = ev;
    *end = e;
    return true;
}

static json_t *event_json(const char *ev, size_t len)
{
    const char *p, *end;
    json_t *o;

    if (!event_data(ev, len, &p, &end) || p == end || *p != '{')
        return NULL;
    o = json_loadb(p, (size_t)(end - p), JSON_ALLOW_NUL, NULL);
    if (o && !json_is_object(o)) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* A field that a continuation cannot reproduce exactly when set. */
static bool is_set(json_t *body, const char *key)
{
    json_t *v = json_object_get(body, key);

    return v && !json_is_null(v) && !json_is_false(v) &&
           !(json_is_integer(v) && json_integer_value(v) == 0);
}

static bool is_more_than_one(json_t *body, const char *key)
{
    json_t *v = json_object_get(body, key);

    return v && !json_is_null(v) && !(json_is_integer(v) && json_integer_value(v) == 1);
}

/* The request's reasons not to be resumed; NULL when it can be. */
static const char *refusal(json_t *body, bool chat)
{
    json_t *v;

    if (is_more_than_one(body, "n") || is_more_than_one(body, "best_of"))
        return "more than one choice";
    if (is_set(body, "logprobs") || is_set(body, "top_logprobs") ||
        is_set(body, "prompt_logprobs"))
        return "logprobs";
    if (is_set(body, "echo"))
        return "echo";
    if (is_set(body, "use_beam_search"))
        return "beam search";
    if (chat && is_set(body, "continue_final_message"))
        return "the request continues its own final message";
    if (is_set(body, "guided_json") || is_set(body, "guided_regex") ||
        is_set(body, "guided_choice") || is_set(body, "guided_grammar") ||
        is_set(body, "structured_outputs"))
        return "structured output";
    v = json_object_get(json_object_get(body, "response_format"), "type");
    if (v && !(json_is_string(v) && strcmp(json_string_value(v), "text") == 0))
        return "structured output";
    return NULL;
}

/* Lowers the integer limit <key> by <used>; false when nothing is left. */
static bool reduce(json_t *body, const char *key, int64_t used, bool floor_zero)
{
    json_t *v = json_object_get(body, key);
    double limit;
    json_int_t left;

    if (!json_is_number(v))
        return true;
    limit = json_number_value(v); /* 5.0 is a limit of 5 too */
    if (limit <= (double)used) {
        if (!floor_zero)
            return false;
        left = 0;
    } else {
        left = limit >= 9.2e18 ? (json_int_t)9.2e18 : (json_int_t)limit - used;
    }
    json_object_set_new(body, key, json_integer(left));
    return true;
}

/* The relayed text, decoded. */
static json_t *relayed_text(const struct lx_resume *r)
{
    struct lx_buf q;
    json_t *s;

    lx_buf_init(&q, 0);
    lx_buf_append(&q, "\"", 1);
    lx_buf_append(&q, r->text.data, r->text.len);
    lx_buf_append(&q, "\"", 1);
    s = json_loadb(q.data, q.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    lx_buf_deinit(&q);
    if (s && !json_is_string(s)) {
        json_decref(s);
        return NULL;
    }
    return s;
}

/* Appends the partial answer to the request: chat as a final assistant
 * message to continue, completions to the prompt. */
static const char *append_partial(json_t *body, const struct lx_resume *r)
{
    json_t *text = relayed_text(r), *v;
    const char *why = NULL;

    if (!text)
        return "the relayed text is not valid JSON";
    if (r->chat) {
        v = json_object_get(body, "messages");
        if (!json_is_array(v)) {
            why = "messages is not an array";
        } else {
            json_array_append_new(v, json_pack("{s:s,s:O}", "role", "assistant", "content", text));
            json_object_set_new(body, "add_generation_prompt", json_false());
            json_object_set_new(body, "continue_final_message", json_true());
        }
    } else {
        v = json_object_get(body, "prompt");
        if (!json_is_string(v)) {
            why = "the prompt is not a string";
        } else {
            struct lx_buf s;

            lx_buf_init(&s, 0);
            lx_buf_append(&s, json_string_value(v), json_string_length(v));
            lx_buf_append(&s, json_string_value(text), json_string_length(text));
            json_object_set_new(body, "prompt", json_stringn(s.data, s.len));
            lx_buf_deinit(&s);
        }
    }
    json_decref(text);
    return why;
}

enum lx_resume_plan lx_resume_plan(const struct lx_resume *r, const char *body, size_t len,
                                   struct lx_buf *out, const char **why)
{
    json_t *b;
    char *s;

    *why = NULL;
    if (r->inexact) {
        *why = "tool-call or reasoning deltas, or an event or text too long";
        return LX_RESUME_NO;
    }
    if (r->finished)
        return LX_RESUME_WHOLE;
    b = json_loadb(body, len, JSON_ALLOW_NUL, NULL);
    if (!json_is_object(b)) {
        json_decref(b);
        *why = "the body is not a JSON object";
        return LX_RESUME_NO;
    }
    *why = refusal(b, r->chat);
    if (!*why && (!reduce(b, "max_tokens", r->tokens, false) ||
                  !reduce(b, "max_completion_tokens", r->tokens, false))) {
        json_decref(b);
        return LX_RESUME_WHOLE;
    }
    if (!*why) {
        reduce(b, "min_tokens", r->tokens, true);
        if (r->text.len)
            *why = append_partial(b, r);
    }
    if (*why) {
        json_decref(b);
        return LX_RESUME_NO;
    }
    s = json_dumps(b, JSON_COMPACT);
    json_decref(b);
    if (!s) {
        *why = "out of memory";
        return LX_RESUME_NO;
    }
    lx_buf_reset(out);
    lx_buf_append_str(out, s);
    free(s);
    return LX_RESUME_GO;
}

void lx_resume_start(struct lx_resume *r)
{
    r->shown = r->first.len > 0;
    if (r->shown && !r->first_json)
        r->first_json = event_json(r->first.data, r->first.len);
    r->base = r->tokens;
    r->continuations++;
}

/* Whether a chat delta says nothing once its role is removed. */
static bool delta_is_empty(json_t *delta)
{
    const char *key;
    json_t *v;

    json_object_del(delta, "role");
    json_object_foreach(delta, key, v)
    {
        if (json_is_null(v) || (json_is_string(v) && json_string_length(v) == 0) ||
            (json_is_array(v) && json_array_size(v) == 0))
            continue;
        return false;
    }
    return true;
}

/* Takes the role out of every choice's delta; true if no choice says
 * anything then (the continuation's role chunk). */
static bool strip_role(json_t *ev)
{
    json_t *choices = json_object_get(ev, "choices"), *c;
    size_t i;
    bool empty = json_array_size(choices) > 0;

    json_array_foreach(choices, i, c)
    {
        json_t *delta = json_object_get(c, "delta"), *fr = json_object_get(c, "finish_reason");

        if (!json_is_object(delta) || !delta_is_empty(delta) || (fr && !json_is_null(fr)))
            empty = false;
    }
    return empty;
}

static void shift_usage(json_t *usage, int64_t base)
{
    json_t *pt = json_object_get(usage, "prompt_tokens");
    json_t *ct = json_object_get(usage, "completion_tokens");

    if (json_is_integer(pt) && json_integer_value(pt) >= base)
        json_object_set_new(usage, "prompt_tokens", json_integer(json_integer_value(pt) - base));
    if (json_is_integer(ct) && json_integer_value(ct) >= 0 &&
        json_integer_value(ct) <= INT64_MAX - base)
        json_object_set_new(usage, "completion_tokens", json_integer(json_integer_value(ct) + base));
}

bool lx_resume_event(const struct lx_resume *r, const char *ev, size_t len, struct lx_buf *out)
{
    json_t *o, *first, *v;
    char *s;

    /* Nothing reached the client before the break (the node died after its
     * head): the continuation's own events, role delta included, are the
     * stream. */
    if (!r->shown) {
        lx_buf_append(out, ev, len);
        return true;
    }
    o = event_json(ev, len);
    first = r->first_json;
    if (!o || !first) {
        json_decref(o);
        lx_buf_append(out, ev, len);
        return true;
    }
    if ((v = json_object_get(first, "id")) != NULL)
        json_object_set(o, "id", v);
    if ((v = json_object_get(first, "created")) != NULL)
        json_object_set(o, "created", v);
    v = json_object_get(o, "usage");
    if (r->chat && strip_role(o) && (!v || json_is_null(v))) {
        json_decref(o);
        return false;
    }
    if (json_is_object(v))
        shift_usage(v, r->base);
    s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!s) {
        lx_buf_append(out, ev, len);
        return true;
    }
    lx_buf_append(out, "data: ", 6);
    lx_buf_append_str(out, s);
    lx_buf_append(out, "\n\n", 2);
    free(s);
    return true;
}

void lx_resume_usage(const struct lx_resume *r, struct lx_usage *u)
{
    if (!r->continuations)
        return;
    if (u->prompt_tokens >= r->base)
        u->prompt_tokens -= r->base;
    if (u->completion_tokens >= 0 && u->completion_tokens <= INT64_MAX - r->base)
        u->completion_tokens += r->base;
}
