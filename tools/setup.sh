#!/usr/bin/env bash
# Sets up everything Ember needs on a fresh Debian machine; fast (seconds) when already done.
#   - Debian packages: compilers and build tools, GoogleTest, OpenBLAS, clang (libFuzzer,
#     sanitizers), ccache, Python venv support.
#   - A Python virtual environment with PyTorch 2.11.0 and the test/build tools from
#     tools/requirements.txt, cached outside the clone in $EMBER_CACHE (default ~/.cache/ember),
#     keyed by the requirements' hash.
# Prints the venv path as its last line (`eval` not needed: scripts source tools/env.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${EMBER_CACHE:-$HOME/.cache/ember}"
mkdir -p "$cache"

apt_packages=(build-essential cmake ninja-build git pkg-config libgtest-dev libgmock-dev
  libopenblas-dev libdnnl-dev clang libclang-rt-14-dev ccache)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "[setup] installing Debian packages: ${missing[*]}" >&2
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

req="$root/tools/requirements.txt"
hash="$(sha256sum "$req" | cut -c1-12)"
venv="$cache/venv-$hash"
if [ ! -f "$venv/.ember-ready" ]; then
  echo "[setup] creating Python environment $venv (PyTorch download: a few minutes once)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q -r "$req" >&2
  touch "$venv/.ember-ready"
fi
# Packages added after the main list, installed into the same venv (keyed by their own hash, so
# adding one does not download PyTorch again).
extra="$root/tools/requirements-extra.txt"
ehash="$(sha256sum "$extra" | cut -c1-12)"
if [ ! -f "$venv/.ember-extra-$ehash" ]; then
  echo "[setup] installing $(grep -v '^#' "$extra" | xargs) into $venv" >&2
  "$venv/bin/python" -m pip install -q -r "$extra" >&2
  touch "$venv/.ember-extra-$ehash"
fi
# The cuDNN frontend's C++ headers (header-only; PyPI's nvidia-cudnn-frontend wheel carries them):
# the CUDA back end's fused attention (backends/cuda/attention_cudnn.cpp) is built on its SDPA
# graph. Only the wheel's include/ is unpacked, into the cache: the Python package and its
# dependencies are not needed. tools/env.sh exports the folder as EMBER_CUDNN_FRONTEND_INCLUDE.
fe_version=1.32.0
fe_dir="$cache/cudnn-frontend-$fe_version"
if [ ! -f "$fe_dir/include/cudnn_frontend.h" ]; then
  echo "[setup] unpacking the cuDNN frontend $fe_version headers into $fe_dir" >&2
  rm -rf "$fe_dir.tmp" && mkdir -p "$fe_dir.tmp"
  "$venv/bin/python" -m pip download -q --no-deps "nvidia-cudnn-frontend==$fe_version" \
    -d "$fe_dir.tmp" >&2
  "$venv/bin/python" - "$fe_dir.tmp" <<'PY'
import pathlib, sys, zipfile
d = pathlib.Path(sys.argv[1])
with zipfile.ZipFile(next(d.glob("*.whl"))) as z:
    z.extractall(d, [n for n in z.namelist() if n.startswith("include/")])
PY
  rm -rf "$fe_dir" && mkdir -p "$fe_dir" && mv "$fe_dir.tmp/include" "$fe_dir/include" && rm -rf "$fe_dir.tmp"
fi
echo "$venv"
