#!/usr/bin/env bash
# bench/latency_ab.sh — two Switchyard builds compared on latency at a fixed
# rate, and nothing else in the rotation.
#
#   bench/latency_ab.sh NEW_BIN OLD_BIN      about three minutes
#
# Why: a change can lower the instructions per request (bench/instructions.sh)
# and still answer later; bench/proxy.sh with SWITCHYARD_BASELINE_BIN measures
# that too, but among five targets, with the two builds mostly in the same
# order. Here the two builds alternate alone, the order swapped every round,
# so that a difference of a few percent at p50 shows in one run.
#
# What it does, on 127.0.0.1 only: the backend of bench/configs.sh, and each
# build serving it with the default config and one worker; per round
# `oha -q RATE -c 32 -z 8s --latency-correction` against each. Prints every
# round, then the paired p50 and p99 ratios (NEW over OLD: median, rounds
# NEW was ahead in, two-sided sign test). The same binary given twice scores
# about 1.00 and half the rounds: that is the harness's own spread.
#
# Knobs (environment): ROUNDS (10), RATE (5000), KEEP_TMP=1.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

case "${1:-}" in
    -h|--help|"") sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
esac
[ $# -eq 2 ] || { echo "latency_ab.sh: give two switchyard binaries (try --help)" >&2; exit 2; }
NEW=$1
OLD=$2
ROUNDS=${ROUNDS:-10}
RATE=${RATE:-5000}
WORKERS=1
MAXCONN=1000

BENCH_NAME=latency_ab.sh
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
# shellcheck source=bench/configs.sh
. "$HERE/configs.sh"

for bin in "$NEW" "$OLD"; do [ -x "$bin" ] || die "no switchyard binary at $bin"; done
ensure_apt nginx=nginx-light curl=curl wrk=wrk
command -v python3 >/dev/null || die "python3 is needed (the summary)"
find_oha install
[ -n "$OHA" ] || die "oha is needed (cargo install --locked --root bench/.tools oha)"

FDS=$(ulimit -n)
use_scratch switchyard-latency-ab
mkdir -p "$TMP/nginx-backend/logs" "$TMP/rounds"
read -r P_BACKEND P_NEW P_NEW_ADMIN P_OLD P_OLD_ADMIN < <(free_ports 5)
nginx_backend_config >"$TMP/nginx-backend.conf"
sy_config "$P_NEW" "$P_NEW_ADMIN" "" >"$TMP/new.toml"
sy_config "$P_OLD" "$P_OLD_ADMIN" "" >"$TMP/old.toml"

nginx -p "$TMP/nginx-backend" -c "$TMP/nginx-backend.conf" -e stderr &
PIDS+=($!)
wait_http backend "http://127.0.0.1:$P_BACKEND/" "$!"
TOKIO_WORKER_THREADS=1 "$NEW" serve -c "$TMP/new.toml" 2>"$TMP/new.log" &
PIDS+=($!)
wait_http new "http://127.0.0.1:$P_NEW/" "$!"
TOKIO_WORKER_THREADS=1 "$OLD" serve -c "$TMP/old.toml" 2>"$TMP/old.log" &
PIDS+=($!)
wait_http old "http://127.0.0.1:$P_OLD/" "$!"
for port in "$P_NEW" "$P_OLD"; do wrk -t1 -c32 -d2s "http://127.0.0.1:$port/" >/dev/null; done

measure() { # name port round
    "$OHA" -q "$RATE" -c 32 -z 8s --latency-correction --no-tui --output-format json \
        "http://127.0.0.1:$2/" >"$TMP/rounds/$1.$3.json" 2>/dev/null
}
for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then
        measure new "$P_NEW" "$r"; measure old "$P_OLD" "$r"
    else
        measure old "$P_OLD" "$r"; measure new "$P_NEW" "$r"
    fi
    log "round $r/$ROUNDS done"
done

# The summary uses bench/summarize.py's reading of oha's output and its
# paired ratios with the sign test.
python3 - "$HERE" "$TMP/rounds" "$ROUNDS" <<'EOF'
import sys
from pathlib import Path

sys.path.insert(0, sys.argv[1])
from summarize import paired_note, parse_oha  # noqa: E402

folder, rounds = Path(sys.argv[2]), int(sys.argv[3])
print("| round | new p50 | old p50 | new p99 | old p99 |")
print("| --- | --- | --- | --- | --- |")
by_key = {"p50": ([], []), "p99": ([], [])}
for r in range(1, rounds + 1):
    new = parse_oha(folder / f"new.{r}.json")["pct"]
    old = parse_oha(folder / f"old.{r}.json")["pct"]
    for key, (news, olds) in by_key.items():
        news.append(new[key])
        olds.append(old[key])
    print(f"| {r} | {new['p50'] * 1000:.3f} ms | {old['p50'] * 1000:.3f} ms "
          f"| {new['p99'] * 1000:.3f} ms | {old['p99'] * 1000:.3f} ms |")
print()
for key, (news, olds) in by_key.items():
    ratios = sorted(n / o for n, o in zip(news, olds))
    # Lower is better: "ahead" is a ratio below 1.
    print(f"- new/old {key}{paired_note(ratios, ahead_above=False)}")
EOF
