#!/usr/bin/env bash
# Builds every cargo-fuzz target in tests/fuzz and runs each for SECONDS_PER_TARGET (default 20),
# printing one line per target (executions, crashes). Exits non-zero if any target crashed or
# failed to build. Installs what it needs when missing: the nightly toolchain (rustup) and
# cargo-fuzz (`cargo install --locked`).
#
#   bash scripts/fuzz.sh [--build-only] [--runtime] [SECONDS_PER_TARGET] [TARGET...]
#
# `--build-only` installs and builds, then stops (CI starts it beside the tests, at low priority).
#
# Without TARGETs it runs every target that needs no wasmtime. `--runtime` builds with the fuzz
# crate's `runtime` feature and, without TARGETs, runs only the targets that need it
# (runtime_*): wasmtime's instrumented build takes minutes, so CI leaves them out.
#
# Crash inputs land in tests/fuzz/artifacts/TARGET/; reproduce one with
#   cargo +nightly fuzz run --fuzz-dir tests/fuzz TARGET tests/fuzz/artifacts/TARGET/crash-...
# Env: FUZZ_ARGS (extra libFuzzer flags); FUZZ_JOBS (targets run at once, default one per core).
# An input that runs over 10 s counts as a crash.
set -euo pipefail
cd "$(dirname "$0")/.."
features=()
runtime=0
build_only=0
if [ "${1:-}" = "--build-only" ]; then
  build_only=1
  shift
fi
if [ "${1:-}" = "--runtime" ]; then
  runtime=1
  features=(--features runtime)
  shift
fi
seconds="${1:-20}"
shift || true
fuzz_dir=tests/fuzz

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz: installing the nightly toolchain (cargo-fuzz needs it for sanitizer flags)"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi

targets=("$@")
# The targets that need the `runtime` feature, from the manifest's `required-features`.
mapfile -t runtime_targets < <(awk '/^name = /{n=$3} /^required-features = .*runtime/{gsub(/"/,"",n); print n}' "$fuzz_dir/Cargo.toml")
if [ "${#targets[@]}" -eq 0 ]; then
  while read -r t; do
    needs=0
    for r in "${runtime_targets[@]}"; do [ "$t" = "$r" ] && needs=1; done
    [ "$needs" -eq "$runtime" ] && targets+=("$t")
  done < <(cargo +nightly fuzz list --fuzz-dir "$fuzz_dir")
  if [ "$runtime" -eq 0 ]; then
    echo "fuzz: not run here (they need wasmtime): ${runtime_targets[*]} — run them with: bash scripts/fuzz.sh --runtime $seconds"
  fi
fi
echo "fuzz: building ${#targets[@]} targets"
build_log=$(mktemp)
# Cargo skips the targets whose `required-features` are not enabled.
if ! cargo +nightly fuzz build --fuzz-dir "$fuzz_dir" "${features[@]}" >"$build_log" 2>&1; then
  tail -n 40 "$build_log"
  echo "fuzz: build failed" >&2
  exit 1
fi
rm -f "$build_log"
if [ "$build_only" -eq 1 ]; then
  echo "fuzz: built"
  exit 0
fi

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
# One libFuzzer process per target, FUZZ_JOBS of them at a time (default: one per core; each is
# single-threaded), so CI's fuzz step takes about SECONDS × targets / cores.
jobs_max="${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 1)}"
run_target() {
  local target=$1 corpus artifacts before status=0 crashes runs rate
  corpus="$fuzz_dir/corpus/$target"
  artifacts="$fuzz_dir/artifacts/$target"
  mkdir -p "$corpus" "$artifacts"
  local seeds=() dict=()
  [ -d "$fuzz_dir/seeds/$target" ] && seeds=("$fuzz_dir/seeds/$target")
  [ -f "$fuzz_dir/dicts/$target.dict" ] && dict=("-dict=$fuzz_dir/dicts/$target.dict")
  before=$(find "$artifacts" -type f | wc -l)
  cargo +nightly fuzz run --fuzz-dir "$fuzz_dir" "${features[@]}" "$target" "$corpus" "${seeds[@]}" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 "${dict[@]}" ${FUZZ_ARGS:-} \
    >"$logs/$target" 2>&1 || status=$?
  crashes=$(( $(find "$artifacts" -type f | wc -l) - before ))
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logs/$target" | grep -o '[0-9]*$' | tail -1 || true)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$logs/$target" | grep -o '[0-9]*$' | tail -1 || true)
  if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then crashes=1; fi
  printf 'fuzz: %-14s %10s executions  %6s exec/s  %s crashes  (%ss)\n' \
    "$target" "${runs:-?}" "${rate:-?}" "$crashes" "$seconds" >"$logs/$target.line"
  echo "$status $crashes" >"$logs/$target.status"
}
running=0
for target in "${targets[@]}"; do
  run_target "$target" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs_max" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait || true
failed=0
for target in "${targets[@]}"; do
  if [ ! -f "$logs/$target.status" ]; then
    echo "fuzz: $target did not report"
    failed=1
    continue
  fi
  cat "$logs/$target.line"
  read -r status crashes <"$logs/$target.status"
  if [ "$status" -ne 0 ] || [ "$crashes" -ne 0 ]; then
    failed=1
    echo "fuzz: $target failed (exit $status); last lines of its log:"
    tail -n 30 "$logs/$target" | sed 's/^/    /'
  fi
done
exit "$failed"
