/*
 * cache_entry: one stored response, as the bytes that go to Redis and a
 * parsed view over them.
 *
 * An entry is one allocation: the struct, then its encoding (the "blob"),
 * into which every pointer of the view points. The same blob is what
 * store_redis writes, so an entry is encoded once and never re-encoded; an
 * entry read from Redis is one copy of the reply, checked field by field.
 * Immutable once built; shared by an atomic reference count between the L1
 * store, requests being answered from it (an evbuffer reference holds one
 * until the body is sent) and pending Redis writes. Any thread.
 *
 * Encoding (version 1, integers little-endian):
 *   "CGE1" kind:u8 pad:u8 status:u16 flags:u32
 *   response_ms initial_age_ms freshness_ms swr_ms sie_ms last_modified_ms: i64 each
 *   key_len head_len etag_len vary_len tags_len: u32 each, body_len: u64
 *   key head etag vary tags body (the bytes, in that order)
 */
#ifndef CLONEGATE_CACHE_ENTRY_H
#define CLONEGATE_CACHE_ENTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct evbuffer;

#define CACHE_ENTRY_MAGIC      "CGE1"
#define CACHE_ENTRY_FIXED_SIZE 88 /* bytes before the variable fields */
/* ms: a time or duration further from 0 is refused when decoded (the
 * policy writes at most about 2^48: dates to the year 9999, lifetimes of
 * 2^31 s), so that sums of a few never overflow */
#define CACHE_ENTRY_TIME_MAX ((int64_t)1 << 52)

enum cache_entry_kind {
    CACHE_ENTRY_RESPONSE = 1, /* a stored response */
    CACHE_ENTRY_VARY = 2,     /* a URL's Vary record: names the headers its variants differ by */
    CACHE_ENTRY_PASS = 3,     /* L1 only, never encoded for Redis: the URL's last response was
                                 not storable, so requests for it go straight to a clone */
};

enum cache_entry_flag {
    CACHE_ENTRY_MUST_REVALIDATE = 1 << 0, /* never served stale */
    CACHE_ENTRY_NO_CACHE = 1 << 1,        /* validated before every use */
    CACHE_ENTRY_HEURISTIC = 1 << 2,       /* freshness was not stated by the clone */
};

struct cache_entry {
    int refs;                 /* atomic; cache_entry_unref() frees at zero */
    uint8_t kind;             /* enum cache_entry_kind */
    uint16_t status;          /* response status */
    uint32_t flags;           /* enum cache_entry_flag bits */
    int64_t response_ms;      /* when the response (or its last validation) arrived, epoch ms */
    int64_t initial_age_ms;   /* corrected initial age at response_ms */
    int64_t freshness_ms;     /* freshness lifetime */
    int64_t swr_ms;           /* stale-while-revalidate window */
    int64_t sie_ms;           /* stale-if-error window */
    int64_t last_modified_ms; /* Last-Modified, -1 none */
    const char *key;          /* full key text (the variant's for a variant); in the blob */
    uint32_t key_len;
    const char *head; /* header lines "Name: value\r\n" to replay; in the blob */
    uint32_t head_len;
    const char *etag; /* ETag value as sent, "" none; in the blob */
    uint32_t etag_len;
    const char *vary; /* Vary names (cache_policy_vary_names), "" none; in the blob */
    uint32_t vary_len;
    const char *tags; /* purge tags, space-separated, "" none; in the blob */
    uint32_t tags_len;
    const char *body; /* the decoded payload; in the blob */
    uint64_t body_len;
    const char *blob; /* the whole encoding, right after this struct */
    size_t blob_len;

    /* L1 bookkeeping, owned by cache.c under its shard lock */
    struct cache_entry *l1_next;  /* hash chain */
    struct cache_entry *lru_prev; /* LRU list */
    struct cache_entry *lru_next;
    uint64_t l1_hash;      /* hash of the key text */
    int64_t l1_expires_ms; /* drop after this: freshness + stale windows */
};

/* What an entry is built from; strings need not be NUL-terminated. */
struct cache_entry_parts {
    uint8_t kind;
    uint16_t status;
    uint32_t flags;
    int64_t response_ms, initial_age_ms, freshness_ms, swr_ms, sie_ms, last_modified_ms;
    const char *key;
    size_t key_len;
    const char *head;
    size_t head_len;
    const char *etag;
    size_t etag_len;
    const char *vary;
    size_t vary_len;
    const char *tags;
    size_t tags_len;
    const char *body; /* the body as bytes ... */
    size_t body_len;
    struct evbuffer *body_buf; /* ... or from this buffer (copied, not drained); wins if set */
};

/* Builds an entry (one reference, the caller's) from <p>; NULL when out of
 * memory or a field is too long for its length field. */
struct cache_entry *cache_entry_build(const struct cache_entry_parts *p)
    __attribute__((warn_unused_result));

/* The parts that build <e> again (its body as bytes, pointing into <e>,
 * which must outlive them). */
struct cache_entry_parts cache_entry_parts_of(const struct cache_entry *e);

/* Decodes <len> bytes at <data> (from Redis) into a new entry (one
 * reference, the caller's); the bytes are copied. NULL when they are not a
 * well-formed version-1 entry (wrong magic, lengths that do not add up). */
struct cache_entry *cache_entry_decode(const void *data, size_t len)
    __attribute__((warn_unused_result));

/* Takes one more reference and returns <e>. */
struct cache_entry *cache_entry_ref(struct cache_entry *e);

/* Drops one reference; frees at zero. NULL is ignored. */
void cache_entry_unref(struct cache_entry *e);

/* Whether <e> was stored under exactly the key text <key>[0..<len>). */
bool cache_entry_key_equals(const struct cache_entry *e, const char *key, size_t len);

/* Appends <e>'s body to <out> without copying it (evbuffer_add_reference);
 * the buffer holds a reference until the bytes are sent. 0 or -1. */
int cache_entry_add_body(struct cache_entry *e, struct evbuffer *out);

/* As cache_entry_add_body(), from byte <from> of the body on. */
int cache_entry_add_body_from(struct cache_entry *e, size_t from, struct evbuffer *out);

/* Bytes of memory <e> takes (struct and blob): what L1 charges for it. */
size_t cache_entry_size(const struct cache_entry *e);

#endif /* CLONEGATE_CACHE_ENTRY_H */
