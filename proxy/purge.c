/*
 * purge: purges applied to L1 and Redis and announced to every instance
 * (see purge.h for the design and why pub/sub).
 *
 * Owns: its two Redis links (admin purges, subscription), the pending
 * state of each admin or worker purge (struct purge_op, freed when its
 * last Redis answer came). Borrows the cache and the admin's event_base.
 * Message format on PURGE_CHANNEL: "<instance> <kind> <soft> <argument>",
 * kind one of u (URL), p (prefix), t (tag), a (all), s (a store of URL).
 */
#include "purge.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "config.h"
#include "log.h"
#include "store_redis.h"

#define PURGE_MSG_MAX   (CACHE_REDIS_KEY_LEN + 8300) /* bytes of one announcement */
#define PURGE_ARG_MAX   8192                         /* bytes of a purge argument */
#define PURGE_BUMP(f)   __atomic_add_fetch(&(f), 1, __ATOMIC_RELAXED)
#define PURGE_ADD(f, n) __atomic_add_fetch(&(f), (n), __ATOMIC_RELAXED)

static const char kind_chars[4] = {'u', 'p', 't', 'a'};

struct purge {
    struct event_base *base;   /* borrowed: the admin thread's */
    struct cache *cache;       /* borrowed; outlives the purge */
    struct store_redis *admin; /* owned: the admin's purges; NULL without Redis */
    struct store_redis *sub;   /* owned: the subscription; NULL without Redis */
    struct purge_stats stats;  /* atomics */
};

/* One purge waiting on Redis: made per purge, freed by op_finish(). */
struct purge_op {
    struct purge *p;        /* borrowed */
    struct store_redis *rs; /* borrowed: where the purge ran, to announce it again */
    char *arg;              /* owned copy of the purge argument, freed by op_finish() */
    size_t len;
    enum cache_purge_kind kind;
    bool soft;
    purge_done_fn done; /* told once, at the end */
    void *done_arg;
    unsigned pending;    /* Redis answers still to come */
    long long l1_count;  /* what L1 purged */
    long long redis;     /* what Redis purged; -1 until one answered */
    struct event *timer; /* owned: answers without Redis after PURGE_WAIT_MS; NULL none */
    bool answered;       /* <done> ran: the op lives on only until Redis answers */
};

static char instance_id[17];

const char *purge_instance(void)
{
    if (instance_id[0] == '\0') {
        uint64_t r = 0;
        if (getrandom(&r, sizeof(r), GRND_NONBLOCK) != sizeof(r))
            r = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ (uint64_t)clock();
        snprintf(instance_id, sizeof(instance_id), "%016llx", (unsigned long long)r);
    }
    return instance_id;
}

struct purge_stats *purge_stats(struct purge *p)
{
    return &p->stats;
}

const struct store_redis_stats *purge_link_stats(struct purge *p, unsigned i)
{
    struct store_redis *rs = i == 0 ? p->admin : i == 1 ? p->sub : NULL;
    return rs ? store_redis_stats(rs) : NULL;
}

size_t purge_tag_key(const char *tag, size_t len, char *out)
{
    size_t plen = sizeof(PURGE_TAG_PREFIX) - 1;
    if (len == 0 || plen + len + 1 > PURGE_TAG_KEY_MAX)
        return 0;
    memcpy(out, PURGE_TAG_PREFIX, plen);
    memcpy(out + plen, tag, len);
    out[plen + len] = '\0';
    return plen + len;
}

size_t purge_url_key(const char *url, char *out, size_t room)
{
    const char *scheme;
    size_t slen;
    if (strncasecmp(url, "http://", 7) == 0) {
        scheme = "http";
        slen = 7;
    } else if (strncasecmp(url, "https://", 8) == 0) {
        scheme = "https";
        slen = 8;
    } else {
        return 0;
    }
    const char *host = url + slen;
    size_t hlen = strcspn(host, "/?#");
    const char *rest = host + hlen;
    if (hlen == 0)
        return 0;
    /* the scheme's default port is not part of the key */
    const char *dflt = scheme[4] == 's' ? ":443" : ":80";
    size_t dlen = strlen(dflt);
    if (hlen > dlen && memcmp(host + hlen - dlen, dflt, dlen) == 0)
        hlen -= dlen;
    size_t rlen = strcspn(rest, "#");
    int n = snprintf(out, room, "%s://%.*s%s%.*s", scheme, (int)hlen, host,
                     rlen == 0 || rest[0] == '?' ? "/" : "", (int)rlen, rest);
    if (n < 0 || (size_t)n >= room)
        return 0;
    for (size_t i = strlen(scheme) + 3; i < strlen(scheme) + 3 + hlen; i++)
        out[i] = (char)tolower((unsigned char)out[i]);
    return (size_t)n;
}

/* ------------------------------------------------------------ announcements */

static void announce(struct store_redis *rs, char kind, bool soft, const char *arg, size_t len)
{
    char msg[PURGE_MSG_MAX];
    if (!rs || len > PURGE_ARG_MAX)
        return;
    int n = snprintf(msg, sizeof(msg), "%s %c %d ", purge_instance(), kind, soft ? 1 : 0);
    if (n < 0 || (size_t)n + len > sizeof(msg))
        return;
    memcpy(msg + n, arg, len);
    store_redis_publish(rs, PURGE_CHANNEL, msg, (size_t)n + len);
}

void purge_announce_store(struct store_redis *rs, const char *url, size_t len)
{
    announce(rs, 's', false, url, len);
}

/* Another instance purged or stored: apply it to this L1. */
static void purge_on_message(void *arg, const char *msg, size_t len)
{
    struct purge *p = arg;
    const char *self = purge_instance();
    if (len < 21 || msg[16] != ' ' || msg[18] != ' ' || msg[20] != ' ')
        return;
    if (memcmp(msg, self, 16) == 0)
        return; /* our own: already applied */
    PURGE_BUMP(p->stats.messages);
    bool soft = msg[19] == '1';
    const char *a = msg + 21;
    size_t alen = len - 21;
    switch (msg[17]) {
    case 'u':
    case 's':
        cache_purge(p->cache, CACHE_PURGE_URL, a, alen, soft);
        break;
    case 'p':
        cache_purge(p->cache, CACHE_PURGE_PREFIX, a, alen, soft);
        break;
    case 't':
        cache_purge(p->cache, CACHE_PURGE_TAG, a, alen, soft);
        break;
    case 'a':
        cache_purge(p->cache, CACHE_PURGE_ALL, NULL, 0, soft);
        break;
    default:
        break;
    }
}

/* The subscription went down or came (back) up: either way purges may
 * have been missed, so L1 starts over. */
static void purge_on_link(void *arg, bool up)
{
    struct purge *p = arg;
    unsigned n = cache_purge(p->cache, CACHE_PURGE_ALL, NULL, 0, false);
    PURGE_BUMP(p->stats.l1_drops);
    log_info("cache: invalidation channel %s: L1 emptied (%u entries)", up ? "up" : "lost", n);
}

struct purge *purge_new(struct event_base *base, struct cache *cache, const struct config *cfg)
{
    struct purge *p = calloc(1, sizeof(*p)); /* freed by purge_free() */
    if (!p)
        return NULL;
    p->cache = cache;
    p->base = base;
    purge_instance();
    if (!cache || !cfg->cache_redis[0])
        return p;
    p->admin = store_redis_new(base, cfg->cache_redis, cfg->cache_redis_timeout_ms);
    p->sub = store_redis_new(base, cfg->cache_redis, cfg->cache_redis_timeout_ms);
    if (!p->admin || !p->sub ||
        store_redis_subscribe(p->sub, PURGE_CHANNEL, purge_on_message, purge_on_link, p) == -1) {
        purge_free(p);
        return NULL;
    }
    return p;
}

void purge_free(struct purge *p)
{
    if (!p)
        return;
    store_redis_free(p->admin);
    store_redis_free(p->sub);
    free(p);
}

/* ------------------------------------------------------------ running purges */

/* Tells the caller, once: Redis's count, or this L1's. */
static void op_answer(struct purge_op *op)
{
    if (op->answered)
        return;
    op->answered = true;
    long long n = op->redis >= 0 ? op->redis : op->l1_count;
    PURGE_ADD(op->p->stats.entries, (uint64_t)(n > 0 ? n : 0));
    op->done(op->done_arg, n);
}

/* Redis did not answer in time: the caller hears this L1's count now; the
 * purge goes on in Redis and op_finish() frees the op when it ends. */
static void purge_on_wait_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct purge_op *op = arg;
    (void)fd;
    (void)what;
    log_warnx("purge: Redis did not answer within %d ms; answered with this L1's count (%lld)",
              PURGE_WAIT_MS, op->l1_count);
    op_answer(op);
}

static void op_finish(struct purge_op *op)
{
    /* again once Redis is done: an instance that refilled its L1 from
     * Redis while a multi-step purge ran drops what it took */
    if (op->rs && op->redis >= 0)
        announce(op->rs, kind_chars[op->kind], op->soft, op->arg, op->len);
    op_answer(op);
    if (op->timer)
        event_free(op->timer);
    free(op->arg);
    free(op);
}

static void purge_on_redis(void *arg, long long count)
{
    struct purge_op *op = arg;
    if (count >= 0)
        op->redis = (op->redis < 0 ? 0 : op->redis) + count;
    if (--op->pending == 0)
        op_finish(op);
}

void purge_run(struct purge *p, struct event_base *base, struct cache *cache,
               struct store_redis *rs, enum cache_purge_kind kind, const char *arg, size_t len,
               bool soft, purge_done_fn done, void *done_arg)
{
    struct purge_op *op = calloc(1, sizeof(*op)); /* freed by op_finish() */
    unsigned l1 = cache ? cache_purge(cache, kind, arg, len, soft) : 0;
    PURGE_BUMP(p->stats.requests);
    PURGE_BUMP(p->stats.by_kind[kind]);
    if (soft)
        PURGE_BUMP(p->stats.soft);
    log_info("purge %s%s: %.*s (%u in this L1)",
             kind == CACHE_PURGE_URL      ? "url"
             : kind == CACHE_PURGE_PREFIX ? "prefix"
             : kind == CACHE_PURGE_TAG    ? "tag"
                                          : "all",
             soft ? " (soft)" : "", (int)(len > 512 ? 512 : len), arg ? arg : "", l1);
    if (!op) {
        done(done_arg, l1);
        return;
    }
    op->p = p;
    op->kind = kind;
    op->soft = soft;
    op->len = len;
    op->arg = malloc(len ? len : 1); /* freed by op_finish() */
    if (op->arg && len)
        memcpy(op->arg, arg, len);
    op->rs = op->arg ? rs : NULL;
    op->done = done;
    op->done_arg = done_arg;
    op->l1_count = l1;
    op->redis = -1;
    op->pending = 1; /* held until every Redis call is made */
    if (rs) {
        announce(rs, kind_chars[kind], soft, arg, len);
        char key[CACHE_REDIS_KEY_LEN + 8], index[CACHE_REDIS_KEY_LEN + 8];
        size_t kl, il;
        int r = -1;
        switch (kind) {
        case CACHE_PURGE_URL:
            kl = cache_redis_key("", arg, len, key);
            il = cache_redis_key("vs:", arg, len, index);
            r = store_redis_purge_key(rs, key, kl, index, il, soft, purge_on_redis, op);
            break;
        case CACHE_PURGE_TAG: {
            char tkey[PURGE_TAG_KEY_MAX];
            size_t tl = purge_tag_key(arg, len, tkey);
            if (tl)
                r = store_redis_purge_index(rs, tkey, tl, soft, purge_on_redis, op);
            break;
        }
        case CACHE_PURGE_PREFIX:
            r = store_redis_purge_prefix(rs, arg, len, soft, purge_on_redis, op);
            break;
        case CACHE_PURGE_ALL:
            r = store_redis_purge_prefix(rs, "", 0, soft, purge_on_redis, op);
            break;
        }
        if (r == 0)
            op->pending++;
    }
    if (op->pending > 1 && base) {
        /* the answer waits on Redis, but not for ever */
        op->timer = evtimer_new(base, purge_on_wait_timeout, op);
        struct timeval tv = {PURGE_WAIT_MS / 1000, (PURGE_WAIT_MS % 1000) * 1000};
        if (op->timer)
            evtimer_add(op->timer, &tv);
    }
    if (--op->pending == 0)
        op_finish(op);
}

/* ------------------------------------------------------------ admin endpoint */

/* An admin purge: the HTTP request answered when every purge it asked is done. */
struct admin_purge {
    struct evhttp_request *req; /* borrowed from evhttp until answered */
    unsigned pending;           /* purges still running */
    long long total;            /* entries purged so far */
};

static void admin_reply(struct evhttp_request *req, int code, const char *reason, const char *body)
{
    struct evbuffer *out = evbuffer_new(); /* freed below; evhttp copies it */
    if (out)
        evbuffer_add(out, body, strlen(body));
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-store");
    evhttp_send_reply(req, code, reason, out);
    if (out)
        evbuffer_free(out);
}

static void admin_on_done(void *arg, long long count)
{
    struct admin_purge *ap = arg;
    if (count > 0)
        ap->total += count;
    if (--ap->pending > 0)
        return;
    char body[64];
    snprintf(body, sizeof(body), "{\"purged\":%lld}\n", ap->total);
    admin_reply(ap->req, 200, "OK", body);
    free(ap);
}

void purge_admin_request(struct purge *p, struct evhttp_request *req)
{
    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "POST");
        admin_reply(req, 405, "Method Not Allowed", "{\"error\":\"POST only\"}\n");
        return;
    }
    struct evkeyvalq q;
    const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    if (!query || evhttp_parse_query_str(query, &q) == -1) {
        admin_reply(req, 400, "Bad Request",
                    "{\"error\":\"give url=URL, tag=TAG (repeatable) or prefix=PATH\"}\n");
        return;
    }
    bool soft = false;
    struct {
        enum cache_purge_kind kind;
        char arg[PURGE_ARG_MAX];
        size_t len;
    } *items = calloc(PURGE_MAX_TAGS, sizeof(*items)); /* freed below */
    unsigned count = 0;
    bool bad = !items;
    for (struct evkeyval *kv = q.tqh_first; kv && !bad; kv = kv->next.tqe_next) {
        if (strcmp(kv->key, "soft") == 0) {
            bool v;
            if (config_parse_bool(kv->value, &v) == -1) {
                bad = true;
                break;
            }
            soft = v;
            continue;
        }
        if (count == PURGE_MAX_TAGS) {
            bad = true;
            break;
        }
        size_t vlen = strlen(kv->value);
        if (strcmp(kv->key, "url") == 0) {
            items[count].kind = CACHE_PURGE_URL;
            items[count].len = purge_url_key(kv->value, items[count].arg, PURGE_ARG_MAX);
        } else if (strcmp(kv->key, "tag") == 0 && vlen > 0 && vlen < PURGE_ARG_MAX &&
                   !strpbrk(kv->value, " ,")) {
            items[count].kind = CACHE_PURGE_TAG;
            memcpy(items[count].arg, kv->value, vlen);
            items[count].len = vlen;
        } else if (strcmp(kv->key, "prefix") == 0 && vlen > 0 && vlen < PURGE_ARG_MAX) {
            items[count].kind = CACHE_PURGE_PREFIX;
            if (strncasecmp(kv->value, "http", 4) == 0) {
                /* a URL prefix, keyed as the cache keys URLs */
                items[count].len = purge_url_key(kv->value, items[count].arg, PURGE_ARG_MAX);
            } else if (kv->value[0] != '/') {
                items[count].len = 0; /* neither a path nor a URL */
            } else {
                memcpy(items[count].arg, kv->value, vlen);
                items[count].len = vlen;
            }
        } else {
            bad = true;
            break;
        }
        bad = items[count].len == 0;
        count++;
    }
    evhttp_clear_headers(&q);
    if (bad || count == 0) {
        free(items);
        admin_reply(req, 400, "Bad Request",
                    "{\"error\":\"give url=http://host/path, tag=TAG (repeatable) or "
                    "prefix=/path/ (or a URL prefix), and soft=1 to mark stale\"}\n");
        return;
    }
    struct admin_purge *ap = calloc(1, sizeof(*ap)); /* freed by admin_on_done() */
    if (!ap) {
        free(items);
        evhttp_send_error(req, 500, "out of memory");
        return;
    }
    ap->req = req;
    ap->pending = count + 1; /* held until every purge started */
    for (unsigned i = 0; i < count; i++)
        purge_run(p, p->base, p->cache, p->admin, items[i].kind, items[i].arg, items[i].len, soft,
                  admin_on_done, ap);
    free(items);
    admin_on_done(ap, 0);
}
