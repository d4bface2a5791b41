#!/usr/bin/env bash
# The README's "run" command: builds agora and the example LoRa gateway service, then runs the
# flagship story on a 7-node local devnet on the embedded defaults (`agora devnet demo`):
# auction, negotiation, dual-signed contract, escrow, migration, a real SIGKILL of edge A,
# attested handover, B serving A's sensors, settlement and payment. Exits 0 on success.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target list --installed 2>/dev/null | grep -q '^wasm32-wasip1$' \
  || rustup target add wasm32-wasip1
cargo build --release -p agora-node --bin agora
DIR=$(mktemp -d -t agora-demo-XXXXXX)
trap './target/release/agora devnet down --dir "$DIR/devnet" --clean >/dev/null 2>&1 || true' EXIT
./target/release/agora devnet demo --nodes 7 --dir "$DIR/devnet" "$@"
