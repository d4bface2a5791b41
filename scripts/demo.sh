#!/usr/bin/env bash
# The README's "run" command: builds agora, starts a 5-node local devnet on the embedded
# defaults, shows what a user sees, and stops it again.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p agora-node --bin agora
AGORA=./target/release/agora
DIR=$(mktemp -d -t agora-demo-XXXXXX)/devnet
trap '$AGORA devnet down --dir "$DIR" --clean >/dev/null 2>&1 || true' EXIT
echo "== agora devnet up --nodes 5 --dir $DIR"
$AGORA devnet up --nodes 5 --dir "$DIR"
echo
echo "== agora peers --data-dir $DIR/node0"
$AGORA peers --data-dir "$DIR/node0"
echo
echo "== agora status --data-dir $DIR/node3"
$AGORA status --data-dir "$DIR/node3"
echo
echo "== agora presence --data-dir $DIR/node1"
$AGORA presence --data-dir "$DIR/node1"
echo
echo "== agora devnet down --dir $DIR"
$AGORA devnet down --dir "$DIR"
