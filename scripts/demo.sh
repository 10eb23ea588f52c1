#!/usr/bin/env bash
# `make demo`: start the local stack, publish a simulated day of offences from every
# region in every vendor format, wait until ClickHouse has counted every event, print
# the totals once as a compact table (regions x the largest offence types, the rest
# as "other", totals) with whether they match, and stop the stack again.
#
#   DEMO_EVENTS=60000   offences to simulate
#   DEMO_FORMAT=mixed   payload format: mixed (every vendor), canonical or one vendor
#   DEMO_RATE=20000     publish rate, messages per second
#   DEMO_BATCH=0        items per gateway batch (cctv.raw.batch.<gw>); 0 publishes each alone
#   KEEP=1              leave the stack running afterwards (stop it with `make down`)
#
# Exits with the status of `cctvctl totals`: 0 only when the totals match.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
readonly STACK="$ROOT/scripts/stack.sh"
readonly EXPECTED="$ROOT/.local/expected.json"

say() { printf '==> %s\n' "$*"; }

# Runs from the EXIT trap (on success, failure and interrupt).
# shellcheck disable=SC2317
stop_stack() {
    local status=$?
    if [ "${KEEP:-0}" = 1 ]; then
        say "KEEP=1: leaving the stack running (stop it with 'make down')"
    else
        say "stopping the stack (KEEP=1 leaves it running)"
        "$STACK" down || status=1
    fi
    exit "$status"
}
trap stop_stack EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cd "$ROOT"
"$STACK" up

mkdir -p "$(dirname "$EXPECTED")"
say "simulate: ${DEMO_EVENTS:-60000} offences (${DEMO_FORMAT:-mixed} formats) at ${DEMO_RATE:-20000} msg/s"
"$STACK" ctl simulate \
    --count "${DEMO_EVENTS:-60000}" \
    --format "${DEMO_FORMAT:-mixed}" \
    --rate "${DEMO_RATE:-20000}" \
    --batch "${DEMO_BATCH:-0}" \
    --registry deploy/cameras.csv \
    --expect-out "$EXPECTED"

say "totals: waiting until ClickHouse counts every event (then: cctvctl totals --by, top, trend, report)"
totals_status=0
"$STACK" ctl totals --expect "$EXPECTED" --wait 300s || totals_status=$?
say "status: partitions and their owners"
"$STACK" ctl status || true
exit "$totals_status"
