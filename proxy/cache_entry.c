/*
 * cache_entry: builds, decodes and shares stored responses.
 *
 * Owns nothing beyond each entry's single allocation (struct + blob), freed
 * by the cache_entry_unref() that drops the last reference. Builds and
 * decodes copy their input; nothing here keeps a pointer to a caller's
 * bytes or buffers. Entries are immutable after construction, so any
 * thread may read them; only the reference count is written, atomically.
 * The L1 fields belong to cache.c and are merely zeroed here.
 *
 * The encoding is written and read one byte at a time (little-endian), never
 * by copying a struct, so it is the same on every host and compiler. Bytes
 * to decode come from Redis and are not trusted: besides the lengths adding
 * up, decoding checks what the proxy relies on that no length field says.
 */
#include "cache_entry.h"

#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "cache_policy.h"

#define CACHE_ENTRY_MAGIC_LEN 4
#define CACHE_ENTRY_NFIELDS   6 /* key head etag vary tags body */

_Static_assert(sizeof(CACHE_ENTRY_MAGIC) - 1 == CACHE_ENTRY_MAGIC_LEN, "magic is 4 bytes");
_Static_assert(CACHE_ENTRY_FIXED_SIZE == 4 + 1 + 1 + 2 + 4 + 6 * 8 + 5 * 4 + 8,
               "fixed part as documented in cache_entry.h");

/* ------------------------------------------------------------ encoding */

static unsigned char *put_u16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)(v & 0xff);
    p[1] = (unsigned char)(v >> 8);
    return p + 2;
}

static unsigned char *put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
    return p + 4;
}

static unsigned char *put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
    return p + 8;
}

static uint16_t get_u16(const unsigned char *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t get_u32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* Points the view's fields into the blob, which must already hold a valid
 * encoding whose lengths were checked. */
static void entry_set_view(struct cache_entry *e)
{
    const unsigned char *p = (const unsigned char *)e->blob;

    e->kind = p[4];
    e->status = get_u16(p + 6);
    e->flags = get_u32(p + 8);
    e->response_ms = (int64_t)get_u64(p + 12);
    e->initial_age_ms = (int64_t)get_u64(p + 20);
    e->freshness_ms = (int64_t)get_u64(p + 28);
    e->swr_ms = (int64_t)get_u64(p + 36);
    e->sie_ms = (int64_t)get_u64(p + 44);
    e->last_modified_ms = (int64_t)get_u64(p + 52);
    e->key_len = get_u32(p + 60);
    e->head_len = get_u32(p + 64);
    e->etag_len = get_u32(p + 68);
    e->vary_len = get_u32(p + 72);
    e->tags_len = get_u32(p + 76);
    e->body_len = get_u64(p + 80);

    const char *v = e->blob + CACHE_ENTRY_FIXED_SIZE;
    e->key = v;
    v += e->key_len;
    e->head = v;
    v += e->head_len;
    e->etag = v;
    v += e->etag_len;
    e->vary = v;
    v += e->vary_len;
    e->tags = v;
    v += e->tags_len;
    e->body = v;

    e->l1_next = NULL;
    e->lru_prev = NULL;
    e->lru_next = NULL;
    e->l1_hash = 0;
    e->l1_expires_ms = 0;
}

/* One allocation for the struct and a blob of <blob_len> bytes; the caller
 * fills the blob. Freed by cache_entry_unref(). */
static struct cache_entry *entry_alloc(size_t blob_len)
{
    if (blob_len > SIZE_MAX - sizeof(struct cache_entry))
        return NULL;
    struct cache_entry *e = malloc(sizeof(*e) + blob_len); /* freed in cache_entry_unref() */
    if (e == NULL)
        return NULL;
    memset(e, 0, sizeof(*e));
    e->refs = 1;
    e->blob = (const char *)(e + 1);
    e->blob_len = blob_len;
    return e;
}

struct cache_entry *cache_entry_build(const struct cache_entry_parts *p)
{
    size_t body_len = p->body_buf != NULL ? evbuffer_get_length(p->body_buf) : p->body_len;
    const size_t var[CACHE_ENTRY_NFIELDS - 1] = {p->key_len, p->head_len, p->etag_len, p->vary_len,
                                                 p->tags_len};
    size_t total = CACHE_ENTRY_FIXED_SIZE;

    for (int i = 0; i < CACHE_ENTRY_NFIELDS - 1; i++) {
        if (var[i] > UINT32_MAX)
            return NULL;
        total += var[i]; /* at most 5 * 4 GiB: no overflow on 64-bit size_t */
    }
    if (body_len > SIZE_MAX - total)
        return NULL;
    total += body_len;

    struct cache_entry *e = entry_alloc(total);
    if (e == NULL)
        return NULL;

    unsigned char *w = (unsigned char *)(e + 1);
    memcpy(w, CACHE_ENTRY_MAGIC, CACHE_ENTRY_MAGIC_LEN);
    w += CACHE_ENTRY_MAGIC_LEN;
    *w++ = p->kind;
    *w++ = 0; /* pad */
    w = put_u16(w, p->status);
    w = put_u32(w, p->flags);
    w = put_u64(w, (uint64_t)p->response_ms);
    w = put_u64(w, (uint64_t)p->initial_age_ms);
    w = put_u64(w, (uint64_t)p->freshness_ms);
    w = put_u64(w, (uint64_t)p->swr_ms);
    w = put_u64(w, (uint64_t)p->sie_ms);
    w = put_u64(w, (uint64_t)p->last_modified_ms);
    for (int i = 0; i < CACHE_ENTRY_NFIELDS - 1; i++)
        w = put_u32(w, (uint32_t)var[i]);
    w = put_u64(w, (uint64_t)body_len);

    const char *src[CACHE_ENTRY_NFIELDS - 1] = {p->key, p->head, p->etag, p->vary, p->tags};
    for (int i = 0; i < CACHE_ENTRY_NFIELDS - 1; i++) {
        if (var[i] > 0)
            memcpy(w, src[i], var[i]);
        w += var[i];
    }
    if (body_len > 0) {
        if (p->body_buf != NULL) {
            if (evbuffer_copyout(p->body_buf, w, body_len) != (ev_ssize_t)body_len) {
                free(e);
                return NULL;
            }
        } else {
            memcpy(w, p->body, body_len);
        }
    }
    entry_set_view(e);
    return e;
}

struct cache_entry_parts cache_entry_parts_of(const struct cache_entry *e)
{
    return (struct cache_entry_parts){
        .kind = e->kind,
        .status = e->status,
        .flags = e->flags,
        .response_ms = e->response_ms,
        .initial_age_ms = e->initial_age_ms,
        .freshness_ms = e->freshness_ms,
        .swr_ms = e->swr_ms,
        .sie_ms = e->sie_ms,
        .last_modified_ms = e->last_modified_ms,
        .key = e->key,
        .key_len = e->key_len,
        .head = e->head,
        .head_len = e->head_len,
        .etag = e->etag,
        .etag_len = e->etag_len,
        .vary = e->vary,
        .vary_len = e->vary_len,
        .tags = e->tags,
        .tags_len = e->tags_len,
        .body = e->body,
        .body_len = (size_t)e->body_len,
    };
}

struct cache_entry *cache_entry_decode(const void *data, size_t len)
{
    const unsigned char *p = data;

    if (data == NULL || len < CACHE_ENTRY_FIXED_SIZE)
        return NULL;
    if (memcmp(p, CACHE_ENTRY_MAGIC, CACHE_ENTRY_MAGIC_LEN) != 0)
        return NULL;
    if (p[4] != CACHE_ENTRY_RESPONSE && p[4] != CACHE_ENTRY_VARY)
        return NULL;
    if (p[5] != 0)
        return NULL;

    /* five u32 lengths cannot overflow a u64 sum */
    uint64_t var = 0;
    for (int i = 0; i < CACHE_ENTRY_NFIELDS - 1; i++)
        var += get_u32(p + 60 + 4 * i);
    uint64_t body_len = get_u64(p + 80);
    uint64_t room = (uint64_t)(len - CACHE_ENTRY_FIXED_SIZE);
    if (var > room || body_len != room - var)
        return NULL;
    /* the proxy never stores longer Vary names (cache_policy_vary_names()
     * stops at CACHE_POLICY_VARY_MAX), and conn.c copies a stored entry's
     * into an array of that size when a 304 refreshes it */
    if (get_u32(p + 72) > CACHE_POLICY_VARY_MAX)
        return NULL;
    /* the six times (response, age, lifetime, windows, Last-Modified) are
     * added and subtracted by the policy and conn.c: kept within bounds */
    for (int i = 0; i < 6; i++) {
        int64_t t = (int64_t)get_u64(p + 12 + 8 * i);
        if (t > CACHE_ENTRY_TIME_MAX || t < -CACHE_ENTRY_TIME_MAX)
            return NULL;
    }

    struct cache_entry *e = entry_alloc(len);
    if (e == NULL)
        return NULL;
    memcpy(e + 1, data, len);
    entry_set_view(e);
    return e;
}

/* ------------------------------------------------------------ sharing */

struct cache_entry *cache_entry_ref(struct cache_entry *e)
{
    __atomic_add_fetch(&e->refs, 1, __ATOMIC_ACQ_REL);
    return e;
}

void cache_entry_unref(struct cache_entry *e)
{
    if (e == NULL)
        return;
    if (__atomic_sub_fetch(&e->refs, 1, __ATOMIC_ACQ_REL) == 0)
        free(e);
}

bool cache_entry_key_equals(const struct cache_entry *e, const char *key, size_t len)
{
    return e->key_len == len && (len == 0 || memcmp(e->key, key, len) == 0);
}

/* The buffer has sent (or dropped) the body: its reference goes. */
static void cache_entry_on_body_done(const void *data, size_t len, void *arg)
{
    (void)data;
    (void)len;
    cache_entry_unref(arg);
}

int cache_entry_add_body(struct cache_entry *e, struct evbuffer *out)
{
    return cache_entry_add_body_from(e, 0, out);
}

int cache_entry_add_body_from(struct cache_entry *e, size_t from, struct evbuffer *out)
{
    if (from >= e->body_len)
        return 0;
    cache_entry_ref(e); /* dropped by cache_entry_on_body_done() */
    if (evbuffer_add_reference(out, e->body + from, (size_t)e->body_len - from,
                               cache_entry_on_body_done, e) == -1) {
        /* libevent does not call the cleanup when it fails */
        cache_entry_unref(e);
        return -1;
    }
    return 0;
}

size_t cache_entry_size(const struct cache_entry *e)
{
    return sizeof(*e) + e->blob_len;
}
