#!/usr/bin/env bash
# Checks the include graph between the top-level modules under src/ against the
# intended layering: a module may include itself and modules on lower layers only.
# Any edge that goes up (or sideways between two modules of one layer) is
# reported, so a cycle between modules cannot exist either.
#   usage: scripts/check-layering.sh [SRC_DIR]     exit 1 on a violation
set -euo pipefail
src=${1:-$(dirname "$0")/../src}

# Lowest first; modules on one line are one layer and may not include each other.
# Keep in step with README.md ("Layout of the code").
layers=(
  "common"
  "io mpi"
  "tokenizer"
  "data"
  "model"
  "embed split"
  "route"
  "convert"
  "eval"
  "pipeline"
  "cli"
)

declare -A rank
for i in "${!layers[@]}"; do
  for m in ${layers[$i]}; do rank[$m]=$i; done
done

bad=0
for dir in "$src"/*/; do
  m=$(basename "$dir")
  if [[ -z ${rank[$m]+x} ]]; then
    echo "layering: src/$m/ is not in the layering (scripts/check-layering.sh)"; bad=1; continue
  fi
  while IFS= read -r hit; do
    file=${hit%%:*}
    dep=$(sed -E 's/.*#include "([a-z_0-9]+)\/.*/\1/' <<<"$hit")
    [[ $dep == "$m" ]] && continue
    if [[ -z ${rank[$dep]+x} ]]; then
      echo "layering: ${file#"$src"/} includes unknown module '$dep'"; bad=1
    elif (( rank[$dep] >= rank[$m] )); then
      echo "layering: ${file#"$src"/} ($m, layer ${rank[$m]}) includes $dep (layer ${rank[$dep]})"; bad=1
    fi
  done < <(grep -rHE '^[[:space:]]*#[[:space:]]*include[[:space:]]+"[a-z_0-9]+/' "$dir" || true)
done
if (( bad )); then
  echo "layering: violations found (lowest first: ${layers[*]})"; exit 1
fi
echo "layering: ok (${#layers[@]} layers)"
