#!/usr/bin/env bash
# Installs Debian's `chromium` when it is missing: the report test
# (tests/pipeline/report.rs) renders `cctvctl report`'s HTML in headless
# Chromium, takes a screenshot and reads the rendered DOM. Nothing else needs
# it; the report itself opens in any browser with no network.
#
# - Idempotent and quiet when chromium is already there (on PATH or in /usr/bin).
# - Uses sudo when not run as root.
# - Runs `apt-get update` once, only when the first install attempt fails.
# - No recommended packages, and no daemon is started (chromium has none).
set -euo pipefail

log() { printf 'install-chromium: %s\n' "$*"; }
die() { printf 'install-chromium: error: %s\n' "$*" >&2; exit 1; }

if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
    exit 0
fi

command -v apt-get >/dev/null 2>&1 \
    || die "chromium is missing and there is no apt-get to install it; install Chromium by hand (the binary must be called chromium)"

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "chromium is missing; not root and no sudo to install it"
    sudo_cmd=(sudo)
fi

apt_log="$(mktemp)"
trap 'rm -f "$apt_log"' EXIT
apt_install() {
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends chromium >>"$apt_log" 2>&1
}

log "installing chromium"
if ! apt_install; then
    log "install failed; running apt-get update and retrying"
    if ! "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$apt_log" 2>&1 \
        || ! apt_install; then
        tail -n 20 "$apt_log" >&2
        die "could not install chromium"
    fi
fi
log "installed chromium ($(chromium --version 2>/dev/null || echo 'version unknown'))"
