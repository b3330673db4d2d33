#!/usr/bin/env bash
# Builds Ember on the GPU machine (the `device` tool: no network, no apt) with the CUDA back end,
# the Python extension and the torch bridge, and lays the package out for PYTHONPATH=python.
# BLAS and GoogleTest come from Debian packages unpacked into .deps/root (tools/gpu_deps.sh
# makes it here; the run carries it). Source this file: it exports PYTHONPATH and LD_LIBRARY_PATH,
# and gives the sourcing shell its own options back at the end (a `set -e` left behind would end a
# device call at the first failing test, with the later steps' results lost).
# EMBER_GPU_CXX_FLAGS replaces the C++ flags (default "-O2 -g1"; "-O1 -g" gives addr2line exact
# frames, with inlining); EMBER_GPU_TARGETS narrows the targets built.
_ember_caller_opts="$(set +o)"
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
deps="$root/.deps/root/usr"
blas_dir="$deps/lib/x86_64-linux-gnu/openblas-pthread"
py="$(command -v python3)"
export LD_LIBRARY_PATH="$blas_dir:${LD_LIBRARY_PATH:-}"
# cuDNN: the copy that comes with PyTorch's wheel when there is one (a Python process that
# imports torch loads that libcudnn.so.9 first, so Ember must be compiled against its headers:
# the cuDNN frontend built on the system's 9.14 headers crashed against torch's 9.19 library,
# 2026-12-06), else the system's. The C++ tests then load the same library (LD_LIBRARY_PATH).
cudnn_args=()
d="$("$py" -c 'import nvidia.cudnn as c; print(list(c.__path__)[0])' 2>/dev/null || true)"
if [ -n "$d" ] && [ -e "$d/lib/libcudnn.so.9" ] && [ -e "$d/include/cudnn.h" ]; then
  cudnn_args=(-DEMBER_CUDNN_LIBRARY="$d/lib/libcudnn.so.9" -DEMBER_CUDNN_INCLUDE_DIR="$d/include")
  export LD_LIBRARY_PATH="$d/lib:$LD_LIBRARY_PATH"
elif ! ldconfig -p | grep -q 'libcudnn\.so '; then
  echo "[gpu_build] no cuDNN found (neither PyTorch's nor the system's)" >&2
fi
cmake -S "$root" -B "$root/build/gpu" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="${EMBER_GPU_CXX_FLAGS:--O2 -g1}" -DEMBER_BUILD_CUDA=ON -DEMBER_BUILD_PYTHON=ON \
  -DEMBER_BUILD_TORCH=ON -DEMBER_BUILD_TESTS=ON -DEMBER_BUILD_EXAMPLES=ON \
  -DCMAKE_LIBRARY_PATH="$blas_dir" -DEMBER_CBLAS_INCLUDE_DIR="$deps/include/x86_64-linux-gnu/openblas-pthread" \
  -DGTest_DIR="$deps/lib/x86_64-linux-gnu/cmake/GTest" -DGTest_ROOT="$deps" \
  -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$py" "${cudnn_args[@]}" >/dev/null
ninja -C "$root/build/gpu" -j "$(nproc)" ${EMBER_GPU_TARGETS:-} >/dev/null
cp "$root"/build/gpu/python/_C*.so "$root/build/gpu/libember.so" "$root/build/gpu/src/torch/libember_torch.so" "$root/python/ember/"
export PYTHONPATH="$root/python:$root/tests/python${PYTHONPATH:+:$PYTHONPATH}"
echo "[gpu_build] built $(ls "$root"/python/ember/_C*.so | xargs -n1 basename), libember.so and libember_torch.so"
eval "$_ember_caller_opts"
unset _ember_caller_opts
