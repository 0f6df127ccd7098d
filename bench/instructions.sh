#!/usr/bin/env bash
# bench/instructions.sh — the user-space work of one proxied request, counted
# rather than timed: instructions per request and the machine code a request
# runs through, for HAProxy, nginx and Switchyard under callgrind.
#
#   bench/instructions.sh                about three minutes
#   bench/instructions.sh --hot-symbols  Switchyard alone (one minute); rewrites
#                                        crates/switchyard/hot-symbols.txt
#
# Why: bench/proxy.sh times the proxies on a shared machine, where a
# difference of a few percent needs many rounds to tell from noise.
# Instruction counts do not move with the machine's load, so one run shows
# whether a change made the request path cheaper, and by how much against
# the same reference proxies. They leave out the kernel (system calls are
# the same for the three: see docs/performance.md) and what an instruction
# costs (cache misses, branches), so they complement proxy.sh, not replace it.
#
# What it does, on 127.0.0.1 only: the backend (nginx, `return 200 "ok\n"`,
# not under valgrind) and, one after the other, each proxy with one worker
# under `valgrind --tool=callgrind`, configured as in bench/proxy.sh
# (bench/configs.sh). Counting starts (`callgrind_control -i on`) once the
# proxy has answered a request and stops after the load, so start-up and
# shutdown are left out. Load: `wrk -t1 -c8 -dDURATION s` (closed loop; a
# proxy runs some 50 times slower under valgrind). Per proxy:
#
#   instructions/request  instructions the proxy's processes executed over
#                         the requests wrk had answered
#   hot code (KiB)        distinct 64-byte lines of machine code executed at
#                         least once per request on average: what a request
#                         needs back in the instruction cache after other
#                         processes ran in between
#
# --hot-symbols: the functions that run at least once per hundred requests,
# hottest first, as linker symbols, into crates/switchyard/hot-symbols.txt.
# The release build (crates/switchyard/build.rs) asks the linker to place
# them together at the start of the code, so a request runs through about
# half as many pages of code (a measured 3% less CPU per request, see
# docs/performance.md). Run it again after changes to the request path:
# symbols that no longer exist are skipped, new ones are left where they
# fall.
#
# Knobs (environment): DURATION (10), SWITCHYARD_BIN (skip the cargo build),
# KEEP_TMP=1 (keep the callgrind files, for callgrind_annotate).
#
# Installs what it needs when missing: `apt-get install valgrind haproxy
# nginx-light wrk`.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")

HOT_SYMBOLS=0
for arg in "$@"; do
    case "$arg" in
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        --hot-symbols) HOT_SYMBOLS=1 ;;
        *) echo "instructions.sh: unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done

DURATION=${DURATION:-10}
WORKERS=1
MAXCONN=1000

BENCH_NAME=instructions.sh
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
# shellcheck source=bench/configs.sh
. "$HERE/configs.sh"

ensure_apt valgrind=valgrind wrk=wrk haproxy=haproxy nginx=nginx-light curl=curl
command -v python3 >/dev/null || die "python3 is needed (the summary)"
build_switchyard

FDS=$(ulimit -n)
use_scratch switchyard-instructions
mkdir -p "$TMP/nginx-proxy/logs"

read -r P_BACKEND P_HAPROXY P_NGINX P_SY P_SY_ADMIN < <(free_ports 5)
nginx_proxy_config nginx-proxy "$P_NGINX" "" >"$TMP/nginx-proxy.conf"
haproxy_config "$P_HAPROXY" "" >"$TMP/haproxy.cfg"
sy_config "$P_SY" "$P_SY_ADMIN" "" >"$TMP/switchyard.toml"
"$SY" config check "$TMP/switchyard.toml" >&2 || die "switchyard config rejected"

start_backend

# Runs one proxy under callgrind, counts a load, stops it; adds
# "name requests callgrind-file..." to $TMP/results for the summary.
measure() { # name port stop_signal command...
    local name=$1 port=$2 signal=$3 pid i requests
    shift 3
    valgrind --tool=callgrind --instr-atstart=no --dump-instr=yes \
        --compress-pos=no --compress-strings=no \
        --callgrind-out-file="$TMP/callgrind.$name.%p" "$@" \
        >"$TMP/$name.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    # Slow under valgrind: up to a minute to answer.
    for i in $(seq 1 120); do
        curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:$port/" && break
        kill -0 "$pid" 2>/dev/null || die "$name exited at start (see $TMP/$name.log)"
        sleep 0.5
    done
    curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:$port/" || die "$name did not answer on :$port"
    callgrind_control -i on >/dev/null 2>&1
    requests=$(wrk -t1 -c8 -d"${DURATION}s" "http://127.0.0.1:$port/" | awk '/requests in/ {print $1}')
    callgrind_control -i off >/dev/null 2>&1
    kill -"$signal" "$pid"
    for i in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && die "$name did not stop on SIG$signal"
    [ -n "$requests" ] || die "wrk got no answer from $name"
    echo "$name $requests $(ls "$TMP"/callgrind."$name".*)" >>"$TMP/results"
}

if [ "$HOT_SYMBOLS" = 1 ]; then
    log "switchyard under callgrind (${DURATION}s of wrk -t1 -c8)"
    TOKIO_WORKER_THREADS=1 measure switchyard "$P_SY" TERM "$SY" serve -c "$TMP/switchyard.toml"
    nm -n --defined-only "$SY" >"$TMP/symbols"
else
    log "haproxy under callgrind (${DURATION}s of wrk -t1 -c8)"
    measure haproxy "$P_HAPROXY" TERM haproxy -db -f "$TMP/haproxy.cfg"
    log "nginx under callgrind"
    # Its one worker in the foreground process: callgrind follows no fork here.
    measure nginx "$P_NGINX" QUIT nginx -p "$TMP/nginx-proxy" -c "$TMP/nginx-proxy.conf" -e stderr \
        -g "master_process off;"
    log "switchyard under callgrind"
    TOKIO_WORKER_THREADS=1 measure switchyard "$P_SY" TERM "$SY" serve -c "$TMP/switchyard.toml"
fi

# One reading of callgrind's files for both outputs: the table, or (with
# --hot-symbols) the symbol list.
python3 - "$TMP/results" "$HOT_SYMBOLS" "$TMP/symbols" "$(basename "$SY")" >"$TMP/summary" <<'EOF'
import bisect, collections, sys

results, hot_symbols, symbols_file, binary = sys.argv[1], sys.argv[2] == "1", sys.argv[3], sys.argv[4]


def executions(files, only_object=None):
    """Instruction address → executions, and the `totals:` instructions, of
    a process's callgrind files (those of `only_object` alone when given)."""
    executed, total = collections.Counter(), 0
    for path in files:
        skip, counted = False, only_object is None
        for text in open(path, errors="replace"):
            if skip:  # the line after `calls=` carries the callee's inclusive cost
                skip = False
            elif text.startswith("totals:"):
                total += int(text.split()[1])
            elif text.startswith("ob=") and only_object is not None:
                counted = text.rstrip().endswith("/" + only_object)
            elif text.startswith("calls="):
                skip = True
            elif counted and text.startswith("0x"):
                fields = text.split()
                if len(fields) >= 3:
                    executed[int(fields[0], 16)] += int(fields[2])
    return executed, total


runs = {}
for line in open(results):
    name, requests, *files = line.split()
    runs[name] = (int(requests), files)

if hot_symbols:
    # Each symbol (by `nm` address) with the most any of its instructions
    # ran; kept, hottest first, when that is at least once per 100 requests.
    requests, files = runs["switchyard"]
    symbols = []
    for line in open(symbols_file):
        fields = line.split()
        if len(fields) == 3 and fields[1] in "tT":
            symbols.append((int(fields[0], 16), fields[2]))
    starts = [address for address, _ in symbols]
    peak, total = collections.Counter(), collections.Counter()
    for address, count in executions(files, binary)[0].items():
        i = bisect.bisect_right(starts, address) - 1
        if i >= 0:
            symbol = symbols[i][1]
            peak[symbol] = max(peak[symbol], count)
            total[symbol] += count
    for symbol, _ in total.most_common():
        if peak[symbol] * 100 >= requests:
            print(symbol)
    sys.exit(0)

rows = {}
for name, (requests, files) in runs.items():
    executed, total = executions(files)
    # A line of code runs as often as its most executed instruction.
    lines = collections.Counter()
    for address, count in executed.items():
        lines[address >> 6] = max(lines[address >> 6], count)
    hot = sum(1 for count in lines.values() if count >= requests)
    rows[name] = (requests, total / requests, hot * 64 / 1024)

print("| proxy | requests | instructions/request | vs haproxy | vs nginx | hot code (KiB) |")
print("| --- | --- | --- | --- | --- | --- |")
haproxy, nginx = rows["haproxy"][1], rows["nginx"][1]
for name, (requests, per, hot) in rows.items():
    print(f"| {name} | {requests} | {per:,.0f} | {per / haproxy:.2f} | {per / nginx:.2f} | {hot:.0f} |")
EOF

if [ "$HOT_SYMBOLS" = 1 ]; then
    OUT="$ROOT/crates/switchyard/hot-symbols.txt"
    [ -s "$TMP/summary" ] || die "no hot symbols found (is $SY built with symbols?)"
    {
        echo "# Written by bench/instructions.sh --hot-symbols: the functions a proxied"
        echo "# request runs, hottest first, for the linker (see crates/switchyard/build.rs)."
        cat "$TMP/summary"
    } >"$OUT"
    log "wrote $(wc -l <"$TMP/summary") symbols to $OUT"
else
    cat "$TMP/summary"
fi
