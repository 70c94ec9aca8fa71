#!/usr/bin/env bash
# Installs the Debian 12 packages moefy builds with, only those missing.
# --tests adds what only the test suite uses (chromium renders the HTML report; python3-torch, see below;
# clang with its compiler-rt builds the libFuzzer targets in fuzz/).
set -euo pipefail
pkgs=(build-essential cmake pkg-config libopenblas-dev liblemon-dev libmetis-dev libsentencepiece-dev
      libpcre2-dev nlohmann-json3-dev libcli11-dev libfmt-dev libgtest-dev libopenmpi-dev openmpi-bin)
# python3-torch: scripts/make-llama-moe-fixtures.py writes the reference's torch.save files (the committed
# fixtures make it optional; with it, tests/test_import.cpp also regenerates and re-imports them).
[ "${1:-}" = "--tests" ] && pkgs+=(chromium python3-torch clang libclang-rt-14-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
