#!/usr/bin/env bash
# Runs every suite CI runs: the C++ engine and compiler tests, the corrupted-plan corpus and the
# compiler tests (IR parser on mutated text) under AddressSanitizer, a short fuzzing run of the
# plan reader, and the Python tests (torch bridge, dynamo path, models, per-op converters).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$EMBER_ROOT"
jobs="${EMBER_JOBS:-$(nproc)}"

echo "== C++ engine tests (dev preset)"
cmake --preset dev >/dev/null
cmake --build --preset dev -j "$jobs"
ctest --preset dev -j "$jobs"

echo "== plan corpus and network validation under AddressSanitizer + UBSan"
cmake --preset asan >/dev/null
cmake --build --preset asan -j "$jobs" --target ember_engine_tests ember_compiler_tests
ASAN_OPTIONS=detect_leaks=1 ./build/asan/tests/cpp/ember_engine_tests --gtest_filter='PlanFormat*:Network*:Runtime*'
ASAN_OPTIONS=detect_leaks=1 ./build/asan/tests/cpp/ember_compiler_tests --gtest_brief=1

echo "== plan reader fuzzing (libFuzzer, 30 s)"
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz -j "$jobs" --target plan_fuzzer
mkdir -p build/fuzz/corpus
./build/fuzz/fuzz/plan_fuzzer -max_total_time=30 -print_final_stats=1 build/fuzz/corpus fuzz/corpus 2>&1 | tail -n 5

if [ -d tests/python ]; then
  echo "== Python tests"
  # CI compiles the CUDA back end once, in the dev preset above; the Python package here is
  # built without it (a GPU machine builds it with tools/gpu_build.sh).
  SKBUILD_CMAKE_DEFINE="EMBER_BUILD_CUDA=OFF" python -m pip install -q --no-build-isolation -e . >/dev/null
  python -m pytest -q -p no:cacheprovider tests/python
fi
