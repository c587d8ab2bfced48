/*
 * note_cost.c - what stream resume costs a relayed event that is never
 * resumed: lx_sse_feed over a typical vLLM token event, without and with
 * lx_resume_note hooked (make bench-resume). Prints ns per event, the
 * median of 7 runs of each, alternated.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../src/http/sse.h"
#include "../../src/proxy/resume.h"

#define EVENTS 2000  /* a stream's events */
#define STREAMS 300
#define RUNS 7

static size_t sink;

static void out(void *ctx, const char *p, size_t len)
{
    sink += len;
}

static void note(void *ctx, const char *ev, size_t len)
{
    lx_resume_note(ctx, ev, len);
}

static double now(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double one_run(const char *ev, size_t n, int with_note)
{
    double t0 = now();

    for (int s = 0; s < STREAMS; s++) {
        struct lx_sse sse;
        struct lx_resume r;

        lx_sse_init(&sse, false);
        lx_resume_init(&r, true);
        if (with_note) {
            sse.on_choices = note;
            sse.choices_ctx = &r;
        }
        for (int e = 0; e < EVENTS; e++)
            lx_sse_feed(&sse, ev, n, out, NULL);
        lx_resume_deinit(&r);
        lx_sse_deinit(&sse);
    }
    return (now() - t0) / EVENTS / STREAMS * 1e9;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

int main(void)
{
    char ev[512];
    int n = snprintf(ev, sizeof(ev),
                     "data: {\"id\":\"chatcmpl-8f1c2d3e4b5a69788796a5b4c3d2e1f0\","
                     "\"object\":\"chat.completion.chunk\",\"created\":1718000000,"
                     "\"model\":\"meta-llama/Llama-3.1-8B-Instruct\",\"choices\":[{\"index\":0,"
                     "\"delta\":{\"content\":\" token\"},\"logprobs\":null,"
                     "\"finish_reason\":null}]}\n\n");
    double t[2][RUNS];

    for (int i = 0; i < RUNS; i++)
        for (int mode = 0; mode < 2; mode++)
            t[mode][i] = one_run(ev, (size_t)n, mode);
    qsort(t[0], RUNS, sizeof(double), cmp);
    qsort(t[1], RUNS, sizeof(double), cmp);
    printf("a %d-byte token event through the SSE scanner: %.0f ns without resume's noting, "
           "%.0f ns with it (+%.0f ns), median of %d\n",
           n, t[0][RUNS / 2], t[1][RUNS / 2], t[1][RUNS / 2] - t[0][RUNS / 2], RUNS);
    return sink == 0;
}
