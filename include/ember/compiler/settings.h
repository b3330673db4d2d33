// Compile settings as the C++ compiler sees them. The Python dataclass ember.CompileSettings
// documents each one and fills this struct.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ember::compiler {

/// Settings that steer lowering, partitioning, conversion and the engine build.
struct CompileSettings {
  /// Segments with fewer compute nodes than this run in PyTorch.
  int64_t min_block_size = 5;
  /// Ops forced to PyTorch: "aten::add" (every overload) or "aten::add.Tensor" (one overload).
  std::vector<std::string> torch_executed_ops;
  /// Modules forced to PyTorch: a class name ("torch.nn.modules.conv.Conv2d" or "Conv2d") or a
  /// qualified module name ("layer1.0").
  std::vector<std::string> torch_executed_modules;
  /// Any fallback is an error listing every unsupported node.
  bool require_full_compilation = false;
  /// Narrow i64 to i32 and f64 to f32 inside engines.
  bool truncate_double = false;
  /// Builder optimization level 0..5.
  int optimization_level = 3;
  /// Activation memory limit in bytes (0 = none).
  int64_t workspace_size = 0;
  /// Engine back end: "cpu" or "cuda".
  std::string backend = "cpu";
  /// The builder's channels_last pass: "auto" (the builder's choice: as "half" today), "half" (CUDA
  /// f16/bf16 convolutions), "on" (every 2-d float convolution, any back end) or "off".
  std::string channels_last = "auto";
  /// Print the partition report and build logs.
  bool debug = false;
};

}  // namespace ember::compiler
