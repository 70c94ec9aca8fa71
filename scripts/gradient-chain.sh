#!/usr/bin/env bash
# The gradient split end to end on the bundled demo model and corpus slice:
# cluster the calibration text, measure neuron importance per cluster by a
# backward pass, split three ways (independent, inner-sharing, residual),
# convert each, and evaluate dense vs MoE on held-out text.
# Assumes scripts/build.sh has run (scripts/demo.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."
M=${MODEL:-models/tinyllama-demo}
OUT=${OUT:-build/gradient-chain}
NP=${NP:-1}   # NP=2 runs importance under mpirun with 2 processes (same result)
rm -rf "$OUT" && mkdir -p "$OUT"
run() { echo "+ $*"; /usr/bin/time -f "  (%e s wall, %M KiB peak RSS)" "$@"; }
mpi=()
[ "$NP" -gt 1 ] && mpi=(mpirun --allow-run-as-root --oversubscribe -np "$NP")

run build/moefy cluster-text --data data/calib.jsonl --clusters 8 --seed 0 --out "$OUT/clusters"
run "${mpi[@]}" build/moefy importance --model $M --data "$OUT/clusters" --ctx 512 --out "$OUT/importance.safetensors"
run build/moefy split gradient --importance "$OUT/importance.safetensors" --model $M --experts 8 \
    --assign optimal --plots "$OUT/plots-independent" --out "$OUT/plan-independent.json"
run build/moefy split gradient --importance "$OUT/importance.safetensors" --model $M --experts 8 \
    --share --expert-size 128 --plots "$OUT/plots-share" --out "$OUT/plan-share.json"
run build/moefy split gradient --importance "$OUT/importance.safetensors" --model $M --experts 8 \
    --residual 2 --out "$OUT/plan-residual.json"
run build/moefy convert --model $M --plan "$OUT/plan-independent.json" --format llama-moe --out "$OUT/moe-independent"
run build/moefy convert --model $M --plan "$OUT/plan-share.json" --format llama-moe --out "$OUT/moe-share"
run build/moefy convert --model $M --plan "$OUT/plan-residual.json" --format llama-moe --out "$OUT/moe-residual"
run build/moefy convert --model $M --plan "$OUT/plan-residual.json" --format deepseek --out "$OUT/moe-deepseek"
for m in $M "$OUT/moe-independent" "$OUT/moe-share" "$OUT/moe-residual" "$OUT/moe-deepseek"; do
  run build/moefy eval --model "$m" --data data/eval.jsonl --max-tokens 20000 | grep -E "^(model|perplexity)"
done
