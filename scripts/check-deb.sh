#!/usr/bin/env bash
# Builds the Debian package from a CMake build directory, extracts it into a
# scratch root (no root rights needed, nothing installed on the machine) and
# runs the extracted moefy from another directory: --version, inspect and
# build on the bundled demo model, and convert with a fitted router on the
# bundled calibration text (found under share/moefy, not in the source tree).
#   usage: scripts/check-deb.sh BUILD_DIR      exit 0 ok, 1 failed, 77 skipped
set -euo pipefail
build=$(cd "${1:?usage: check-deb.sh BUILD_DIR}" && pwd)
for tool in cpack dpkg-deb; do
  command -v "$tool" >/dev/null || { echo "check-deb: $tool not installed, skipped"; exit 77; }
done
scratch=$(mktemp -d /tmp/moefy-deb-XXXXXX)
trap 'rm -rf "$scratch"' EXIT
die() { echo "check-deb: $*" >&2; exit 1; }

(cd "$scratch" && cpack -G DEB --config "$build/CPackConfig.cmake" -B "$scratch/pkg" >"$scratch/cpack.log" 2>&1) ||
  { cat "$scratch/cpack.log" >&2; die "cpack -G DEB failed"; }
deb=$(ls "$scratch"/pkg/moefy_*_amd64.deb 2>/dev/null | head -1)
[[ -n $deb ]] || die "no moefy_<version>_amd64.deb in $scratch/pkg"
echo "check-deb: built $(basename "$deb")"

# Depends: every package name (alternatives and versions aside) must be known to apt.
depends=$(dpkg-deb -f "$deb" Depends)
[[ -n $depends ]] || die "$(basename "$deb") has no Depends"
echo "check-deb: Depends: $depends"
if command -v apt-cache >/dev/null; then
  for dep in $(tr ',|' '\n\n' <<<"$depends" | sed -E 's/\(.*\)//; s/:any//' | xargs -n1); do
    apt-cache show "$dep" >/dev/null 2>&1 || dpkg-query -W "$dep" >/dev/null 2>&1 ||
      die "Depends names '$dep', which apt does not know"
  done
fi

root=$scratch/root
dpkg-deb -x "$deb" "$root"
moefy=$root/usr/bin/moefy
share=$root/usr/share/moefy
for f in "$moefy" "$share/data/calib.jsonl" "$share/data/eval.jsonl" "$share/models/tinyllama-demo/model.safetensors"; do
  [[ -e $f ]] || die "${f#"$root"} is not in the package"
done
src=$(cd "$(dirname "$0")/.." && pwd)
if grep -qF "$src" "$moefy"; then die "the binary names the source tree $src"; fi

mkdir "$scratch/elsewhere" && cd "$scratch/elsewhere"
model=$share/models/tinyllama-demo
"$moefy" --version | tee version.txt
grep -q '^moefy [0-9]' version.txt || die "--version prints no version"
grep -q '^kernels: ' version.txt || die "--version prints no kernel path"
"$moefy" inspect "$model" >inspect.txt || die "inspect failed"
grep -q 'dense' inspect.txt || die "inspect does not describe the demo model: $(cat inspect.txt)"
"$moefy" build --model "$model" --method random --experts 4 --router random --weighting softmax --scale auto \
  --out moe-build >build.txt 2>&1 || { cat build.txt >&2; die "build failed"; }
[[ -f moe-build/config.json ]] || die "build wrote no moe-build/config.json"
"$moefy" split random --model "$model" --experts 4 --out plan.json >/dev/null
"$moefy" convert --model "$model" --plan plan.json --router fit --calib-tokens 512 --ctx 128 --out moe-fit \
  >convert.txt 2>&1 || { cat convert.txt >&2; die "convert with the bundled calibration text failed"; }
grep -qF "$share/data/calib.jsonl" convert.txt || die "convert did not use the packaged data/calib.jsonl: $(cat convert.txt)"
echo "check-deb: ok ($(basename "$deb") extracted and run from $scratch/elsewhere)"
