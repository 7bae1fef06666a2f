/*
 * main: the command line, signals, and the workers' start, reload and stop.
 *
 * Owns the current configuration reference, the workers and the main
 * thread's event_base, which does nothing but wait for signals: SIGHUP
 * reloads (a bad file is logged and the old config keeps serving),
 * SIGTERM/SIGINT drain and exit 0, SIGUSR1 reopens the access log. Never
 * parses HTTP.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>
#include <hiredis/hiredis.h>
#include <llhttp.h>
#include <openssl/crypto.h>

#include "cache.h"
#include "config.h"
#include "health.h"
#include "log.h"
#include "purge.h"
#include "stats.h"
#include "store_redis.h"
#include "tls.h"
#include "worker.h"

#define MAIN_SPARE_FDS 256 /* descriptors beyond one per client: pools, Redis, logs, checks */

struct main_state {
    struct config *cfg;      /* referenced; the one in force */
    struct config *boot_cfg; /* referenced; its listen, workers, logs stay in force */
    struct worker *workers[CONFIG_MAX_WORKERS]; /* owned */
    unsigned worker_count;
    struct worker_shared shared; /* read by every worker */
    struct event_base *base;     /* owned; signals only */
    struct health *health;       /* owned; its thread checks the clones */
    struct stats_admin *admin;   /* owned; runs on the health thread */
    /* owned; read by the admin listener, so freed only after it stops */
    struct stats_worker *counters[CONFIG_MAX_WORKERS];
};

static void usage(FILE *out)
{
    fprintf(out, "usage: clonegate -c FILE      run with the ini file FILE\n"
                 "       clonegate -t -c FILE   check FILE and exit\n"
                 "       clonegate -V           print versions and exit\n"
                 "       clonegate -h           this help\n");
}

static void print_versions(void)
{
    printf("clonegate %s\n", CLONEGATE_VERSION);
    printf("libevent %s\n", event_get_version());
    printf("openssl %s\n", OpenSSL_version(OPENSSL_VERSION));
    printf("hiredis %d.%d.%d\n", HIREDIS_MAJOR, HIREDIS_MINOR, HIREDIS_PATCH);
    printf("llhttp %d.%d.%d\n", LLHTTP_VERSION_MAJOR, LLHTTP_VERSION_MINOR, LLHTTP_VERSION_PATCH);
}

/* What a reload cannot change while running: said once, not applied. */
static void warn_unreloadable(const struct config *old, const struct config *cfg)
{
    bool same = old->listen_count == cfg->listen_count;
    for (unsigned i = 0; same && i < cfg->listen_count; i++)
        same = strcmp(old->listen[i].text, cfg->listen[i].text) == 0;
    if (!same)
        log_warnx("reload: server.listen changed; it takes a restart to apply");
    if (old->workers != cfg->workers)
        log_warnx("reload: server.workers changed; it takes a restart to apply");
    if (strcmp(old->access_log, cfg->access_log) != 0)
        log_warnx("reload: server.access_log changed; it takes a restart to apply");
    if (old->access_log_format != cfg->access_log_format)
        log_warnx("reload: server.access_log_format changed; it takes a restart to apply");
    bool same_stats = old->stats_listen_count == cfg->stats_listen_count;
    for (unsigned i = 0; same_stats && i < cfg->stats_listen_count; i++)
        same_stats = strcmp(old->stats_listen[i].text, cfg->stats_listen[i].text) == 0;
    if (!same_stats || strcmp(old->stats_auth, cfg->stats_auth) != 0 ||
        old->stats_allow_count != cfg->stats_allow_count)
        log_warnx("reload: [stats] changed; it takes a restart to apply");
    /* turning the cache off applies at once; on, only if it was on at start */
    if (!old->cache_enabled && cfg->cache_enabled)
        log_warnx("reload: cache.enabled changed to yes; the cache was off at start and it "
                  "takes a restart to turn it on");
    if (old->cache_memory != cfg->cache_memory)
        log_warnx("reload: cache.memory changed; it takes a restart to apply");
    if (strcmp(old->cache_redis, cfg->cache_redis) != 0)
        log_warnx("reload: cache.redis changed; it takes a restart to apply");
    if (old->cache_redis_timeout_ms != cfg->cache_redis_timeout_ms)
        log_warnx("reload: cache.redis_timeout changed; it takes a restart to apply");
    bool same_tls = old->tls_listen_count == cfg->tls_listen_count;
    for (unsigned i = 0; same_tls && i < cfg->tls_listen_count; i++)
        same_tls = strcmp(old->tls_listen[i].text, cfg->tls_listen[i].text) == 0;
    if (!same_tls)
        log_warnx("reload: tls.listen changed; it takes a restart to apply");
}

/* Whether something already accepts connections at <addr>. Our listeners
 * share their port through SO_REUSEPORT, which would let a second
 * clonegate join the first one silently: ask before binding. */
static bool already_listening(const struct config_addr *addr)
{
    struct sockaddr_storage ss = addr->sa;
    /* a wildcard address is asked through loopback */
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        if (s4->sin_addr.s_addr == htonl(INADDR_ANY))
            s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        if (IN6_IS_ADDR_UNSPECIFIED(&s6->sin6_addr))
            s6->sin6_addr = in6addr_loopback;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd == -1)
        return false;
    bool busy = connect(fd, (const struct sockaddr *)&ss, addr->salen) == 0;
    close(fd);
    return busy;
}

static void main_on_hup(evutil_socket_t sig, short what, void *arg)
{
    struct main_state *m = arg;
    (void)sig;
    (void)what;
    log_info("SIGHUP: reloading %s", m->cfg->path);
    struct config *cfg = config_load(m->cfg->path, stderr);
    if (!cfg) {
        log_error("reload failed: %s has errors; the old configuration keeps serving",
                  m->cfg->path);
        return;
    }
    /* compared with what is really in force: the file read at start */
    warn_unreloadable(m->boot_cfg, cfg);
    if (log_set_level(cfg->error_log_level) == -1)
        log_warnx("reload: unknown error_log_level %s", cfg->error_log_level);
    if (cfg->tls_listen_count > 0) {
        /* new certificates for new connections; a bad one keeps the old */
        struct tls_server *t = tls_server_new(cfg, stderr);
        if (!t) {
            log_error("reload: [tls] certificates not loaded; the old ones stay in use");
        } else {
            pthread_mutex_lock(&m->shared.tls_lock);
            struct tls_server *old = m->shared.tls;
            m->shared.tls = t;
            pthread_mutex_unlock(&m->shared.tls_lock);
            tls_server_unref(old);
        }
    }
    /* health first: new pools look their servers' state up there */
    health_reload(m->health, cfg);
    for (unsigned i = 0; i < m->worker_count; i++)
        worker_reload(m->workers[i], cfg);
    config_unref(m->cfg);
    m->cfg = cfg;
    log_info("reloaded: %u server(s)", cfg->server_count);
}

static void main_on_term(evutil_socket_t sig, short what, void *arg)
{
    struct main_state *m = arg;
    (void)what;
    log_info("%s: draining (up to %u ms)", sig == SIGINT ? "SIGINT" : "SIGTERM",
             m->cfg->drain_timeout_ms);
    __atomic_store_n(&m->shared.draining, 1, __ATOMIC_RELEASE);
    for (unsigned i = 0; i < m->worker_count; i++)
        worker_stop(m->workers[i]);
    event_base_loopbreak(m->base);
}

static void main_on_usr1(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    (void)arg;
    if (log_access_reopen() == -1)
        log_warn("SIGUSR1: cannot reopen the access log");
    else
        log_info("SIGUSR1: access log reopened");
}

/* Raises the descriptor limit to what the system allows this process, and
 * warns when max_connections clients alone would run out of it (each busy
 * one holds a connection to a clone too, plus the pools, Redis and logs). */
static void raise_nofile_limit(const struct config *cfg)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == -1) {
        log_warn("getrlimit(RLIMIT_NOFILE)");
        return;
    }
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t was = rl.rlim_cur;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) == -1) {
            log_warn("setrlimit(RLIMIT_NOFILE)");
            rl.rlim_cur = was;
        }
    }
    unsigned long long need = (unsigned long long)cfg->max_connections + MAIN_SPARE_FDS;
    if (rl.rlim_cur != RLIM_INFINITY && need > (unsigned long long)rl.rlim_cur)
        log_warnx(
            "max_connections = %u needs more than %llu file descriptors and the limit is %llu: "
            "raise it (ulimit -n, systemd LimitNOFILE=) or lower max_connections",
            cfg->max_connections, need, (unsigned long long)rl.rlim_cur);
}

/* For -t: whether the access log file can be opened for appending, as the
 * start will: its directory exists and takes writes (and the file, if it
 * exists). 0, or -1 with the reason on stderr. */
static int check_access_log(const struct config *cfg, const char *ini)
{
    const char *path = cfg->access_log;
    if (strcmp(path, "off") == 0 || strcmp(path, "stderr") == 0)
        return 0;
    if (access(path, F_OK) == 0) {
        if (access(path, W_OK) == 0)
            return 0;
        fprintf(stderr, "%s: [server] access_log: cannot write %s: %s\n", ini, path,
                strerror(errno));
        return -1;
    }
    char dir[CONFIG_PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        slash[1] = '\0'; /* a file in / */
    else if (slash)
        *slash = '\0';
    else
        snprintf(dir, sizeof(dir), "."); /* relative to the working directory */
    if (access(dir, W_OK | X_OK) == 0)
        return 0;
    fprintf(stderr, "%s: [server] access_log: cannot create %s: %s: %s\n", ini, path, dir,
            strerror(errno));
    return -1;
}

static int run(const char *path)
{
    struct main_state m = {0};
    struct event *sig_hup = NULL, *sig_term = NULL, *sig_int = NULL, *sig_usr1 = NULL;
    int status = 1;

    m.cfg = config_load(path, stderr);
    if (!m.cfg)
        return 1;
    m.boot_cfg = config_ref(m.cfg);
    if (log_set_level(m.cfg->error_log_level) == -1)
        log_warnx("unknown error_log_level %s", m.cfg->error_log_level);
    raise_nofile_limit(m.cfg);
    if (log_access_open(m.cfg->access_log, m.cfg->access_log_format == CONFIG_LOG_JSON) == -1) {
        log_warn("cannot open the access log %s", m.cfg->access_log);
        goto fail;
    }
    for (unsigned i = 0; i < m.cfg->listen_count; i++) {
        if (already_listening(&m.cfg->listen[i])) {
            log_error("cannot listen on %s: address already in use", m.cfg->listen[i].text);
            goto fail;
        }
    }
    /* a peer closing mid-write is an error return, not a signal */
    signal(SIGPIPE, SIG_IGN);

    m.base = event_base_new();
    if (!m.base)
        goto fail;
    sig_hup = evsignal_new(m.base, SIGHUP, main_on_hup, &m);
    sig_term = evsignal_new(m.base, SIGTERM, main_on_term, &m);
    sig_int = evsignal_new(m.base, SIGINT, main_on_term, &m);
    sig_usr1 = evsignal_new(m.base, SIGUSR1, main_on_usr1, &m);
    if (!sig_hup || !sig_term || !sig_int || !sig_usr1)
        goto fail;
    evsignal_add(sig_hup, NULL);
    evsignal_add(sig_term, NULL);
    evsignal_add(sig_int, NULL);
    evsignal_add(sig_usr1, NULL);

    pthread_mutex_init(&m.shared.tls_lock, NULL);
    if (m.cfg->tls_listen_count > 0) {
        m.shared.tls = tls_server_new(m.cfg, stderr); /* dropped after the workers */
        if (!m.shared.tls) {
            log_warnx("cannot set up TLS");
            goto fail;
        }
    }
    if (m.cfg->cache_enabled) {
        m.shared.cache = cache_new(m.cfg->cache_memory); /* freed after the workers */
        if (!m.shared.cache) {
            log_warnx("cannot set up the cache");
            goto fail;
        }
    }
    m.health = health_new(m.cfg);
    if (!m.health) {
        log_warnx("cannot set up health checks");
        goto fail;
    }
    if (m.shared.cache) {
        /* on the admin (health) thread's base: admin purges and the subscription */
        m.shared.purge = purge_new(health_base(m.health), m.shared.cache, m.cfg);
        if (!m.shared.purge) {
            log_warnx("cannot set up purging");
            goto fail;
        }
    }
    m.admin = stats_admin_start(health_base(m.health), m.cfg, m.health, &m.shared.draining);
    if (!m.admin)
        goto fail;

    /* threads inherit the signal mask: block them there, main's base gets them */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGHUP);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    for (unsigned i = 0; i < m.cfg->workers; i++) {
        m.counters[i] = calloc(1, sizeof(*m.counters[i])); /* freed at the end of run() */
        struct worker *w =
            m.counters[i] ? worker_new(i, m.cfg, &m.shared, m.health, m.counters[i]) : NULL;
        if (!w) {
            pthread_sigmask(SIG_SETMASK, &old, NULL);
            goto fail;
        }
        m.workers[m.worker_count++] = w;
    }
    for (unsigned i = 0; i < m.worker_count; i++) {
        if (worker_start(m.workers[i]) == -1) {
            log_warn("cannot start worker %u", i);
            pthread_sigmask(SIG_SETMASK, &old, NULL);
            for (unsigned j = 0; j < i; j++)
                worker_stop(m.workers[j]);
            goto fail;
        }
    }
    stats_admin_set_workers(m.admin, m.counters, m.worker_count);
    /* a clone a reload puts back starts with zero figures there too */
    health_set_on_fresh(m.health, stats_admin_on_server_fresh, m.admin);
    const struct store_redis_stats *redis[CONFIG_MAX_WORKERS] = {0}; /* copied by the admin */
    for (unsigned i = 0; i < m.worker_count; i++)
        redis[i] = m.workers[i]->redis ? store_redis_stats(m.workers[i]->redis) : NULL;
    stats_admin_set_cache(m.admin, m.shared.cache, redis, m.worker_count);
    stats_admin_set_purge(m.admin, m.shared.purge);
    if (health_start(m.health) == -1) {
        log_warn("cannot start the health thread");
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        for (unsigned j = 0; j < m.worker_count; j++)
            worker_stop(m.workers[j]);
        goto fail;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    for (unsigned i = 0; i < m.cfg->listen_count; i++)
        log_info("clonegate %s listening on %s, %u worker(s), %u server(s)", CLONEGATE_VERSION,
                 m.cfg->listen[i].text, m.worker_count, m.cfg->server_count);
    for (unsigned i = 0; i < m.cfg->tls_listen_count; i++)
        log_info("clonegate %s listening on %s (TLS), %u worker(s), %u server(s)",
                 CLONEGATE_VERSION, m.cfg->tls_listen[i].text, m.worker_count, m.cfg->server_count);
    event_base_dispatch(m.base);
    status = 0;
fail:
    /* worker_join_free() frees each worker's Redis link: the admin keeps
     * the last figures from here on */
    if (m.admin)
        stats_admin_set_cache(m.admin, m.shared.cache, NULL, 0);
    for (unsigned i = 0; i < m.worker_count; i++)
        worker_join_free(m.workers[i]);
    /* the admin listener lives on the health thread: stop it, then free */
    health_stop(m.health);
    purge_free(m.shared.purge); /* its Redis links live on the health thread's base */
    m.shared.purge = NULL;
    stats_admin_free(m.admin);
    health_free(m.health);
    for (unsigned i = 0; i < CONFIG_MAX_WORKERS; i++)
        free(m.counters[i]);
    cache_free(m.shared.cache);
    m.shared.cache = NULL;
    tls_server_unref(m.shared.tls);
    m.shared.tls = NULL;
    if (status == 0)
        log_info("stopped");
    if (sig_hup)
        event_free(sig_hup);
    if (sig_term)
        event_free(sig_term);
    if (sig_int)
        event_free(sig_int);
    if (sig_usr1)
        event_free(sig_usr1);
    if (m.base)
        event_base_free(m.base);
    config_unref(m.cfg);
    config_unref(m.boot_cfg);
    return status;
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    bool test_only = false;
    int opt;

    log_init();
    /* before any event_base: the health thread's base is woken from other
     * threads (workers ask for NOLOCK bases and stay lock-free) */
    if (evthread_use_pthreads() == -1) {
        fprintf(stderr, "clonegate: cannot set up libevent threading\n");
        return 1;
    }
#ifdef CLONEGATE_DEBUG
    /* libevent checks every event operation against its own records */
    event_enable_debug_mode();
#endif
    while ((opt = getopt(argc, argv, "c:tVh")) != -1) {
        switch (opt) {
        case 'c':
            if (path) {
                /* which file was meant is a guess we do not make */
                fprintf(stderr, "clonegate: -c given more than once\n");
                usage(stderr);
                return 2;
            }
            path = optarg;
            break;
        case 't':
            test_only = true;
            break;
        case 'V':
            print_versions();
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!path || optind != argc) {
        if (!path)
            fprintf(stderr, "clonegate: no configuration file: give it with -c FILE\n");
        else
            fprintf(stderr, "clonegate: unexpected argument: %s\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (test_only) {
        struct config *cfg = config_load(path, stderr);
        if (!cfg)
            return 1;
        int tls_rc = tls_check(cfg, stdout); /* a line per certificate, or why not */
        int log_rc = check_access_log(cfg, path);
        config_unref(cfg);
        if (tls_rc == -1 || log_rc == -1)
            return 1;
        printf("configuration ok\n");
        return 0;
    }
    return run(path) == 0 ? 0 : 1;
}
