#!/usr/bin/env bash
# The main job: build Ember and its Python package, compile torchvision's ResNet-18 (random
# weights) through the dynamo path and run it against eager PyTorch; then the engine-only C++
# LeNet example (define -> build -> serialize -> deserialize -> run).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$EMBER_ROOT"
echo "== building the Python package (ember._C, libember_torch)"
python -m pip install -q --no-build-isolation -e . >/dev/null
echo "== ResNet-18 through ember.compile"
python examples/compile_model.py --model resnet18 --batch 4 "$@"
echo
echo "== C++ engine example: LeNet"
cmake --preset dev >/dev/null
cmake --build --preset dev --target lenet >/dev/null
./build/dev/examples/lenet --batch 1 --plan build/dev/lenet.plan | tail -n 3
