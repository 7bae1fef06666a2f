#!/usr/bin/env bash
# run-demo.sh: what `make run` runs once the build is done. Starts
# redis-server on 127.0.0.1:6379 (no persistence; an instance already
# listening there is reused and left alone), two demo clones on
# 127.0.0.1:9001 (clone1) and 127.0.0.1:9002 (clone2), then clonegate on
# config/clonegate.ini. Ctrl-C, SIGTERM or the proxy exiting stops everything
# this script started, by PID, and nothing else.
#
#   BUILD=build CONFIG=config/clonegate.ini examples/run-demo.sh
set -eu

cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
CONFIG=${CONFIG:-config/clonegate.ini}
REDIS_PORT=6379
CLONE_PORTS=(9001 9002)
READY_TRIES=50     # x 0.1 s: how long a helper may take to listen
STOP_TRIES=50      # x 0.1 s: how long a helper may take to exit on SIGTERM
PROXY_STOP_TRIES=400 # x 0.1 s: clonegate drains in-flight requests first

helper_pids=()     # redis-server and the clones, stopped last
proxy_pid=""
scratch=""

say() { printf 'run-demo: %s\n' "$*"; }

# Whether something accepts TCP connections on 127.0.0.1:$1.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Waits for $1 (pid) to listen on port $2; fails if it exits or takes too long.
wait_listening() {
    local i
    for ((i = 0; i < READY_TRIES; i++)); do
        running "$1" || return 1
        listening "$2" && return 0
        sleep 0.1
    done
    return 1
}

# Whether pid $1 still runs (an exited child stays a zombie until waited for).
running() {
    local state
    state=$(sed -n 's/^.*) \(.\).*$/\1/p' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}

# shellcheck disable=SC2317 # called from cleanup(), a trap
# SIGTERM to pid $1, then SIGKILL if it has not exited after $2 tries.
stop_pid() {
    local i
    if running "$1"; then
        kill -TERM "$1" 2>/dev/null || true
    fi
    for ((i = 0; i < $2; i++)); do
        running "$1" || break
        sleep 0.1
    done
    if running "$1"; then
        say "pid $1 did not exit on SIGTERM; sending SIGKILL"
        kill -KILL "$1" 2>/dev/null || true
    fi
    wait "$1" 2>/dev/null || true
}

# shellcheck disable=SC2317 # a trap
cleanup() {
    local pid
    trap - EXIT INT TERM
    if [ -n "$proxy_pid" ]; then
        stop_pid "$proxy_pid" "$PROXY_STOP_TRIES"
    fi
    for pid in "${helper_pids[@]}"; do
        stop_pid "$pid" "$STOP_TRIES"
    done
    [ -z "$scratch" ] || rm -rf "$scratch"
    say "stopped everything it started"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# Every background job in a process group of its own: Ctrl-C reaches this
# shell alone, which then stops the proxy first (it drains) and the clones
# and Redis after it, instead of all of them at once.
set -m

for bin in "$BUILD/clonegate" "$BUILD/democlone"; do
    [ -x "$bin" ] || { say "$bin is missing: run make first"; exit 1; }
done
[ -f "$CONFIG" ] || { say "$CONFIG is missing"; exit 1; }
scratch=$(mktemp -d "${TMPDIR:-/tmp}/clonegate-demo.XXXXXX")

if listening "$REDIS_PORT"; then
    say "something already listens on 127.0.0.1:$REDIS_PORT; reusing it as the Redis"
else
    command -v redis-server >/dev/null || { say "redis-server not found: run make deps"; exit 1; }
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
        --dir "$scratch" --logfile "$scratch/redis.log" --daemonize no &
    helper_pids+=($!)
    wait_listening "$!" "$REDIS_PORT" || {
        say "redis-server did not start; its log:"
        cat "$scratch/redis.log" >&2 || true
        exit 1
    }
    say "started redis-server (pid $!) on 127.0.0.1:$REDIS_PORT, log $scratch/redis.log"
fi

for i in "${!CLONE_PORTS[@]}"; do
    port=${CLONE_PORTS[$i]}
    name="clone$((i + 1))"
    if listening "$port"; then
        say "127.0.0.1:$port is already in use; stop what listens there"
        exit 1
    fi
    "$BUILD/democlone" -l "127.0.0.1:$port" -n "$name" &
    helper_pids+=($!)
    wait_listening "$!" "$port" || { say "democlone $name did not start"; exit 1; }
    say "started democlone $name (pid $!) on 127.0.0.1:$port"
done

# The first [server] listen address, for the hint below.
listen=$(awk -F= '
    /^[ \t]*\[/ { section = $0; gsub(/[ \t\[\]]/, "", section); next }
    section == "server" && $1 ~ /^[ \t]*listen[ \t]*$/ {
        v = $2; sub(/;.*/, "", v); split(v, a, ","); gsub(/[ \t]/, "", a[1]); print a[1]; exit
    }' "$CONFIG")
port=${listen##*:}

# In the background so that this shell can act on signals while it runs.
"$BUILD/clonegate" -c "$CONFIG" &
proxy_pid=$!
say "started clonegate (pid $proxy_pid) on $CONFIG; Ctrl-C stops everything"
say "try: curl -i localhost:${port:-8080}/"
rc=0
wait "$proxy_pid" || rc=$?
proxy_pid=""
say "clonegate exited with status $rc"
exit "$rc"
