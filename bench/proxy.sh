#!/usr/bin/env bash
# bench/proxy.sh — Switchyard as an HTTP/1.1 reverse proxy, compared in one run
# against a direct connection to the backend, HAProxy and nginx.
#
#   bench/proxy.sh                 default run (about ten minutes)
#   bench/proxy.sh --quick         smoke run (about a minute)
#   bench/proxy.sh --no-policies   also measure Switchyard with retry, breaker
#                                  and outlier ejection off (an extra data point)
#   bench/proxy.sh --same-headers  also measure HAProxy and nginx configured to
#                                  do Switchyard's default header work
#                                  (X-Forwarded-For/-Proto/-Host, a request id
#                                  sent upstream and returned): haproxy-fwd,
#                                  nginx-fwd
#
# What it does, all on 127.0.0.1 (loopback only, every loop bounded):
#   backend   nginx, worker_processes 1, `return 200 "ok\n"` — every target
#             below reaches this same backend
#   direct    the load generator talks to the backend itself (the baseline)
#   haproxy   nbthread 1, mode http, keep-alive to the backend, http-reuse always
#   nginx     worker_processes 1, upstream keepalive 64, proxy_http_version 1.1
#   switchyard  target/release/switchyard with TOKIO_WORKER_THREADS=1, one
#             listener, one service, one route `/{*rest}`; default policies
#             (timeout, retry with budget, breaker, P2C balancer, outlier
#             ejection) stay on
#
# Metrics:
#   throughput  wrk, fixed connections and duration, ROUNDS rounds in rotating
#               order → requests/s (median of the rounds), the CPU time
#               the target's own processes used per request, and what the
#               backend and wrk used per request meanwhile (a proxy that
#               hands them work in smaller batches costs them more)
#   latency     oha in open-loop constant-rate mode (-q RATE) with
#               --latency-correction (coordinated omission corrected) →
#               p50/p99/p99.9 at RATE requests/s (median of the rounds),
#               and the CPU time the target's processes spent per request
#               meanwhile (with cold caches: what it adds to latency)
#   memory      RSS of each proxy idle at start, then with IDLE_CONNS idle
#               keep-alive client connections open → bytes per idle connection
#
# Knobs (environment): WORKERS (threads/processes per proxy, 1), CONNS (wrk
# connections, 32), WRK_THREADS (1), RATE (fixed request rate, 5000),
# OHA_CONNS (32), IDLE_CONNS (10000), ROUNDS, DURATION, LAT_ROUNDS,
# LAT_DURATION (seconds), SWITCHYARD_BIN (skip the cargo build), KEEP_TMP=1,
# SWITCHYARD_BASELINE_BIN (an older switchyard binary measured in the same run
# as the extra target switchyard-baseline, same config: before/after A/B).
#
# Installs what it needs when missing: `apt-get install haproxy nginx-light
# wrk` and `cargo install --locked --root bench/.tools oha`. If oha cannot be
# installed, latency falls back to wrk's closed-loop percentiles (NOT
# corrected for coordinated omission) and the summary says so.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")

QUICK=0
NO_POLICIES=0
SAME_HEADERS=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        --no-policies) NO_POLICIES=1 ;;
        --same-headers) SAME_HEADERS=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "proxy.sh: unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done

WORKERS=${WORKERS:-1}
CONNS=${CONNS:-32}
WRK_THREADS=${WRK_THREADS:-1}
RATE=${RATE:-5000}
OHA_CONNS=${OHA_CONNS:-32}
if [ "$QUICK" = 1 ]; then
    ROUNDS=${ROUNDS:-1}; DURATION=${DURATION:-3}
    LAT_ROUNDS=${LAT_ROUNDS:-1}; LAT_DURATION=${LAT_DURATION:-3}
    WARMUP=${WARMUP:-1}; IDLE_CONNS=${IDLE_CONNS:-2000}
else
    # Nine rounds of 6 s: the summary pairs each round's figures (more,
    # shorter pairs follow the machine's drift closer), and with nine pairs
    # a sign test can tell a lead from noise (p 0.04 at 8 of 9; with five
    # rounds it never goes below 0.06).
    ROUNDS=${ROUNDS:-9}; DURATION=${DURATION:-6}
    # Nine rounds of 8 s: a round's p99 moves by half between rounds on a
    # shared machine (one noisy spell), and the summary pairs them too.
    LAT_ROUNDS=${LAT_ROUNDS:-9}; LAT_DURATION=${LAT_DURATION:-8}
    WARMUP=${WARMUP:-2}; IDLE_CONNS=${IDLE_CONNS:-10000}
fi

BENCH_NAME=proxy.sh
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
# shellcheck source=bench/configs.sh
. "$HERE/configs.sh"

# ---------------------------------------------------------------- tools
ensure_apt wrk=wrk haproxy=haproxy nginx=nginx-light curl=curl /usr/bin/time=time
command -v python3 >/dev/null || die "python3 is needed (idle-connection client, summary)"

find_oha install
[ -n "$OHA" ] || log "no oha: latency falls back to wrk (closed loop, no coordinated-omission correction)"

build_switchyard

# ---------------------------------------------------------------- setup
# Every proxy and the Python client need room for IDLE_CONNS sockets.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FDS=$(ulimit -n)

use_scratch switchyard-bench
RES="$TMP/results"
mkdir -p "$RES/tput" "$RES/lat" "$TMP/nginx-proxy/logs" "$TMP/nginx-fwd/logs"

# Free ports, all picked at once so none repeats.
read -r P_BACKEND P_HAPROXY P_NGINX P_SY P_SY_ADMIN P_SYN P_SYN_ADMIN P_SYB P_SYB_ADMIN P_HAPROXYF P_NGINXF < <(free_ports 11)

MAXCONN=$((IDLE_CONNS + 500))

nginx_proxy_config nginx-proxy "$P_NGINX" "" >"$TMP/nginx-proxy.conf"
# The same header work as Switchyard's defaults (the time-left field aside).
nginx_proxy_config nginx-fwd "$P_NGINXF" '
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Request-ID $request_id;
            add_header X-Request-ID $request_id always;' >"$TMP/nginx-fwd.conf"

haproxy_config "$P_HAPROXY" "" >"$TMP/haproxy.cfg"
haproxy_config "$P_HAPROXYF" '    option forwardfor
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    unique-id-format %{+X}o\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid
    http-request set-header X-Request-ID %[unique-id]
    http-response set-header X-Request-ID %[unique-id]' >"$TMP/haproxy-fwd.cfg"

sy_config "$P_SY" "$P_SY_ADMIN" "" >"$TMP/switchyard.toml"
sy_config "$P_SYB" "$P_SYB_ADMIN" "" >"$TMP/switchyard-baseline.toml"
sy_config "$P_SYN" "$P_SYN_ADMIN" '
[services.backend.outlier]
consecutive_failures = 0
success_rate_threshold = 0.0
latency_factor = 0.0

[services.backend.policy]
retry = { max_attempts = 1 }
breaker = { mode = "disabled" }
' >"$TMP/switchyard-nopol.toml"
"$SY" config check "$TMP/switchyard.toml" >&2 || die "switchyard config rejected"
if [ "$NO_POLICIES" = 1 ]; then
    "$SY" config check "$TMP/switchyard-nopol.toml" >&2 || die "switchyard no-policies config rejected"
fi

declare -A PORT PID
start_backend
PID[direct]=$STARTED_PID; PORT[direct]=$P_BACKEND

log "starting haproxy (nbthread $WORKERS) on :$P_HAPROXY"
haproxy -db -f "$TMP/haproxy.cfg" &
PIDS+=($!); PID[haproxy]=$!; PORT[haproxy]=$P_HAPROXY

log "starting nginx proxy (worker_processes $WORKERS) on :$P_NGINX"
nginx -p "$TMP/nginx-proxy" -c "$TMP/nginx-proxy.conf" -e stderr &
PIDS+=($!); PID[nginx]=$!; PORT[nginx]=$P_NGINX

log "starting switchyard (TOKIO_WORKER_THREADS=$WORKERS) on :$P_SY"
TOKIO_WORKER_THREADS=$WORKERS "$SY" serve -c "$TMP/switchyard.toml" 2>"$TMP/switchyard.log" &
PIDS+=($!); PID[switchyard]=$!; PORT[switchyard]=$P_SY

TARGETS=(direct haproxy nginx switchyard)
PROXIES=(haproxy nginx switchyard)
if [ "$SAME_HEADERS" = 1 ]; then
    log "starting haproxy and nginx with Switchyard's header work on :$P_HAPROXYF and :$P_NGINXF"
    haproxy -db -f "$TMP/haproxy-fwd.cfg" &
    PIDS+=($!); PID[haproxy-fwd]=$!; PORT[haproxy-fwd]=$P_HAPROXYF
    nginx -p "$TMP/nginx-fwd" -c "$TMP/nginx-fwd.conf" -e stderr &
    PIDS+=($!); PID[nginx-fwd]=$!; PORT[nginx-fwd]=$P_NGINXF
    TARGETS+=(haproxy-fwd nginx-fwd)
    PROXIES+=(haproxy-fwd nginx-fwd)
fi
if [ "$NO_POLICIES" = 1 ]; then
    log "starting switchyard without retry/breaker/outlier on :$P_SYN"
    TOKIO_WORKER_THREADS=$WORKERS "$SY" serve -c "$TMP/switchyard-nopol.toml" 2>"$TMP/switchyard-nopol.log" &
    PIDS+=($!); PID[switchyard-nopol]=$!; PORT[switchyard-nopol]=$P_SYN
    TARGETS+=(switchyard-nopol)
    PROXIES+=(switchyard-nopol)
fi
if [ -n "${SWITCHYARD_BASELINE_BIN:-}" ]; then
    [ -x "$SWITCHYARD_BASELINE_BIN" ] || die "no switchyard binary at $SWITCHYARD_BASELINE_BIN"
    log "starting baseline switchyard ($SWITCHYARD_BASELINE_BIN) on :$P_SYB"
    TOKIO_WORKER_THREADS=$WORKERS "$SWITCHYARD_BASELINE_BIN" serve -c "$TMP/switchyard-baseline.toml" 2>"$TMP/switchyard-baseline.log" &
    PIDS+=($!); PID[switchyard-baseline]=$!; PORT[switchyard-baseline]=$P_SYB
    TARGETS+=(switchyard-baseline)
    PROXIES+=(switchyard-baseline)
fi
for t in "${PROXIES[@]}"; do wait_http "$t" "http://127.0.0.1:${PORT[$t]}/" "${PID[$t]}"; done

# Check the worker count really is what we asked for.
SY_THREADS=$(ls "/proc/${PID[switchyard]}/task" | wc -l)
NGINX_WORKERS=$(pgrep -P "${PID[nginx]}" | wc -l)
HAPROXY_THREADS=$(ls "/proc/${PID[haproxy]}/task" | wc -l)
log "threads: switchyard process $SY_THREADS (tokio workers $WORKERS + main + blocking pool), haproxy $HAPROXY_THREADS, nginx workers $NGINX_WORKERS"

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
awk -v l="${LOAD_START%% *}" 'BEGIN { exit !(l < 0.5) }' || log "note: load average is $LOAD_START before the run: other work on this machine will add noise"

# Idle RSS, before any load.
declare -A RSS_START
for t in "${PROXIES[@]}"; do RSS_START[$t]=$(rss_kb "${PID[$t]}"); done

# ---------------------------------------------------------------- throughput
log "warm-up: ${WARMUP}s of wrk per target"
for t in "${TARGETS[@]}"; do
    wrk -t "$WRK_THREADS" -c "$CONNS" -d "${WARMUP}s" "http://127.0.0.1:${PORT[$t]}/" >/dev/null
done

for r in $(seq 1 "$ROUNDS"); do
    for t in $(rotate "$r" "${TARGETS[@]}"); do
        log "throughput round $r/$ROUNDS: $t (wrk -t$WRK_THREADS -c$CONNS -d${DURATION}s)"
        c0=$(cpu_ticks "${PID[$t]}"); u0=$(cpu_ticks "${PID[$t]}" user)
        b0=$(cpu_ticks "${PID[direct]}")
        /usr/bin/time -f "%U %S" -o "$RES/tput/$t.$r.wrkcpu" \
            wrk -t "$WRK_THREADS" -c "$CONNS" -d "${DURATION}s" --latency \
            "http://127.0.0.1:${PORT[$t]}/" >"$RES/tput/$t.$r.txt"
        echo $(($(cpu_ticks "${PID[$t]}") - c0)) >"$RES/tput/$t.$r.cpu"
        echo $(($(cpu_ticks "${PID[$t]}" user) - u0)) >"$RES/tput/$t.$r.user"
        echo $(($(cpu_ticks "${PID[direct]}") - b0)) >"$RES/tput/$t.$r.backend"
        grep -E 'Requests/sec' "$RES/tput/$t.$r.txt" >&2 || true
    done
done

# ---------------------------------------------------------------- latency
LAT_TOOL=oha
[ -n "$OHA" ] || LAT_TOOL=wrk
oha_json_flag="--json"
if [ -n "$OHA" ] && "$OHA" --help 2>/dev/null | grep -q -- '--output-format'; then
    oha_json_flag="--output-format json"
fi
for r in $(seq 1 "$LAT_ROUNDS"); do
    for t in $(rotate "$r" "${TARGETS[@]}"); do
        if [ "$LAT_TOOL" = oha ]; then
            log "latency round $r/$LAT_ROUNDS: $t (oha -q $RATE -c $OHA_CONNS -z ${LAT_DURATION}s --latency-correction)"
            n0=$(cpu_ns "${PID[$t]}")
            # shellcheck disable=SC2086
            "$OHA" -q "$RATE" -c "$OHA_CONNS" -z "${LAT_DURATION}s" --latency-correction \
                --no-tui $oha_json_flag "http://127.0.0.1:${PORT[$t]}/" >"$RES/lat/$t.$r.json"
            echo $(($(cpu_ns "${PID[$t]}") - n0)) >"$RES/lat/$t.$r.ns"
        else
            log "latency round $r/$LAT_ROUNDS: $t (wrk fallback, closed loop, -c $OHA_CONNS)"
            wrk -t 1 -c "$OHA_CONNS" -d "${LAT_DURATION}s" --latency \
                "http://127.0.0.1:${PORT[$t]}/" >"$RES/lat/$t.$r.txt"
        fi
    done
done

# ---------------------------------------------------------------- memory
printf 'target\trss_start_kb\trss_before_kb\trss_with_kb\tok\topen\n' >"$RES/mem.tsv"
for t in "${PROXIES[@]}"; do
    log "memory: $IDLE_CONNS idle keep-alive connections to $t"
    sleep 1
    before=$(rss_kb "${PID[$t]}")
    coproc IDLE { exec python3 "$HERE/idle_conns.py" "${PORT[$t]}" "$IDLE_CONNS" 180; }
    line=""
    read -r -t 150 line <&"${IDLE[0]}" || true
    sleep 2
    with=$(rss_kb "${PID[$t]}")
    fdw=${IDLE[1]}
    exec {fdw}>&-   # closing its stdin makes the client close its sockets and exit
    wait "$IDLE_PID" 2>/dev/null || true
    ok=$(sed -n 's/.*ok=\([0-9]*\).*/\1/p' <<<"$line"); open=$(sed -n 's/.*open=\([0-9]*\).*/\1/p' <<<"$line")
    log "  $line; RSS ${before} KiB → ${with} KiB"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "${RSS_START[$t]}" "$before" "$with" "${ok:-0}" "${open:-0}" >>"$RES/mem.tsv"
    sleep 1
done

# ---------------------------------------------------------------- summary
for t in "${TARGETS[@]}"; do kill -0 "${PID[$t]}" 2>/dev/null || die "$t died during the run"; done
cat >"$RES/meta.env" <<EOF
load_start=$LOAD_START
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
clk_tck=$(getconf CLK_TCK)
mode=$([ "$QUICK" = 1 ] && echo quick || echo default)
workers=$WORKERS
conns=$CONNS
wrk_threads=$WRK_THREADS
rounds=$ROUNDS
duration=$DURATION
rate=$RATE
oha_conns=$OHA_CONNS
lat_rounds=$LAT_ROUNDS
lat_duration=$LAT_DURATION
lat_tool=$LAT_TOOL
idle_conns=$IDLE_CONNS
targets=${TARGETS[*]}
date=$(date -u +%Y-%m-%dT%H:%MZ)
cpus=$(nproc)
haproxy=$(haproxy -v | head -1 | awk '{print $3}')
nginx=$(nginx -v 2>&1 | sed 's|.*nginx/||')
wrk=$(wrk -v 2>&1 | head -1 | awk '{print $2}')
oha=$([ -n "$OHA" ] && "$OHA" --version | awk '{print $2}' || echo none)
switchyard=$("$SY" --version | awk '{print $2}')
EOF
python3 "$HERE/summarize.py" "$RES"
