#!/usr/bin/env bash
# `make fuzz`: each target (fuzz/targets/<name>.lua, or those named) runs
# under libFuzzer for FUZZ_SECONDS, FUZZ_JOBS targets at a time. Each starts
# from its corpus (fuzz/corpus/<target>/), works in build/fuzz/work/<target>/,
# and at the end the inputs that add coverage are merged back into the
# corpus. Crashes (and timeouts, out-of-memory) go to
# build/fuzz/crashes/<target>/ and fail the run. A crash does not stop the
# target: libFuzzer's fork mode goes on until the time is up.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/build/fuzz/harness
SECONDS_PER=${FUZZ_SECONDS:-600}
JOBS=${FUZZ_JOBS:-2}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in fuzz/targets/*.lua; do targets+=("$(basename "$f" .lua)"); done
fi
[ -x "$BIN" ] || { echo "build the harness first: make build/fuzz/harness"; exit 2; }

run_one() {
  local t=$1 work=$ROOT/build/fuzz/work/$1 crashes=$ROOT/build/fuzz/crashes/$1
  mkdir -p "$work" "$crashes" "$ROOT/fuzz/corpus/$t"
  local dict=()
  [ -f "$ROOT/fuzz/dict/$t.dict" ] && dict=(-dict="$ROOT/fuzz/dict/$t.dict")
  # Lua's garbage collector frees later than libFuzzer's per-input leak check
  # expects: leaks are not checked per input (the replay under `make asan`
  # checks them at exit).
  SB_FUZZ_TARGET=$t "$BIN" -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
    -max_total_time="$SECONDS_PER" -detect_leaks=0 -timeout=10 -rss_limit_mb=1536 -max_len=4096 \
    -artifact_prefix="$crashes/" "${dict[@]}" "$work" "$ROOT/fuzz/corpus/$t" \
    >"$ROOT/build/fuzz/$t.log" 2>&1
  # keep only what adds coverage to the corpus in the repository
  SB_FUZZ_TARGET=$t "$BIN" -merge=1 -detect_leaks=0 -timeout=10 -max_len=4096 \
    "$ROOT/fuzz/corpus/$t" "$work" >>"$ROOT/build/fuzz/$t.log" 2>&1
  local n
  n=$(find "$crashes" -type f | wc -l)
  local stats
  stats=$(grep -E '^#[0-9]+: cov' "$ROOT/build/fuzz/$t.log" | tail -1)
  echo "$t: $n crash/timeout/oom inputs in $crashes; $stats"
}
export -f run_one
export ROOT BIN SECONDS_PER

mkdir -p build/fuzz
printf '%s\n' "${targets[@]}" | xargs -P "$JOBS" -I{} bash -c 'run_one {}'
total=$(find build/fuzz/crashes -type f 2>/dev/null | wc -l)
echo "fuzzing done: $total inputs in build/fuzz/crashes/ (logs: build/fuzz/<target>.log)"
[ "$total" -eq 0 ]
