#!/usr/bin/env bash
# The demo: a local Consul dev agent, two backends registered with the seed's
# tags, and the supervisor serving them through HAProxy; then, under load,
# an instance added and one failing its check, applied live (the serving
# HAProxy's pid stays the same), and a new service, which starts a new
# generation (a new pid) without a failed request; /status and /metrics; a
# graceful stop. Each step prints what it proves. Everything runs in a private
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
  for p in "${pids[@]}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
proves() { printf '   \033[32m-> %s\033[0m\n' "$*"; }
fail() { printf '   \033[31m-> FAILED: %s\033[0m\n' "$*"; status=1; }
status=0
consul=http://127.0.0.1:8500
host=www.maauso.com

# wait_for SECONDS COMMAND...: runs COMMAND every 0.1 s until it succeeds, at
# most SECONDS; returns its last status.
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.1
  done
}
# The serving HAProxy's pid, from the supervisor's /status.
serving_pid() { curl -sf http://127.0.0.1:4445/status | grep -o '"pid":[0-9]*' | head -1 | cut -d: -f2; }
# register ID SERVICE PORT [TAGS_JSON]: a demo backend and its Consul entry
# with the seed's tags and a TTL check (passing until told otherwise).
register() {
  local id=$1 service=$2 port=$3 tags=${4:-'"HAPROXY.ENABLE=true", "HAPROXY.PROTOCOL=http", "HAPROXY.BACKEND.BALANCE=roundrobin", "HAPROXY.BACKEND.MAXCONN=10000"'}
  target/release/demo-backend --listen "127.0.0.1:$port" --name "$id" >"$work/backend-$id.log" 2>&1 &
  pids+=($!)
  curl -sf -X PUT "$consul/v1/agent/service/register" --data @- <<JSON
{"ID": "$id", "Name": "$service", "Address": "127.0.0.1", "Port": $port, "Tags": [$tags],
 "Check": {"CheckID": "ttl-$id", "TTL": "10m", "Status": "passing"}}
JSON
  echo "registered $id (service $service) -> 127.0.0.1:$port"
}
# hits HOST N: which backends answer N requests for HOST (one line each).
hits() { answers "$1" "$2" | sort | uniq -c | sed 's/^/   /'; }
answers() { for _ in $(seq "$2"); do curl -s -H "Host: $1" http://127.0.0.1:8080/; done; }
routed() { local seen; seen=$(answers "$1" 6); grep -qx "$2" <<<"$seen"; }
not_routed() { local seen; seen=$(answers "$1" 10); ! grep -qx "$2" <<<"$seen"; }
# under_load SECONDS: wrk with 20 connections and a new connection per
# request, in the background; its report goes to $work/wrk.txt.
under_load() {
  wrk -t2 -c20 -d"$1"s -H "Host: $host" -H 'Connection: close' http://127.0.0.1:8080/ >"$work/wrk.txt" 2>&1 &
  wrk_pid=$!
}
wrk_verdict() {
  wait "$wrk_pid"
  grep -E 'requests in|Requests/sec|Socket errors|Non-2xx' "$work/wrk.txt" | sed 's/^ */   wrk: /'
  if grep -qE 'Socket errors|Non-2xx' "$work/wrk.txt"; then fail "failed requests under load"; else proves "0 failed requests: no socket error, no non-2xx answer"; fi
}
count_event() { grep -c "\"event\":\"$1\"" "$work/supervisor.log" || true; }

step "1. Consul dev agent, two backends of 'www' with the seed's tags, the supervisor"
consul agent -dev -bind 127.0.0.1 -client 127.0.0.1 -log-level warn >"$work/consul.log" 2>&1 &
pids+=($!)
wait_for 30 sh -c "curl -sf $consul/v1/status/leader | grep -q ':'"
register www-1 www 9001
register www-2 www 9002
HAPROXY_DOM=maauso.com HAPROXY_LOG_FORMAT=json target/release/haproxy-supervisor run \
  --config-file "$work/etc/haproxy.cfg" --run-dir "$work/run" >"$work/supervisor.log" 2>&1 &
sup=$!
pids+=($sup)
wait_for 30 curl -sf -o /dev/null http://127.0.0.1:4444/_haproxy_health_check
wait_for 10 routed "$host" www-2
echo "rendered: $work/etc/haproxy.cfg"
sed -n '/^backend www/,/^$/p' "$work/etc/haproxy.cfg" | sed 's/^/   /'
echo "8 requests with Host: $host:"; hits "$host" 8
echo "unknown host -> $(curl -s -o /dev/null -w '%{http_code}' -H 'Host: nope.maauso.com' http://127.0.0.1:8080/)"
proves "services registered with the seed's tags are served (round robin, unknown hosts 503)"

step "2. Live: an instance added and one failing its check, under load"
pid_before=$(serving_pid)
live_before=$(count_event live_applied)
echo "serving HAProxy pid before: $pid_before"
under_load 6
register www-3 www 9003
wait_for 10 routed "$host" www-3 && echo "www-3 is routed"
curl -sf -X PUT "$consul/v1/agent/check/fail/ttl-www-2" && echo "www-2 fails its Consul check"
wait_for 10 not_routed "$host" www-2 && echo "www-2 gets no more requests"
wrk_verdict
pid_after=$(serving_pid)
echo "serving HAProxy pid after:  $pid_after; live changes applied: $(( $(count_event live_applied) - live_before ))"
echo "8 requests:"; hits "$host" 8
if [ -n "$pid_before" ] && [ "$pid_before" = "$pid_after" ]; then
  proves "both changes applied live over HAProxy's runtime API: same pid, no process started"
else
  fail "the serving pid changed ($pid_before -> $pid_after)"
fi
curl -sf -X PUT "$consul/v1/agent/check/pass/ttl-www-2" >/dev/null

step "3. A structural change: a new service 'api' starts a new generation, under load"
pid_before=$(serving_pid)
reloads_before=$(count_event reload_done)
echo "serving HAProxy pid before: $pid_before"
under_load 5
register api-1 api 9004 '"HAPROXY.ENABLE=true", "HAPROXY.BACKEND.BALANCE=leastconn"'
wait_for 15 routed api.maauso.com api-1 && echo "api.maauso.com -> api-1"
wrk_verdict
pid_after=$(serving_pid)
echo "serving HAProxy pid after:  $pid_after; reloads: $(( $(count_event reload_done) - reloads_before ))"
if [ -n "$pid_after" ] && [ "$pid_before" != "$pid_after" ]; then
  proves "a new backend is config text on HAProxy $(haproxy -v | awk 'NR==1{print $3}'): a new generation (new pid) took over with 0 failed requests"
else
  fail "no new generation ($pid_before -> $pid_after)"
fi

step "4. What the supervisor reports: /status and /metrics on :4445"
curl -sf http://127.0.0.1:4445/status | sed 's/^/   /'; echo
curl -sf http://127.0.0.1:4445/metrics | grep -E '^haproxy_supervisor_' | grep -v _bucket | head -10 | sed 's/^/   /'

step "5. SIGTERM: graceful stop"
kill -TERM "$sup"
if wait "$sup"; then proves "supervisor exited with code 0"; else fail "supervisor exited with code $?"; fi
pids=("${pids[@]/$sup}")

if [ "${1:-}" = "--shell" ]; then
  echo "Files are in $work. Starting a shell in the demo's network namespace; exit to end."
  bash -i || true
fi
[ $status = 0 ] && echo "demo: every step proved what it says" || echo "demo: a step failed (logs in $work)"
exit $status
