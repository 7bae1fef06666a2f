/*
 * cache: the L1 store (sharded hash tables with LRU lists, bounded by
 * cache.memory) and the coalescing of misses (fills, waiters, mailboxes).
 *
 * Owns: its shards and the reference each stored entry holds; its fills
 * (freed by cache_fill_end()); the mailboxes' events. Borrows: waiters,
 * embedded in connections, which take themselves out (cache_waiter_cancel)
 * before they go. Shard mutexes are held only for table work, never for
 * I/O or a callback; the coalescing mutex likewise. Any thread.
 */
#include "cache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "cache_entry.h"
#include "log.h"

#define SHARD_BUCKETS_MIN 256 /* initial buckets per shard */
/* A shard's budget with cache.memory = 0: "not storable" markers only */
#define CACHE_MARKER_BUDGET (64u * 1024u)
#define SHARD_BUCKETS_MAX   (1 << 20)
#define FILL_BUCKETS        256  /* fills in progress, hashed */
#define CACHE_GEN_SLOTS     1024 /* URL purge counters, by URL hash */
#define REFRESH_SLOTS       1024 /* background refresh claims, by key hash */
#define STAT_SET(f, v)      __atomic_store_n(&(f), (v), __ATOMIC_RELAXED)
#define STAT_ADD(f, n)      __atomic_add_fetch(&(f), (n), __ATOMIC_RELAXED)

struct shard {
    pthread_mutex_t lock;
    struct cache_entry **buckets; /* owned array; chains through l1_next */
    size_t nbuckets;              /* a power of two */
    size_t count;                 /* entries */
    size_t bytes;                 /* charged memory */
    size_t budget;                /* bytes this shard may hold */
    struct cache_entry *lru_head; /* most recently used */
    struct cache_entry *lru_tail; /* next to evict */
} __attribute__((aligned(64)));

struct cache_fill {
    struct cache_fill *next; /* hash chain in cache.fills */
    uint64_t hash;           /* of the key */
    char *key;               /* owned copy, freed with the fill */
    size_t len;
    TAILQ_HEAD(, cache_waiter) waiters; /* queued requests */
};

TAILQ_HEAD(cache_waiter_list, cache_waiter);

struct cache_mailbox {
    struct cache *c;        /* borrowed */
    cache_notify_fn notify; /* wakes the worker */
    void *notify_arg;
    struct cache_waiter_list waiters; /* woken, not yet told; under c->wait_lock */
};

struct cache {
    struct shard shards[CACHE_SHARDS];
    size_t memory;                          /* total budget */
    uint64_t evictions, expired;            /* atomic counters */
    uint64_t purge_gen;                     /* atomic: purges seen that select by content */
    uint64_t url_gen[CACHE_GEN_SLOTS];      /* atomic: URL purges seen, by URL hash */
    pthread_mutex_t wait_lock;              /* fills, their waiters, mailboxes */
    struct cache_fill *fills[FILL_BUCKETS]; /* under wait_lock */
    uint64_t waiting;                       /* atomic gauge: queued waiters */
    pthread_mutex_t refresh_lock;           /* guards the two arrays below */
    uint64_t refresh_hash[REFRESH_SLOTS];   /* key hash claimed in each slot */
    int64_t refresh_until[REFRESH_SLOTS];   /* ms the claim holds until; 0 none */
};

/* ------------------------------------------------------------ helpers */

uint64_t cache_hash(const char *key, size_t len)
{
    /* FNV-1a, then a final mix so the shard bits (the top ones) spread */
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)key[i];
        h *= 0x100000001b3ULL;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h;
}

static struct shard *shard_of(struct cache *c, uint64_t h)
{
    return &c->shards[h >> 60 & (CACHE_SHARDS - 1)];
}

/* SHA-256 fetched from its provider once: EVP_sha256() makes every digest
 * fetch it again, which cost more than the hashing. Process lifetime. */
static EVP_MD *sha256_fetched;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void sha256_fetch(void)
{
    sha256_fetched = EVP_MD_fetch(NULL, "SHA256", NULL);
}

size_t cache_redis_key(const char *kind, const char *key, size_t len, char *out)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    size_t n = 0;

    pthread_once(&sha256_once, sha256_fetch);
    const EVP_MD *sha256 = sha256_fetched ? sha256_fetched : EVP_sha256();
    if (EVP_Digest(key, len, md, &mdlen, sha256, NULL) != 1)
        mdlen = 0; /* cannot happen with the built-in digest; gives a fixed key */
    memcpy(out, CACHE_REDIS_PREFIX, sizeof(CACHE_REDIS_PREFIX) - 1);
    n = sizeof(CACHE_REDIS_PREFIX) - 1;
    size_t klen = strlen(kind);
    memcpy(out + n, kind, klen);
    n += klen;
    for (unsigned i = 0; i < mdlen && i < 32; i++) {
        out[n++] = hex[md[i] >> 4];
        out[n++] = hex[md[i] & 15];
    }
    out[n] = '\0';
    return n;
}

/* ------------------------------------------------------------ L1 */

struct cache *cache_new(size_t memory)
{
    struct cache *c = calloc(1, sizeof(*c)); /* freed by cache_free() */
    if (!c)
        return NULL;
    c->memory = memory;
    pthread_mutex_init(&c->wait_lock, NULL);
    pthread_mutex_init(&c->refresh_lock, NULL);
    for (unsigned i = 0; i < CACHE_SHARDS; i++) {
        struct shard *s = &c->shards[i];
        pthread_mutex_init(&s->lock, NULL);
        /* without L1, the markers of URLs not worth storing still live here */
        s->budget = memory ? memory / CACHE_SHARDS : CACHE_MARKER_BUDGET;
        s->nbuckets = SHARD_BUCKETS_MIN;
        s->buckets = calloc(s->nbuckets, sizeof(*s->buckets)); /* freed by cache_free() */
        if (!s->buckets) {
            cache_free(c);
            return NULL;
        }
    }
    return c;
}

void cache_free(struct cache *c)
{
    if (!c)
        return;
    for (unsigned i = 0; i < CACHE_SHARDS; i++) {
        struct shard *s = &c->shards[i];
        struct cache_entry *e = s->lru_head, *next;
        for (; e; e = next) {
            next = e->lru_next;
            cache_entry_unref(e);
        }
        free(s->buckets);
        pthread_mutex_destroy(&s->lock);
    }
    for (unsigned i = 0; i < FILL_BUCKETS; i++) {
        struct cache_fill *f = c->fills[i], *next;
        for (; f; f = next) {
            next = f->next;
            free(f->key);
            free(f);
        }
    }
    pthread_mutex_destroy(&c->wait_lock);
    pthread_mutex_destroy(&c->refresh_lock);
    free(c);
}

static void lru_unlink(struct shard *s, struct cache_entry *e)
{
    if (e->lru_prev)
        e->lru_prev->lru_next = e->lru_next;
    else
        s->lru_head = e->lru_next;
    if (e->lru_next)
        e->lru_next->lru_prev = e->lru_prev;
    else
        s->lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
}

static void lru_push_front(struct shard *s, struct cache_entry *e)
{
    e->lru_prev = NULL;
    e->lru_next = s->lru_head;
    if (s->lru_head)
        s->lru_head->lru_prev = e;
    s->lru_head = e;
    if (!s->lru_tail)
        s->lru_tail = e;
}

/* Unlinks <e> (found at *<slot> in its chain) and drops the shard's
 * reference. Shard locked. */
static void shard_drop(struct shard *s, struct cache_entry **slot, struct cache_entry *e)
{
    *slot = e->l1_next;
    e->l1_next = NULL;
    lru_unlink(s, e);
    s->count--;
    s->bytes -= cache_entry_size(e);
    cache_entry_unref(e);
}

static struct cache_entry **find_slot(struct shard *s, uint64_t h, struct cache_entry *e)
{
    struct cache_entry **slot = &s->buckets[h & (s->nbuckets - 1)];
    while (*slot && *slot != e)
        slot = &(*slot)->l1_next;
    return slot;
}

static void shard_grow(struct shard *s)
{
    size_t n = s->nbuckets * 2;
    struct cache_entry **b = calloc(n, sizeof(*b)); /* replaces s->buckets, freed with the shard */
    if (!b)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < s->nbuckets; i++) {
        struct cache_entry *e = s->buckets[i], *next;
        for (; e; e = next) {
            next = e->l1_next;
            size_t j = e->l1_hash & (n - 1);
            e->l1_next = b[j];
            b[j] = e;
        }
    }
    free(s->buckets);
    s->buckets = b;
    s->nbuckets = n;
}

struct cache_entry *cache_get(struct cache *c, uint64_t url_hash, const char *key, size_t len,
                              int64_t now_ms)
{
    struct shard *s = shard_of(c, url_hash);
    struct cache_entry *found = NULL;

    if (!s->buckets)
        return NULL;
    pthread_mutex_lock(&s->lock);
    struct cache_entry **slot = &s->buckets[url_hash & (s->nbuckets - 1)];
    for (struct cache_entry *e; (e = *slot) != NULL; slot = &e->l1_next) {
        if (e->l1_hash != url_hash || !cache_entry_key_equals(e, key, len))
            continue;
        if (e->l1_expires_ms <= now_ms) {
            shard_drop(s, slot, e);
            STAT_ADD(c->expired, 1);
            break;
        }
        if (s->lru_head != e) {
            lru_unlink(s, e);
            lru_push_front(s, e);
        }
        found = cache_entry_ref(e);
        break;
    }
    pthread_mutex_unlock(&s->lock);
    return found;
}

/* cache_put(), and when <longer>, cache_put_longer(). */
static bool put(struct cache *c, uint64_t url_hash, struct cache_entry *e, int64_t expires_ms,
                bool longer)
{
    struct shard *s = shard_of(c, url_hash);
    size_t size = cache_entry_size(e);

    if (!s->buckets)
        return false;
    /* too big for this tier, or only markers kept (memory = 0): refused,
     * but an older entry under the key (a PASS marker from when the URL
     * was not storable) still goes, or it would outlive the new answer */
    bool refused = size > s->budget / 2 || (c->memory == 0 && e->kind != CACHE_ENTRY_PASS);
    pthread_mutex_lock(&s->lock);
    /* the old entry under the same key goes */
    struct cache_entry **slot = &s->buckets[url_hash & (s->nbuckets - 1)];
    for (struct cache_entry *o; (o = *slot) != NULL; slot = &o->l1_next) {
        if (o->l1_hash == url_hash && cache_entry_key_equals(o, e->key, e->key_len)) {
            /* a marker the record replaces lends it nothing */
            if (longer && o->kind == e->kind && o->l1_expires_ms > expires_ms)
                expires_ms = o->l1_expires_ms;
            shard_drop(s, slot, o);
            break;
        }
    }
    if (refused) {
        pthread_mutex_unlock(&s->lock);
        return false;
    }
    while (s->bytes + size > s->budget && s->lru_tail) {
        struct cache_entry *victim = s->lru_tail;
        shard_drop(s, find_slot(s, victim->l1_hash, victim), victim);
        STAT_ADD(c->evictions, 1);
    }
    if (s->count >= s->nbuckets && s->nbuckets < SHARD_BUCKETS_MAX)
        shard_grow(s);
    e->l1_hash = url_hash;
    e->l1_expires_ms = expires_ms;
    cache_entry_ref(e);
    size_t b = url_hash & (s->nbuckets - 1);
    e->l1_next = s->buckets[b];
    s->buckets[b] = e;
    lru_push_front(s, e);
    s->count++;
    s->bytes += size;
    pthread_mutex_unlock(&s->lock);
    return true;
}

bool cache_put(struct cache *c, uint64_t url_hash, struct cache_entry *e, int64_t expires_ms)
{
    return put(c, url_hash, e, expires_ms, false);
}

bool cache_put_longer(struct cache *c, uint64_t url_hash, struct cache_entry *e, int64_t expires_ms)
{
    return put(c, url_hash, e, expires_ms, true);
}

/* Whether <e>'s key is <url> or a variant of it. */
static bool key_of_url(const struct cache_entry *e, const char *url, size_t len)
{
    return e->key_len >= len && memcmp(e->key, url, len) == 0 &&
           (e->key_len == len || e->key[len] == '\n');
}

/* Whether the space-separated tag list of <e> holds <tag>. */
static bool has_tag(const struct cache_entry *e, const char *tag, size_t len)
{
    const char *p = e->tags, *end = e->tags + e->tags_len;
    while (p < end) {
        while (p < end && (*p == ' ' || *p == ','))
            p++;
        const char *start = p;
        while (p < end && *p != ' ' && *p != ',')
            p++;
        if ((size_t)(p - start) == len && len > 0 && memcmp(start, tag, len) == 0)
            return true;
    }
    return false;
}

static bool purge_selects(const struct cache_entry *e, enum cache_purge_kind kind, const char *arg,
                          size_t len)
{
    switch (kind) {
    case CACHE_PURGE_URL:
        return key_of_url(e, arg, len);
    case CACHE_PURGE_PREFIX:
        if (len > 0 && arg[0] == '/') {
            /* a path prefix, on any host: compare from the key's path */
            const char *sep = memchr(e->key, ':', e->key_len);
            size_t from = sep ? (size_t)(sep - e->key) + 3 : e->key_len;
            const char *path =
                from < e->key_len ? memchr(e->key + from, '/', e->key_len - from) : NULL;
            size_t left = path ? e->key_len - (size_t)(path - e->key) : 0;
            return path && left >= len && memcmp(path, arg, len) == 0;
        }
        return e->key_len >= len && memcmp(e->key, arg, len) == 0;
    case CACHE_PURGE_TAG:
        return has_tag(e, arg, len);
    case CACHE_PURGE_ALL:
        return true;
    }
    return false;
}

/* A copy of <e> that is stale at once; NULL when out of memory. */
static struct cache_entry *stale_copy(const struct cache_entry *e)
{
    struct cache_entry_parts p = cache_entry_parts_of(e);
    p.freshness_ms = 0;
    return cache_entry_build(&p);
}

/* Purges what <slot> points at, if selected; returns whether it moved on
 * (*<slot> now holds the next entry). Shard locked. */
static bool purge_one(struct cache *c, struct shard *s, struct cache_entry **slot,
                      enum cache_purge_kind kind, const char *arg, size_t len, bool soft,
                      unsigned *n)
{
    struct cache_entry *e = *slot;
    if (!purge_selects(e, kind, arg, len))
        return false;
    if (e->kind == CACHE_ENTRY_RESPONSE)
        (*n)++;
    struct cache_entry *copy = soft && e->kind == CACHE_ENTRY_RESPONSE ? stale_copy(e) : NULL;
    if (!copy) {
        shard_drop(s, slot, e);
        return true;
    }
    /* the stale copy takes the entry's place in its chain and LRU slot */
    copy->l1_hash = e->l1_hash;
    copy->l1_expires_ms = e->l1_expires_ms;
    copy->l1_next = e->l1_next;
    *slot = copy;
    copy->lru_prev = e->lru_prev;
    copy->lru_next = e->lru_next;
    if (e->lru_prev)
        e->lru_prev->lru_next = copy;
    else
        s->lru_head = copy;
    if (e->lru_next)
        e->lru_next->lru_prev = copy;
    else
        s->lru_tail = copy;
    s->bytes = s->bytes - cache_entry_size(e) + cache_entry_size(copy);
    cache_entry_unref(e);
    (void)c;
    return false;
}

bool cache_refresh_claim(struct cache *c, uint64_t hash, int64_t now_ms, int64_t until_ms)
{
    unsigned slot = (unsigned)(hash & (REFRESH_SLOTS - 1));
    bool claimed = false;
    pthread_mutex_lock(&c->refresh_lock);
    if (c->refresh_hash[slot] != hash || c->refresh_until[slot] <= now_ms) {
        c->refresh_hash[slot] = hash;
        c->refresh_until[slot] = until_ms;
        claimed = true;
    }
    pthread_mutex_unlock(&c->refresh_lock);
    return claimed;
}

void cache_refresh_done(struct cache *c, uint64_t hash)
{
    unsigned slot = (unsigned)(hash & (REFRESH_SLOTS - 1));
    pthread_mutex_lock(&c->refresh_lock);
    if (c->refresh_hash[slot] == hash)
        c->refresh_until[slot] = 0;
    pthread_mutex_unlock(&c->refresh_lock);
}

uint64_t cache_purge_generation(const struct cache *c, uint64_t url_hash)
{
    return __atomic_load_n(&c->purge_gen, __ATOMIC_ACQUIRE) +
           __atomic_load_n(&c->url_gen[url_hash & (CACHE_GEN_SLOTS - 1)], __ATOMIC_ACQUIRE);
}

unsigned cache_purge(struct cache *c, enum cache_purge_kind kind, const char *arg, size_t len,
                     bool soft)
{
    unsigned n = 0;
    if (kind == CACHE_PURGE_URL)
        __atomic_add_fetch(&c->url_gen[cache_hash(arg, len) & (CACHE_GEN_SLOTS - 1)], 1,
                           __ATOMIC_ACQ_REL);
    else
        __atomic_add_fetch(&c->purge_gen, 1, __ATOMIC_ACQ_REL);
    if (kind == CACHE_PURGE_URL) {
        uint64_t h = cache_hash(arg, len);
        struct shard *s = shard_of(c, h);
        if (!s->buckets)
            return 0;
        pthread_mutex_lock(&s->lock);
        struct cache_entry **slot = &s->buckets[h & (s->nbuckets - 1)];
        while (*slot) {
            if ((*slot)->l1_hash != h || !purge_one(c, s, slot, kind, arg, len, soft, &n))
                slot = &(*slot)->l1_next;
        }
        pthread_mutex_unlock(&s->lock);
        return n;
    }
    for (unsigned i = 0; i < CACHE_SHARDS; i++) {
        struct shard *s = &c->shards[i];
        if (!s->buckets)
            continue;
        pthread_mutex_lock(&s->lock);
        for (size_t b = 0; b < s->nbuckets; b++) {
            struct cache_entry **slot = &s->buckets[b];
            while (*slot) {
                if (!purge_one(c, s, slot, kind, arg, len, soft, &n))
                    slot = &(*slot)->l1_next;
            }
        }
        pthread_mutex_unlock(&s->lock);
    }
    return n;
}

size_t cache_l1_max_entry(const struct cache *c)
{
    return c->memory / CACHE_SHARDS / 2;
}

void cache_l1_stats(const struct cache *c, struct cache_l1_stats *out)
{
    memset(out, 0, sizeof(*out));
    for (unsigned i = 0; i < CACHE_SHARDS; i++) {
        struct shard *s = (struct shard *)(uintptr_t)&c->shards[i];
        pthread_mutex_lock(&s->lock);
        out->entries += s->count;
        out->bytes += s->bytes;
        pthread_mutex_unlock(&s->lock);
    }
    out->evictions = __atomic_load_n(&c->evictions, __ATOMIC_RELAXED);
    out->expired = __atomic_load_n(&c->expired, __ATOMIC_RELAXED);
    out->capacity = c->memory;
}

/* ------------------------------------------------------------ coalescing */

void cache_mailbox_deliver(struct cache_mailbox *box)
{
    struct cache *c = box->c;
    /* one at a time: a wake-up may cancel or free other waiters */
    for (;;) {
        pthread_mutex_lock(&c->wait_lock);
        struct cache_waiter *w = TAILQ_FIRST(&box->waiters);
        if (w) {
            TAILQ_REMOVE(&box->waiters, w, link);
            w->where = 0;
        }
        pthread_mutex_unlock(&c->wait_lock);
        if (!w)
            return;
        w->wake(w->arg, w->filled);
    }
}

struct cache_mailbox *cache_mailbox_new(struct cache *c, cache_notify_fn notify, void *arg)
{
    struct cache_mailbox *box = calloc(1, sizeof(*box)); /* freed by cache_mailbox_free() */
    if (!box)
        return NULL;
    box->c = c;
    box->notify = notify;
    box->notify_arg = arg;
    TAILQ_INIT(&box->waiters);
    return box;
}

void cache_mailbox_free(struct cache_mailbox *box)
{
    if (!box)
        return;
    struct cache *c = box->c;
    pthread_mutex_lock(&c->wait_lock);
    struct cache_waiter *w;
    while ((w = TAILQ_FIRST(&box->waiters)) != NULL) {
        TAILQ_REMOVE(&box->waiters, w, link);
        w->where = 0;
    }
    pthread_mutex_unlock(&c->wait_lock);
    free(box);
}

enum cache_fill_role cache_fill_join(struct cache *c, uint64_t h, const char *key, size_t len,
                                     struct cache_waiter *w, struct cache_fill **fill)
{
    struct cache_fill **slot = &c->fills[h & (FILL_BUCKETS - 1)];
    enum cache_fill_role role = CACHE_FILL_LEADER;

    *fill = NULL;
    pthread_mutex_lock(&c->wait_lock);
    struct cache_fill *f = *slot;
    for (; f; f = f->next)
        if (f->hash == h && f->len == len && memcmp(f->key, key, len) == 0)
            break;
    if (f) {
        w->fill = f;
        w->where = 1;
        w->filled = false;
        TAILQ_INSERT_TAIL(&f->waiters, w, link);
        STAT_ADD(c->waiting, 1);
        role = CACHE_FILL_WAITING;
    } else {
        f = calloc(1, sizeof(*f)); /* freed by cache_fill_end() */
        char *copy = f ? malloc(len ? len : 1) : NULL;
        if (!copy) {
            free(f);
            role = CACHE_FILL_FAILED;
        } else {
            memcpy(copy, key, len);
            f->key = copy;
            f->len = len;
            f->hash = h;
            TAILQ_INIT(&f->waiters);
            f->next = *slot;
            *slot = f;
            *fill = f;
        }
    }
    pthread_mutex_unlock(&c->wait_lock);
    return role;
}

void cache_fill_end(struct cache *c, struct cache_fill *fill, bool stored)
{
    if (!fill)
        return;
    pthread_mutex_lock(&c->wait_lock);
    struct cache_fill **slot = &c->fills[fill->hash & (FILL_BUCKETS - 1)];
    while (*slot && *slot != fill)
        slot = &(*slot)->next;
    if (*slot)
        *slot = fill->next;
    struct cache_waiter *w;
    while ((w = TAILQ_FIRST(&fill->waiters)) != NULL) {
        TAILQ_REMOVE(&fill->waiters, w, link);
        STAT_ADD(c->waiting, (uint64_t)-1);
        w->fill = NULL;
        w->filled = stored;
        w->where = 2;
        /* a box with waiters in it has a wake-up on its way already, and
         * its delivery takes every waiter there is: one wake-up a batch */
        bool first = TAILQ_EMPTY(&w->box->waiters);
        TAILQ_INSERT_TAIL(&w->box->waiters, w, link);
        /* under the lock, so the box cannot go away meanwhile */
        if (first)
            w->box->notify(w->box->notify_arg);
    }
    pthread_mutex_unlock(&c->wait_lock);
    free(fill->key);
    free(fill);
}

void cache_waiter_cancel(struct cache *c, struct cache_waiter *w)
{
    /* only this thread moves it out of 0; the filler's writes are seen
     * under the lock below */
    if (__atomic_load_n(&w->where, __ATOMIC_ACQUIRE) == 0)
        return;
    pthread_mutex_lock(&c->wait_lock);
    if (w->where == 1) {
        TAILQ_REMOVE(&w->fill->waiters, w, link);
        STAT_ADD(c->waiting, (uint64_t)-1);
    } else if (w->where == 2) {
        TAILQ_REMOVE(&w->box->waiters, w, link);
    }
    w->where = 0;
    w->fill = NULL;
    pthread_mutex_unlock(&c->wait_lock);
}

uint64_t cache_waiting(const struct cache *c)
{
    return __atomic_load_n(&c->waiting, __ATOMIC_RELAXED);
}
