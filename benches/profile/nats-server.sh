#!/usr/bin/env bash
# Profiles nats-server during an end-to-end canonical burst (cctv-bench-e2e)
# and prints where its CPU goes, by Go function.
#
#   benches/profile/nats-server.sh [EVENTS] [SECONDS]
#
# Needs perf, the release binaries (`cargo build --release --bins`) and Go's
# addr2line (`apt-get install golang-go`); see nats_symbols.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
events=${1:-200000}
seconds=${2:-10}
for tool in perf go; do
    command -v "$tool" >/dev/null || { echo "nats-server.sh: $tool is missing" >&2; exit 2; }
done
out=$(mktemp -d)
RUST_BACKTRACE=0 target/release/cctv-bench-e2e --events "$events" --scenarios canonical \
    --no-output >"$out/bench.log" 2>&1 &
bench=$!
# The benchmark's own nats-server: a child of the bench, config in a temp dir.
pid=""
for _ in $(seq 100); do
    pid=$(pgrep -P "$bench" -x nats-server || true)
    [ -n "$pid" ] && break
    sleep 0.1
done
[ -n "$pid" ] || { echo "nats-server.sh: the benchmark started no nats-server" >&2; exit 1; }
sleep 3 # past start-up, into the burst
perf record -q -g -p "$pid" -o "$out/perf.data" -- sleep "$seconds" 2>/dev/null
wait "$bench" || { cat "$out/bench.log" >&2; exit 1; }
perf script -i "$out/perf.data" -F ip,dso 2>/dev/null | benches/profile/nats_symbols.py
grep -E '^\| canonical \| [0-9]' "$out/bench.log" || true
rm -rf "$out"
