#!/usr/bin/env bash
# TLS termination cost (issue 12): TLS handshakes per second and HTTPS
# requests per second through the proxy, against plain HTTP, in one run.
#
# Runs in its own network namespace (and mount namespace, for nothing but
# isolation): the release supervisor with a catalog file and a certificates
# directory, target/release/demo-backend behind it, wrk as the client.
# Four measurements of DURATION seconds each, CONNECTIONS connections:
#   http-close   plain HTTP, a new connection per request (Connection: close)
#   https-close  HTTPS, a new connection per request: one full TLS handshake
#                per request (wrk does not resume sessions), so req/s is
#                handshakes/s
#   http-ka      plain HTTP, keep-alive
#   https-ka     HTTPS, keep-alive (the handshake once per connection)
#
# Usage (root, after `cargo build --release --workspace`):
#   bench/tls-bench.sh [DURATION=10] [CONNECTIONS=50] [KEY=ec|rsa]
set -euo pipefail

DURATION=${1:-10}
CONNECTIONS=${2:-50}
KEY=${3:-ec}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

if [ -z "${TLS_BENCH_IN_NETNS:-}" ]; then
    exec unshare -n -m env TLS_BENCH_IN_NETNS=1 bash "$0" "$DURATION" "$CONNECTIONS" "$KEY"
fi
ip link set lo up

for p in wrk openssl curl haproxy; do
    command -v "$p" >/dev/null || { echo "tls-bench: $p is required (scripts/setup.sh)" >&2; exit 1; }
done
SUP="$ROOT/target/release/haproxy-supervisor"
BACKEND="$ROOT/target/release/demo-backend"
[ -x "$SUP" ] && [ -x "$BACKEND" ] || { echo "tls-bench: run cargo build --release --workspace first" >&2; exit 1; }

WORK=$(mktemp -d /tmp/tls-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# A test CA and a certificate for a.test.
cd "$WORK"
mkdir certs
case "$KEY" in
    ec) NEWKEY=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
    rsa) NEWKEY=(-newkey rsa:2048) ;;
    *) echo "KEY must be ec or rsa" >&2; exit 2 ;;
esac
openssl req -x509 "${NEWKEY[@]}" -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=bench-ca 2>/dev/null
openssl req "${NEWKEY[@]}" -nodes -keyout a.key -out a.csr -subj /CN=a.test 2>/dev/null
printf 'subjectAltName=DNS:a.test\n' > a.ext
openssl x509 -req -in a.csr -CA ca.pem -CAkey ca.key -set_serial 1 -days 2 -extfile a.ext -out a.crt 2>/dev/null
cat a.crt a.key > certs/a.pem

"$BACKEND" --listen 127.0.0.1:9001 --name a > backend.out &
PIDS+=($!)
cat > catalog.json <<'EOF'
{"services":[{"name":"a","instances":[{"id":"a-1","address":"127.0.0.1","port":9001,
  "tags":["HAPROXY.ENABLE=true","HAPROXY.VHOST=a.test"]}]}]}
EOF
HAPROXY_CERTS_DIR="$WORK/certs" LOCAL_SYSLOG=127.0.0.1:5514 \
    "$SUP" run --catalog-file catalog.json --config-file etc/haproxy.cfg --run-dir run \
    > supervisor.log 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    if curl -sf --resolve a.test:8443:127.0.0.1 --cacert ca.pem https://a.test:8443/ >/dev/null 2>&1; then
        break
    fi
    sleep 0.1
done
curl -sSf --resolve a.test:8443:127.0.0.1 --cacert ca.pem https://a.test:8443/ >/dev/null

# wrk: requests/s, and the errors it counted (socket errors, non-2xx).
run() {
    local name=$1 url=$2; shift 2
    local out rps errs non2xx
    out=$(wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" -H 'Host: a.test' "$@" "$url")
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    errs=$(awk '/Socket errors:/ {gsub(",", ""); print $4+$6+$8+$10}' <<<"$out")
    non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
    printf '%s %s %s\n' "$name" "$rps" "$(( ${errs:-0} + ${non2xx:-0} ))"
}

{
    run http-close http://127.0.0.1:8080/ -H 'Connection: close'
    run https-close https://127.0.0.1:8443/ -H 'Connection: close'
    run http-ka http://127.0.0.1:8080/
    run https-ka https://127.0.0.1:8443/
} > results.txt

HV=$(haproxy -v | awk 'NR==1 {print $3}')
echo "TLS bench: $(date -u +%F), $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), HAProxy $HV, $KEY key, wrk -t2 -c$CONNECTIONS -d${DURATION}s"
awk '
    { rps[$1] = $2; err[$1] = $3 }
    END {
        printf "| %-40s | %10s | %6s | %12s |\n", "mode", "req/s", "errors", "HTTPS / HTTP"
        printf "|%s|%s|%s|%s|\n", "---", "---:", "---:", "---:"
        printf "| %-40s | %10.0f | %6d | %12s |\n", "HTTP, new connection per request", rps["http-close"], err["http-close"], ""
        printf "| %-40s | %10.0f | %6d | %12.2f |\n", "HTTPS, new connection per request (= TLS handshakes/s)", rps["https-close"], err["https-close"], rps["https-close"] / rps["http-close"]
        printf "| %-40s | %10.0f | %6d | %12s |\n", "HTTP, keep-alive", rps["http-ka"], err["http-ka"], ""
        printf "| %-40s | %10.0f | %6d | %12.2f |\n", "HTTPS, keep-alive", rps["https-ka"], err["https-ka"], rps["https-ka"] / rps["http-ka"]
    }' results.txt
