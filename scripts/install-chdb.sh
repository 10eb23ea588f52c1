#!/usr/bin/env bash
# Installs the pinned chdb-core (scripts/versions.env: CHDB_CORE_VERSION), current
# ClickHouse embedded in a Python module, into a project-local virtualenv at
# .local/tools/chdb-core-<version>/ (repo-relative, git-ignored). The tests run the
# project's schema, RowBinary rows and queries on it next to ClickHouse 18.16
# (tests/pipeline/chdb.rs, through tests/chdb/run.py).
#
#   scripts/install-chdb.sh                 install when missing; quiet when installed
#   scripts/install-chdb.sh --print-python  the same, then print the venv's python
#
# - Idempotent: a venv whose chdb reports the pinned version is left alone.
# - Downloads the wheel with pip (no dependencies: pandas and pyarrow serve only
#   chdb's DataFrame and Arrow outputs, which the tests do not use; linux x86_64
#   only) and refuses it unless its sha256 is the one in scripts/versions.env.
# - Installs python3-venv with apt-get (sudo when not root) only if `python3 -m venv`
#   fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT

# Progress goes to stderr, so stdout carries only the path of --print-python.
log() { printf 'install-chdb: %s\n' "$*" >&2; }
die() { printf 'install-chdb: error: %s\n' "$*" >&2; exit 1; }

print_python=0
case "${1:-}" in
    "") ;;
    --print-python) print_python=1 ;;
    -h | --help)
        sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument '$1' (expected --print-python)" ;;
esac

# shellcheck source=versions.env
. "$ROOT/scripts/versions.env"
: "${CHDB_CORE_VERSION:?missing in scripts/versions.env}"
: "${CHDB_CORE_WHEEL_PLATFORM:?missing in scripts/versions.env}"
: "${CHDB_CORE_WHEEL_SHA256:?missing in scripts/versions.env}"

readonly VENV="$ROOT/.local/tools/chdb-core-$CHDB_CORE_VERSION"
readonly PYTHON="$VENV/bin/python"

# True when the venv's chdb imports and reports the pinned version.
installed() {
    [ -x "$PYTHON" ] || return 1
    local output
    output="$("$PYTHON" -c 'import chdb; print(chdb.__version__)' 2>/dev/null)" || return 1
    [ "$output" = "$CHDB_CORE_VERSION" ]
}

finish() {
    if [ "$print_python" -eq 1 ]; then
        printf '%s\n' "$PYTHON"
    fi
    exit 0
}

installed && finish

[ "$(uname -s)-$(uname -m)" = Linux-x86_64 ] \
    || die "the pinned wheel is for linux x86_64, this is $(uname -s)-$(uname -m)"
command -v sha256sum >/dev/null 2>&1 || die "sha256sum is missing (coreutils)"
command -v python3 >/dev/null 2>&1 || die "python3 is missing"

apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "$1 is missing and there is no apt-get to install it"
    local sudo_cmd=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "$1 is missing; not root and no sudo to install it"
        sudo_cmd=(sudo)
    fi
    log "installing $1"
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1" >/dev/null 2>&1 \
        || { "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 \
            && "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1" >/dev/null 2>&1; } \
        || die "could not install $1"
}

work_dir="$(mktemp -d "${TMPDIR:-/tmp}/install-chdb.XXXXXX")"
trap 'rm -rf "$work_dir"' EXIT

# The venv is made where it stays (its scripts carry absolute paths). A half-made
# one, from an interrupted install, fails `installed` and is made anew here.
rm -rf "$VENV"
if ! python3 -m venv "$VENV" >"$work_dir/venv.log" 2>&1; then
    rm -rf "$VENV"
    apt_install python3-venv
    python3 -m venv "$VENV" >"$work_dir/venv.log" 2>&1 || {
        cat "$work_dir/venv.log" >&2
        die "python3 -m venv $VENV failed"
    }
fi

log "downloading chdb-core==$CHDB_CORE_VERSION ($CHDB_CORE_WHEEL_PLATFORM wheel, about 180 MB) with pip"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
    --platform "$CHDB_CORE_WHEEL_PLATFORM" \
    --dest "$work_dir" "chdb-core==$CHDB_CORE_VERSION" >"$work_dir/pip.log" 2>&1 || {
    tail -n 20 "$work_dir/pip.log" >&2
    rm -rf "$VENV"
    die "pip could not download chdb-core==$CHDB_CORE_VERSION"
}
wheels=("$work_dir"/chdb_core-"$CHDB_CORE_VERSION"-*.whl)
[ "${#wheels[@]}" -eq 1 ] && [ -f "${wheels[0]}" ] || {
    rm -rf "$VENV"
    die "pip did not leave exactly one chdb_core-$CHDB_CORE_VERSION wheel in $work_dir"
}
wheel="${wheels[0]}"

actual_sha256="$(sha256sum "$wheel" | awk '{print $1}')"
if [ "$actual_sha256" != "$CHDB_CORE_WHEEL_SHA256" ]; then
    rm -rf "$VENV"
    die "sha256 mismatch for $(basename "$wheel"): got $actual_sha256, scripts/versions.env pins $CHDB_CORE_WHEEL_SHA256; refusing to install it"
fi

"$PYTHON" -m pip install --quiet --no-deps --no-index "$wheel" >"$work_dir/pip.log" 2>&1 || {
    tail -n 20 "$work_dir/pip.log" >&2
    rm -rf "$VENV"
    die "pip could not install $(basename "$wheel") into $VENV"
}
installed || {
    rm -rf "$VENV"
    die "the venv's chdb does not import as version $CHDB_CORE_VERSION"
}
log "installed chdb-core $CHDB_CORE_VERSION ($("$PYTHON" -c 'import chdb; print(chdb.engine_version)')) in ${VENV#"$ROOT"/}"
finish
