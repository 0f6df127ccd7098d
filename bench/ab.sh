#!/usr/bin/env bash
# bench/ab.sh — two Switchyard builds compared, and nothing else in the
# rotation: latency at a fixed rate, throughput with the CPU time each
# build spent per request, or both.
#
#   bench/ab.sh NEW_BIN OLD_BIN                       latency, about three minutes
#   MEASURE=throughput bench/ab.sh NEW_BIN OLD_BIN    about two and a half minutes
#   MEASURE=both bench/ab.sh NEW_BIN OLD_BIN
#
# (Named latency_ab.sh, and latency only, before the tenth session.)
#
# Why: a change can lower the instructions per request (bench/instructions.sh)
# and still answer later; bench/proxy.sh with SWITCHYARD_BASELINE_BIN measures
# that too, but among five targets, with the two builds mostly in the same
# order. Here the two builds alternate alone, the order swapped every round,
# so that a difference of a few percent at p50 shows in one run.
#
# What it does, on 127.0.0.1 only: the backend of bench/configs.sh, and each
# build serving it with the default config and one worker; per round
# `oha -q RATE -c 32 -z 8s --latency-correction` against each while counting
# the nanoseconds the build ran on a CPU (latency), and `wrk -t1 -c32 -d6s`
# against each while counting the CPU time of the build's process
# (throughput). Prints every round, then the paired ratios, NEW over OLD:
# p50, p99 and CPU time per request at the fixed rate; requests/s and CPU
# time per request under full load (median, rounds NEW was ahead in,
# two-sided sign test). The same binary given twice scores about 1.00 and
# half the rounds: that is the harness's own spread. At a fixed rate a
# request mostly finds the caches cold (the load generator and the backend
# ran in between): its CPU time there is two to three times that under full
# load, and it is what the proxy adds to a request's latency.
# On 2 cores the proxy's own CPU per request moves less than requests/s,
# which also depends on how the load generator and the backend share the
# cores.
#
# Knobs (environment): MEASURE (latency, throughput or both), ROUNDS (10),
# RATE (5000), DURATION of a throughput round (6), KEEP_TMP=1.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

case "${1:-}" in
    -h|--help|"") sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
esac
[ $# -eq 2 ] || { echo "ab.sh: give two switchyard binaries (try --help)" >&2; exit 2; }
NEW=$1
OLD=$2
MEASURE=${MEASURE:-latency}
case "$MEASURE" in
    latency|throughput|both) ;;
    *) echo "ab.sh: MEASURE=$MEASURE: use latency, throughput or both" >&2; exit 2 ;;
esac
ROUNDS=${ROUNDS:-10}
RATE=${RATE:-5000}
DURATION=${DURATION:-6}
WORKERS=1
MAXCONN=1000

BENCH_NAME=ab.sh
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
# shellcheck source=bench/configs.sh
. "$HERE/configs.sh"

for bin in "$NEW" "$OLD"; do [ -x "$bin" ] || die "no switchyard binary at $bin"; done
ensure_apt nginx=nginx-light curl=curl wrk=wrk
command -v python3 >/dev/null || die "python3 is needed (the summary)"
if [ "$MEASURE" != throughput ]; then
    find_oha install
    [ -n "$OHA" ] || die "oha is needed (cargo install --locked --root bench/.tools oha)"
fi

FDS=$(ulimit -n)
use_scratch switchyard-ab
mkdir -p "$TMP/rounds"
read -r P_BACKEND P_NEW P_NEW_ADMIN P_OLD P_OLD_ADMIN < <(free_ports 5)
sy_config "$P_NEW" "$P_NEW_ADMIN" "" >"$TMP/new.toml"
sy_config "$P_OLD" "$P_OLD_ADMIN" "" >"$TMP/old.toml"
start_backend
start_switchyard new "$NEW" "$TMP/new.toml" "$P_NEW"
PID_NEW=$STARTED_PID
start_switchyard old "$OLD" "$TMP/old.toml" "$P_OLD"
PID_OLD=$STARTED_PID
for port in "$P_NEW" "$P_OLD"; do wrk -t1 -c32 -d2s "http://127.0.0.1:$port/" >/dev/null; done

measure() { # name port pid round
    local before
    if [ "$MEASURE" != latency ]; then
        before=$(cpu_ticks "$3")
        wrk -t1 -c32 -d"${DURATION}s" "http://127.0.0.1:$2/" >"$TMP/rounds/$1.$4.wrk"
        echo $(($(cpu_ticks "$3") - before)) >"$TMP/rounds/$1.$4.ticks"
    fi
    if [ "$MEASURE" != throughput ]; then
        before=$(cpu_ns "$3")
        "$OHA" -q "$RATE" -c 32 -z 8s --latency-correction --no-tui --output-format json \
            "http://127.0.0.1:$2/" >"$TMP/rounds/$1.$4.json" 2>/dev/null
        echo $(($(cpu_ns "$3") - before)) >"$TMP/rounds/$1.$4.ns"
    fi
}
for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then
        measure new "$P_NEW" "$PID_NEW" "$r"; measure old "$P_OLD" "$PID_OLD" "$r"
    else
        measure old "$P_OLD" "$PID_OLD" "$r"; measure new "$P_NEW" "$PID_NEW" "$r"
    fi
    log "round $r/$ROUNDS done"
done

# The summary uses bench/summarize.py's reading of wrk's and oha's output
# and its paired ratios with the sign test.
python3 - "$HERE" "$TMP/rounds" "$ROUNDS" "$MEASURE" "$(getconf CLK_TCK)" <<'EOF'
import sys
from pathlib import Path

sys.path.insert(0, sys.argv[1])
from summarize import paired_note, parse_oha, parse_wrk  # noqa: E402

folder, rounds, measure, tck = Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
if measure != "latency":
    print("| round | new req/s | old req/s | new CPU µs/request | old CPU µs/request |")
    print("| --- | --- | --- | --- | --- |")
    rps, cpu = ([], []), ([], [])
    for r in range(1, rounds + 1):
        row = []
        for i, name in enumerate(("new", "old")):
            wrk = parse_wrk(folder / f"{name}.{r}.wrk")
            ticks = int((folder / f"{name}.{r}.ticks").read_text())
            rps[i].append(wrk["rps"])
            cpu[i].append(ticks / tck * 1e6 / wrk["requests"])
            row.append((wrk["rps"], cpu[i][-1]))
        print(f"| {r} | {row[0][0]:.0f} | {row[1][0]:.0f} | {row[0][1]:.2f} | {row[1][1]:.2f} |")
    print()
    print(f"- new/old requests/s{paired_note(sorted(n / o for n, o in zip(*rps)))}")
    print(f"- new/old CPU per request"
          f"{paired_note(sorted(n / o for n, o in zip(*cpu)), ahead_above=False)}")
    print()
if measure == "throughput":
    sys.exit(0)
print("| round | new p50 | old p50 | new p99 | old p99 | new CPU µs/request | old CPU µs/request |")
print("| --- | --- | --- | --- | --- | --- | --- |")
by_key = {"p50": ([], []), "p99": ([], []), "CPU per request at the fixed rate": ([], [])}
for r in range(1, rounds + 1):
    row = {}
    for name in ("new", "old"):
        oha = parse_oha(folder / f"{name}.{r}.json")
        ns = int((folder / f"{name}.{r}.ns").read_text())
        row[name] = dict(oha["pct"], cpu=ns / 1000 / max(1, oha["count"]))
    for key, (news, olds) in by_key.items():
        k = "cpu" if key.startswith("CPU") else key
        news.append(row["new"][k])
        olds.append(row["old"][k])
    new, old = row["new"], row["old"]
    print(f"| {r} | {new['p50'] * 1000:.3f} ms | {old['p50'] * 1000:.3f} ms "
          f"| {new['p99'] * 1000:.3f} ms | {old['p99'] * 1000:.3f} ms "
          f"| {new['cpu']:.2f} | {old['cpu']:.2f} |")
print()
for key, (news, olds) in by_key.items():
    ratios = sorted(n / o for n, o in zip(news, olds) if o)
    # Lower is better: "ahead" is a ratio below 1.
    print(f"- new/old {key}{paired_note(ratios, ahead_above=False)}")
EOF
