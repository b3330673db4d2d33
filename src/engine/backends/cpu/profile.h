// Per-layer host timing of the CPU back end (EMBER_LAYER_PROFILE=1, the CUDA back end's switch
// too), for finding where a model's time goes without an external profiler.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace ember::engine::cpu {

/// Whether EMBER_LAYER_PROFILE is set to something other than "0" (read once per process).
bool profiling_enabled();

/// Adds one layer call to the process-wide table: `kind` groups it ("MatrixMultiply"), `what`
/// names it ("MatrixMultiply 'fc1' [4,512]"). Thread-safe. The table is printed to stderr when
/// the process exits: time per layer kind, then the slowest layers.
void profile_record(const char* kind, const std::string& what, double ms);

/// Counts one run of a whole network (the table divides by it to report time per run).
void profile_count_run();

}  // namespace ember::engine::cpu
