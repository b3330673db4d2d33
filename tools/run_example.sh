#!/usr/bin/env bash
# The main job: build Ember and run the LeNet example (define -> build -> serialize ->
# deserialize -> run), printing its output and time.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$EMBER_ROOT"
cmake --preset dev >/dev/null
cmake --build --preset dev --target lenet
./build/dev/examples/lenet --batch 1 --plan build/dev/lenet.plan
./build/dev/examples/lenet --batch 32 --plan build/dev/lenet_b32.plan --iters 20 | tail -n 2
