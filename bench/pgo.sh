#!/usr/bin/env bash
# bench/pgo.sh — writes crates/switchyard/pgo/switchyard.profdata, the
# profile the release build is optimized with (profile-guided optimization;
# the rustc wrapper in crates/switchyard/pgo/ passes it to every optimized
# build, see .cargo/config.toml).
#
#   bench/pgo.sh        about twelve minutes from cold (five once the
#                       instrumented build is there)
#
# Why: without a profile LLVM guesses which branches are taken and which
# functions are worth inlining; with one it knows, and lays out the request
# path compactly (22% fewer instructions and 31% less hot machine code per
# proxied request, docs/performance.md). Run it again after changing the
# request path: a profile older than the code loses its gain where the code
# changed (that code is compiled as without a profile), then
# `cargo clean --release` (Cargo rebuilds the workspace's crates for a new
# profile, not the dependencies from crates.io), the release build, and
# `bench/instructions.sh --hot-symbols` to match the function order to it.
#
# What it does, on 127.0.0.1 only: builds switchyard instrumented
# (`-C profile-generate`, in target/pgo-generate), serves the backend of
# bench/configs.sh with the default config and one worker, as
# bench/proxy.sh measures it, and sends it: HTTP/1.1 GETs (`wrk -t1 -c32
# -d10s`), POSTs with a 2 KB body (`oha -c8 -z3s`) and HTTP/2 GETs
# (`oha --http2 -c8 -z3s`); stops it (the profile is written at exit) and
# merges what it wrote with the llvm-profdata of rustc's own LLVM version
# (rustup's llvm-tools component, or the distribution's llvm-N).
#
# Installs what it needs when missing: `apt-get install llvm-N` (N: rustc's
# LLVM major version) unless rustup's llvm-tools are there, nginx-light,
# wrk; oha into bench/.tools.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
case "${1:-}" in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) echo "pgo.sh: unknown argument: $1 (try --help)" >&2; exit 2 ;;
esac

BENCH_NAME=pgo.sh
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
# shellcheck source=bench/configs.sh
. "$HERE/configs.sh"

LLVM=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
[ -n "$LLVM" ] || die "cannot read rustc's LLVM version from rustc -vV"
# llvm-profdata of rustc's own LLVM: rustup's llvm-tools component, else
# the distribution's llvm-N (Debian has llvm-22).
PROFDATA="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata"
if [ ! -x "$PROFDATA" ]; then
    ensure_apt "llvm-profdata-$LLVM=llvm-$LLVM" || true
    PROFDATA=$(command -v "llvm-profdata-$LLVM" || true)
fi
[ -n "$PROFDATA" ] || die "no llvm-profdata for LLVM $LLVM: rustup component add llvm-tools, or install llvm-$LLVM"
ensure_apt nginx=nginx-light curl=curl wrk=wrk
find_oha install
[ -n "$OHA" ] || die "oha is needed (cargo install --locked --root bench/.tools oha)"

GEN="$ROOT/target/pgo-generate"
RAW="$GEN/raw"
log "building switchyard instrumented (-C profile-generate, in $GEN)"
(cd "$ROOT" && RUSTFLAGS="-Cprofile-generate=$RAW" CARGO_TARGET_DIR="$GEN" \
    cargo build --quiet --release -p switchyard) || die "instrumented build failed"
SY="$GEN/release/switchyard"
# Build scripts ran instrumented too: only the server's run counts.
rm -rf "$RAW"
# The profile goes where RUSTFLAGS said, not where an inherited variable says.
unset LLVM_PROFILE_FILE

FDS=$(ulimit -n)
WORKERS=1
MAXCONN=1000
use_scratch switchyard-pgo
read -r P_BACKEND P_SY P_SY_ADMIN < <(free_ports 3)
sy_config "$P_SY" "$P_SY_ADMIN" "" >"$TMP/switchyard.toml"
start_backend
start_switchyard switchyard "$SY" "$TMP/switchyard.toml" "$P_SY"
SY_PID=$STARTED_PID

URL="http://127.0.0.1:$P_SY"
log "HTTP/1.1 GETs (wrk -t1 -c32 -d10s)"
wrk -t1 -c32 -d10s "$URL/" >/dev/null
log "POSTs with a 2 KB body (oha -c8 -z3s)"
head -c 2048 /dev/zero | tr '\0' x >"$TMP/body"
"$OHA" -c 8 -z 3s --no-tui -m POST -D "$TMP/body" "$URL/upload" >/dev/null
log "HTTP/2 GETs (oha --http2 -c8 -z3s)"
"$OHA" -c 8 -z 3s --no-tui --http2 "$URL/h2" >/dev/null

kill -TERM "$SY_PID"
wait "$SY_PID" || die "switchyard exited with an error (see $TMP/switchyard.log)"
ls "$RAW"/*.profraw >/dev/null 2>&1 || die "the instrumented switchyard wrote no profile in $RAW"

OUT="$ROOT/crates/switchyard/pgo/switchyard.profdata"
# --sparse: functions that never ran are left out (0.8 MB instead of 8).
"$PROFDATA" merge --sparse -o "$OUT" "$RAW"/*.profraw
sed -i "s/^profile_llvm=.*/profile_llvm=$LLVM/" "$ROOT/crates/switchyard/pgo/rustc-wrapper"
log "wrote $OUT ($(du -k "$OUT" | cut -f1) KiB, LLVM $LLVM)"
# Cargo rebuilds the workspace's crates when the profile changes (rustc
# lists it among their inputs) but not those from crates.io.
log "next: cargo clean --release (the dependencies keep the old profile otherwise), cargo build --release, bench/instructions.sh --hot-symbols"
