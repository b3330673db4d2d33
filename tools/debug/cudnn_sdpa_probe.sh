#!/usr/bin/env bash
# Runs tools/debug/cudnn_sdpa_probe.cpp on the GPU machine in the ways that separate the cuDNN
# attention crash's causes: a C++ executable; ctypes in a Python without torch; Python after
# `import torch` (with and without CUDA initialised by torch); Python after `import ember`.
# Built against PyTorch's cuDNN (the wheel's headers and library) and the system's, with the
# compiler CMake uses ($CXX) and Ember's link option for a static libstdc++ (--exclude-libs; see
# ember_private_runtime in CMakeLists.txt). Session 28 (2026-12-06) ran it with the PATH's g++,
# which links libstdc++ as a shared library: every way worked, which pointed at Ember's build
# (the GPU machine's CXX=/opt/gcc/bin/g++ links it statically) rather than at Python or torch.
# Usage (device tool): bash tools/debug/cudnn_sdpa_probe.sh          (the matrix, on stdout)
#                      bash tools/debug/cudnn_sdpa_probe.sh shapes   (the C++ executable over
#                      the benchmark's problems, against PyTorch's cuDNN)
set -u
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
fe_inc="${EMBER_CUDNN_FRONTEND_INCLUDE:-$root/.deps/cudnn_frontend/include}"
work="$(mktemp -d)"
gcc -shared -fPIC -o "$work/segv.so" "$root/tools/debug/segv_backtrace.c" -ldl
tdir="$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0])' 2>/dev/null)"
cuda="${CUDA_HOME:-/usr/local/cuda}"
build() {  # name, include dir, library dir
  local flags=(-std=c++17 -O1 -g -fPIC -DCUDNN_FRONTEND_SKIP_JSON_LIB -isystem "$fe_inc" -I"$2" -I"$cuda/include"
               "$root/tools/debug/cudnn_sdpa_probe.cpp" -L"$3" -Wl,-rpath,"$3" -lcudnn -L"$cuda/lib64" -lcudart -lnvrtc)
  "${CXX:-g++}" -shared -o "$work/lib$1.so" "${flags[@]}" -Wl,--exclude-libs,libstdc++.a:libsupc++.a ||
    echo "BUILD FAILED $1"
  "${CXX:-g++}" -DEMBER_PROBE_MAIN -o "$work/$1" "${flags[@]}" || echo "BUILD FAILED $1 exe"
}
[ -n "$tdir" ] && build torchdnn "$tdir/include" "$tdir/lib"
if [ "${1:-}" = shapes ]; then
  # B H L S E causal packed composite
  while read -r problem; do
    echo "=== $problem"
    LD_PRELOAD="$work/segv.so" timeout 60 "$work/torchdnn" $problem 2>&1 | tail -4
    echo "--- rc=${PIPESTATUS[0]}"
  done <<'LIST'
2 4 128 128 64 0 0 1
1 12 128 128 64 0 0 1
32 12 128 128 64 0 0 1
32 12 128 128 64 1 0 1
4 12 512 512 64 0 0 1
1 16 2048 2048 128 1 0 1
32 12 128 128 64 0 1 1
1 12 128 128 64 0 1 1
32 12 128 128 64 1 1 1
32 12 128 128 64 0 0 0
LIST
  exit 0
fi
build sysdnn /usr/include /usr/lib/x86_64-linux-gnu
maps='import re; print("\n".join(sorted({l.split()[-1] for l in open("/proc/self/maps") if re.search("cudnn|nvrtc|cudart|cublas", l)})))'
run() {  # label, command...
  echo "=== $1"; shift
  LD_PRELOAD="$work/segv.so" timeout 150 "$@" 2>&1 | grep -v "Warning\|warnings.warn" | tail -25
  echo "--- rc=${PIPESTATUS[0]}"
}
for v in torchdnn sysdnn; do
  [ -e "$work/lib$v.so" ] || continue
  lib="$work/lib$v.so"
  run "$v: C++ executable" "$work/$v"
  run "$v: python, no torch" python3 -c "import ctypes; r = ctypes.CDLL('$lib').ember_probe_sdpa(1); $maps; print('rc', r)"
  run "$v: python, import torch (no CUDA init)" python3 -c "import torch, ctypes; r = ctypes.CDLL('$lib').ember_probe_sdpa(1); $maps; print('rc', r)"
  run "$v: python, torch CUDA init" python3 -c "import torch, ctypes; torch.zeros(1, device='cuda'); r = ctypes.CDLL('$lib').ember_probe_sdpa(1); $maps; print('rc', r)"
  run "$v: python, torch CUDA init, auto node" python3 -c "import torch, ctypes; torch.zeros(1, device='cuda'); r = ctypes.CDLL('$lib').ember_probe_sdpa(0); print('rc', r)"
  run "$v: python, torch cudnn conv first" python3 -c "import torch, ctypes; import torch.nn.functional as F; F.conv2d(torch.randn(1,3,8,8,device='cuda'), torch.randn(4,3,3,3,device='cuda')); r = ctypes.CDLL('$lib').ember_probe_sdpa(1); print('rc', r)"
  run "$v: python, import ember" python3 -c "import torch, ember, ctypes; torch.zeros(1, device='cuda'); r = ctypes.CDLL('$lib').ember_probe_sdpa(1); print('rc', r)"
done
