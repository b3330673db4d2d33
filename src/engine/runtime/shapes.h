// Binding input shapes to symbols and checking shape conditions (private to the engine).
#pragma once

#include <vector>

#include "ember/engine/network.h"

namespace ember::engine {

/// Binds every symbol of the network's inputs from concrete input dims (inputs() order).
/// Throws Error naming the input and dim on a rank mismatch, a constant dim that differs, or a
/// symbol bound to two different values.
SymbolBindings bind_input_shapes(const Network& net,
                                 const std::vector<std::vector<int64_t>>& input_dims);

/// Checks one condition; throws Error naming `layer` and the check when it fails.
void check_shape_check(const Layer& layer, const ShapeCheck& check, const SymbolBindings& b);

/// Evaluates every tensor's dims (tensors() order) and checks every layer's ShapeChecks and
/// that all dims are >= 0. Throws Error naming the layer.
std::vector<std::vector<int64_t>> evaluate_all_shapes(const Network& net, const SymbolBindings& b);

}  // namespace ember::engine
