#!/usr/bin/env bash
# Builds plico's fuzz targets (fuzz/, cargo fuzz on the stable toolchain with `-s none`),
# replays each committed corpus (fuzz/corpus/TARGET, every input once: a regression test of
# every input that ever found new coverage or a crash), then fuzzes each target for a short
# fixed time into a scratch directory, so the committed corpus never grows by itself.
#
#   bash scripts/fuzz-replay.sh                          # every target, 20 s each
#   FUZZ_SECONDS=600 nice -n 19 bash scripts/fuzz-replay.sh plan   # one target, 10 minutes
#
# scripts/test.sh calls it after the cargo tests (FUZZ_SECONDS=15). FUZZ_PROFILE picks the
# build: `release` (the default: fuzz/Cargo.toml's opt-level 1) or `dev` (no optimisation).
#
# A crash or a failed property stops the script with libFuzzer's report; the input is kept in
# fuzz/artifacts/TARGET/ (replay it with `cargo fuzz run -s none TARGET FILE`).
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
case "${FUZZ_PROFILE:-release}" in
  release) profile=() ;;
  dev) profile=(--dev) ;;
  *) echo "FUZZ_PROFILE must be release or dev, not ${FUZZ_PROFILE}" >&2; exit 2 ;;
esac
# The targets' echo checks assume inputs of at most this many bytes (see fuzz/src/lib.rs).
FUZZ_MAX_LEN=4096

log() { printf '\n==> %s\n' "$*"; }

if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --version 0.13.2 --locked
fi

cd fuzz
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi

start=$(date +%s)
log "cargo fuzz build -s none (${#targets[@]} targets)"
if [ $# -eq 1 ]; then
  cargo fuzz build -s none "${profile[@]}" "$1"
else
  cargo fuzz build -s none "${profile[@]}"
fi
log "built in $(( $(date +%s) - start ))s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "$scratch/$t"
  log "$t: replaying corpus/$t ($(find "corpus/$t" -type f | wc -l) inputs)"
  cargo fuzz run -s none "${profile[@]}" "$t" "corpus/$t" -- -runs=0 -max_len=$FUZZ_MAX_LEN
  log "$t: fuzzing for ${FUZZ_SECONDS}s"
  cargo fuzz run -s none "${profile[@]}" "$t" "$scratch/$t" "corpus/$t" -- \
    -max_total_time="$FUZZ_SECONDS" -max_len=$FUZZ_MAX_LEN -print_final_stats=1
done
log "fuzz targets: ${#targets[@]} replayed and fuzzed in $(( $(date +%s) - start ))s"
