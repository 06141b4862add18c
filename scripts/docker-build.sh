#!/usr/bin/env bash
# Builds the haproxy-supervisor container image (docker/Dockerfile).
#
# Idempotent; run as root on Debian 12. Steps:
#   1. installs docker.io and mmdebstrap if they are missing;
#   2. starts dockerd in the background if its socket is missing or dead;
#   3. builds the base image `haproxy-supervisor-base:bookworm` unless it exists:
#      a Debian 12 rootfs made by mmdebstrap from this machine's own Debian
#      mirror (read from /etc/apt/sources.list.d/debian.sources, or
#      /etc/apt/sources.list), with haproxy, iptables, ca-certificates, procps
#      and curl already in it, then `docker import`ed. No registry is needed;
#      the Dockerfile's install step finds everything present and does nothing,
#      so `docker build` needs no network either;
#   4. `cargo build --release` (the supervisor and demo-backend);
#   5. stages a small build context in target/docker-context and runs
#      `docker build -f docker/Dockerfile`, then prints the image size.
#
# Environment:
#   IMAGE=haproxy-supervisor:test           the tag to build
#   BASE_IMAGE=haproxy-supervisor-base:bookworm
#                                           the base; set it to a registry image
#                                           (e.g. debian:bookworm-slim) to skip
#                                           mmdebstrap and let docker pull it
#   REBUILD_BASE=1                          rebuild the base image even if it exists
#   SKIP_CARGO_BUILD=1                      use the binaries already in target/release
#   CARGO_TARGET_DIR=target                 cargo's own variable, honoured
#   STRIP_DEBUG=0                           keep debug info in the image's binary
set -euo pipefail

IMAGE=${IMAGE:-haproxy-supervisor:test}
LOCAL_BASE=haproxy-supervisor-base:bookworm
BASE_IMAGE=${BASE_IMAGE:-$LOCAL_BASE}
REBUILD_BASE=${REBUILD_BASE:-0}
SKIP_CARGO_BUILD=${SKIP_CARGO_BUILD:-0}
STRIP_DEBUG=${STRIP_DEBUG:-1}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

log() { printf 'docker-build: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (installs packages, starts dockerd, runs mmdebstrap)"

# --- 1. tools -----------------------------------------------------------------
apt_updated=0
apt_install() {
  if [ $apt_updated = 0 ]; then
    log "apt-get update"
    apt-get update -qq
    apt_updated=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
# docker.io also brings the client; a client may already be in /usr/local/bin.
command -v docker >/dev/null 2>&1 || [[ " ${need[*]-} " == *" docker.io "* ]] || need+=(docker.io)
if [ "$BASE_IMAGE" = "$LOCAL_BASE" ]; then
  command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
fi
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"

# --- 2. the engine ------------------------------------------------------------
sock=/var/run/docker.sock
if ! docker info >/dev/null 2>&1; then
  if [ -S "$sock" ] && pidof dockerd >/dev/null 2>&1; then
    log "dockerd is running but not answering yet; waiting"
  else
    # No engine, or a socket left behind by one that is gone.
    rm -f "$sock"
    log "starting dockerd (log: /var/log/dockerd.log)"
    # Containers inherit the daemon's open-files limit. Debian's systemd unit
    # gives dockerd LimitNOFILE=infinity; do the same, or HAProxy's default
    # global maxconn (50000, about 100k descriptors) cannot start in them.
    (
      ulimit -Hn 1048576 2>/dev/null || true
      ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
      exec setsid dockerd >>/var/log/dockerd.log 2>&1 </dev/null
    ) &
  fi
  for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || die "dockerd did not come up in 60 s; see /var/log/dockerd.log"
fi
# A daemon started elsewhere with a low limit is not ours to restart: warn.
for pid in $(pidof dockerd 2>/dev/null || true); do
  nofile=$(awk '/^Max open files/ { print $5 }' "/proc/$pid/limits" 2>/dev/null || true)
  if [[ "$nofile" =~ ^[0-9]+$ ]] && [ "$nofile" -lt 200000 ]; then
    log "note: dockerd (pid $pid) has a hard open-files limit of $nofile and containers inherit it;" \
        "HAProxy's default global maxconn (50000) needs about 100k, so the supervisor lowers it" \
        "to fit. Raise dockerd's limit or run with --ulimit nofile=1048576:1048576 to avoid that."
  fi
done

# --- 3. the base image --------------------------------------------------------
# Prints one-line apt sources ("deb URI SUITE COMPONENTS"), one per URI and
# suite, from this machine's own configuration, with the release codename in
# each suite replaced by bookworm (so trixie-security becomes bookworm-security).
machine_sources() {
  local deb822=/etc/apt/sources.list.d/debian.sources
  if [ -f "$deb822" ]; then
    awk '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && uris != "" && suites != "") {
          n = split(uris, u, " "); m = split(suites, s, " ")
          for (i = 1; i <= n; i++) for (j = 1; j <= m; j++) {
            suite = s[j]; sub(/^[a-z]+/, "bookworm", suite)
            print "deb " u[i] " " suite " " (comps == "" ? "main" : comps)
          }
        }
        types = uris = suites = comps = ""
      }
      /^[[:space:]]*#/ { next }
      /^[[:space:]]*$/ { flush(); next }
      { key = $1; sub(/:$/, "", key); $1 = ""; sub(/^[[:space:]]+/, "")
        if (key == "Types") types = $0; else if (key == "URIs") uris = $0
        else if (key == "Suites") suites = $0; else if (key == "Components") comps = $0 }
      END { flush() }
    ' "$deb822"
  elif [ -f /etc/apt/sources.list ]; then
    # deb [options] URI SUITE COMPONENTS...
    awk '$1 == "deb" {
      i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
      suite = $(i + 1); sub(/^[a-z]+/, "bookworm", suite)
      line = "deb " $i " " suite; for (k = i + 2; k <= NF; k++) line = line " " $k
      print line
    }' /etc/apt/sources.list
  fi
}

if [ "$BASE_IMAGE" = "$LOCAL_BASE" ]; then
  if [ "$REBUILD_BASE" != 1 ] && docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
    log "base image $LOCAL_BASE exists; not rebuilding (REBUILD_BASE=1 forces it)"
  else
    mapfile -t sources < <(machine_sources)
    [ ${#sources[@]} -gt 0 ] || die "no Debian mirror found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    log "mmdebstrap bookworm from ${#sources[@]} source line(s) of this machine"
    # Merged /usr by symlinks (debootstrap's way) rather than the usrmerge
    # package, which would pull perl (about 50 MB) into the image.
    hooks=()
    merged_usr=/usr/share/mmdebstrap/hooks/merged-usr
    [ -d "$merged_usr" ] && hooks+=(--hook-dir="$merged_usr")
    # minbase plus the packages the image runs; no docs, man pages or locales,
    # no apt lists or caches left in the image.
    # shellcheck disable=SC2016 # "$1" is the hook's argument, not ours
    mmdebstrap --quiet --variant=minbase "${hooks[@]}" \
      --include=haproxy,iptables,ca-certificates,procps,curl \
      --aptopt='Acquire::Languages "none"' \
      --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/doc/*' \
      --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --dpkgopt='path-exclude=/usr/share/locale/*' \
      --dpkgopt='path-exclude=/usr/share/info/*' \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/cache/apt/archives/*.deb "$1"/var/log/*.log' \
      bookworm "$work/rootfs.tar" "${sources[@]}" >"$work/mmdebstrap.log" 2>&1 \
      || { tail -n 40 "$work/mmdebstrap.log" >&2; die "mmdebstrap failed"; }
    log "docker import as $LOCAL_BASE"
    docker import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["/bin/bash"]' \
      --change 'LABEL org.opencontainers.image.title=haproxy-supervisor-base' \
      --message "Debian 12 minbase + haproxy, iptables, ca-certificates, procps, curl (mmdebstrap)" \
      "$work/rootfs.tar" "$LOCAL_BASE" >/dev/null
    rm -rf "$work"
    trap - EXIT
  fi
fi

# --- 4. the binaries ----------------------------------------------------------
if [ "$SKIP_CARGO_BUILD" != 1 ]; then
  log "cargo build --release"
  cargo build --release --bins
fi
target_dir=${CARGO_TARGET_DIR:-target}
bin=$target_dir/release/haproxy-supervisor
[ -x "$bin" ] || die "$bin is missing: run cargo build --release"

# --- 5. the image -------------------------------------------------------------
# The context mirrors the repository's layout for the two paths the Dockerfile
# copies, so `docker build -f docker/Dockerfile .` from the repository root
# works the same way (see docker/README.md).
ctx=$target_dir/docker-context
rm -rf "$ctx"
mkdir -p "$ctx/target/release" "$ctx/templates"
cp "$bin" "$ctx/target/release/haproxy-supervisor"
if [ "$STRIP_DEBUG" = 1 ] && command -v strip >/dev/null 2>&1; then
  strip --strip-debug "$ctx/target/release/haproxy-supervisor"
fi
if compgen -G 'templates/*' >/dev/null; then
  cp -R templates/. "$ctx/templates/"
fi
cp docker/Dockerfile "$ctx/Dockerfile"

log "docker build -t $IMAGE (base $BASE_IMAGE)"
# The classic builder: it needs no buildx plugin and no network for RUN steps
# whose work is already done in the base image.
DOCKER_BUILDKIT=0 docker build \
  --build-arg "BASE=$BASE_IMAGE" \
  -t "$IMAGE" -f "$ctx/Dockerfile" "$ctx" >"$ctx.log" 2>&1 \
  || { cat "$ctx.log" >&2; die "docker build failed"; }

# Rebuilds leave the previous image untagged; drop those of this image only.
for title in haproxy-supervisor haproxy-supervisor-base; do
  docker image prune -f --filter "label=org.opencontainers.image.title=$title" >/dev/null || true
done

size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
base_size=$(docker image inspect -f '{{.Size}}' "$BASE_IMAGE" 2>/dev/null || echo 0)
awk -v s="$size" -v b="$base_size" -v i="$IMAGE" \
  'BEGIN { printf "docker-build: image %s: %.1f MB (base %.1f MB)\n", i, s / 1e6, b / 1e6 }'
