#!/usr/bin/env bash
# The cluster layout on one machine, on loopback (deploy/cluster/layout.env):
# three NATS nodes with every stream replicated three times, ZooKeeper, and
# ClickHouse as two shards of two replicas; two instances of each service.
#
#   scripts/cluster.sh up      install what is missing, render the configs into
#                              .local/cluster/, start ZooKeeper, ClickHouse and
#                              NATS, build, `cctvctl setup`, start the services
#   scripts/cluster.sh down    stop everything it started (data is kept)
#   scripts/cluster.sh status  show what runs
#   scripts/cluster.sh ctl ARGS...  run cctvctl against the cluster
#
# Data, logs, pid files and the generated NATS passwords live under
# .local/cluster/ (git-ignored). The templates it renders
# (deploy/cluster/*.in) are the same for real hosts: see docs/deploying.md.
#
# Environment: CCTV_SKIP_BUILD=1 (do not build), CCTV_NATS_SERVER_BIN (another
# nats-server), CARGO_TARGET_DIR (where the release binaries are).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
readonly LAYOUT="$ROOT/deploy/cluster/layout.env"
readonly DIR="$ROOT/.local/cluster"
readonly RUN_DIR="$DIR/run"
readonly LOG_DIR="$DIR/log"
readonly SECRETS_FILE="$DIR/secrets.env"
readonly CTL_CONFIG="$ROOT/deploy/cluster/cctvctl.toml"
readonly INGEST_CONFIG="$ROOT/deploy/cluster/ingest.toml"
readonly AGGREGATOR_CONFIG="$ROOT/deploy/cluster/aggregator.toml"
readonly ZOOKEEPER_JAR=/usr/share/java/zookeeper.jar
BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/release"
case "$BIN_DIR" in /*) ;; *) BIN_DIR="$ROOT/$BIN_DIR" ;; esac
readonly BIN_DIR
readonly START_TIMEOUT_SECS=90
readonly STOP_TIMEOUT_SECS=30

# NATS users of deploy/nats/auth.conf and the variable holding each password.
readonly NATS_PASSWORD_VARS="CCTV_NATS_INGEST_PASSWORD CCTV_NATS_AGGREGATOR_PASSWORD CCTV_NATS_OPERATOR_PASSWORD CCTV_NATS_ANALYST_PASSWORD CCTV_NATS_GW1_PASSWORD CCTV_NATS_GW2_PASSWORD"

# shellcheck source=../deploy/cluster/layout.env
. "$LAYOUT"

say() { printf '==> %s\n' "$*"; }
die() { printf 'cluster: error: %s\n' "$*" >&2; exit 1; }

# --- processes ---------------------------------------------------------------

warn() { printf 'cluster: warning: %s\n' "$*" >&2; }

# shellcheck source=lib/processes.sh
. "$ROOT/scripts/lib/processes.sh"

ruok() { [ "$( (exec 3<>"/dev/tcp/$1/$2"; printf ruok >&3; timeout 2 cat <&3) 2>/dev/null)" = imok ]; }

# --- secrets -------------------------------------------------------------------

# One random password per NATS user, kept across runs, readable by the owner only.
ensure_secrets() {
    mkdir -p "$DIR"
    (umask 077 && touch "$SECRETS_FILE")
    chmod 600 "$SECRETS_FILE"
    local variable
    for variable in $NATS_PASSWORD_VARS; do
        grep -q "^$variable=" "$SECRETS_FILE" \
            || printf '%s=p%s\n' "$variable" "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >>"$SECRETS_FILE"
    done
}

secret() { grep "^$1=" "$SECRETS_FILE" | tail -n 1 | cut -d= -f2-; }

with_all_nats_passwords() {
    (
        local variable
        for variable in $NATS_PASSWORD_VARS; do
            export "$variable=$(secret "$variable")"
        done
        "$@"
    )
}

# --- rendering -------------------------------------------------------------------

# Replaces each @KEY@ of template $1 by the value given as KEY=value arguments.
render() {
    local template="$1" text pair
    shift
    text="$(cat "$template")"
    for pair in "$@"; do
        text="${text//@${pair%%=*}@/${pair#*=}}"
    done
    printf '%s\n' "$text"
}

# The <shard> blocks of remote_servers, from CLICKHOUSE_NODES.
remote_shards() {
    local current="" shard replica host http tcp interserver
    while read -r shard replica host http tcp interserver; do
        [ -n "$shard" ] || continue
        if [ "$shard" != "$current" ]; then
            [ -z "$current" ] || printf '            </shard>\n'
            printf '            <shard>\n                <internal_replication>true</internal_replication>\n'
            current="$shard"
        fi
        printf '                <replica><host>%s</host><port>%s</port></replica>\n' "$host" "$tcp"
    done <<<"$CLICKHOUSE_NODES"
    [ -z "$current" ] || printf '            </shard>\n'
}

# --- servers ---------------------------------------------------------------------

start_zookeeper() {
    local dir="$DIR/zookeeper"
    if running_pid zookeeper "$dir/zoo.cfg" >/dev/null; then
        say "zookeeper: already running"
        return 0
    fi
    [ -f "$ZOOKEEPER_JAR" ] || die "$ZOOKEEPER_JAR missing; run scripts/install-servers.sh"
    mkdir -p "$dir/data"
    render "$ROOT/deploy/cluster/zoo.cfg.in" DIR="$dir" PORT="$ZOOKEEPER_PORT" HOST="$ZOOKEEPER_HOST" >"$dir/zoo.cfg"
    say "zookeeper: starting on $ZOOKEEPER_HOST:$ZOOKEEPER_PORT"
    start_background zookeeper java -Xmx256m -Dzookeeper.admin.enableServer=false \
        -cp "$dir:$ZOOKEEPER_JAR" org.apache.zookeeper.server.ZooKeeperServerMain "$dir/zoo.cfg"
    wait_until zookeeper "$dir/zoo.cfg" ruok "$ZOOKEEPER_HOST" "$ZOOKEEPER_PORT"
}

start_clickhouse_nodes() {
    local binary shard replica host http tcp interserver shards
    binary="$(command -v clickhouse-server || echo /usr/bin/clickhouse-server)"
    [ -x "$binary" ] || die "clickhouse-server not found; run scripts/install-servers.sh"
    shards="$(remote_shards)"
    while read -r shard replica host http tcp interserver; do
        [ -n "$shard" ] || continue
        local name="clickhouse-$shard-$replica" dir="$DIR/clickhouse-$shard-$replica"
        if running_pid "$name" "$dir/config.xml" >/dev/null; then
            say "$name: already running"
            continue
        fi
        mkdir -p "$dir"/{data,tmp,user_files,format_schemas,log}
        render "$ROOT/deploy/cluster/clickhouse-node.xml.in" DIR="$dir" HOST="$host" \
            HTTP_PORT="$http" TCP_PORT="$tcp" INTERSERVER_PORT="$interserver" \
            ZOOKEEPER_HOST="$ZOOKEEPER_HOST" ZOOKEEPER_PORT="$ZOOKEEPER_PORT" \
            SHARD="$shard" REPLICA="$replica" CLUSTER="$CLICKHOUSE_CLUSTER" SHARDS="$shards" \
            >"$dir/config.xml"
        render "$ROOT/deploy/clickhouse/users.xml.in" >"$dir/users.xml"
        say "$name: starting on $host:$http (native $tcp)"
        start_background "$name" "$binary" --config-file="$dir/config.xml"
    done <<<"$CLICKHOUSE_NODES"
    while read -r shard replica host http tcp interserver; do
        [ -n "$shard" ] || continue
        wait_until "clickhouse-$shard-$replica" "$DIR/clickhouse-$shard-$replica/config.xml" \
            http_ok "http://$host:$http/ping"
    done <<<"$CLICKHOUSE_NODES"
}

start_nats_nodes() {
    local binary name host port route monitor routes
    binary="${CCTV_NATS_SERVER_BIN:-$("$ROOT/scripts/install-nats.sh" --print-path)}"
    while read -r name host port route monitor; do
        [ -n "$name" ] || continue
        local dir="$DIR/nats-$name"
        if running_pid "nats-$name" "$dir/nats.conf" >/dev/null; then
            say "nats-$name: already running"
            continue
        fi
        routes="$(awk -v self="$name" 'NF == 5 && $1 != self { printf "    nats-route://%s:%s\n", $2, $4 }' <<<"$NATS_NODES")"
        mkdir -p "$dir/js"
        cp "$ROOT/deploy/nats/auth.conf" "$dir/auth.conf"
        render "$ROOT/deploy/cluster/nats-node.conf.in" NAME="$name" HOST="$host" PORT="$port" \
            ROUTE_PORT="$route" MONITOR_PORT="$monitor" ROUTES="$routes" STORE_DIR="$dir/js" \
            >"$dir/nats.conf"
        say "nats-$name: starting on $host:$port (routes $route, monitoring $monitor)"
        with_all_nats_passwords start_background "nats-$name" "$binary" -c "$dir/nats.conf"
    done <<<"$NATS_NODES"
    while read -r name host port route monitor; do
        [ -n "$name" ] || continue
        wait_until "nats-$name" "$DIR/nats-$name/nats.conf" http_ok "http://$host:$monitor/healthz"
    done <<<"$NATS_NODES"
}

# --- our binaries -------------------------------------------------------------------

build_binaries() {
    if [ "${CCTV_SKIP_BUILD:-0}" != 1 ]; then
        say "build: cargo build --release --bins"
        (cd "$ROOT" && cargo build --release --bins)
    fi
    local binary
    for binary in cctvctl cctv-ingest cctv-aggregator; do
        [ -x "$BIN_DIR/$binary" ] || die "$BIN_DIR/$binary is missing (cargo build --release --bins)"
    done
}

run_ctl() {
    (cd "$ROOT" && CCTV_NATS_USER=cctv_operator CCTV_NATS_PASSWORD="$(secret CCTV_NATS_OPERATOR_PASSWORD)" \
        "$BIN_DIR/cctvctl" --config "$CTL_CONFIG" "$@")
}

start_services() {
    local port index=0
    for port in $INGEST_METRICS_PORTS; do
        index=$((index + 1))
        local name="cctv-ingest-$index"
        running_pid "$name" "$BIN_DIR/cctv-ingest" >/dev/null && continue
        say "$name: starting (metrics 127.0.0.1:$port)"
        (cd "$ROOT" && CCTV_NATS_USER=cctv_ingest CCTV_NATS_PASSWORD="$(secret CCTV_NATS_INGEST_PASSWORD)" \
            CCTV_INGEST_METRICS_LISTEN="127.0.0.1:$port" \
            start_background "$name" "$BIN_DIR/cctv-ingest" --config "$INGEST_CONFIG")
        wait_until "$name" "$BIN_DIR/cctv-ingest" http_ok "http://127.0.0.1:$port/healthz"
    done
    index=0
    for port in $AGGREGATOR_METRICS_PORTS; do
        index=$((index + 1))
        local name="cctv-aggregator-$index"
        running_pid "$name" "$BIN_DIR/cctv-aggregator" >/dev/null && continue
        say "$name: starting (metrics 127.0.0.1:$port)"
        (cd "$ROOT" && CCTV_NATS_USER=cctv_aggregator \
            CCTV_NATS_PASSWORD="$(secret CCTV_NATS_AGGREGATOR_PASSWORD)" \
            CCTV_CLICKHOUSE_USER=cctv_writer CCTV_AGGREGATOR_METRICS_LISTEN="127.0.0.1:$port" \
            start_background "$name" "$BIN_DIR/cctv-aggregator" --config "$AGGREGATOR_CONFIG")
        wait_until "$name" "$BIN_DIR/cctv-aggregator" http_ok "http://127.0.0.1:$port/healthz"
    done
}

# --- commands -----------------------------------------------------------------------

cmd_up() {
    CCTV_CLICKHOUSE_URL='' "$ROOT/scripts/install-servers.sh"
    ensure_secrets
    start_zookeeper
    start_clickhouse_nodes
    start_nats_nodes
    build_binaries
    say "setup: cctvctl setup (streams with 3 replicas, the cluster schema on every node)"
    CCTV_CLICKHOUSE_USER=cctv_migrator run_ctl setup
    start_services
    say "cluster is up: NATS $(awk 'NF == 5 { printf "%s:%s ", $2, $3 }' <<<"$NATS_NODES"), ClickHouse shards of deploy/cluster/layout.env, logs in ${LOG_DIR#"$ROOT"/}/"
}

cmd_down() {
    local port index=0 name host rest shard replica
    for port in $INGEST_METRICS_PORTS; do
        index=$((index + 1))
        stop_component "cctv-ingest-$index" "$BIN_DIR/cctv-ingest"
    done
    index=0
    for port in $AGGREGATOR_METRICS_PORTS; do
        index=$((index + 1))
        stop_component "cctv-aggregator-$index" "$BIN_DIR/cctv-aggregator"
    done
    while read -r name host rest; do
        [ -n "$name" ] && stop_component "nats-$name" "$DIR/nats-$name/nats.conf"
    done <<<"$NATS_NODES"
    while read -r shard replica rest; do
        [ -n "$shard" ] && stop_component "clickhouse-$shard-$replica" "$DIR/clickhouse-$shard-$replica/config.xml"
    done <<<"$CLICKHOUSE_NODES"
    stop_component zookeeper "$DIR/zookeeper/zoo.cfg"
    say "cluster is down (data kept in ${DIR#"$ROOT"/})"
}

cmd_status() {
    local file name
    for file in "$RUN_DIR"/*.pid; do
        [ -e "$file" ] || { echo "nothing runs"; return 0; }
        name="$(basename "$file" .pid)"
        if kill -0 "$(tr -dc '0-9' <"$file")" 2>/dev/null; then
            printf '  %-22s running\n' "$name"
        else
            printf '  %-22s stopped\n' "$name"
        fi
    done
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    ctl) shift; run_ctl "$@" ;;
    *) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
