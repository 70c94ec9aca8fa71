#!/usr/bin/env bash
# bench/build_7b.sh: `moefy build` end to end on a synthetic LLaMA-2-7B-shaped BF16
# checkpoint (hidden 4096, FFN 11008, 32 layers, 32 heads, vocab 32000; random
# weights, made here by build/bench_synth): graph split, fitted routers and
# scales (sequential calibration), convert, eval against the dense model.
#
#   bash bench/build_7b.sh [--layers 32] [--calib-tokens 8192] [--eval-tokens 4096] [--dir DIR]
#
# Reports the stage times moefy prints and the peak RSS (GNU time). Targets
# (issue 12): under 30 minutes, peak RSS under 16 GiB, on 2 cores. Disk: the
# checkpoint and the MoE output, 13.5 GB each, under DIR (default: a temporary
# directory under TMPDIR, removed at the end). --layers N < 32 runs the same shape
# with fewer layers (each layer's cost is the same), for a quick look.
# The text: the bundled data/calib.jsonl and data/eval.jsonl, with the demo
# model's tokenizer (4096 pieces: every id is a valid row of the 32000 vocabulary).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${BUILD:-$ROOT/build}"
LAYERS=32 CALIB=8192 EVAL=4096 DIR=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --layers) LAYERS="$2"; shift 2 ;;
        --calib-tokens) CALIB="$2"; shift 2 ;;
        --eval-tokens) EVAL="$2"; shift 2 ;;
        --dir) DIR="$2"; shift 2 ;;
        *) echo "usage: $0 [--layers N] [--calib-tokens N] [--eval-tokens N] [--dir DIR]" >&2; exit 2 ;;
    esac
done
die() { echo "build_7b: $*" >&2; exit 1; }
MOEFY="$BUILD/moefy" SYNTH="$BUILD/bench_synth"
[[ -x "$MOEFY" && -x "$SYNTH" ]] || die "build moefy first (bash scripts/build.sh): no $MOEFY or $SYNTH"
[[ -x /usr/bin/time ]] || die "needs GNU time for the peak RSS (apt-get install time)"
export OPENBLAS_CORETYPE="${OPENBLAS_CORETYPE:-Haswell}"

if [[ -z "$DIR" ]]; then
    DIR="$(mktemp -d "${TMPDIR:-/tmp}/moefy-7b.XXXXXX")"
    trap 'rm -rf "$DIR"' EXIT
fi
mkdir -p "$DIR"
echo "build_7b: $LAYERS layers of the LLaMA-2-7B shape, --calib-tokens $CALIB --eval-tokens $EVAL, in $DIR ($(df -h --output=avail "$DIR" | tail -1 | tr -d ' ') free)"
echo "moefy $("$MOEFY" --version | tail -1), $(nproc) CPUs"
t0=$(date +%s.%N)
[[ -f "$DIR/dense/model.safetensors" ]] || "$SYNTH" "$DIR/dense" --shape llama2-7b --layers "$LAYERS" \
    --tokenizer "$ROOT/models/tinyllama-demo/tokenizer.model"
t1=$(date +%s.%N)
echo "synthetic checkpoint: $(du -sh "$DIR/dense" | cut -f1) in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", b - a }') s"

rm -rf "$DIR/moe"
/usr/bin/time -v -o "$DIR/time.txt" "$MOEFY" build --model "$DIR/dense" --out "$DIR/moe" --method graph --experts 8 \
    --top-k 2 --no-refit --data "$ROOT/data/calib.jsonl" --calib-tokens "$CALIB" \
    --eval-data "$ROOT/data/eval.jsonl" --eval-tokens "$EVAL"
wall=$(awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0; for (i = 1; i <= n; ++i) s = s * 60 + p[i]; print s }' "$DIR/time.txt")
rss=$(awk -F': ' '/Maximum resident set size/ { printf "%.2f", $2 / 1048576 }' "$DIR/time.txt")
echo
echo "build: wall $wall s ($(awk -v s="$wall" 'BEGIN { printf "%.1f", s / 60 }') min; target < 30 min), peak RSS $rss GiB (target < 16 GiB)"
