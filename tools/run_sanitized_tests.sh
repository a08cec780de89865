#!/usr/bin/env bash
# The whole ctest suite again, built with AddressSanitizer (+ LeakSanitizer) and
# UndefinedBehaviorSanitizer into build-asan/ (gcc). -fno-sanitize-recover=all: any UBSan report
# aborts its process, so the test fails; ASan/LSan reports always do. tools/run_tests.sh runs
# this after the normal suite; it also works alone. Extra arguments go to ctest.
#
# Every test runs, the end-to-end ones included (the fp4q binary they start is sanitized too).
# Optimisation is -O1 without NDEBUG: half the compile time of -O3 on CI's 2 cores, and the
# assert()s of header-only dependencies (Eigen bounds checks) stay on.
#
# Suppressions (tools/sanitizers/*.supp) may only name third-party code, each with the reason
# it is not an fp4q bug; none are needed today.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${FP4Q_ASAN_BUILD:-$root/build-asan}"
bash "$root/tools/install_deps.sh"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O1" \
  -DFP4Q_SANITIZE="address;undefined" -DCMAKE_CXX_FLAGS="-fno-sanitize-recover=all" \
  -DFP4Q_BUILD_BENCH=OFF >&2
cmake --build "$build" -j"$(nproc)" >&2

supp="$root/tools/sanitizers"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1:check_initialization_order=1:detect_stack_use_after_return=1:suppressions=$supp/asan.supp"
export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:suppressions=$supp/ubsan.supp"
cd "$build"
ctest --output-on-failure -j"$(nproc)" "$@"
