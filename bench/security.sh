#!/usr/bin/env bash
# bench/security.sh — what TLS termination, JWT verification and call-limit
# checks add per request, measured in one run against one Switchyard process
# and one backend, as ratios to a plain route.
#
#   bench/security.sh            default run (about 3 minutes)
#   bench/security.sh --quick    smoke run (under a minute)
#
# Targets, all on 127.0.0.1, all through the same switchyard process
# (TOKIO_WORKER_THREADS=1) to the same nginx backend (`return 200 "ok\n"`):
#   plain     http, route `/plain/{*rest}`, no auth, no limit rule
#   tls       the same route through a TLS listener (dev CA from
#             `switchyard cert`; keep-alive, so this is the per-request record
#             cost plus one handshake per connection)
#   jwt       route with `auth = { require = true }`, a fixed valid HS256
#             token in `Authorization: Bearer` (verified on every request)
#   local     route with a local per-client-IP rate rule, set high enough
#             never to refuse
#   redis     route with a Redis-shared per-client-IP rate rule (only when
#             `redis-cli -h 127.0.0.1 ping` answers; a fresh key prefix)
# The same [auth] and [limits] sections are loaded for every target, so the
# plain route pays what a route without settings pays in such a config.
#
# Metrics per target: requests/s (wrk -t1 -c CONNS, median of ROUNDS rounds
# in rotating order), the switchyard process's CPU µs per request during
# those rounds, and p50/p99 latency: oha at a fixed RATE with
# --latency-correction when oha is found ($OHA, PATH or bench/.tools; set
# INSTALL_OHA=1 to `cargo install` it), else wrk's closed-loop percentiles.
# "added µs" is the target's CPU µs/request minus the plain route's.
#
# Knobs (environment): CONNS (32), RATE (3000), ROUNDS, DURATION,
# LAT_ROUNDS, LAT_DURATION (seconds), SWITCHYARD_BIN (skip the build), OHA,
# INSTALL_OHA=1, KEEP_TMP=1.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
BENCH_NAME=security.sh
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $arg (try --help)" ;;
    esac
done

CONNS=${CONNS:-32}
RATE=${RATE:-3000}
if [ "$QUICK" = 1 ]; then
    ROUNDS=${ROUNDS:-1}; DURATION=${DURATION:-3}; LAT_ROUNDS=${LAT_ROUNDS:-1}; LAT_DURATION=${LAT_DURATION:-3}; WARMUP=1
else
    ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-8}; LAT_ROUNDS=${LAT_ROUNDS:-1}; LAT_DURATION=${LAT_DURATION:-8}; WARMUP=2
fi

ensure_apt wrk=wrk nginx=nginx-light curl=curl
command -v python3 >/dev/null || die "python3 is needed (token, summary)"
if [ "${INSTALL_OHA:-0}" = 1 ]; then find_oha install; else find_oha; fi
[ -n "$OHA" ] || log "no oha: latency percentiles come from wrk (closed loop, no coordinated-omission correction)"
build_switchyard

use_scratch switchyard-secbench
RES="$TMP/results"
mkdir -p "$RES" "$TMP/nginx/logs"

read -r P_BACKEND P_PLAIN P_TLS P_ADMIN < <(free_ports 4)

cat >"$TMP/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/nginx.pid;
error_log $TMP/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;
    server {
        listen 127.0.0.1:$P_BACKEND backlog=4096;
        location / { default_type text/plain; return 200 "ok\n"; }
    }
}
EOF

# ---------------------------------------------------------------- config
"$SY" cert ca --dir "$TMP/certs" >&2
"$SY" cert issue --dir "$TMP/certs" --name server --san localhost --san 127.0.0.1 >&2

SECRET="bench-secret-0123456789abcdef0123456789"
TOKEN=$(python3 - "$SECRET" <<'EOF'
import base64, hashlib, hmac, json, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
claims = b64(json.dumps({"sub": "bench", "iss": "https://id.bench", "aud": "bench",
                         "exp": int(time.time()) + 86400, "scope": "read"}).encode())
sig = hmac.new(sys.argv[1].encode(), f"{head}.{claims}".encode(), hashlib.sha256).digest()
print(f"{head}.{claims}.{b64(sig)}")
EOF
)

REDIS=0
if command -v redis-cli >/dev/null && redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then REDIS=1; fi

{
    cat <<EOF
[admin]
listen = "127.0.0.1:$P_ADMIN"

[[listeners]]
name = "plain"
listen = "127.0.0.1:$P_PLAIN"

[[listeners]]
name = "tls"
listen = "127.0.0.1:$P_TLS"
[listeners.tls]
cert = "$TMP/certs/server.pem"
key = "$TMP/certs/server-key.pem"

[services.backend]
endpoints = ["127.0.0.1:$P_BACKEND"]

[auth.jwt]
issuers = ["https://id.bench"]
audiences = ["bench"]
algorithms = ["HS256"]
[[auth.jwt.keys]]
algorithm = "HS256"
secret = "$SECRET"

[[limits.rules]]
name = "local"
key = "client_ip"
routes = ["local"]
rate = { requests = 100000000, per = "1s" }
EOF
    if [ "$REDIS" = 1 ]; then
        cat <<EOF

[limits.redis]
url = "redis://127.0.0.1:6379"
key_prefix = "switchyard:bench:$$:$(date +%s):"

[[limits.rules]]
name = "shared"
key = "client_ip"
routes = ["redis"]
rate = { requests = 100000000, per = "1s" }
shared = true
EOF
    fi
    cat <<EOF

[[routes]]
name = "plain"
path = "/plain/{*rest}"
service = "backend"

[[routes]]
name = "jwt"
path = "/jwt/{*rest}"
service = "backend"
auth = { require = true }

[[routes]]
name = "local"
path = "/local/{*rest}"
service = "backend"

[[routes]]
name = "redis"
path = "/redis/{*rest}"
service = "backend"
EOF
} >"$TMP/switchyard.toml"
"$SY" config check "$TMP/switchyard.toml" >&2 || die "switchyard config rejected"

# ---------------------------------------------------------------- start
log "starting backend (nginx) on :$P_BACKEND"
nginx -p "$TMP/nginx" -c "$TMP/nginx.conf" -e stderr &
PIDS+=($!)
wait_http backend "http://127.0.0.1:$P_BACKEND/" "$!"

log "starting switchyard (TOKIO_WORKER_THREADS=1) on :$P_PLAIN (http) and :$P_TLS (https)"
TOKIO_WORKER_THREADS=1 "$SY" serve -c "$TMP/switchyard.toml" 2>"$TMP/switchyard.log" &
SY_PID=$!
PIDS+=("$SY_PID")
wait_http switchyard "http://127.0.0.1:$P_PLAIN/plain/" "$SY_PID"

declare -A URL HDR
URL[plain]="http://127.0.0.1:$P_PLAIN/plain/x"
URL[tls]="https://127.0.0.1:$P_TLS/plain/x"
URL[jwt]="http://127.0.0.1:$P_PLAIN/jwt/x"; HDR[jwt]="Authorization: Bearer $TOKEN"
URL[local]="http://127.0.0.1:$P_PLAIN/local/x"
TARGETS=(plain tls jwt local)
if [ "$REDIS" = 1 ]; then
    URL[redis]="http://127.0.0.1:$P_PLAIN/redis/x"
    TARGETS+=(redis)
else
    log "Redis is not answering on 127.0.0.1:6379: the redis target is skipped"
fi

# Each target answers 200 before it is measured (a 401 or 429 would be a
# much cheaper answer and make the numbers lie).
for t in "${TARGETS[@]}"; do
    args=(-fs -o /dev/null --max-time 2 --cacert "$TMP/certs/ca.pem")
    [ -n "${HDR[$t]:-}" ] && args+=(-H "${HDR[$t]}")
    curl "${args[@]}" "${URL[$t]}" || die "$t: ${URL[$t]} does not answer 200"
    if [ -n "${HDR[$t]:-}" ]; then
        code=$(curl -s -o /dev/null -w '%{http_code}' "${URL[$t]}")
        [ "$code" = 401 ] || die "$t: without the token the route answers $code, not 401"
    fi
done

wrk_run() { # target duration out
    local args=(-t 1 -c "$CONNS" -d "${2}s" --latency)
    [ -n "${HDR[$1]:-}" ] && args+=(-H "${HDR[$1]}")
    wrk "${args[@]}" "${URL[$1]}" >"$3"
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "warm-up: ${WARMUP}s of wrk per target"
for t in "${TARGETS[@]}"; do wrk_run "$t" "$WARMUP" /dev/null; done

for r in $(seq 1 "$ROUNDS"); do
    for t in $(rotate "$r" "${TARGETS[@]}"); do
        log "throughput round $r/$ROUNDS: $t (wrk -t1 -c$CONNS -d${DURATION}s)"
        c0=$(cpu_ticks "$SY_PID")
        wrk_run "$t" "$DURATION" "$RES/tput.$t.$r.txt"
        echo $(($(cpu_ticks "$SY_PID") - c0)) >"$RES/tput.$t.$r.cpu"
    done
done

LAT_TOOL=wrk
if [ -n "$OHA" ]; then
    LAT_TOOL=oha
    for r in $(seq 1 "$LAT_ROUNDS"); do
        for t in $(rotate "$r" "${TARGETS[@]}"); do
            log "latency round $r/$LAT_ROUNDS: $t (oha -q $RATE -c $CONNS -z ${LAT_DURATION}s --latency-correction)"
            args=(-q "$RATE" -c "$CONNS" -z "${LAT_DURATION}s" --latency-correction --no-tui
                  --output-format json --cacert "$TMP/certs/ca.pem")
            [ -n "${HDR[$t]:-}" ] && args+=(-H "${HDR[$t]}")
            "$OHA" "${args[@]}" "${URL[$t]}" >"$RES/lat.$t.$r.json"
        done
    done
fi

kill -0 "$SY_PID" 2>/dev/null || die "switchyard died during the run (see $TMP/switchyard.log)"
cat >"$RES/meta.env" <<EOF
targets=${TARGETS[*]}
rounds=$ROUNDS
lat_rounds=$LAT_ROUNDS
lat_tool=$LAT_TOOL
clk_tck=$(getconf CLK_TCK)
conns=$CONNS
rate=$RATE
duration=$DURATION
lat_duration=$LAT_DURATION
load_start=$LOAD_START
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
date=$(date -u +%Y-%m-%dT%H:%MZ)
cpus=$(nproc)
wrk=$(wrk -v 2>&1 | head -1 | awk '{print $2}')
oha=$([ -n "$OHA" ] && "$OHA" --version | awk '{print $2}' || echo none)
switchyard=$("$SY" --version | awk '{print $2}')
redis=$([ "$REDIS" = 1 ] && redis-cli -h 127.0.0.1 info server | sed -n 's/^redis_version:\(.*\)\r*$/\1/p' | tr -d '\r' || echo none)
EOF

python3 - "$RES" "$HERE" <<'EOF'
import sys
from pathlib import Path

res, here = Path(sys.argv[1]), sys.argv[2]
sys.path.insert(0, here)
from summarize import median, ms, parse_oha, parse_wrk  # noqa: E402

meta = dict(l.split("=", 1) for l in (res / "meta.env").read_text().splitlines() if "=" in l)
targets = meta["targets"].split()
clk = int(meta["clk_tck"])
rows = {}
for t in targets:
    runs = [parse_wrk(p) for p in sorted(res.glob(f"tput.{t}.*.txt"))]
    cpu = [int((res / f"tput.{t}.{i}.cpu").read_text()) for i in range(1, len(runs) + 1)]
    per_req = [c / clk / r["requests"] * 1e6 for c, r in zip(cpu, runs) if r["requests"]]
    bad = sum(r["errors"] + r["non2xx"] for r in runs)
    if meta["lat_tool"] == "oha":
        lats = [parse_oha(p) for p in sorted(res.glob(f"lat.{t}.*.json"))]
        bad += sum(x["errors"] + x["non2xx"] for x in lats)
        p50 = median([x["pct"].get("p50") for x in lats])
        p99 = median([x["pct"].get("p99") for x in lats])
    else:
        p50 = median([r["pct"].get("p50") for r in runs])
        p99 = median([r["pct"].get("p99") for r in runs])
    rows[t] = dict(rps=median([r["rps"] for r in runs]), cpu=median(per_req), p50=p50, p99=p99, bad=bad)

base = rows["plain"]
lat_note = (f"oha, fixed {meta['rate']} req/s, {meta['conns']} connections, latency-corrected"
            if meta["lat_tool"] == "oha" else f"wrk closed loop, {meta['conns']} connections")
print(f"### Run {meta['date']}")
print()
print(f"{meta['cpus']} cores shared by wrk/oha, switchyard (1 worker thread) and nginx (1 worker); "
      f"wrk {meta['wrk']}, oha {meta['oha']}, switchyard {meta['switchyard']}, Redis {meta['redis']}. "
      f"Load average {meta['load_start']} at the start, {meta['load_end']} at the end. "
      f"Throughput: wrk -t1 -c{meta['conns']}, median of {meta['rounds']} × {meta['duration']} s. "
      f"Latency: {lat_note}.")
print()
print("| target | requests/s | vs plain | CPU µs/request | added µs/request | p50 ms | p99 ms | errors/non-2xx |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for t in targets:
    r = rows[t]
    vs = "1.00" if t == "plain" else f"{r['rps'] / base['rps']:.2f}"
    added = "—" if t == "plain" else f"{r['cpu'] - base['cpu']:+.1f}"
    print(f"| {t} | {r['rps']:.0f} | {vs} | {r['cpu']:.1f} | {added} | {ms(r['p50'])} | {ms(r['p99'])} | {r['bad']} |")
EOF
