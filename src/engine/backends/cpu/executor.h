// Running a network's layers on host memory (private to the engine). Used by the CPU back end
// of the runtime (addresses in its arena), by constant folding, and by tests as an oracle.
#pragma once

#include <cstdint>
#include <vector>

#include "backends/cpu/kernels.h"
#include "ember/engine/network.h"

namespace ember::engine::cpu {

/// Runs every non-Constant layer in order. `dims` and `addrs` are indexed by tensor id; the
/// address of a Constant layer's output must point at its weights' bytes. `symbols` (the
/// bindings the dims were evaluated with) reaches kernels whose parameters hold symbolic
/// expressions; a layer that needs it throws Error when it is nullptr.
/// `cache` (a context's, or nullptr) lets kernels keep prepared state between calls.
void execute_layers(const Network& net, const std::vector<std::vector<int64_t>>& dims,
                    const std::vector<void*>& addrs, const SymbolBindings* symbols = nullptr,
                    KernelCache* cache = nullptr);

/// A host tensor with its own storage.
struct OwnedTensor {
  DataType dtype = DataType::kF32;
  std::vector<int64_t> dims;
  std::vector<uint8_t> bytes;
};

/// Runs `net` directly (no builder, no plan) on inputs given in inputs() order and returns the
/// outputs in outputs() order. Binds symbols from the inputs and checks every shape condition.
std::vector<OwnedTensor> execute_network(const Network& net, const std::vector<OwnedTensor>& inputs);

}  // namespace ember::engine::cpu
