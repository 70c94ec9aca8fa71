#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite, then every
# fuzz target for a bounded time (build-fuzz/); between them the whole suite again,
# built with ASan + UBSan (build-asan/, scripts/test-sanitize.sh).
#   MOEFY_TEST_QUICK=1 scripts/test.sh      # the normal suite only
#   MOEFY_TEST_SANITIZE=0 scripts/test.sh   # without the sanitizer stage
#   FUZZ_SECONDS=20 (default) per fuzz target
set -euo pipefail
cd "$(dirname "$0")/.."
# OpenBLAS's AVX2 kernels, as on the machines moefy is tested on (kept when already set).
export OPENBLAS_CORETYPE="${OPENBLAS_CORETYPE:-Haswell}"
bash scripts/install-deps.sh --tests
bash scripts/build.sh
(cd build && ctest --output-on-failure -j"$(nproc)")
[ "${MOEFY_TEST_QUICK:-}" = 1 ] && exit 0
[ "${MOEFY_TEST_SANITIZE:-1}" = 1 ] && bash scripts/test-sanitize.sh
bash scripts/fuzz.sh "${FUZZ_SECONDS:-20}"
