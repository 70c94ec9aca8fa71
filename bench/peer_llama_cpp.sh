#!/usr/bin/env bash
# bench/peer_llama_cpp.sh: moefy against llama.cpp on the same GGUF files and the
# same text, in one run, rounds interleaved (the machine is shared: read the ratios).
#
#   LLAMA_CPP_BIN=DIR bash bench/peer_llama_cpp.sh [--rounds 3] [--chunks 4] [--layers 22] [--gen 64]
#
# DIR holds llama.cpp's llama-perplexity and llama-bench, built by you (moefy
# does not ship or build llama.cpp). Made here, in a temporary directory:
#   - a synthetic TinyLlama-1.1B-shaped BF16 checkpoint (build/bench_synth) with
#     LLaMA-2's tokenizer (TOKENIZER, default ../shared/fixtures/tokenizers/llama2-tokenizer.model),
#   - dense.gguf (`moefy convert --format gguf`) and moe.gguf (`moefy split random
#     --experts 8`, `convert --format gguf --top-k 2`: 25% of the FFN active),
#   - the text: README.md and docs/*.md.
# Measured per model and round:
#   perplexity, ctx 512, CHUNKS windows: llama-perplexity -c 512 -b 512 -t 2 (time from
#     "calculating perplexity" to "Final estimate" in its log) against moefy eval
#     --ctx 512 (its "seconds"); tokens/s = CHUNKS x 512 / time on both sides;
#   decode: llama-bench -p 0 -n GEN -t 2 (tg) against moefy generate -n GEN --timings.
# Both read a warm page cache. Best of the rounds is kept for each.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${BUILD:-$ROOT/build}"
ROUNDS=3 CHUNKS=4 LAYERS=22 GEN=64
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        --chunks) CHUNKS="$2"; shift 2 ;;
        --layers) LAYERS="$2"; shift 2 ;;
        --gen) GEN="$2"; shift 2 ;;
        *) echo "usage: LLAMA_CPP_BIN=DIR $0 [--rounds N] [--chunks N] [--layers N] [--gen N]" >&2; exit 2 ;;
    esac
done
die() { echo "peer_llama_cpp: $*" >&2; exit 1; }
[[ -n "${LLAMA_CPP_BIN:-}" ]] || die "set LLAMA_CPP_BIN to the folder with llama.cpp's llama-perplexity and llama-bench"
LP="$LLAMA_CPP_BIN/llama-perplexity" LB="$LLAMA_CPP_BIN/llama-bench"
[[ -x "$LP" && -x "$LB" ]] || die "no llama-perplexity / llama-bench in $LLAMA_CPP_BIN"
MOEFY="$BUILD/moefy" SYNTH="$BUILD/bench_synth"
[[ -x "$MOEFY" && -x "$SYNTH" ]] || die "build moefy first (bash scripts/build.sh): no $MOEFY or $SYNTH"
TOKENIZER="${TOKENIZER:-$ROOT/../shared/fixtures/tokenizers/llama2-tokenizer.model}"
[[ -f "$TOKENIZER" ]] || die "no tokenizer at $TOKENIZER (set TOKENIZER to a 32000-piece SentencePiece tokenizer.model)"
export OPENBLAS_CORETYPE="${OPENBLAS_CORETYPE:-Haswell}"

W="$(mktemp -d "${TMPDIR:-/tmp}/moefy-peer.XXXXXX")"
trap 'rm -rf "$W"' EXIT
"$SYNTH" "$W/dense" --layers "$LAYERS" --tokenizer "$TOKENIZER" >/dev/null
"$MOEFY" convert --model "$W/dense" --format gguf --out "$W/dense.gguf" >/dev/null
"$MOEFY" split random --model "$W/dense" --experts 8 --out "$W/plan.json" >/dev/null
"$MOEFY" convert --model "$W/dense" --plan "$W/plan.json" --format gguf --top-k 2 --out "$W/moe.gguf" >/dev/null
rm -rf "$W/dense"
cat "$ROOT/README.md" "$ROOT"/docs/*.md > "$W/text.txt"
cat "$W/dense.gguf" "$W/moe.gguf" > /dev/null  # warm the page cache

# llama.cpp log stamps are m.ss.mmm.uuu
stamp() { awk -v pat="$1" 'index($0, pat) { split($1, f, "."); print f[1] * 60 + f[2] + f[3] / 1000 + f[4] / 1e6; exit }' "$2"; }
llama_ppl() {
    "$LP" -m "$1" -f "$W/text.txt" -c 512 -b 512 -t 2 --chunks "$CHUNKS" > "$W/lp.log" 2>&1 || { cat "$W/lp.log" >&2; die "llama-perplexity failed"; }
    local a b; a=$(stamp "calculating perplexity" "$W/lp.log"); b=$(stamp "Final estimate" "$W/lp.log")
    awk -v a="$a" -v b="$b" -v n="$CHUNKS" 'BEGIN { printf "%.2f", n * 512 / (b - a) }'
}
moefy_ppl() {
    local s; s=$("$MOEFY" eval --model "$1" --data "$W/text.txt" --ctx 512 --max-tokens $((CHUNKS * 511)) --json \
        | awk -F': ' '/"seconds"/ { gsub(",", "", $2); print $2 }')
    awk -v s="$s" -v n="$CHUNKS" 'BEGIN { printf "%.2f", n * 512 / s }'
}
llama_tg() { "$LB" -m "$1" -p 0 -n "$GEN" -t 2 -r 1 -o csv 2>/dev/null | awk -F',' 'NR == 1 { for (i = 1; i <= NF; ++i) if ($i ~ /avg_ts/) c = i } NR == 2 { gsub("\"", "", $c); printf "%.2f", $c }'; }
moefy_tg() { "$MOEFY" generate --model "$1" --prompt "Once upon a time" -n "$GEN" --timings 2>&1 >/dev/null | sed -n 's/.*(\([0-9.]*\) tokens\/s)$/\1/p'; }
best() { awk -v a="$1" -v b="$2" 'BEGIN { print (b > a ? b : a) }'; }

declare -A R
for k in lp_dense mp_dense lt_dense mt_dense lp_moe mp_moe lt_moe mt_moe; do R[$k]=0; done
echo "peer_llama_cpp: $LAYERS layers, ctx 512 x $CHUNKS chunks, $GEN generated tokens, $ROUNDS rounds; moefy $("$MOEFY" --version | tail -1)"
for ((r = 1; r <= ROUNDS; ++r)); do
    for m in dense moe; do
        f="$W/$m.gguf"
        R[lp_$m]=$(best "${R[lp_$m]}" "$(llama_ppl "$f")")
        R[mp_$m]=$(best "${R[mp_$m]}" "$(moefy_ppl "$f")")
        R[lt_$m]=$(best "${R[lt_$m]}" "$(llama_tg "$f")")
        R[mt_$m]=$(best "${R[mt_$m]}" "$(moefy_tg "$f")")
        echo "  round $r $m: perplexity tok/s llama.cpp ${R[lp_$m]} moefy ${R[mp_$m]}; decode tok/s llama.cpp ${R[lt_$m]} moefy ${R[mt_$m]} (best so far)"
    done
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo
echo "| model | llama.cpp perplexity tok/s | moefy perplexity tok/s | moefy / llama.cpp | llama.cpp decode tok/s | moefy decode tok/s | moefy / llama.cpp |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for m in dense moe; do
    name=$([[ $m == dense ]] && echo "dense 1.1B" || echo "MoE 8 x top-2")
    echo "| $name | ${R[lp_$m]} | ${R[mp_$m]} | **$(ratio "${R[mp_$m]}" "${R[lp_$m]}")** | ${R[lt_$m]} | ${R[mt_$m]} | **$(ratio "${R[mt_$m]}" "${R[lt_$m]}")** |"
done
echo
echo "MoE / dense: llama.cpp perplexity $(ratio "${R[lp_moe]}" "${R[lp_dense]}")x, decode $(ratio "${R[lt_moe]}" "${R[lt_dense]}")x;" \
     "moefy perplexity $(ratio "${R[mp_moe]}" "${R[mp_dense]}")x, decode $(ratio "${R[mt_moe]}" "${R[mt_dense]}")x"
