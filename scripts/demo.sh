#!/usr/bin/env bash
# Installs what is missing, builds, and runs moefy's main job on the bundled
# demo model. The main job is `moefy build`: co-activation split into 8 experts,
# routers and scales fitted on calibration text, llama-moe checkpoint, dense vs MoE
# perplexity on held-out text, and an HTML report. Then the single steps: inspect,
# split (random, clustering), convert to llama-moe and mixtral, inspect, eval; the
# clustering split as one GGUF file (llama.cpp's format), inspected and evaluated; generate.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
M=models/tinyllama-demo
OUT=${OUT:-build/demo}
mkdir -p "$OUT"
set -x
build/moefy build --model $M --method graph --experts 8 --top-k 2 --data data/calib.jsonl \
    --eval-data data/eval.jsonl --oracle --report "$OUT/report.html" --force --out "$OUT/moe-build"
build/moefy inspect $M
build/moefy split random --model $M --experts 8 --seed 0 --out "$OUT/plan-random.json"
build/moefy split cluster --model $M --experts 8 --seed 0 --restarts 3 --out "$OUT/plan-cluster.json"
build/moefy convert --model $M --plan "$OUT/plan-random.json" --format llama-moe --top-k 2 --force --out "$OUT/moe-llama-moe"
build/moefy convert --model $M --plan "$OUT/plan-cluster.json" --format mixtral --top-k 2 --force --out "$OUT/moe-mixtral"
build/moefy inspect "$OUT/moe-llama-moe"
build/moefy inspect "$OUT/moe-mixtral"
build/moefy eval --model $M --data data/eval.jsonl --max-tokens 20000
build/moefy eval --model "$OUT/moe-mixtral" --data data/eval.jsonl --max-tokens 20000
build/moefy convert --model $M --plan "$OUT/plan-cluster.json" --format gguf --top-k 2 --force --out "$OUT/moe.gguf"
build/moefy inspect "$OUT/moe.gguf"
build/moefy eval --model "$OUT/moe.gguf" --data data/eval.jsonl --max-tokens 20000
build/moefy generate --model $M --prompt "Once upon a time" -n 48
