#!/usr/bin/env bash
# The whole test suite built with -fsanitize=address,undefined -fno-sanitize-recover=all
# in build-asan/ (benchmarks off). Any sanitizer report fails the test that triggered it.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Release -DMOEFY_SANITIZE=ON -DMOEFY_BUILD_BENCH=OFF >/dev/null
cmake --build build-asan -j"$(nproc)"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=0"
export LSAN_OPTIONS="suppressions=$PWD/scripts/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
# -LE package: the package check refuses a binary that names the source tree, which
# ASan's instrumentation always does (file names of globals); the normal build runs it.
(cd build-asan && ctest --output-on-failure -j"$(nproc)" -LE package)
