#!/bin/sh
# Makes a self-signed certificate and its key for trying [tls] out.
#
#   examples/tls/make-cert.sh                    cert.pem + key.pem for localhost
#                                                (CN=localhost, SAN DNS:localhost, IP:127.0.0.1)
#   examples/tls/make-cert.sh --name other.test  certs/other.test.pem: chain and key in one
#                                                file, for the [tls] certs directory (SNI)
#   --days N (default 365), --dir DIR (default: this script's directory)
#
# The files hold private keys: *.pem is git-ignored here, keep it that way.
set -eu

name=localhost
days=365
dir=$(cd "$(dirname "$0")" && pwd)

while [ $# -gt 0 ]; do
    case $1 in
    --name) name=$2; shift 2 ;;
    --days) days=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "usage: $0 [--name HOST] [--days N] [--dir DIR]" >&2; exit 2 ;;
    esac
done

case $name in
*[!A-Za-z0-9.*-]*|'') echo "$0: bad name '$name'" >&2; exit 2 ;;
esac

umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

san="DNS:$name"
[ "$name" = localhost ] && san="$san,IP:127.0.0.1,IP:::1"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -days "$days" -nodes \
    -subj "/CN=$name" -addext "subjectAltName=$san" \
    -addext "basicConstraints=critical,CA:FALSE" \
    -addext "keyUsage=critical,digitalSignature" -addext "extendedKeyUsage=serverAuth" \
    -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null

if [ "$name" = localhost ]; then
    mkdir -p "$dir"
    mv "$tmp/cert.pem" "$dir/cert.pem"
    mv "$tmp/key.pem" "$dir/key.pem"
    echo "$dir/cert.pem, $dir/key.pem: $name, $days days"
else
    mkdir -p "$dir/certs"
    cat "$tmp/cert.pem" "$tmp/key.pem" > "$dir/certs/$name.pem"
    echo "$dir/certs/$name.pem: $name (certificate and key), $days days"
fi
