/*
 * fuzz_common: checks the fuzz targets share. Included by each target
 * (static inline functions, each target using what it needs; no globals),
 * so a target still links alone.
 */
#ifndef CLONEGATE_FUZZ_COMMON_H
#define CLONEGATE_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* A copy of <buf>[0..<len>) in a block of exactly <len> bytes; caller frees. */
static inline char *exact_copy(const char *buf, size_t len)
{
    char *p = malloc(len ? len : 1);

    CHECK(p != NULL);
    memcpy(p, buf, len);
    return p;
}

static inline void check_span(const struct http_head *h, struct http_span s)
{
    CHECK((uint64_t)s.off + s.len <= h->head_len);
}

/* Whether <e> is a size limit tripping, which a parse may see on a partial
 * element before another parse of the same bytes sees a bad byte after it:
 * the same bytes, split elsewhere, may then be refused for the other reason
 * (fuzz finding, reported; both are refusals). */
static inline int is_limit(enum http_error e)
{
    return e == HTTP_ERR_URI_TOO_LONG || e == HTTP_ERR_HEAD_TOO_LARGE;
}

/* Whether the head in <out> (<len> bytes) has a field named <name>. */
static inline int has_field(const char *out, size_t len, const char *name, size_t name_len)
{
    const char *line = memchr(out, '\n', len);

    while (line && (size_t)(line + 1 - out) < len) {
        line++;
        size_t left = len - (size_t)(line - out);
        if (left > name_len && line[name_len] == ':' && strncasecmp(line, name, name_len) == 0)
            return 1;
        line = memchr(line, '\n', left);
    }
    return 0;
}

#endif /* CLONEGATE_FUZZ_COMMON_H */
