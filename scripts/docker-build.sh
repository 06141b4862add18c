#!/usr/bin/env bash
# Builds the haproxy-supervisor container images from source (docker/Dockerfile)
# with no registry and no network during `docker build`, from a clean clone.
#
#   scripts/docker-build.sh          build every variant (trixie, bookworm, haproxy3.4)
#   scripts/docker-build.sh --test   run the container test (tests/docker_image.rs),
#                                    which runs this script first
#
# Idempotent; run as root on Debian 12. Steps:
#   1. installs docker.io, mmdebstrap, git, file and docker-compose if they
#      are missing;
#   2. starts dockerd in the background if its socket is missing or dead;
#   3. makes the local base images, each only when it is missing or its inputs
#      (suite, packages, this machine's apt sources, this script's recipe, the
#      Rust toolchain's version) changed — the inputs' hash is a label:
#        haproxy-supervisor-base:trixie    Debian 13 minbase + haproxy (3.0),
#                                          iptables, ca-certificates, procps, curl
#        haproxy-supervisor-base:bookworm  the same from Debian 12 (HAProxy 2.6)
#        haproxy-supervisor-base:haproxy3.4  the same from Debian sid with
#                                          haproxy from experimental (3.4)
#        haproxy-supervisor-rust:bookworm  Debian 12 minbase + gcc, libc6-dev and
#                                          this machine's Rust toolchain (rustc,
#                                          cargo, the std library; no docs)
#      all made by mmdebstrap from this machine's own Debian mirror (read from
#      /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list) and
#      `docker import`ed;
#   4. clones the repository (its HEAD commit: uncommitted changes are not in
#      the image) into $DOCKER_CACHE_DIR/src and puts `cargo vendor --locked`
#      output in docker/cargo/vendor of the clone (cached per Cargo.lock hash),
#      so the build stage compiles offline;
#   5. `docker build -f docker/Dockerfile <clone>` once per variant, with the
#      local bases as RUST_IMAGE and BASE (Docker's layer cache skips what did
#      not change: the compiled dependencies are reused until Cargo.lock
#      changes, the compiled binary until src/ or templates/ change, and both
#      variants share one build stage);
#   6. prints each image's size, its base's size, its HAProxy version and
#      `file` of the binary inside it; prunes the untagged leftovers of
#      earlier builds of these images only.
#
# Environment:
#   IMAGE=haproxy-supervisor:test               the default: Debian 13 (HAProxy 3.0)
#   IMAGE_BOOKWORM=haproxy-supervisor:test-bookworm  Debian 12 (HAProxy 2.6)
#   IMAGE_HAPROXY34=haproxy-supervisor:test-haproxy3.4  Debian sid + HAProxy 3.4
#                                               from experimental
#   VARIANTS="trixie bookworm haproxy3.4"       which of them to build
#   RUST_IMAGE=haproxy-supervisor-rust:bookworm the build stage's base; e.g.
#                                               rust:1-bookworm to pull it instead
#   BASE_IMAGE=haproxy-supervisor-base:trixie   the runtime base of each variant;
#   BASE_IMAGE_BOOKWORM=haproxy-supervisor-base:bookworm  registry images (debian:
#   BASE_IMAGE_HAPROXY34=haproxy-supervisor-base:haproxy3.4  trixie-slim, debian:
#                                               bookworm-slim) skip mmdebstrap
#   REBUILD_BASE=1                              rebuild the local bases regardless
#   VENDOR=0                                    no vendored crates: the build
#                                               stage downloads from crates.io
#   NETWORK=none                                `docker build --network`: none
#                                               (the default when the crates are
#                                               vendored and the bases local, so
#                                               that nothing can be downloaded),
#                                               else Docker's default
#   COMPOSE=1                                   also install docker-compose (Debian's
#                                               package) if no compose is present
#   DOCKER_CACHE_DIR=$CARGO_TARGET_DIR/docker-cache   clone, vendor cache, logs
#   DOCKER_BUILDKIT=0                           the classic builder (needs no
#                                               buildx plugin); 1 for BuildKit
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

if [ "${1-}" = --test ]; then
  exec cargo test --release --test docker_image -- --nocapture
elif [ $# -gt 0 ]; then
  echo "usage: $0 [--test]" >&2
  exit 2
fi

IMAGE=${IMAGE:-haproxy-supervisor:test}
IMAGE_BOOKWORM=${IMAGE_BOOKWORM:-haproxy-supervisor:test-bookworm}
IMAGE_HAPROXY34=${IMAGE_HAPROXY34:-haproxy-supervisor:test-haproxy3.4}
VARIANTS=${VARIANTS:-trixie bookworm haproxy3.4}
LOCAL_RUST=haproxy-supervisor-rust:bookworm
RUST_IMAGE=${RUST_IMAGE:-$LOCAL_RUST}
BASE_IMAGE=${BASE_IMAGE:-haproxy-supervisor-base:trixie}
BASE_IMAGE_BOOKWORM=${BASE_IMAGE_BOOKWORM:-haproxy-supervisor-base:bookworm}
BASE_IMAGE_HAPROXY34=${BASE_IMAGE_HAPROXY34:-haproxy-supervisor-base:haproxy3.4}
REBUILD_BASE=${REBUILD_BASE:-0}
VENDOR=${VENDOR:-1}
COMPOSE=${COMPOSE:-1}
export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0}
target_dir=${CARGO_TARGET_DIR:-target}
case $target_dir in /*) ;; *) target_dir=$repo/$target_dir ;; esac
cache=${DOCKER_CACHE_DIR:-$target_dir/docker-cache}
BUILD_TAG=haproxy-supervisor-build:cache
RUNTIME_PACKAGES=haproxy,iptables,ca-certificates,procps,curl
RUST_PACKAGES=gcc,libc6-dev

log() { printf 'docker-build: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
started=$SECONDS

[ "$(id -u)" = 0 ] || die "run as root (installs packages, starts dockerd, runs mmdebstrap)"
# variant NAME: sets tag (the image), base (its runtime base), suite (what
# mmdebstrap makes the base from) and packages for one variant.
variant() {
  case $1 in
    trixie) tag=$IMAGE base=$BASE_IMAGE suite=trixie packages=$RUNTIME_PACKAGES
      description="Debian 13 minbase + haproxy, iptables, ca-certificates, procps, curl" ;;
    bookworm) tag=$IMAGE_BOOKWORM base=$BASE_IMAGE_BOOKWORM suite=bookworm packages=$RUNTIME_PACKAGES
      description="Debian 12 minbase + haproxy, iptables, ca-certificates, procps, curl" ;;
    # Debian's only HAProxy 3.4 is in experimental, which is a suite on top of
    # sid: the base is sid with haproxy taken from experimental.
    haproxy3.4) tag=$IMAGE_HAPROXY34 base=$BASE_IMAGE_HAPROXY34 suite=sid+experimental
      packages=haproxy/experimental,${RUNTIME_PACKAGES#haproxy,}
      description="Debian sid minbase + haproxy 3.4 (experimental), iptables, ca-certificates, procps, curl" ;;
    *) die "unknown variant '$1' (trixie, bookworm, haproxy3.4)" ;;
  esac
}
for v in $VARIANTS; do variant "$v"; done

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

is_local_base() { [[ "$1" == haproxy-supervisor-base:* || "$1" == "$LOCAL_RUST" ]]; }
need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
# docker.io also brings the client; a client may already be in /usr/local/bin.
command -v docker >/dev/null 2>&1 || [[ " ${need[*]-} " == *" docker.io "* ]] || need+=(docker.io)
command -v git >/dev/null 2>&1 || need+=(git)
if is_local_base "$RUST_IMAGE" || is_local_base "$BASE_IMAGE" || is_local_base "$BASE_IMAGE_BOOKWORM" || is_local_base "$BASE_IMAGE_HAPROXY34"; then
  command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
fi
command -v file >/dev/null 2>&1 || need+=(file)
# The compose example's test (tests/docker_image.rs) runs docker/compose.yml.
if [ "$COMPOSE" = 1 ] && ! command -v docker-compose >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1; then
  need+=(docker-compose)
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

# One build at a time on this machine, whichever checkout it comes from (two
# would fight over the tags, the clone and the cache).
mkdir -p "$cache"
lock=/run/lock
[ -d "$lock" ] && [ -w "$lock" ] || lock=${TMPDIR:-/tmp}
exec 9>"$lock/haproxy-supervisor-docker-build.lock"
if ! flock -n 9; then
  log "another docker-build.sh is running; waiting for it"
  flock 9
fi

# --- 3. the base images -------------------------------------------------------
# machine_sources, suite_sources, rootfs: shared with scripts/setup.sh.
# shellcheck source=lib/debian-sources.sh
. "$repo/scripts/lib/debian-sources.sh"

label() { docker image inspect -f "{{index .Config.Labels \"$2\"}}" "$1" 2>/dev/null || true; }

# ensure_base TAG SUITE PACKAGES DESCRIPTION EXTRA_INPUTS [--change ...] -- [mmdebstrap options...]
ensure_base() {
  local tag=$1 suite=$2 packages=$3 description=$4 extra=$5
  shift 5
  local changes=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do changes+=("$1"); shift; done
  [ "${1-}" = -- ] && shift
  local inputs
  inputs=$({ declare -f machine_sources suite_sources rootfs; printf '%s\n' "$suite" "$packages" "$extra" "${changes[@]}" "$@"; suite_sources "$suite"; } | sha256sum | cut -c1-16)
  if [ "$REBUILD_BASE" != 1 ] && [ "$(label "$tag" haproxy-supervisor.inputs)" = "$inputs" ]; then
    log "base $tag is up to date (inputs $inputs)"
    return
  fi
  local work t=$SECONDS
  work=$(mktemp -d "$cache/base.XXXXXX")
  log "mmdebstrap $suite ($packages) from this machine's apt sources, for $tag"
  rootfs "$suite" "$work/rootfs.tar" "$packages" "$@" >"$work/mmdebstrap.log" 2>&1 \
    || { tail -n 40 "$work/mmdebstrap.log" >&2; rm -rf "$work"; die "mmdebstrap $suite failed"; }
  log "docker import as $tag"
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "${changes[@]}" \
    --change 'CMD ["/bin/bash"]' \
    --change "LABEL org.opencontainers.image.title=${tag%%:*} haproxy-supervisor.inputs=$inputs" \
    --message "$description (mmdebstrap)" \
    "$work/rootfs.tar" "$tag" >/dev/null
  rm -rf "$work"
  log "base $tag made in $((SECONDS - t)) s"
}

for v in $VARIANTS; do
  variant "$v"
  if [[ "$base" == haproxy-supervisor-base:* ]]; then
    ensure_base "$base" "$suite" "$packages" "$description" ""
  fi
done
if [ "$RUST_IMAGE" = "$LOCAL_RUST" ]; then
  # This machine's toolchain: the one `rustc` here resolves to (rustup's
  # default or an override), copied without its docs, clippy or rustfmt.
  sysroot=$(rustc --print sysroot 2>/dev/null) || die "no rustc on PATH: the local build stage base copies this machine's Rust toolchain"
  [ -x "$sysroot/bin/cargo" ] && [ -x "$sysroot/bin/rustc" ] \
    || die "$sysroot has no bin/cargo and bin/rustc (a rustup toolchain is expected)"
  toolchain=$("$sysroot/bin/rustc" -vV; "$sysroot/bin/cargo" -V)
  # shellcheck disable=SC2016 # "$1" is the hook's argument, not ours
  ensure_base "$LOCAL_RUST" bookworm "$RUST_PACKAGES" \
    "Debian 12 minbase + gcc, libc6-dev, Rust $("$sysroot/bin/rustc" -V | awk '{print $2}')" "$toolchain" \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    -- \
    --customize-hook="mkdir -p \"\$1/usr/local/rust\" \"\$1/usr/local/cargo/bin\" && tar -C '$sysroot' -c bin/cargo bin/rustc bin/rustdoc lib | tar -C \"\$1/usr/local/rust\" -x --no-same-owner"
fi

# --- 4. the source: a clean clone, with vendored crates ------------------------
src=$cache/src
rm -rf "$src"
commit=$(git -C "$repo" rev-parse HEAD)
git clone --quiet --no-checkout "$repo" "$src"
git -C "$src" -c advice.detachedHead=false checkout --quiet --detach "$commit"
if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  log "building commit ${commit:0:12} (the working tree has uncommitted changes: they are not in the image)"
else
  log "building commit ${commit:0:12}"
fi
if [ "$VENDOR" = 1 ]; then
  lock_hash=$(sha256sum "$src/Cargo.lock" | cut -c1-16)
  vendor=$cache/vendor-$lock_hash
  if [ ! -d "$vendor" ]; then
    log "cargo vendor --locked (Cargo.lock $lock_hash)"
    rm -rf "$vendor.tmp"
    (cd "$src" && cargo vendor --locked --quiet "$vendor.tmp" >/dev/null) || die "cargo vendor failed"
    mv "$vendor.tmp" "$vendor"
    # Keep only the current crate set.
    for old in "$cache"/vendor-*; do [ "$old" = "$vendor" ] || rm -rf "$old"; done
  fi
  cp -al "$vendor" "$src/docker/cargo/vendor" 2>/dev/null || cp -a "$vendor" "$src/docker/cargo/vendor"
fi

# --- 5. the images ------------------------------------------------------------
# docker build -f docker/Dockerfile <clone>, logged to $cache/<name>.log.
build() {
  local name=$1
  shift
  local t=$SECONDS
  if ! docker build --network "$NETWORK" --build-arg "RUST_IMAGE=$RUST_IMAGE" "$@" -f "$src/docker/Dockerfile" "$src" \
    >"$cache/$name.log" 2>&1; then
    tail -n 60 "$cache/$name.log" >&2
    die "docker build ($name) failed; full log: $cache/$name.log"
  fi
  local cached
  cached=$(grep -c 'Using cache' "$cache/$name.log" || true)
  log "$name built in $((SECONDS - t)) s ($cached steps from cache)"
}

# Offline when it can be: vendored crates and local bases need no download.
if [ -z "${NETWORK-}" ]; then
  NETWORK=default
  if [ "$VENDOR" = 1 ] && is_local_base "$RUST_IMAGE"; then
    NETWORK=none
    for v in $VARIANTS; do
      variant "$v"
      is_local_base "$base" || NETWORK=default
    done
  fi
fi
# The classic builder reads only <context>/.dockerignore, not BuildKit's
# docker/Dockerfile.dockerignore: give it the same rules in the clone.
cp "$src/docker/Dockerfile.dockerignore" "$src/.dockerignore"

# The build stage first, tagged so that its cache survives the pruning below.
log "build stage (RUST_IMAGE=$RUST_IMAGE, network $NETWORK)"
build build-stage --target build -t "$BUILD_TAG"
for v in $VARIANTS; do
  variant "$v"
  log "image $tag (BASE=$base)"
  build "image-$v" --build-arg "BASE=$base" -t "$tag"
done

# Rebuilds leave the previous images untagged; drop those of these images only.
for title in haproxy-supervisor haproxy-supervisor-build haproxy-supervisor-base haproxy-supervisor-rust; do
  docker image prune -f --filter "label=org.opencontainers.image.title=$title" >/dev/null || true
done

# --- 6. report ----------------------------------------------------------------
mb() { awk -v s="$1" 'BEGIN { printf "%.1f MB", s / 1e6 }'; }
size() { docker image inspect -f '{{.Size}}' "$1" 2>/dev/null || echo 0; }
if [ "$RUST_IMAGE" = "$LOCAL_RUST" ]; then
  log "build stage base $RUST_IMAGE: $(mb "$(size "$RUST_IMAGE")")"
fi
for v in $VARIANTS; do
  variant "$v"
  id=$(docker create "$tag")
  docker cp "$id:/usr/local/bin/haproxy-supervisor" "$cache/haproxy-supervisor-$v" >/dev/null
  docker rm "$id" >/dev/null
  haproxy_version=$(docker run --rm --network none --entrypoint haproxy "$tag" -v | awk 'NR == 1 { print $3 }')
  log "image $tag: $(mb "$(size "$tag")") (base $base: $(mb "$(size "$base")")), HAProxy $haproxy_version"
  log "  binary: $(stat -c %s "$cache/haproxy-supervisor-$v") bytes; $(file -b "$cache/haproxy-supervisor-$v")"
done
log "done in $((SECONDS - started)) s"
