#!/usr/bin/env bash
# A local test CA and the certificates of the local stack, made with openssl.
#
#   scripts/gen-certs.sh [DIR]     (default DIR: .local/tls)
#
# Writes, keys with mode 600, and leaves files that exist alone (delete DIR to
# start over; `TLS=1 make up` runs this when DIR is missing):
#   ca.pem, ca.key                       the test CA (10 years)
#   nats.pem, nats.key                   nats-server (SAN localhost, 127.0.0.1, ::1)
#   clickhouse.pem, clickhouse.key       clickhouse-server (same names)
#   <client>.pem, <client>.key           one client certificate each for
#                                        cctv_ingest, cctv_aggregator, cctv_operator,
#                                        cctv_analyst, gw1 and gw2: subject CN=<client>,
#                                        SAN DNS:<client> (nats-server's verify_and_map
#                                        maps the SAN to the user of that name)
#
# Extra host names or addresses of the servers: CCTV_TLS_HOSTS="nats.example.kz 10.1.2.3".
# These are test certificates: for a deployment, have your own CA issue them (see
# README "TLS") and point the services at those files instead.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
readonly DIR="${1:-$ROOT/.local/tls}"
readonly DAYS_CA=3650
readonly DAYS_LEAF=825
readonly CLIENTS="cctv_ingest cctv_aggregator cctv_operator cctv_analyst gw1 gw2"

say() { printf 'gen-certs: %s\n' "$*"; }
die() {
    printf 'gen-certs: error: %s\n' "$*" >&2
    exit 1
}

command -v openssl >/dev/null 2>&1 || die "openssl not found (apt-get install openssl)"
mkdir -p "$DIR"
umask 077

# A P-256 key in $1 unless it exists.
new_key() {
    [ -f "$1" ] || openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

# The SAN list of the servers: loopback names plus CCTV_TLS_HOSTS.
server_sans() {
    local sans="DNS:localhost,IP:127.0.0.1,IP:::1" host
    for host in ${CCTV_TLS_HOSTS:-}; do
        if [[ "$host" =~ ^[0-9.]+$ || "$host" == *:* ]]; then
            sans="$sans,IP:$host"
        else
            sans="$sans,DNS:$host"
        fi
    done
    printf '%s\n' "$sans"
}

# Issues $1.pem (subject CN=$2, SAN $3, extended key usage $4) from the CA.
issue() {
    local name="$1" common_name="$2" sans="$3" usage="$4"
    [ -f "$DIR/$name.pem" ] && return 0
    new_key "$DIR/$name.key"
    local extensions="$DIR/$name.ext"
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=%s\nsubjectAltName=%s\n' \
        "$usage" "$sans" >"$extensions"
    openssl req -new -key "$DIR/$name.key" -subj "/CN=$common_name" -out "$DIR/$name.csr"
    openssl x509 -req -in "$DIR/$name.csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca.key" \
        -CAcreateserial -days "$DAYS_LEAF" -sha256 -extfile "$extensions" \
        -out "$DIR/$name.pem" 2>/dev/null
    rm -f "$DIR/$name.csr" "$extensions"
    say "issued $name.pem (CN=$common_name, $sans)"
}

if [ ! -f "$DIR/ca.pem" ]; then
    new_key "$DIR/ca.key"
    openssl req -x509 -new -key "$DIR/ca.key" -subj "/CN=cctv local test CA" \
        -days "$DAYS_CA" -sha256 \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$DIR/ca.pem"
    say "created the test CA ${DIR#"$ROOT"/}/ca.pem"
fi
issue nats localhost "$(server_sans)" serverAuth
issue clickhouse localhost "$(server_sans)" serverAuth
for client in $CLIENTS; do
    issue "$client" "$client" "DNS:$client" clientAuth
done
# Certificates are public; keys stay owner-only.
chmod 644 "$DIR"/*.pem
chmod 600 "$DIR"/*.key
say "certificates in ${DIR#"$ROOT"/}"
