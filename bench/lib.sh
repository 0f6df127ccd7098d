# bench/lib.sh — helpers shared by the bench/*.sh scripts; source it after
# setting BENCH_NAME (the prefix of log lines) and HERE/ROOT.
#
#   log MSG / die MSG          timestamped lines on stderr; die exits 1
#   ensure_apt CMD=PKG...      apt-get install the packages whose command is missing
#   find_oha [install]         sets OHA to an oha binary ($OHA, PATH, bench/.tools),
#                              with `install` running `cargo install` into bench/.tools
#   build_switchyard           sets SY ($SWITCHYARD_BIN or a fresh release build)
#   free_ports N               prints N distinct free loopback ports
#   wait_http NAME URL PID [CURL_ARGS...]   waits until URL answers 2xx
#   cpu_ticks PID [user] / rss_kb PID  CPU ticks (user+system, or user only) / RSS
#                               of a process and its children
#   cpu_ns PID                 nanoseconds on a CPU of a process and its children
#   family PID                 the process and its direct children
#   start_backend              the backend of bench/configs.sh on P_BACKEND (STARTED_PID)
#   start_switchyard NAME BIN CONFIG PORT   one worker serving CONFIG (STARTED_PID)
#   rotate ROUND NAMES...      NAMES in an order rotated by ROUND
#   stop_pids PID...           TERM, up to 5 s to exit, then KILL
#   use_scratch NAME           TMP=a new directory /tmp/NAME.XXXXXX and PIDS=();
#                              on exit the PIDS are stopped and TMP removed
#                              (kept with KEEP_TMP=1)
# shellcheck shell=bash

log() { printf '[%s %s] %s\n' "${BENCH_NAME:-bench}" "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

ensure_apt() { # cmd=package ...
    local need=() pair
    for pair in "$@"; do
        command -v "${pair%%=*}" >/dev/null || need+=("${pair#*=}")
    done
    if [ "${#need[@]}" -gt 0 ]; then
        log "installing ${need[*]} (apt-get)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
}

find_oha() { # [install]
    if [ -n "${OHA:-}" ] && [ -x "$OHA" ]; then return 0; fi
    OHA=""
    if command -v oha >/dev/null; then
        OHA=$(command -v oha)
    elif [ -x "$HERE/.tools/bin/oha" ]; then
        OHA="$HERE/.tools/bin/oha"
    elif [ "${1:-}" = install ]; then
        log "installing oha into bench/.tools (cargo install --locked; a few minutes, once)"
        if cargo install --quiet --locked --root "$HERE/.tools" oha >&2; then
            OHA="$HERE/.tools/bin/oha"
        else
            log "oha could not be installed"
        fi
    fi
}

build_switchyard() {
    if [ -n "${SWITCHYARD_BIN:-}" ]; then
        SY=$SWITCHYARD_BIN
    else
        log "building switchyard (cargo build --release -p switchyard)"
        (cd "$ROOT" && cargo build --quiet --release -p switchyard) || die "switchyard build failed"
        SY="${CARGO_TARGET_DIR:-$ROOT/target}/release/switchyard"
    fi
    [ -x "$SY" ] || die "no switchyard binary at $SY"
}

free_ports() { # n → n distinct free ports, all picked at once so none repeats
    python3 -c '
import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])' "$1"
}

wait_http() { # name url pid [curl args...]
    local name=$1 url=$2 pid=$3 i
    shift 3
    for i in $(seq 1 100); do
        if curl -fs -o /dev/null --max-time 1 "$@" "$url"; then return 0; fi
        kill -0 "$pid" 2>/dev/null || die "$name exited at start (see above)"
        sleep 0.1
    done
    die "$name did not answer on $url within 10s"
}

family() { # pid → the process and its direct children (nginx's master and workers)
    echo "$1" $(pgrep -P "$1" 2>/dev/null || true)
}

cpu_ticks() { # pid [user] → user+system (or user only) CPU ticks of the process and its direct children
    local total=0 p v field='$14 + $15'
    [ "${2:-}" = user ] && field='$14'
    for p in $(family "$1"); do
        v=$(awk "{print $field}" "/proc/$p/stat" 2>/dev/null || echo 0)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

cpu_ns() { # pid → nanoseconds on CPU of the process and its direct children,
    # every thread (the scheduler's own count: exact, where ticks are 10 ms);
    # threads that exit between two readings drop out of the sum, so take
    # differences over a process whose threads stay (the proxies here: one
    # worker, or nginx's and HAProxy's fixed workers)
    local total=0 p v
    for p in $(family "$1"); do
        v=$(cat /proc/"$p"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {print s + 0}')
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

start_backend() { # → STARTED_PID: the backend of bench/configs.sh on
    # P_BACKEND, answering, in PIDS
    log "starting backend (nginx) on :$P_BACKEND"
    mkdir -p "$TMP/nginx-backend/logs"
    nginx_backend_config >"$TMP/nginx-backend.conf"
    nginx -p "$TMP/nginx-backend" -c "$TMP/nginx-backend.conf" -e stderr &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    wait_http backend "http://127.0.0.1:$P_BACKEND/" "$STARTED_PID"
}

start_switchyard() { # name binary config port → STARTED_PID: one worker
    # serving the config, answering on the port, in PIDS; log in TMP/name.log
    TOKIO_WORKER_THREADS=1 "$2" serve -c "$3" 2>"$TMP/$1.log" &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    wait_http "$1" "http://127.0.0.1:$4/" "$STARTED_PID"
}

rss_kb() { # pid → RSS of the process and its direct children, in KiB
    local total=0 p v
    for p in $(family "$1"); do
        v=$(awk '/^VmRSS:/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

stop_pids() { # pid... → TERM first (an nginx master killed outright leaves
    # its worker behind), up to 5 s to exit, then KILL
    local pid i alive
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for i in $(seq 1 50); do
        alive=0
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; done
}

use_scratch() { # name
    TMP=$(mktemp -d "/tmp/$1.XXXXXX")
    PIDS=()
    trap cleanup_scratch EXIT
    trap 'exit 130' INT TERM
}

cleanup_scratch() {
    stop_pids "${PIDS[@]}"
    if [ "${KEEP_TMP:-0}" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}

rotate() { # round names... → the names in an order rotated by round
    local r=$1
    shift
    local names=("$@") n=$# i
    for i in $(seq 0 $((n - 1))); do echo "${names[$(((i + r) % n))]}"; done
}
