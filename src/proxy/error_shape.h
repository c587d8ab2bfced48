/*
 * error_shape.h - a node's error answer in the shape the OpenAI SDKs read:
 *
 *     {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}
 *
 * vLLM answers errors with these fields at the top level
 * ({"object": "error", "message": ...}), FastAPI with {"detail": ...}, and a
 * proxy in front of a node with plain text or an HTML page; the SDKs read
 * only error.message, so a context-length error would reach the user as
 * "400 status code (no body)". The node's message, type, param and code are
 * kept; a text or HTML body becomes the message (tags stripped, bounded).
 * A body already in OpenAI's shape passes unchanged.
 *
 * Only answers with a status >= 400 are looked at, once, whole (bounded by
 * LX_ERROR_BODY_MAX): the cost is an error's, never a success's.
 */
#ifndef LX_ERROR_SHAPE_H
#define LX_ERROR_SHAPE_H

#include <stdbool.h>
#include <stddef.h>

#include "../core/buf.h"

#define LX_ERROR_BODY_MAX (64 * 1024) /* longer error bodies pass unchanged */
#define LX_ERROR_MESSAGE_MAX 1024     /* bytes of a text or HTML body kept as the message */

/* Writes the OpenAI-shaped body of the node's error answer (<status>, its
 * body) to <out> and returns true; false when the body is already in
 * OpenAI's shape and goes unchanged. */
bool lx_error_shape(int status, const char *body, size_t len, struct lx_buf *out);

#endif /* LX_ERROR_SHAPE_H */
