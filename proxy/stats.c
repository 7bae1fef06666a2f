/*
 * stats: the admin HTTP listener, on the health thread.
 *
 * Owns the evhttp server and its listeners (freed by stats_admin_free()).
 * Borrows the health state (read through health_snapshot(), which copies
 * under the health lock) and the process's draining flag. Runs only on the
 * health thread; answers are small and built in one evbuffer per request.
 */
#include "stats.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>

#include "health.h"
#include "log.h"

#define STATS_MAX_VIEWS 256 /* servers shown at most */

struct stats_admin {
    struct evhttp *http; /* owned; NULL when no admin listener is configured */
    struct health *hl;   /* borrowed */
    const int *draining; /* borrowed: atomic */
    time_t started;      /* for uptime */
    unsigned workers;    /* as configured at start */
};

/* Appends <s> as a JSON string (quotes included). */
static void json_string(struct evbuffer *out, const char *s)
{
    evbuffer_add(out, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            evbuffer_add_printf(out, "\\%c", c);
        else if (c < 0x20)
            evbuffer_add_printf(out, "\\u%04x", c);
        else
            evbuffer_add(out, s, 1);
    }
    evbuffer_add(out, "\"", 1);
}

static const char *state_name(const struct health_server_view *v)
{
    if (!v->in_config)
        return "removed";
    if (v->draining)
        return "draining";
    return v->up ? "up" : "down";
}

static void render_server(struct evbuffer *out, const struct health_server_view *v)
{
    evbuffer_add_printf(out, "{\"address\":");
    json_string(out, v->addr);
    evbuffer_add_printf(out,
                        ",\"state\":\"%s\",\"up\":%s,\"draining\":%s,\"checks_passed\":%llu,"
                        "\"checks_failed\":%llu,\"traffic_failures\":%llu,\"consecutive\":%u,"
                        "\"last_change\":%lld,\"last_error\":",
                        state_name(v), v->up ? "true" : "false", v->draining ? "true" : "false",
                        (unsigned long long)v->checks_passed, (unsigned long long)v->checks_failed,
                        (unsigned long long)v->traffic_failures, v->consecutive,
                        (long long)v->last_change);
    json_string(out, v->last_error);
    evbuffer_add(out, "}", 1);
}

static void reply(struct evhttp_request *req, int code, const char *reason, struct evbuffer *body,
                  const char *type)
{
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", type);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-store");
    evhttp_send_reply(req, code, reason, body);
}

static void serve_stats(struct stats_admin *a, struct evhttp_request *req, struct evbuffer *out)
{
    struct health_server_view *views = calloc(STATS_MAX_VIEWS, sizeof(*views)); /* freed below */
    if (!views) {
        evhttp_send_error(req, 500, "out of memory");
        return;
    }
    size_t n = health_snapshot(a->hl, views, STATS_MAX_VIEWS);
    evbuffer_add_printf(out,
                        "{\"version\":\"%s\",\"uptime\":%lld,\"workers\":%u,\"draining\":%s,"
                        "\"servers\":[",
                        CLONEGATE_VERSION, (long long)(time(NULL) - a->started), a->workers,
                        __atomic_load_n(a->draining, __ATOMIC_RELAXED) ? "true" : "false");
    for (size_t i = 0; i < n; i++) {
        if (i)
            evbuffer_add(out, ",", 1);
        render_server(out, &views[i]);
    }
    evbuffer_add_printf(out, "]}\n");
    free(views);
    reply(req, 200, "OK", out, "application/json");
}

/* POST /servers/<addr>/drain|ready */
static void serve_server_action(struct stats_admin *a, struct evhttp_request *req,
                                struct evbuffer *out, const char *rest)
{
    const char *slash = strrchr(rest, '/');
    char addr[CONFIG_ADDR_TEXT];
    if (!slash || (size_t)(slash - rest) >= sizeof(addr) || slash == rest) {
        evhttp_send_error(req, 404, "Not Found");
        return;
    }
    memcpy(addr, rest, (size_t)(slash - rest));
    addr[slash - rest] = '\0';
    bool drain;
    if (strcmp(slash + 1, "drain") == 0)
        drain = true;
    else if (strcmp(slash + 1, "ready") == 0)
        drain = false;
    else {
        evhttp_send_error(req, 404, "Not Found");
        return;
    }
    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "POST");
        evhttp_send_error(req, 405, "Method Not Allowed");
        return;
    }
    if (health_set_draining(a->hl, addr, drain) == -1) {
        evbuffer_add_printf(out, "{\"error\":\"no such server\",\"address\":");
        json_string(out, addr);
        evbuffer_add_printf(out, "}\n");
        reply(req, 404, "Not Found", out, "application/json");
        return;
    }
    evbuffer_add_printf(out, "{\"address\":");
    json_string(out, addr);
    evbuffer_add_printf(out, ",\"draining\":%s}\n", drain ? "true" : "false");
    reply(req, 200, "OK", out, "application/json");
}

static void stats_on_request(struct evhttp_request *req, void *arg)
{
    struct stats_admin *a = arg;
    const char *uri = evhttp_request_get_uri(req);
    struct evbuffer *out = evbuffer_new(); /* freed below; evhttp copies it out */
    if (!out) {
        evhttp_send_error(req, 500, "out of memory");
        return;
    }
    char path[256];
    size_t len = strcspn(uri, "?");
    if (len >= sizeof(path))
        len = sizeof(path) - 1;
    memcpy(path, uri, len);
    path[len] = '\0';
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    bool get = cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD;

    if (strcmp(path, "/stats") == 0 && get) {
        serve_stats(a, req, out);
    } else if (strcmp(path, "/health") == 0 && get) {
        bool draining = __atomic_load_n(a->draining, __ATOMIC_RELAXED);
        evbuffer_add_printf(out, draining ? "draining\n" : "ok\n");
        reply(req, draining ? 503 : 200, draining ? "Service Unavailable" : "OK", out,
              "text/plain");
    } else if (strncmp(path, "/servers/", 9) == 0) {
        serve_server_action(a, req, out, path + 9);
    } else {
        evhttp_send_error(req, 404, "Not Found");
    }
    evbuffer_free(out);
}

struct stats_admin *stats_admin_start(struct event_base *base, const struct config *cfg,
                                      struct health *hl, const int *draining)
{
    struct stats_admin *a = calloc(1, sizeof(*a)); /* freed by stats_admin_free() */
    if (!a)
        return NULL;
    a->hl = hl;
    a->draining = draining;
    a->started = time(NULL);
    a->workers = cfg->workers;
    if (cfg->stats_listen_count == 0)
        return a;
    a->http = evhttp_new(base);
    if (!a->http)
        goto fail;
    evhttp_set_gencb(a->http, stats_on_request, a);
    evhttp_set_allowed_methods(a->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST);
    for (unsigned i = 0; i < cfg->stats_listen_count; i++) {
        const struct config_addr *addr = &cfg->stats_listen[i];
        struct evconnlistener *l = evconnlistener_new_bind(
            base, NULL, NULL, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC | LEV_OPT_REUSEABLE, -1,
            (const struct sockaddr *)&addr->sa, (int)addr->salen);
        if (!l) {
            log_warn("cannot listen on %s for the admin listener", addr->text);
            goto fail;
        }
        if (!evhttp_bind_listener(a->http, l)) {
            evconnlistener_free(l);
            goto fail;
        }
        log_info("admin listener on %s", addr->text);
    }
    return a;
fail:
    stats_admin_free(a);
    return NULL;
}

void stats_admin_free(struct stats_admin *a)
{
    if (!a)
        return;
    if (a->http)
        evhttp_free(a->http);
    free(a);
}
