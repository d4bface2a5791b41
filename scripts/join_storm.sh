#!/usr/bin/env bash
# The join storm on loopback (issue #17, docs/PERFORMANCE.md "The join storm and the address
# book"): starts a devnet of NODES release nodes with the given `agora devnet up` options and,
# every few seconds for SECONDS, prints the mean and max number of established TCP sockets per
# `agora node run` process (`ss -tnpH state established`) and their mean and max PSS
# (`/proc/PID/smaps_rollup`); then removes the devnet. Samples are sparse while 100 processes
# start on 2 cores.
#
#   bash scripts/join_storm.sh BINARY NODES SECONDS [devnet up options]
#   bash scripts/join_storm.sh target/release/agora 100 120 --latency 20ms
set -euo pipefail
bin=$(realpath "$1"); nodes=$2; secs=$3; shift 3
dir=$(mktemp -d /tmp/agora-storm.XXXXXX)
cleanup() { "$bin" devnet down --dir "$dir/devnet" --clean >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap cleanup EXIT
t0=$(date +%s)
"$bin" devnet up --nodes "$nodes" --dir "$dir/devnet" --timeout 300 "$@" >/dev/null &
up=$!
end=$((t0+secs))
while [ "$(date +%s)" -lt "$end" ]; do
  pids=$(pgrep -f -- "node run --data-dir $dir/devnet/" || true)
  if [ -n "$pids" ]; then
    n=$(echo $pids | wc -w)
    conns=$(ss -tnpH state established 2>/dev/null | grep -o 'pid=[0-9]*' | sort | uniq -c | awk -v P=" $(echo $pids) " 'index(P," " substr($2,5) " ")>0 {s+=$1; if($1>m)m=$1} END{printf "%.1f %d", s/'"$n"', m}')
    pss=$(for p in $pids; do awk '/^Pss:/{print $2}' /proc/$p/smaps_rollup 2>/dev/null; done | awk '{s+=$1;k++; if($1>m)m=$1} END{printf "%.1f %.1f", s/k/1024, m/1024}')
    echo "t=$(( $(date +%s)-t0 ))s nodes=$n conns(mean max)=$conns pss(mean max)=$pss"
  fi
  sleep 3
done
wait $up || true
