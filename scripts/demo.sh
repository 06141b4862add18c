#!/usr/bin/env bash
# The demo: a local Consul dev agent, two backends registered with the seed's
# tags, and the supervisor serving them through HAProxy; then a burst of
# reloads under load that loses no request. Everything runs in a private
# network namespace on its own loopback, so nothing on this machine is
# touched and no port can clash. Run as root:
#
#   bash scripts/demo.sh            # runs the demo and exits
#   bash scripts/demo.sh --shell    # ...then leaves you a shell inside it
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${HS_DEMO_IN_NETNS:-}" != 1 ]; then
  bash scripts/setup.sh
  cargo build --release -p haproxy-supervisor -p demo-backend --bins
  exec env HS_DEMO_IN_NETNS=1 unshare --net -- bash "$0" "$@"
fi

ip link set lo up
work=$(mktemp -d /tmp/haproxy-supervisor-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Consul dev agent on 127.0.0.1:8500"
consul agent -dev -bind 127.0.0.1 -client 127.0.0.1 -log-level warn >"$work/consul.log" 2>&1 &
pids+=($!)
until curl -sf http://127.0.0.1:8500/v1/status/leader | grep -q ':'; do sleep 0.2; done

step "Two backends of service 'www', registered with the seed's tags"
for i in 1 2; do
  target/release/demo-backend --listen 127.0.0.1:900$i --name "www-$i" >"$work/backend-$i.log" 2>&1 &
  pids+=($!)
  curl -sf -X PUT http://127.0.0.1:8500/v1/agent/service/register --data @- <<JSON
{"ID": "www-$i", "Name": "www", "Address": "127.0.0.1", "Port": 900$i,
 "Tags": ["HAPROXY.ENABLE=true", "HAPROXY.PROTOCOL=http",
          "HAPROXY.BACKEND.BALANCE=roundrobin", "HAPROXY.BACKEND.MAXCONN=10000"]}
JSON
  echo "registered www-$i -> 127.0.0.1:900$i"
done

step "haproxy-supervisor run (HAPROXY_DOM=maauso.com)"
HAPROXY_DOM=maauso.com target/release/haproxy-supervisor run \
  --config-file "$work/etc/haproxy.cfg" --run-dir "$work/run" >"$work/supervisor.log" 2>&1 &
sup=$!
pids+=($sup)
until curl -sf http://127.0.0.1:4444/_haproxy_health_check >/dev/null 2>&1; do sleep 0.1; done
echo "HAProxy is up; rendered config: $work/etc/haproxy.cfg"
sed -n '/^backend www/,$p' "$work/etc/haproxy.cfg"
echo "host map: $(cat "$work"/etc/maps/hosts-*.map)"

step "Requests with Host: www.maauso.com (round robin over both backends)"
for _ in 1 2 3 4; do curl -s -H 'Host: www.maauso.com' http://127.0.0.1:8080/; done
echo "unknown host -> $(curl -s -o /dev/null -w '%{http_code}' -H 'Host: nope.maauso.com' http://127.0.0.1:8080/)"

step "A third backend registers: the supervisor re-renders and reloads"
target/release/demo-backend --listen 127.0.0.1:9003 --name www-3 >"$work/backend-3.log" 2>&1 &
pids+=($!)
curl -sf -X PUT http://127.0.0.1:8500/v1/agent/service/register \
  --data '{"ID":"www-3","Name":"www","Address":"127.0.0.1","Port":9003,"Tags":["HAPROXY.ENABLE=true"]}'
for _ in $(seq 50); do grep -q 'www-3 127.0.0.1:9003' "$work/etc/haproxy.cfg" && break; sleep 0.1; done
grep 'server www-3' "$work/etc/haproxy.cfg"
sleep 0.3
for _ in 1 2 3; do curl -s -H 'Host: www.maauso.com' http://127.0.0.1:8080/; done

step "20 reloads by SIGHUP under load (wrk, 20 connections, a new connection per request)"
before=$(grep -c 'haproxy reload done' "$work/supervisor.log" || true)
wrk -t2 -c20 -d6s -H 'Host: www.maauso.com' -H 'Connection: close' http://127.0.0.1:8080/ >"$work/wrk.txt" 2>&1 &
wrk_pid=$!
sleep 0.5
for _ in $(seq 20); do kill -HUP "$sup"; sleep 0.2; done
wait "$wrk_pid"
after=$(grep -c 'haproxy reload done' "$work/supervisor.log" || true)
cat "$work/wrk.txt"
echo "reloads during the run: $((after - before))"
if grep -qE 'Socket errors|Non-2xx' "$work/wrk.txt"; then
  echo "FAILED REQUESTS during reloads (see above)"; status=1
else
  echo "no failed request: no socket error, no non-2xx answer"; status=0
fi

step "SIGTERM: graceful stop"
kill -TERM "$sup"
wait "$sup" && echo "supervisor exited with code 0"
pids=("${pids[@]/$sup}")

if [ "${1:-}" = "--shell" ]; then
  echo "Files are in $work. Starting a shell in the demo's network namespace; exit to end."
  bash -i || true
fi
exit $status
