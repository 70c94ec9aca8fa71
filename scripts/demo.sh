#!/usr/bin/env bash
# Installs what is missing, builds, and runs moefy's main job on the bundled
# demo model: inspect, split at random, convert to both layouts, inspect the results.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
M=models/tinyllama-demo
OUT=${OUT:-build/demo}
mkdir -p "$OUT"
set -x
build/moefy inspect $M
build/moefy split random --model $M --experts 8 --seed 0 --out "$OUT/plan-random.json"
build/moefy convert --model $M --plan "$OUT/plan-random.json" --format llama-moe --top-k 2 --out "$OUT/demo-llama-moe" --force
build/moefy convert --model $M --plan "$OUT/plan-random.json" --format mixtral --top-k 2 --out "$OUT/demo-mixtral" --force
build/moefy inspect "$OUT/demo-llama-moe"
build/moefy inspect "$OUT/demo-mixtral"
