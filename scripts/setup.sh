#!/usr/bin/env bash
# Installs everything the demo, the tests and the benchmarks need on a fresh
# Debian 12 machine: haproxy, iptables, consul (from Debian 11, see below),
# curl, socat, wrk, openssl, iproute2, util-linux, prometheus (and promtool),
# h2load and nghttpd (nghttp2-client, nghttp2-server), python3-grpcio. Idempotent;
# run as root.
set -euo pipefail

need_apt=()
for pair in haproxy:haproxy iptables:iptables curl:curl socat:socat wrk:wrk openssl:openssl ip:iproute2 unshare:util-linux nsenter:util-linux ps:procps prometheus:prometheus promtool:prometheus h2load:nghttp2-client nghttpd:nghttp2-server; do
  cmd=${pair%%:*} pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg")
done

# gRPC servers and clients of tests/backend_proto.rs (tests/grpc/*.py):
# Debian's python3 with its grpc module.
/usr/bin/python3 -c 'import grpc' >/dev/null 2>&1 || need_apt+=(python3-grpcio)

apt_updated=0
apt_update() { if [ $apt_updated = 0 ]; then apt-get update -qq; apt_updated=1; fi; }

if [ ${#need_apt[@]} -gt 0 ]; then
  apt_update
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Debian 12 has no consul package; Debian 11 (bullseye) has 1.8.7. We add a
# bullseye source derived from the machine's own Debian entry, use it only to
# download the .deb, and extract /usr/bin/consul from it.
if ! command -v consul >/dev/null 2>&1; then
  src=/etc/apt/sources.list.d/debian.sources
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/lists/partial" "$work/archives/partial"
  if [ -f "$src" ]; then
    # Keep only the first stanza (the main archive), suite set to bullseye.
    awk 'BEGIN{RS="";ORS="\n\n"} NR==1' "$src" \
      | sed -E 's/^Suites:.*/Suites: bullseye/' > "$work/bullseye.sources"
    srcopt=(-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$work/parts")
    mkdir -p "$work/parts"; cp "$work/bullseye.sources" "$work/parts/bullseye.sources"
  else
    # One-line sources.list format.
    grep -E '^deb ' /etc/apt/sources.list | grep -v security | head -1 \
      | awk '{$3="bullseye"; print}' > "$work/bullseye.list"
    srcopt=(-o Dir::Etc::SourceList="$work/bullseye.list" -o Dir::Etc::SourceParts=/dev/null)
  fi
  aptopts=("${srcopt[@]}" -o Dir::State::Lists="$work/lists" -o Dir::Cache::Archives="$work/archives"
           -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root)
  apt-get "${aptopts[@]}" update -qq
  (cd "$work" && apt-get "${aptopts[@]}" download consul >/dev/null)
  dpkg-deb -x "$work"/consul_*.deb "$work/root"
  install -m 0755 "$work/root/usr/bin/consul" /usr/local/bin/consul
fi

# HAProxy 3.4 (dynamic backends) for the tests and benchmarks of what only
# 3.4 does: Debian has it only in experimental, on top of sid. A sid minbase
# rootfs with haproxy from experimental, built by mmdebstrap from this
# machine's own apt sources (suite changed), and a wrapper that runs its
# haproxy through the rootfs's own loader and libraries, so programs built
# here run it as any other binary (argv[0] stays the wrapper: the
# master-worker re-exec goes through it too).
h34=/opt/haproxy-supervisor/haproxy-3.4
if ! "$h34/haproxy" -v 2>/dev/null | grep -q '^HAProxy version 3\.4\.'; then
  command -v mmdebstrap >/dev/null 2>&1 || { apt_update; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null; }
  die() { echo "setup: error: $*" >&2; exit 1; }
  # shellcheck source=lib/debian-sources.sh
  . "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib/debian-sources.sh"
  mkdir -p "$h34"
  rm -rf "$h34/rootfs.new"
  t0=$SECONDS
  rootfs sid+experimental "$h34/rootfs.new" haproxy/experimental >"$h34/mmdebstrap.log" 2>&1 \
    || { tail -n 30 "$h34/mmdebstrap.log" >&2; die "mmdebstrap sid+experimental failed"; }
  rm -rf "$h34/rootfs" && mv "$h34/rootfs.new" "$h34/rootfs"
  echo "setup: HAProxy 3.4 rootfs built in $((SECONDS - t0)) s"
fi
# The wrapper, rewritten every time (it is cheap): the rootfs's path is
# written in, so each start (and each `haproxy -c`) is one exec of the
# loader, not a shell that runs readlink and dirname first (those cost 3.4
# about a third of a check's CPU in the benchmarks).
wrapper="#!/bin/sh
# HAProxy 3.4 from the rootfs beside this script (scripts/setup.sh).
exec $h34/rootfs/lib64/ld-linux-x86-64.so.2 --library-path $h34/rootfs/usr/lib/x86_64-linux-gnu --argv0 \"\$0\" $h34/rootfs/usr/sbin/haproxy \"\$@\"
"
if [ "$(cat "$h34/haproxy" 2>/dev/null)" != "${wrapper%$'\n'}" ]; then
  printf '%s' "$wrapper" > "$h34/haproxy.new" && chmod 0755 "$h34/haproxy.new" && mv "$h34/haproxy.new" "$h34/haproxy"
fi
"$h34/haproxy" -v | grep -q '^HAProxy version 3\.4\.' || { echo "setup: error: $h34/haproxy is not HAProxy 3.4" >&2; exit 1; }

echo "setup: haproxy $(haproxy -v | head -1 | awk '{print $3}'), haproxy 3.4 $("$h34/haproxy" -v | head -1 | awk '{print $3}'), consul $(consul version | head -1 | awk '{print $2}'), $(iptables --version)"
