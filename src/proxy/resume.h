/*
 * resume.h - stream resume: a streamed chat or completion whose node fails
 * after the response started is continued by another node, and the client
 * sees one stream.
 *
 * While a stream is relayed, lx_resume_note() keeps what a continuation
 * needs: the text relayed so far (JSON-escaped, as it came), the first
 * event (its id and created), and how many content deltas were relayed
 * (tokens: vLLM streams one token an event). lx_resume_body() writes the
 * request that asks a node to go on from there, as vLLM serves it: chat gets
 * the partial answer as a final assistant message with
 * "continue_final_message": true and "add_generation_prompt": false;
 * completions get the partial text appended to the prompt; max_tokens (and
 * max_completion_tokens, min_tokens) are reduced by the tokens relayed.
 * lx_resume_event() makes each event of the continuation follow on: the
 * first part's id and created, no second role delta, and usage as the
 * unbroken answer would have counted it (the continuation's prompt counted
 * the relayed tokens as prompt).
 *
 * Exactness needs one choice and plain text: a request with n > 1, best_of,
 * logprobs, echo, structured output (a grammar would start over on the
 * continuation), a non-string prompt or its own continue_final_message, or
 * a stream that relayed tool-call or reasoning deltas, is not resumed.
 *
 * Noting is on the relay's path (a few searches an event, no allocation
 * beyond the text); building the body and rewriting the continuation's
 * events parse JSON, which only a resumed stream pays.
 */
#ifndef LX_RESUME_H
#define LX_RESUME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/buf.h"
#include "../http/sse.h"

#define LX_RESUME_TEXT_MAX (1024 * 1024) /* more relayed text: not resumable */

struct lx_resume {
    bool chat;                 /* a chat completion (else a text completion) */
    bool inexact;              /* relayed something a continuation cannot reproduce */
    bool finished;             /* a finish_reason was relayed: the answer is whole */
    struct lx_buf text;        /* the relayed text, JSON-escaped */
    struct lx_buf first;       /* the first event with choices, raw */
    int64_t tokens;            /* content deltas relayed */
    int64_t base;              /* tokens relayed before the current continuation */
    int continuations;         /* continuations started */
    bool shown;                /* the client had an event when the continuation started:
                                  its events follow on; else they stand as they come */
    void *first_json;          /* the first event parsed, once a continuation started */
};

void lx_resume_init(struct lx_resume *r, bool chat);
void lx_resume_deinit(struct lx_resume *r);
/* Forgets what was noted: the attempt it came from was taken back. */
void lx_resume_reset(struct lx_resume *r);

/* Notes one relayed event (a whole SSE event, its blank line included). */
void lx_resume_note(struct lx_resume *r, const char *ev, size_t len);

enum lx_resume_plan {
    LX_RESUME_GO,       /* <out> holds the continuation's body */
    LX_RESUME_WHOLE,    /* nothing is left to generate: end the stream as it is */
    LX_RESUME_NO,       /* cannot be resumed exactly (*why says why) */
};

/* The continuation of <body> (the body the failed node was sent). */
enum lx_resume_plan lx_resume_plan(const struct lx_resume *r, const char *body, size_t len,
                                   struct lx_buf *out, const char **why);
/* A continuation planned is sent: its events count from here. */
void lx_resume_start(struct lx_resume *r);

/* Rewrites one event of a continuation for the client, appending it to
 * <out>; false when the event is left out (a role-only delta). */
bool lx_resume_event(const struct lx_resume *r, const char *ev, size_t len, struct lx_buf *out);

/* Usage read from a continuation's events, as the unbroken answer counts it. */
void lx_resume_usage(const struct lx_resume *r, struct lx_usage *u);

#endif /* LX_RESUME_H */
