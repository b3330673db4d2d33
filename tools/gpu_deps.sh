#!/usr/bin/env bash
# Unpacks the Debian packages the GPU build needs (OpenBLAS, GoogleTest) into .deps/root, and
# copies the cuDNN frontend headers tools/setup.sh unpacked into .deps/cudnn_frontend (CMake
# looks there), which `device` runs carry (the GPU machine has no network). Run once here;
# .deps/ is git-ignored.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$root/.deps/debs" && cd "$root/.deps/debs"
apt-get download libopenblas-dev libopenblas0-pthread libopenblas-pthread-dev libgtest-dev libgmock-dev
for f in *.deb; do dpkg -x "$f" "$root/.deps/root"; done
cd "$root" && rm -rf .deps/debs .deps/root/usr/share
find .deps/root -name '*.a' ! -name 'libg*' -delete
rm -f .deps/root/usr/lib/x86_64-linux-gnu/openblas-pthread/liblapack.so*
source "$root/tools/env.sh"
rm -rf .deps/cudnn_frontend && mkdir -p .deps/cudnn_frontend
cp -r "$EMBER_CUDNN_FRONTEND_INCLUDE" .deps/cudnn_frontend/include
