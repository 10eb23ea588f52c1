#!/usr/bin/env bash
# Installs the servers the local stack and the integration tests need, when missing:
# the pinned nats-server (scripts/install-nats.sh, into .local/tools/; not Debian's
# 2.9.10, which is older than the supported 2.10), then clickhouse-server,
# clickhouse-client and zookeeper (for replicated ClickHouse tables: the cluster
# tests and `make cluster-up`), mosquitto (the MQTT broker of the gateway's
# tests) and `script` (bsdutils, a pseudo-terminal for one test) from the OS
# packages (apt).
#
# - Idempotent and quiet when everything is already there.
# - Uses sudo when not run as root.
# - Runs `apt-get update` once, only when the first install attempt fails.
# - Skips ClickHouse when CCTV_CLICKHOUSE_URL names a server other than the local
#   stack's own (http://127.0.0.1:18123): that server is used instead (see stack.sh).
# - Keeps the packages from starting their system-wide daemons (ClickHouse on
#   8123/9000): the stack and the tests run their own servers from their own configs,
#   and the machine may already run a NATS of its own on 4222.
#
# Extra packages to install along (e.g. curl) may be given as arguments.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
readonly OWN_CLICKHOUSE_URL="http://127.0.0.1:18123"

log() { printf 'install-servers: %s\n' "$*"; }
die() { printf 'install-servers: error: %s\n' "$*" >&2; exit 1; }

# True when a binary is on PATH or where the Debian packages put servers.
have_binary() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]
}

# True when CCTV_CLICKHOUSE_URL points at a ClickHouse other than the stack's own.
clickhouse_is_external() {
    local url="${CCTV_CLICKHOUSE_URL:-}"
    url="${url%/}"
    [ -n "$url" ] || return 1
    case "$url" in
        "$OWN_CLICKHOUSE_URL" | "http://localhost:18123") return 1 ;;
        *) return 0 ;;
    esac
}

# nats-server comes from the project's own installer (quiet when installed).
"$ROOT/scripts/install-nats.sh" || die "could not install nats-server (scripts/install-nats.sh)"

missing=()
if ! clickhouse_is_external; then
    have_binary clickhouse-server || missing+=(clickhouse-server)
    have_binary clickhouse-client || missing+=(clickhouse-client)
    # ZooKeeper runs from its jar (cctv-testkit, scripts/cluster.sh), never as
    # the package's service.
    [ -f /usr/share/java/zookeeper.jar ] || missing+=(zookeeper)
fi
# The MQTT broker the gateway's tests publish Frigate messages through.
have_binary mosquitto || missing+=(mosquitto)
# `script` runs `cctvctl audit` on a pseudo-terminal in a test (its progress).
have_binary script || missing+=(bsdutils)
for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' \
        || missing+=("$package")
done
[ "${#missing[@]}" -gt 0 ] || exit 0

command -v apt-get >/dev/null 2>&1 \
    || die "missing ${missing[*]} and no apt-get to install them; install them by hand (or point CCTV_CLICKHOUSE_URL at an existing ClickHouse)"

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "missing ${missing[*]}; not root and no sudo to install them"
    sudo_cmd=(sudo)
fi

# An absent /usr/sbin/policy-rc.d is created for the duration of the install so that
# the packages' postinst scripts do not start system daemons; an existing one is left
# as it is.
policy_file=/usr/sbin/policy-rc.d
created_policy=0
remove_policy() {
    if [ "$created_policy" -eq 1 ]; then
        "${sudo_cmd[@]}" rm -f "$policy_file" || true
    fi
}
trap remove_policy EXIT
if [ ! -e "$policy_file" ]; then
    printf '#!/bin/sh\n# Temporary, from scripts/install-servers.sh.\nexit 101\n' \
        | "${sudo_cmd[@]}" tee "$policy_file" >/dev/null
    "${sudo_cmd[@]}" chmod 755 "$policy_file"
    created_policy=1
fi

apt_log="$(mktemp)"
apt_install() {
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$apt_log" 2>&1
}

log "installing ${missing[*]}"
if ! apt_install; then
    log "install failed; running apt-get update and retrying"
    if ! "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$apt_log" 2>&1 \
        || ! apt_install; then
        tail -n 20 "$apt_log" >&2
        rm -f "$apt_log"
        die "could not install ${missing[*]}; if ClickHouse has no package for this OS, point CCTV_CLICKHOUSE_URL at an existing server"
    fi
fi
rm -f "$apt_log"
log "installed ${missing[*]}"
