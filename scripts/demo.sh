#!/usr/bin/env bash
# Installs what is missing, builds, and runs moefy's main job on the bundled
# demo model: inspect, then split at random into 8 experts.
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
# convert (llama-moe, mixtral) joins here once the converter lands; see the note in README.md.
