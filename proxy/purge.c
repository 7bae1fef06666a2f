/*
 * purge: purges applied to L1 and Redis and announced to every instance
 * (see purge.h for the design and why pub/sub).
 *
 * Owns: its two Redis links (admin purges, subscription), the pending
 * state of each admin or worker purge (struct purge_op, freed when its
 * last Redis answer came), the queue of purges waiting for Redis (struct
 * purge_item, each freed once Redis did it, or by purge_free()) and the
 * replay event. Borrows the cache and the admin's event_base.
 * Message format on PURGE_CHANNEL: "<instance> <kind> <soft> <argument>",
 * kind one of u (URL), p (prefix), t (tag), a (all), s (a store of URL).
 *
 * The queue (see purge.h) is filled by any thread under <lock>, which also
 * guards the replay's count; the replay itself runs on the admin thread,
 * on the admin's link only, one round at a time: the queue is taken whole,
 * each purge sent, and the round ends when Redis answered them all. Purges
 * commute, so a failed one simply goes back to the queue. <blocked>, the
 * flag the workers read before asking Redis, is set with the first queued
 * purge and cleared, under <lock>, only when nothing is queued, lost or in
 * flight.
 */
#include "purge.h"

#include <ctype.h>
#include <pthread.h>
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
#include "http.h"
#include "log.h"
#include "store_redis.h"

#define PURGE_MSG_MAX   (CACHE_REDIS_KEY_LEN + 8300) /* bytes of one announcement */
#define PURGE_ARG_MAX   8192                         /* bytes of a purge argument */
#define PURGE_BUMP(f)   __atomic_add_fetch(&(f), 1, __ATOMIC_RELAXED)
#define PURGE_ADD(f, n) __atomic_add_fetch(&(f), (n), __ATOMIC_RELAXED)

static const char kind_chars[4] = {'u', 'p', 't', 'a'};

/* A purge kept for Redis: made by item_new(), freed once Redis did it, when
 * it cannot be kept, or by purge_free(). */
struct purge_item {
    struct purge *p; /* borrowed */
    enum cache_purge_kind kind;
    bool soft;
    size_t len; /* bytes of arg, without its NUL */
    char arg[]; /* the purge argument, NUL-terminated */
};

struct purge {
    struct event_base *base;   /* borrowed: the admin thread's */
    struct cache *cache;       /* borrowed; outlives the purge */
    struct store_redis *admin; /* owned: the admin's purges and replays; NULL without Redis */
    struct store_redis *sub;   /* owned: the subscription; NULL without Redis */
    struct purge_stats stats;  /* atomics */
    pthread_mutex_t lock;      /* guards queue, queued, lost, lost_hard, replaying, replay_failed */
    struct purge_item *queue[PURGE_QUEUE_MAX]; /* owned: purges waiting for Redis, in order */
    unsigned queued;                           /* length of queue */
    bool lost;               /* a purge could not be kept: the next replay purges everything */
    bool lost_hard;          /* ... hard, as one of those lost was */
    unsigned replaying;      /* purges of the replay round Redis has not answered */
    bool replay_failed;      /* one of this round's failed: retry after PURGE_REPLAY_RETRY_MS */
    bool replay_failing;     /* admin thread: the last round failed (logged once until one works) */
    int blocked;             /* atomic: 1 while purges are queued, lost or replaying */
    struct event *replay_ev; /* owned: runs a replay round (admin thread); NULL without Redis */
    bool freeing;            /* purge_free() runs: Redis answers only free what they carry */
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
    bool failed;         /* Redis refused or failed it: queued for a replay */
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

/* ------------------------------------------------------------ the queue */

static const char *kind_name(enum cache_purge_kind kind)
{
    return kind == CACHE_PURGE_URL      ? "url"
           : kind == CACHE_PURGE_PREFIX ? "prefix"
           : kind == CACHE_PURGE_TAG    ? "tag"
                                        : "all";
}

/* A copy of a purge; NULL when out of memory. Freed with free(). */
static struct purge_item *item_new(struct purge *p, enum cache_purge_kind kind, bool soft,
                                   const char *arg, size_t len)
{
    struct purge_item *it = malloc(sizeof(*it) + len + 1);
    if (!it)
        return NULL;
    it->p = p;
    it->kind = kind;
    it->soft = soft;
    it->len = len;
    if (len)
        memcpy(it->arg, arg, len);
    it->arg[len] = '\0';
    return it;
}

/* The workers' flag and the gauge follow the queue; <lock> held. */
static void gate_update_locked(struct purge *p)
{
    bool waiting = p->queued > 0 || p->lost || p->replaying > 0;
    __atomic_store_n(&p->blocked, waiting ? 1 : 0, __ATOMIC_RELEASE);
    __atomic_store_n(&p->stats.queued, (uint64_t)p->queued + p->replaying, __ATOMIC_RELAXED);
}

/* Keeps <it> (takes it) for the next replay; a full queue drops it and
 * makes the next replay purge everything. <lock> held. Returns whether
 * the purge was lost. */
static bool keep_locked(struct purge *p, struct purge_item *it, bool soft)
{
    if (it && p->queued < PURGE_QUEUE_MAX) {
        p->queue[p->queued++] = it;
        return false;
    }
    free(it);
    p->lost = true;
    if (!soft)
        p->lost_hard = true;
    return true;
}

/*
 * Keeps a purge Redis could not take, for the replay; blocks the workers'
 * Redis lookups until then. <wake>: start a replay now, should the admin's
 * link be up (not for a purge of the replay itself, which waits for the
 * retry). Any thread.
 */
static void queue_add(struct purge *p, enum cache_purge_kind kind, bool soft, const char *arg,
                      size_t len, bool wake)
{
    struct purge_item *it = item_new(p, kind, soft, arg, len); /* freed once Redis did it */
    pthread_mutex_lock(&p->lock);
    bool first_lost = !p->lost;
    bool lost = keep_locked(p, it, soft);
    unsigned queued = p->queued;
    gate_update_locked(p);
    pthread_mutex_unlock(&p->lock);
    if (lost) {
        PURGE_BUMP(p->stats.overflows);
        if (first_lost)
            log_error("purge %s: %.*s: cannot be kept for Redis (%u purges wait already, or "
                      "no memory): everything in Redis will be purged (%s) once it is back",
                      kind_name(kind), (int)(len > 512 ? 512 : len), arg ? arg : "",
                      PURGE_QUEUE_MAX, soft ? "soft" : "hard");
    } else if (queued == 1) {
        /* the first of an outage; the others are logged as purges already */
        log_warnx("purge %s: %.*s: not applied in Redis: kept until it is back, and Redis "
                  "lookups paused until then",
                  kind_name(kind), (int)(len > 512 ? 512 : len), arg ? arg : "");
    } else {
        log_debug("%s: purge %s: %.*s: kept for Redis (%u waiting)", __func__, kind_name(kind),
                  (int)(len > 512 ? 512 : len), arg ? arg : "", queued);
    }
    if (wake && !p->freeing)
        event_active(p->replay_ev, EV_TIMEOUT, 1);
}

/* Sends the Redis side of a purge on <rs>: 0 when sent (<cb> will be
 * called), -1 when Redis is not usable now, 1 when there is nothing to send
 * (a tag too long to have an index). */
static int redis_send(struct store_redis *rs, enum cache_purge_kind kind, bool soft,
                      const char *arg, size_t len, store_redis_count_fn cb, void *cb_arg)
{
    char key[CACHE_REDIS_KEY_LEN + 8], index[CACHE_REDIS_KEY_LEN + 8];
    switch (kind) {
    case CACHE_PURGE_URL: {
        size_t kl = cache_redis_key("", arg, len, key);
        size_t il = cache_redis_key("vs:", arg, len, index);
        return store_redis_purge_key(rs, key, kl, index, il, soft, cb, cb_arg);
    }
    case CACHE_PURGE_TAG: {
        char tkey[PURGE_TAG_KEY_MAX];
        size_t tl = purge_tag_key(arg, len, tkey);
        if (tl == 0)
            return 1;
        return store_redis_purge_index(rs, tkey, tl, soft, cb, cb_arg);
    }
    case CACHE_PURGE_PREFIX:
        return store_redis_purge_prefix(rs, arg, len, soft, cb, cb_arg);
    case CACHE_PURGE_ALL:
        return store_redis_purge_prefix(rs, "", 0, soft, cb, cb_arg);
    }
    return 1;
}

static void arm_replay_retry(struct purge *p)
{
    struct timeval tv = {PURGE_REPLAY_RETRY_MS / 1000, (PURGE_REPLAY_RETRY_MS % 1000) * 1000};
    if (evtimer_add(p->replay_ev, &tv) == -1)
        log_warnx("purge: cannot arm the replay timer; the next link up replays");
}

/* One purge of the replay round is over (or, with <it> NULL, the round's
 * hold is released): a failed <it> goes back to the queue. The last one
 * ends the round: retried later when one failed, else the next round
 * when more came meanwhile, else Redis lookups resume. Admin thread. */
static void replay_release(struct purge *p, struct purge_item *failed)
{
    pthread_mutex_lock(&p->lock);
    bool lost = false;
    if (failed) {
        p->replay_failed = true;
        lost = keep_locked(p, failed, failed->soft);
    }
    p->replaying--;
    bool round_over = p->replaying == 0;
    bool retry = round_over && p->replay_failed;
    bool more = round_over && !retry && (p->queued > 0 || p->lost);
    gate_update_locked(p);
    bool open = round_over && !p->blocked;
    pthread_mutex_unlock(&p->lock);
    if (lost)
        PURGE_BUMP(p->stats.overflows);
    if (retry) {
        if (!p->replay_failing)
            log_warnx("purge: Redis did not apply the purges kept for it; tried again every %d ms",
                      PURGE_REPLAY_RETRY_MS);
        p->replay_failing = true;
        arm_replay_retry(p);
        return;
    }
    if (!round_over)
        return;
    p->replay_failing = false;
    if (more)
        event_active(p->replay_ev, EV_TIMEOUT, 1);
    else if (open)
        log_info("purge: the purges kept for Redis are applied there; Redis lookups resume");
}

/* Redis answered one purge of a replay round. */
static void purge_on_replayed(void *arg, long long count)
{
    struct purge_item *it = arg;
    struct purge *p = it->p;
    if (p->freeing) {
        free(it);
        return;
    }
    if (count < 0) {
        replay_release(p, it);
        return;
    }
    /* other instances may have read what it removed while it waited */
    announce(p->admin, kind_chars[it->kind], it->soft, it->arg, it->len);
    PURGE_BUMP(p->stats.replayed);
    free(it);
    replay_release(p, NULL);
}

/* A replay round: every purge kept goes to Redis on the admin's link.
 * Admin thread. */
static void purge_on_replay(evutil_socket_t fd, short what, void *arg)
{
    struct purge *p = arg;
    struct purge_item *batch[PURGE_QUEUE_MAX + 1]; /* taken from the queue */
    (void)fd;
    (void)what;
    enum store_redis_state st = store_redis_state(p->admin);
    if (p->freeing || (st != STORE_REDIS_UP && st != STORE_REDIS_SLOW))
        return; /* the link's coming up calls again */
    pthread_mutex_lock(&p->lock);
    if (p->replaying > 0) {
        pthread_mutex_unlock(&p->lock);
        return; /* this round's end starts the next */
    }
    unsigned n = p->queued;
    memcpy(batch, p->queue, n * sizeof(batch[0]));
    p->queued = 0;
    if (p->lost) {
        /* purges were lost: everything goes, as hard as the hardest of them */
        struct purge_item *all = item_new(p, CACHE_PURGE_ALL, !p->lost_hard, "", 0);
        if (all) {
            batch[n++] = all;
            p->lost = p->lost_hard = false;
        }
    }
    bool stuck = n == 0 && p->lost; /* out of memory for the purge of everything */
    if (n > 0) {
        p->replaying = n + 1; /* held until every purge is sent */
        p->replay_failed = false;
    }
    gate_update_locked(p);
    pthread_mutex_unlock(&p->lock);
    if (n == 0) {
        if (stuck)
            arm_replay_retry(p);
        return;
    }
    if (p->replay_failing)
        log_debug("%s: replaying %u purge(s) kept for Redis, again", __func__, n);
    else
        log_info("purge: replaying %u purge(s) kept for Redis", n);
    for (unsigned i = 0; i < n; i++) {
        struct purge_item *it = batch[i];
        int r = redis_send(p->admin, it->kind, it->soft, it->arg, it->len, purge_on_replayed, it);
        if (r != 0)
            purge_on_replayed(it, r == 1 ? 0 : -1);
    }
    replay_release(p, NULL);
}

/* The admin's link is connected (again): replay what waits. */
static void purge_on_admin_up(void *arg)
{
    struct purge *p = arg;
    event_active(p->replay_ev, EV_TIMEOUT, 1);
}

bool purge_redis_blocked(const struct purge *p)
{
    return p && __atomic_load_n(&p->blocked, __ATOMIC_ACQUIRE) != 0;
}

struct purge *purge_new(struct event_base *base, struct cache *cache, const struct config *cfg)
{
    struct purge *p = calloc(1, sizeof(*p)); /* freed by purge_free() */
    if (!p)
        return NULL;
    if (pthread_mutex_init(&p->lock, NULL) != 0) {
        free(p);
        return NULL;
    }
    p->cache = cache;
    p->base = base;
    purge_instance();
    if (!cache || !cfg->cache_redis[0])
        return p;
    p->replay_ev = evtimer_new(base, purge_on_replay, p);
    p->admin = store_redis_new(base, cfg->cache_redis, cfg->cache_redis_timeout_ms,
                               cfg->cache_max_object_size);
    p->sub = store_redis_new(base, cfg->cache_redis, cfg->cache_redis_timeout_ms,
                             cfg->cache_max_object_size);
    if (!p->replay_ev || !p->admin || !p->sub ||
        store_redis_subscribe(p->sub, PURGE_CHANNEL, purge_on_message, purge_on_link, p) == -1) {
        purge_free(p);
        return NULL;
    }
    store_redis_set_on_up(p->admin, purge_on_admin_up, p);
    return p;
}

void purge_free(struct purge *p)
{
    if (!p)
        return;
    p->freeing = true; /* the links' last answers free what they carry, nothing more */
    store_redis_free(p->admin);
    p->admin = NULL;
    store_redis_free(p->sub);
    p->sub = NULL;
    if (p->replay_ev)
        event_free(p->replay_ev);
    p->replay_ev = NULL;
    if (p->queued || p->lost)
        log_warnx("purge: %u purge(s) kept for Redis are dropped at exit%s", p->queued,
                  p->lost ? ", and a purge of everything" : "");
    while (p->queued > 0)
        free(p->queue[--p->queued]);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

/* ------------------------------------------------------------ running purges */

/* Tells the caller, once: Redis's count, or this L1's. */
static void op_answer(struct purge_op *op)
{
    if (op->answered)
        return;
    op->answered = true;
    enum purge_outcome outcome = op->failed        ? PURGE_NOT_IN_REDIS
                                 : op->pending > 0 ? PURGE_REDIS_LATE
                                                   : PURGE_DONE;
    long long n = outcome == PURGE_DONE && op->redis >= 0 ? op->redis : op->l1_count;
    PURGE_ADD(op->p->stats.entries, (uint64_t)(n > 0 ? n : 0));
    op->done(op->done_arg, n, outcome);
}

/* Redis did not answer in time: the caller hears this L1's count now; the
 * purge goes on in Redis and op_finish() frees the op when it ends. */
static void purge_on_wait_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct purge_op *op = arg;
    (void)fd;
    (void)what;
    log_warnx("purge: Redis did not answer within %d ms; answered 504 with this L1's count (%lld)",
              PURGE_WAIT_MS, op->l1_count);
    op_answer(op);
}

static void op_finish(struct purge_op *op)
{
    /* again once Redis is done: an instance that refilled its L1 from
     * Redis while a multi-step purge ran drops what it took */
    if (op->rs && op->redis >= 0 && !op->failed)
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
    if (count >= 0) {
        op->redis = (op->redis < 0 ? 0 : op->redis) + count;
    } else if (!op->failed && !op->p->freeing) {
        /* it may or may not have run: purges can run twice */
        op->failed = true;
        queue_add(op->p, op->kind, op->soft, op->arg, op->len, true);
    }
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
    log_info("purge %s%s: %.*s (%u in this L1)", kind_name(kind), soft ? " (soft)" : "",
             (int)(len > 512 ? 512 : len), arg ? arg : "", l1);
    char *copy = op ? malloc(len ? len : 1) : NULL; /* freed by op_finish() */
    if (!copy) {
        /* no memory to follow it in Redis: kept (or lost) for the replay */
        free(op);
        if (rs)
            queue_add(p, kind, soft, arg, len, true);
        done(done_arg, l1, rs ? PURGE_NOT_IN_REDIS : PURGE_DONE);
        return;
    }
    if (len)
        memcpy(copy, arg, len);
    op->p = p;
    op->kind = kind;
    op->soft = soft;
    op->len = len;
    op->arg = copy;
    op->rs = rs;
    op->done = done;
    op->done_arg = done_arg;
    op->l1_count = l1;
    op->redis = -1;
    op->pending = 1; /* held until every Redis call is made */
    if (rs) {
        announce(rs, kind_chars[kind], soft, arg, len);
        int r = redis_send(rs, kind, soft, arg, len, purge_on_redis, op);
        if (r == 0) {
            op->pending++;
        } else if (r == -1) {
            op->failed = true;
            queue_add(p, kind, soft, arg, len, true);
        }
    }
    if (op->pending > 1 && base) {
        /* the answer waits on Redis, but not for ever */
        op->timer = evtimer_new(base, purge_on_wait_timeout, op);
        struct timeval tv = {PURGE_WAIT_MS / 1000, (PURGE_WAIT_MS % 1000) * 1000};
        if (op->timer && evtimer_add(op->timer, &tv) == -1)
            log_warnx("purge: cannot arm its answer's timer; the answer waits on Redis");
    }
    if (--op->pending == 0)
        op_finish(op);
}

/* An invalidation Redis answered: a failed one is kept as a purge. */
static void purge_on_invalidated(void *arg, long long count)
{
    struct purge_item *it = arg;
    if (count < 0 && !it->p->freeing)
        queue_add(it->p, it->kind, it->soft, it->arg, it->len, true);
    free(it);
}

void purge_invalidate(struct purge *p, struct store_redis *rs, const char *url, size_t len)
{
    /* freed by purge_on_invalidated(), or below when nothing was sent */
    struct purge_item *it = item_new(p, CACHE_PURGE_URL, false, url, len);
    int r = it ? redis_send(rs, CACHE_PURGE_URL, false, url, len, purge_on_invalidated, it) : -1;
    if (r != 0) {
        free(it);
        queue_add(p, CACHE_PURGE_URL, false, url, len, true);
    }
    announce(rs, 's', false, url, len); /* other instances drop it too */
}

/* ------------------------------------------------------------ admin endpoint */

/* An admin purge: the HTTP request answered when every purge it asked is done. */
struct admin_purge {
    struct evhttp_request *req; /* borrowed from evhttp until answered */
    unsigned pending;           /* purges still running */
    long long total;            /* entries purged so far */
    bool not_in_redis;          /* one of them did not reach Redis (queued) */
    bool late;                  /* one of them got no answer from Redis in time */
};

int purge_answer(long long count, enum purge_outcome outcome, char *body, size_t room)
{
    long long n = count > 0 ? count : 0;
    switch (outcome) {
    case PURGE_NOT_IN_REDIS:
        snprintf(body, room,
                 "{\"purged\":%lld,\"error\":\"redis unreachable: purged in this instance "
                 "only; kept and applied to redis once it is back\"}\n",
                 n);
        return 503;
    case PURGE_REDIS_LATE:
        snprintf(body, room,
                 "{\"purged\":%lld,\"error\":\"redis did not answer in time: purged in this "
                 "instance; the purge goes on in redis\"}\n",
                 n);
        return 504;
    case PURGE_DONE:
        break;
    }
    snprintf(body, room, "{\"purged\":%lld}\n", n);
    return 200;
}

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

static void admin_on_done(void *arg, long long count, enum purge_outcome outcome)
{
    struct admin_purge *ap = arg;
    if (count > 0)
        ap->total += count;
    ap->not_in_redis |= outcome == PURGE_NOT_IN_REDIS;
    ap->late |= outcome == PURGE_REDIS_LATE;
    if (--ap->pending > 0)
        return;
    char body[PURGE_ANSWER_MAX];
    int status = purge_answer(ap->total,
                              ap->not_in_redis ? PURGE_NOT_IN_REDIS
                              : ap->late       ? PURGE_REDIS_LATE
                                               : PURGE_DONE,
                              body, sizeof(body));
    admin_reply(ap->req, status, http_reason((unsigned)status), body);
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
    admin_on_done(ap, 0, PURGE_DONE);
}
