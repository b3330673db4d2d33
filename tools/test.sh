#!/usr/bin/env bash
# Runs every suite CI runs: the C++ engine and compiler tests, the corrupted-plan corpus and the
# compiler tests (IR parser on mutated text) under AddressSanitizer, a short fuzzing run of the
# plan reader, and the Python tests (torch bridge, dynamo path, models, per-op converters).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$EMBER_ROOT"
jobs="${EMBER_JOBS:-$(nproc)}"

echo "== C++ tests (dev preset; also builds ember._C and the torch bridge for the Python tests)"
cmake --preset dev -DEMBER_BUILD_PYTHON=ON -DEMBER_BUILD_TORCH=ON \
  -DPython_EXECUTABLE="$(command -v python)" -Dpybind11_DIR="$(python -m pybind11 --cmakedir)" >/dev/null
cmake --build --preset dev -j "$jobs"
ctest --preset dev -j "$jobs"

echo "== plan corpus, timing cache and network validation under AddressSanitizer + UBSan"
cmake --preset asan >/dev/null
cmake --build --preset asan -j "$jobs" --target ember_engine_tests ember_compiler_tests
ASAN_OPTIONS=detect_leaks=1 ./build/asan/tests/cpp/ember_engine_tests --gtest_filter='PlanFormat*:Network*:Runtime*:TimingCache*'
ASAN_OPTIONS=detect_leaks=1 ./build/asan/tests/cpp/ember_compiler_tests --gtest_brief=1

echo "== plan reader fuzzing (libFuzzer, 30 s)"
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz -j "$jobs" --target plan_fuzzer
mkdir -p build/fuzz/corpus
./build/fuzz/fuzz/plan_fuzzer -max_total_time=30 -print_final_stats=1 build/fuzz/corpus fuzz/corpus 2>&1 | tail -n 5

if [ -d tests/python ]; then
  echo "== Python tests"
  # The package from the dev build above, not a second compile through pip: ember._C and
  # libember.so and libember_torch.so go next to python/ember (git-ignored), which PYTHONPATH puts first.
  cp build/dev/python/_C*.so build/dev/libember.so build/dev/src/torch/libember_torch.so python/ember/
  python -m pip uninstall -q -y ember >/dev/null 2>&1 || true
  # EMBER_REQUIRE_DEPLOY: the C++ deployment test (ember_deploy, built above) must run.
  EMBER_REQUIRE_DEPLOY=1 PYTHONPATH="$EMBER_ROOT/python" python -m pytest -q -n "$jobs" -p no:cacheprovider tests/python
fi
