#!/usr/bin/env bash
# Memory and CPU of idle `agora node run` processes: starts a devnet of N nodes with the given
# binary, waits, and prints the mean and max PSS and anonymous memory per node (from
# /proc/PID/smaps_rollup), then the CPU all of them used over the next CPU_SECONDS (default
# 20; from /proc/PID/stat, user + system), then stops the devnet and removes it.
#
#   bash scripts/idle_memory.sh [NODES] [WAIT_SECONDS] [AGORA_BINARY]
#   bash scripts/idle_memory.sh 60 120 target/release/agora
#   bash scripts/idle_memory.sh 7 8 target/debug/agora      # what the process tests start
set -euo pipefail
nodes=${1:-10}
wait_s=${2:-60}
bin=$(realpath "${3:-target/release/agora}")
[ -x "$bin" ] || { echo "no agora binary at $bin (cargo build --release -p agora-node)" >&2; exit 1; }
dir=$(mktemp -d "${TMPDIR:-/tmp}/agora-idle-memory.XXXXXX")
cleanup() { "$bin" devnet down --dir "$dir/devnet" --clean >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap cleanup EXIT
"$bin" devnet up --nodes "$nodes" --dir "$dir/devnet" --timeout 300 >/dev/null
sleep "$wait_s"
pids=$(pgrep -f -- "node run --data-dir $dir/devnet/" || true)
[ -n "$pids" ] || { echo "no node processes found" >&2; exit 1; }
for p in $pids; do
  awk '/^Pss:/{pss=$2} /^Anonymous:/{anon=$2} END{print pss, anon}' "/proc/$p/smaps_rollup"
done | awk -v n="$nodes" -v w="$wait_s" '
  {ps+=$1; as+=$2; if ($1>pm) pm=$1; if ($2>am) am=$2; k++}
  END {printf "%d of %d nodes after %d s idle: PSS mean %.1f MiB (max %.1f), anonymous mean %.1f MiB (max %.1f)\n",
       k, n, w, ps/k/1024, pm/1024, as/k/1024, am/1024}'
# CPU: clock ticks (user + system) of every node over CPU_SECONDS.
cpu_s=${CPU_SECONDS:-20}
ticks() { for p in $pids; do awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0; done | awk '{t+=$1} END{print t+0}'; }
t0=$(ticks)
sleep "$cpu_s"
t1=$(ticks)
awk -v d=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v s="$cpu_s" -v n="$nodes" 'BEGIN {
  c = d / hz / s * 100
  printf "CPU over the next %d s: %.0f %% of a core for the %d nodes (%.1f %% each)\n", s, c, n, c / n }'
