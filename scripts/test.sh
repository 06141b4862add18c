#!/usr/bin/env bash
# The test command: installs what the tests need (scripts/setup.sh), then
# runs the gates and every test. Run as root (tests create network
# namespaces and iptables rules inside them). In CI (CI=true) a missing
# prerequisite fails the run; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
command -v cargo >/dev/null || { echo "cargo is required (a Rust toolchain)"; exit 1; }
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy || true

echo "== promtool test rules (deploy/alerts.yml)"
command -v promtool >/dev/null || { echo "promtool is required (scripts/setup.sh installs it)"; exit 1; }
promtool check rules deploy/alerts.yml
promtool test rules deploy/alerts_test.yml
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
# Release build: the load and reload tests measure real behaviour and the
# debug build of the backend and client would be the bottleneck.
cargo test --release --workspace --all-targets --no-fail-fast -- --nocapture 2>&1 | tee target/test-output.txt
