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
sleep 1  # a few presence heartbeats
echo "== agora presence --data-dir $DIR/node1"
$AGORA presence --data-dir "$DIR/node1"
echo
echo "== node0 buys standby insurance: agora auction create ... --kind standby --window 3s"
$AGORA auction create --data-dir "$DIR/node0" --cpu 500m --memory 256MiB --interfaces lora \
  --duration 2h --max-price 100 --kind standby --window 3s
echo "   (the other nodes' decision units bid automatically; waiting for the award and contract)"
for _ in $(seq 1 60); do
  if $AGORA contract list --data-dir "$DIR/node2" --json | grep -q '"status"'; then break; fi
  sleep 0.5
done
echo
echo "== agora auctions --data-dir $DIR/node0"
$AGORA auctions --data-dir "$DIR/node0"
echo
echo "== agora market watch --once --data-dir $DIR/node0"
$AGORA market watch --once --data-dir "$DIR/node0"
echo
echo "== agora contract list --data-dir $DIR/node2   (replicated by the arbitrators)"
$AGORA contract list --data-dir "$DIR/node2"
echo
echo "== agora balance --data-dir $DIR/node0   (payment and stake in escrow)"
$AGORA balance --data-dir "$DIR/node0"
echo
echo "== agora ledger status --data-dir $DIR/node4"
$AGORA ledger status --data-dir "$DIR/node4"
echo
echo "== agora devnet down --dir $DIR"
$AGORA devnet down --dir "$DIR"
