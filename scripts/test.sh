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
