#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite; then the
# same suite built with AddressSanitizer + UndefinedBehaviorSanitizer
# (build-asan/), then every fuzz target for a bounded time (build-fuzz/).
#   MOEFY_TEST_QUICK=1 scripts/test.sh   # the normal suite only
#   FUZZ_SECONDS=20 (default) per fuzz target
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --tests
bash scripts/build.sh
(cd build && ctest --output-on-failure -j"$(nproc)")
[ "${MOEFY_TEST_QUICK:-}" = 1 ] && exit 0
bash scripts/test-sanitize.sh
bash scripts/fuzz.sh "${FUZZ_SECONDS:-20}"
