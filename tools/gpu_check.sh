#!/usr/bin/env bash
# The GPU test run, in one call on the GPU machine (the `device` tool):
#   builds Ember with the CUDA back end (tools/gpu_build.sh), then runs
#   1. the CUDA conformance suites and fusion tests (ember_engine_tests, Cuda* and FuseEpilogues*),
#   2. tests/python/test_cuda.py (models in f32/f16 incl. full-size resnet50, bert-base, gpt2;
#      CUDA graphs; streams),
#   3. the converter (op) suite and the model zoo with EMBER_TEST_DEVICE=cuda.
# Logs go to $OUT (or ./gpu_out); the last line of each says how it ended. Usage:
#   tools/gpu_check.sh [all|build|cpp|models|ops|zoo]...   (default: all)
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-$root/gpu_out}"
mkdir -p "$out"
steps=("${@:-all}")
want() { [[ " ${steps[*]} " == *" all "* || " ${steps[*]} " == *" $1 "* ]]; }

start=$(date +%s)
# shellcheck source=/dev/null
source "$root/tools/gpu_build.sh" > "$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
set +e +u
echo "[gpu_check] build: $(( $(date +%s) - start )) s"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$out/gpu.txt" 2>&1
cd "$root"
workers=$(( $(nproc) > 8 ? 8 : $(nproc) ))

run_step() {  # name, command...
  local name=$1; shift
  local t0=$(date +%s)
  "$@" > "$out/$name.log" 2>&1
  local rc=$?
  echo "[gpu_check] $name: rc=$rc in $(( $(date +%s) - t0 )) s: $(tail -n 1 "$out/$name.log")"
}

want cpp && run_step cpp build/gpu/tests/cpp/ember_engine_tests --gtest_brief=1 \
  --gtest_filter='Cuda*:FuseEpilogues*:PlanMemory*:Runtime*'
want models && run_step models python3 -m pytest -q -p no:cacheprovider tests/python/test_cuda.py
want ops && EMBER_TEST_DEVICE=cuda run_step ops python3 -m pytest -q -p no:cacheprovider \
  -n "$workers" tests/python/converters
want zoo && EMBER_TEST_DEVICE=cuda run_step zoo python3 -m pytest -q -p no:cacheprovider \
  -n 4 tests/python/test_zoo_vision.py tests/python/test_zoo_hf.py
echo "[gpu_check] total: $(( $(date +%s) - start )) s"
