#!/usr/bin/env bash
# The local stack: NATS with JetStream, ClickHouse, cctv-ingest and cctv-aggregator,
# all in the background, all data, logs and pid files under .local/ (git-ignored).
#
#   scripts/stack.sh up            install missing servers, start NATS and ClickHouse,
#                                  build, `cctvctl setup`, start both services
#   scripts/stack.sh down          stop the services, then ClickHouse and NATS
#   scripts/stack.sh status        show what runs
#   scripts/stack.sh servers-up    start only NATS and ClickHouse
#   scripts/stack.sh servers-down  stop only NATS and ClickHouse
#   scripts/stack.sh ctl ARGS...   run cctvctl against the stack (used by demo.sh)
#
# Every command is idempotent: `up` leaves running parts alone, `down` on a stopped
# stack does nothing.
#
# Ports (docs/contract.md, section 1): NATS 14222 (monitoring 18222), ClickHouse HTTP 18123 and
# native 19000, health endpoints 9101 (ingest) and 9102 (aggregator). The machine's
# own servers (NATS on 4222, ...) are never touched.
#
# Environment:
#   CCTV_NATS_URL        NATS for the binaries (default nats://127.0.0.1:14222). Any
#                        other URL means an existing NATS: the stack does not start one.
#   CCTV_CLICKHOUSE_URL  ClickHouse HTTP URL for the binaries (default
#                        http://127.0.0.1:18123). Any other URL means an existing
#                        server: the stack neither installs nor starts ClickHouse. Use
#                        this where ClickHouse has no package for the OS. The stack's
#                        users (cctv_migrator, cctv_writer) exist only in its own
#                        server; against an existing one, CCTV_CLICKHOUSE_USER /
#                        CCTV_CLICKHOUSE_PASSWORD from the environment are used as given.
#   CCTV_CONFIG          passed through; the stack always names each binary's config
#                        with --config (deploy/local/<binary>.toml).
#   CCTV_NATS_USER, CCTV_NATS_PASSWORD, ...
#                        used as given against an existing NATS. The stack's own NATS
#                        runs deploy/nats/auth.conf: `up` generates one random password
#                        per user into .local/secrets.env (mode 600, kept across runs)
#                        and hands each binary only its own user and password.
#   CCTV_NATS_SERVER_BIN nats-server binary for the stack's own NATS (default: the
#                        pinned one of scripts/versions.env, which scripts/install-nats.sh
#                        installs into .local/tools/).
#   TLS=1                every hop in TLS: scripts/gen-certs.sh makes a test CA and
#                        certificates in .local/tls/ (kept across runs); NATS requires
#                        TLS and a client certificate from every client (plus its
#                        password, deploy/nats/tls.conf.in), ClickHouse serves HTTPS on
#                        18443 (deploy/clickhouse/tls.xml.in), and each binary gets the
#                        CA, its own client certificate and the https:// URL. Use the
#                        same setting for `up`, `status` and `ctl`; `down` stops either.
#   CCTV_SKIP_BUILD=1    do not run `cargo build --release --bins` in `up`.
#   CARGO_TARGET_DIR     where the release binaries are looked for (default target/).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
readonly LOCAL_DIR="$ROOT/.local"
readonly RUN_DIR="$LOCAL_DIR/run"
readonly LOG_DIR="$LOCAL_DIR/log"

readonly NATS_PORT=14222
readonly NATS_MONITOR_PORT=18222
readonly OWN_NATS_URL="nats://127.0.0.1:$NATS_PORT"
readonly PLAIN_NATS_CONFIG="$ROOT/deploy/nats/local.conf"
# With TLS=1 the server runs local.conf plus the rendered tls.conf.in.
readonly TLS_NATS_CONFIG="$LOCAL_DIR/nats/local-tls.conf"
readonly TLS_DIR="$LOCAL_DIR/tls"
if [ "${TLS:-0}" = 1 ]; then
    readonly NATS_CONFIG="$TLS_NATS_CONFIG"
else
    readonly NATS_CONFIG="$PLAIN_NATS_CONFIG"
fi
readonly NATS_STORE_DIR="$LOCAL_DIR/nats/js"
readonly SECRETS_FILE="$LOCAL_DIR/secrets.env"

# NATS users of deploy/nats/auth.conf and the variable holding each password.
readonly NATS_PASSWORD_VARS="CCTV_NATS_INGEST_PASSWORD CCTV_NATS_AGGREGATOR_PASSWORD CCTV_NATS_OPERATOR_PASSWORD CCTV_NATS_ANALYST_PASSWORD CCTV_NATS_GW1_PASSWORD CCTV_NATS_GW2_PASSWORD"

readonly CLICKHOUSE_HTTP_PORT=18123
readonly CLICKHOUSE_TCP_PORT=19000
readonly CLICKHOUSE_HTTPS_PORT=18443
# The stack's own readiness probe always uses the loopback HTTP port.
readonly CLICKHOUSE_PROBE_URL="http://127.0.0.1:$CLICKHOUSE_HTTP_PORT"
if [ "${TLS:-0}" = 1 ]; then
    readonly OWN_CLICKHOUSE_URL="https://127.0.0.1:$CLICKHOUSE_HTTPS_PORT"
else
    readonly OWN_CLICKHOUSE_URL="$CLICKHOUSE_PROBE_URL"
fi
readonly CLICKHOUSE_DIR="$LOCAL_DIR/clickhouse"
readonly CLICKHOUSE_CONFIG="$CLICKHOUSE_DIR/config.xml"

# ClickHouse users of the stack's own server (deploy/clickhouse/users.xml.in).
readonly MIGRATOR_USER=cctv_migrator
readonly WRITER_USER=cctv_writer

readonly INGEST_HEALTH_URL="http://127.0.0.1:9101/healthz"
readonly AGGREGATOR_HEALTH_URL="http://127.0.0.1:9102/healthz"
readonly INGEST_CONFIG="$ROOT/deploy/local/ingest.toml"
readonly AGGREGATOR_CONFIG="$ROOT/deploy/local/aggregator.toml"
readonly CTL_CONFIG="$ROOT/deploy/local/cctvctl.toml"
BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/release"
case "$BIN_DIR" in /*) ;; *) BIN_DIR="$ROOT/$BIN_DIR" ;; esac
readonly BIN_DIR

readonly START_TIMEOUT_SECS=60
readonly STOP_TIMEOUT_SECS=30

export CCTV_NATS_URL="${CCTV_NATS_URL:-$OWN_NATS_URL}"
export CCTV_CLICKHOUSE_URL="${CCTV_CLICKHOUSE_URL:-$OWN_CLICKHOUSE_URL}"
if [ "${TLS:-0}" = 1 ]; then
    # Every binary checks the servers' certificates against the test CA.
    export CCTV_NATS_TLS_CA="${CCTV_NATS_TLS_CA:-$TLS_DIR/ca.pem}"
    export CCTV_CLICKHOUSE_TLS_CA="${CCTV_CLICKHOUSE_TLS_CA:-$TLS_DIR/ca.pem}"
fi

say() { printf '==> %s\n' "$*"; }
warn() { printf 'stack: warning: %s\n' "$*" >&2; }
die() { printf 'stack: error: %s\n' "$*" >&2; exit 1; }

# True when the binaries are pointed at a NATS / ClickHouse the stack does not run.
nats_is_external() {
    case "${CCTV_NATS_URL%/}" in
        "$OWN_NATS_URL" | "nats://localhost:$NATS_PORT" | "127.0.0.1:$NATS_PORT" | "localhost:$NATS_PORT") return 1 ;;
        *) return 0 ;;
    esac
}
clickhouse_is_external() {
    case "${CCTV_CLICKHOUSE_URL%/}" in
        "$OWN_CLICKHOUSE_URL" | "http://localhost:$CLICKHOUSE_HTTP_PORT" | "https://localhost:$CLICKHOUSE_HTTPS_PORT") return 1 ;;
        *) return 0 ;;
    esac
}

# --- processes -------------------------------------------------------------------

# shellcheck source=lib/processes.sh
. "$ROOT/scripts/lib/processes.sh"

# True when something accepts TCP connections on 127.0.0.1:$1.
port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

http_body_is() {
    local url="$1" expected="$2" body
    body="$(curl -fsS --max-time 2 "$url" 2>/dev/null)" || return 1
    [[ "$body" == *"$expected"* ]]
}

# Prints the nats-server to run: CCTV_NATS_SERVER_BIN when set, else the pinned one
# of scripts/versions.env, installed by scripts/install-nats.sh when missing.
nats_server_binary() {
    if [ -n "${CCTV_NATS_SERVER_BIN:-}" ]; then
        [ -x "$CCTV_NATS_SERVER_BIN" ] || die "CCTV_NATS_SERVER_BIN=$CCTV_NATS_SERVER_BIN is not an executable file"
        printf '%s\n' "$CCTV_NATS_SERVER_BIN"
        return 0
    fi
    "$ROOT/scripts/install-nats.sh" --print-path || die "could not install nats-server; run scripts/install-nats.sh"
}

find_server_binary() {
    local name="$1" dir
    if command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
        return 0
    fi
    for dir in /usr/sbin /usr/bin; do
        if [ -x "$dir/$name" ]; then
            printf '%s\n' "$dir/$name"
            return 0
        fi
    done
    return 1
}

# --- secrets -----------------------------------------------------------------------

# Creates .local/secrets.env on first use: one random password per NATS user, as
# shell assignments, readable by the owner only. Existing passwords are kept (the
# running server and stored configs depend on them); a missing one is added.
ensure_secrets() {
    mkdir -p "$LOCAL_DIR"
    local variable password
    (
        umask 077
        touch "$SECRETS_FILE"
    )
    chmod 600 "$SECRETS_FILE"
    for variable in $NATS_PASSWORD_VARS; do
        if ! grep -q "^$variable=" "$SECRETS_FILE"; then
            # nats-server parses a variable's value as config syntax, so the
            # password is letters and digits and starts with a letter (a leading
            # digit would make it a number).
            password="p$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
            printf '%s=%s\n' "$variable" "$password" >>"$SECRETS_FILE"
        fi
    done
}

# Prints the value of variable $1 from .local/secrets.env.
secret() {
    local line
    line="$(grep "^$1=" "$SECRETS_FILE" | tail -n 1)" || die "$1 missing from ${SECRETS_FILE#"$ROOT"/}; run scripts/stack.sh up"
    printf '%s\n' "${line#*=}"
}

# Runs "$@" as NATS user $1 of the stack's own server, with the password from
# .local/secrets.env in CCTV_NATS_USER / CCTV_NATS_PASSWORD (exported to "$@" only).
# Against an existing NATS the caller's own CCTV_NATS_* settings are used as given.
with_nats_user() {
    local user="$1" variable="$2"
    shift 2
    if nats_is_external; then
        "$@"
        return
    fi
    [ -f "$SECRETS_FILE" ] || die "${SECRETS_FILE#"$ROOT"/} is missing; run scripts/stack.sh up"
    local password
    password="$(secret "$variable")"
    if [ "${TLS:-0}" = 1 ]; then
        # The user's own client certificate (scripts/gen-certs.sh issues one per user).
        CCTV_NATS_USER="$user" CCTV_NATS_PASSWORD="$password" \
            CCTV_NATS_TLS_CERT="$TLS_DIR/$user.pem" CCTV_NATS_TLS_KEY="$TLS_DIR/$user.key" "$@"
        return
    fi
    CCTV_NATS_USER="$user" CCTV_NATS_PASSWORD="$password" "$@"
}

# With TLS=1: the test CA and certificates (made once), and the NATS config
# with TLS rendered next to copies of local.conf and auth.conf (nats-server
# resolves includes relative to the file that includes them).
prepare_tls() {
    [ "${TLS:-0}" = 1 ] || return 0
    [ -f "$TLS_DIR/ca.pem" ] || "$ROOT/scripts/gen-certs.sh" "$TLS_DIR"
    mkdir -p "$LOCAL_DIR/nats"
    cp "$ROOT/deploy/nats/auth.conf" "$LOCAL_DIR/nats/auth.conf"
    {
        cat "$PLAIN_NATS_CONFIG"
        printf '\n'
        sed -e "s|@TLS_DIR@|$TLS_DIR|g" "$ROOT/deploy/nats/tls.conf.in"
    } >"$TLS_NATS_CONFIG.tmp"
    mv "$TLS_NATS_CONFIG.tmp" "$TLS_NATS_CONFIG"
}

# Runs "$@" with every password of .local/secrets.env exported (for nats-server,
# which resolves $CCTV_NATS_..._PASSWORD in auth.conf from its environment).
with_all_nats_passwords() {
    (
        local variable value
        for variable in $NATS_PASSWORD_VARS; do
            value="$(secret "$variable")"
            export "$variable=$value"
        done
        "$@"
    )
}

# --- servers -----------------------------------------------------------------------

nats_ready() { http_body_is "http://127.0.0.1:$NATS_MONITOR_PORT/healthz" ok; }
clickhouse_ready() { http_body_is "$CLICKHOUSE_PROBE_URL/" "Ok."; }

start_nats() {
    if nats_is_external; then
        say "nats: using existing server $CCTV_NATS_URL (not starting one)"
        return 0
    fi
    if running_pid nats "$NATS_CONFIG" >/dev/null; then
        say "nats: already running"
        wait_until nats "$NATS_CONFIG" nats_ready
        return 0
    fi
    local other_config="$TLS_NATS_CONFIG"
    [ "$NATS_CONFIG" = "$PLAIN_NATS_CONFIG" ] || other_config="$PLAIN_NATS_CONFIG"
    if running_pid nats "$other_config" >/dev/null; then
        if [ "${TLS:-0}" = 1 ]; then
            die "nats runs without TLS; stop the stack (scripts/stack.sh down) before TLS=1 up"
        fi
        die "nats runs with TLS (started with TLS=1); stop the stack (scripts/stack.sh down) first, or keep TLS=1"
    fi
    if port_in_use "$NATS_PORT" || port_in_use "$NATS_MONITOR_PORT"; then
        die "port $NATS_PORT or $NATS_MONITOR_PORT is taken by a process the stack did not start; stop it or set CCTV_NATS_URL to use it"
    fi
    local binary
    binary="$(nats_server_binary)"
    mkdir -p "$NATS_STORE_DIR"
    prepare_tls
    say "nats: starting on 127.0.0.1:$NATS_PORT (monitoring $NATS_MONITOR_PORT)${TLS:+, TLS=$TLS}"
    # nats-server writes its own log with -l; the redirected output only catches
    # start-up errors printed before the log is opened.
    ensure_secrets
    with_all_nats_passwords start_background nats "$binary" -c "$NATS_CONFIG" -js \
        -sd "$NATS_STORE_DIR" -l "$LOG_DIR/nats.log"
    wait_until nats "$NATS_CONFIG" nats_ready
    say "nats: ready"
}

# Renders deploy/clickhouse/*.xml.in into .local/clickhouse/.
render_clickhouse_config() {
    mkdir -p "$CLICKHOUSE_DIR"/{data,tmp,user_files,format_schemas} "$LOG_DIR"
    local template
    for template in config users; do
        sed -e "s|@CLICKHOUSE_DIR@|$CLICKHOUSE_DIR|g" \
            -e "s|@LOG_DIR@|$LOG_DIR|g" \
            -e "s|@HTTP_PORT@|$CLICKHOUSE_HTTP_PORT|g" \
            -e "s|@TCP_PORT@|$CLICKHOUSE_TCP_PORT|g" \
            "$ROOT/deploy/clickhouse/$template.xml.in" >"$CLICKHOUSE_DIR/$template.xml.tmp"
        mv "$CLICKHOUSE_DIR/$template.xml.tmp" "$CLICKHOUSE_DIR/$template.xml"
    done
    # HTTPS only with TLS=1: ClickHouse merges config.d/*.xml into config.xml.
    mkdir -p "$CLICKHOUSE_DIR/config.d"
    rm -f "$CLICKHOUSE_DIR/config.d/tls.xml"
    if [ "${TLS:-0}" = 1 ]; then
        prepare_tls
        sed -e "s|@TLS_DIR@|$TLS_DIR|g" -e "s|@HTTPS_PORT@|$CLICKHOUSE_HTTPS_PORT|g" \
            "$ROOT/deploy/clickhouse/tls.xml.in" >"$CLICKHOUSE_DIR/config.d/tls.xml"
    fi
}

start_clickhouse() {
    if clickhouse_is_external; then
        say "clickhouse: using existing server $CCTV_CLICKHOUSE_URL (not starting one)"
        return 0
    fi
    if running_pid clickhouse "$CLICKHOUSE_CONFIG" >/dev/null; then
        say "clickhouse: already running"
        wait_until clickhouse "$CLICKHOUSE_CONFIG" clickhouse_ready
        return 0
    fi
    if port_in_use "$CLICKHOUSE_HTTP_PORT" || port_in_use "$CLICKHOUSE_TCP_PORT"; then
        die "port $CLICKHOUSE_HTTP_PORT or $CLICKHOUSE_TCP_PORT is taken by a process the stack did not start; stop it or set CCTV_CLICKHOUSE_URL to use it"
    fi
    local binary
    binary="$(find_server_binary clickhouse-server)" || die "clickhouse-server not found; run scripts/install-servers.sh or set CCTV_CLICKHOUSE_URL"
    render_clickhouse_config
    if [ "${TLS:-0}" = 1 ]; then
        say "clickhouse: starting on 127.0.0.1:$CLICKHOUSE_HTTP_PORT (native $CLICKHOUSE_TCP_PORT, HTTPS $CLICKHOUSE_HTTPS_PORT)"
    else
        say "clickhouse: starting on 127.0.0.1:$CLICKHOUSE_HTTP_PORT (native $CLICKHOUSE_TCP_PORT)"
    fi
    start_background clickhouse "$binary" --config-file="$CLICKHOUSE_CONFIG"
    wait_until clickhouse "$CLICKHOUSE_CONFIG" clickhouse_ready
    say "clickhouse: ready"
}

servers_up() {
    mkdir -p "$RUN_DIR" "$LOG_DIR"
    if ! nats_is_external || ! clickhouse_is_external; then
        "$ROOT/scripts/install-servers.sh"
    fi
    if ! nats_is_external; then
        ensure_secrets
    fi
    start_nats
    start_clickhouse
}

servers_down() {
    stop_component clickhouse "$CLICKHOUSE_CONFIG"
    # Whichever runs: started with TLS=1 or without.
    if running_pid nats "$TLS_NATS_CONFIG" >/dev/null; then
        stop_component nats "$TLS_NATS_CONFIG"
    else
        stop_component nats "$PLAIN_NATS_CONFIG"
    fi
}

# --- our binaries ------------------------------------------------------------------

build_binaries() {
    if [ "${CCTV_SKIP_BUILD:-0}" = 1 ]; then
        say "build: skipped (CCTV_SKIP_BUILD=1)"
    else
        if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
            # shellcheck source=/dev/null
            . "$HOME/.cargo/env"
        fi
        command -v cargo >/dev/null 2>&1 || die "cargo not found; install Rust (https://rustup.rs) or put cargo on PATH"
        say "build: cargo build --release --bins"
        (cd "$ROOT" && cargo build --release --bins)
    fi
    local binary
    for binary in cctvctl cctv-ingest cctv-aggregator; do
        [ -x "$BIN_DIR/$binary" ] \
            || die "$BIN_DIR/$binary is missing after the build step; does the workspace build it? (cargo build --release --bins)"
    done
    local config
    for config in "$INGEST_CONFIG" "$AGGREGATOR_CONFIG" "$CTL_CONFIG"; do
        [ -f "$config" ] || die "config ${config#"$ROOT"/} is missing"
    done
}

# Runs cctvctl with the stack's config, in the repo root.
run_ctl() {
    [ -x "$BIN_DIR/cctvctl" ] || die "$BIN_DIR/cctvctl is missing; run scripts/stack.sh up (or cargo build --release --bins)"
    (cd "$ROOT" && with_nats_user cctv_operator CCTV_NATS_OPERATOR_PASSWORD \
        "$BIN_DIR/cctvctl" --config "$CTL_CONFIG" "$@")
}

# Runs "$@" with CCTV_CLICKHOUSE_USER=$1 when the stack runs its own ClickHouse; an
# existing server is used with the caller's credentials.
with_clickhouse_user() {
    local user="$1"
    shift
    if clickhouse_is_external; then
        "$@"
    else
        CCTV_CLICKHOUSE_USER="$user" CCTV_CLICKHOUSE_PASSWORD="" "$@"
    fi
}

setup_schema() {
    say "setup: cctvctl setup (streams and ClickHouse schema)"
    with_clickhouse_user "$MIGRATOR_USER" run_ctl setup
}

start_service() {
    local name="$1" config="$2" health_url="$3" clickhouse_user="$4" nats_user="$5" nats_password_var="$6"
    local binary="$BIN_DIR/$name"
    if running_pid "$name" "$binary" >/dev/null; then
        say "$name: already running"
    else
        say "$name: starting (NATS user $nats_user)"
        if [ -n "$clickhouse_user" ]; then
            (cd "$ROOT" && with_nats_user "$nats_user" "$nats_password_var" \
                with_clickhouse_user "$clickhouse_user" start_background "$name" "$binary" --config "$config")
        else
            (cd "$ROOT" && with_nats_user "$nats_user" "$nats_password_var" \
                start_background "$name" "$binary" --config "$config")
        fi
    fi
    wait_until "$name" "$binary" http_ok "$health_url"
    say "$name: healthy ($health_url)"
}

services_down() {
    # Ingest first, so the aggregator can drain what is left while its servers run.
    stop_component cctv-ingest "$BIN_DIR/cctv-ingest"
    stop_component cctv-aggregator "$BIN_DIR/cctv-aggregator"
}

# --- commands ----------------------------------------------------------------------

cmd_up() {
    servers_up
    build_binaries
    setup_schema
    start_service cctv-ingest "$INGEST_CONFIG" "$INGEST_HEALTH_URL" "" \
        cctv_ingest CCTV_NATS_INGEST_PASSWORD
    start_service cctv-aggregator "$AGGREGATOR_CONFIG" "$AGGREGATOR_HEALTH_URL" "$WRITER_USER" \
        cctv_aggregator CCTV_NATS_AGGREGATOR_PASSWORD
    say "stack is up: NATS $CCTV_NATS_URL, ClickHouse $CCTV_CLICKHOUSE_URL, logs in .local/log/"
}

cmd_down() {
    services_down
    servers_down
}

cmd_servers_down() {
    if running_pid cctv-ingest "$BIN_DIR/cctv-ingest" >/dev/null \
        || running_pid cctv-aggregator "$BIN_DIR/cctv-aggregator" >/dev/null; then
        warn "services are still running and will lose their servers; use 'scripts/stack.sh down' to stop everything"
    fi
    servers_down
}

status_line() {
    local name="$1" marker="$2" probe_url="$3" pid health
    if pid="$(running_pid "$name" "$marker")"; then
        health="not answering"
        if [ -n "$probe_url" ] && http_ok "$probe_url"; then
            health="answering"
        fi
        printf '  %-16s running  pid %-8s %s %s\n' "$name" "$pid" "$health" "$probe_url"
    else
        printf '  %-16s stopped\n' "$name"
    fi
}

cmd_status() {
    printf 'local stack (%s):\n' "${LOCAL_DIR#"$ROOT"/}"
    if nats_is_external; then
        printf '  %-16s external %s\n' nats "$CCTV_NATS_URL"
    else
        status_line nats "$NATS_CONFIG" "http://127.0.0.1:$NATS_MONITOR_PORT/healthz"
    fi
    if clickhouse_is_external; then
        printf '  %-16s external %s\n' clickhouse "$CCTV_CLICKHOUSE_URL"
    else
        status_line clickhouse "$CLICKHOUSE_CONFIG" "$CLICKHOUSE_PROBE_URL/"
    fi
    status_line cctv-ingest "$BIN_DIR/cctv-ingest" "$INGEST_HEALTH_URL"
    status_line cctv-aggregator "$BIN_DIR/cctv-aggregator" "$AGGREGATOR_HEALTH_URL"
}

usage() {
    sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

main() {
    local command="${1:-}"
    [ "$#" -eq 0 ] || shift
    case "$command" in
        up) cmd_up ;;
        down) cmd_down ;;
        status) cmd_status ;;
        servers-up) servers_up ;;
        servers-down) cmd_servers_down ;;
        ctl) run_ctl "$@" ;;
        -h | --help | help) usage ;;
        *)
            usage >&2
            exit 2
            ;;
    esac
}

main "$@"
