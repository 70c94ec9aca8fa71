#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, -fsanitize=fuzzer,address,undefined) into
# build-fuzz/ and runs each one for SECONDS (default 20) from its seed corpus.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
# A finding (crash, leak, > 1 s per input, > 2 GiB) stops the target, leaves
# crash-*/leak-*/timeout-*/oom-* in build-fuzz/findings/<target>/ and fails.
# Long runs: FUZZ_NICE=19 FUZZ_NO_BUILD=1 scripts/fuzz.sh 3600 safetensors (one job, one worker each).
# The seed is fixed (FUZZ_SEED, default 1) so that a CI run can be repeated; set another for new ground.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-20}"; shift || true
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD/..}"
# FUZZ_NO_BUILD=1 runs what is built: two long runs side by side must not rebuild under each other.
if [ -z "${FUZZ_NO_BUILD:-}" ]; then
  CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Release -DMOEFY_FUZZ=ON >/dev/null
  cmake --build build-fuzz -j"$(nproc)"
fi
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(safetensors safetensors_index config plan importance tokenizer_json tokenizer_encode sentencepiece documents gguf pickle)
status=0
for t in "${targets[@]}"; do
  corpus="build-fuzz/corpus/$t"; findings="build-fuzz/findings/$t"
  mkdir -p "$corpus" "$findings"
  log="build-fuzz/findings/$t.log"
  if ! ${FUZZ_NICE:+nice -n "$FUZZ_NICE"} "build-fuzz/fuzz/fuzz_$t" "$corpus" "build-fuzz/seeds/$t" \
        -max_total_time="$secs" -seed="${FUZZ_SEED:-1}" -timeout="${FUZZ_TIMEOUT:-5}" -rss_limit_mb=2048 -malloc_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 -artifact_prefix="$findings/" >"$log" 2>&1; then
    echo "fuzz_$t: FINDING (see $log and $findings/)"; tail -30 "$log"; status=1
  else
    echo "fuzz_$t: $(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}') executions, $(grep -oE 'cov: [0-9]+' "$log" | tail -1) in ${secs}s, clean"
  fi
done
exit $status
