// Compile settings as the C++ compiler sees them. The Python dataclass ember.CompileSettings
// documents each one and fills this struct.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <utility>
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
  /// Single nodes forced to PyTorch, by fx name, each with the reason the partition report
  /// gives (dynamo.compile adds a node here when its converter failed, then rebuilds).
  std::vector<std::pair<std::string, std::string>> torch_executed_nodes;
  /// Any fallback is an error listing every unsupported node.
  bool require_full_compilation = false;
  /// Narrow i64 to i32 and f64 to f32 inside engines.
  bool truncate_double = false;
  /// Builder optimization level 0..5.
  int optimization_level = 3;
  /// Engine back end: "cpu" or "cuda".
  std::string backend = "cpu";
  /// The builder's channels_last pass: "auto" (the builder's choice: as "half" today), "half" (CUDA
  /// f16/bf16 convolutions), "on" (every 2-d float convolution, any back end) or "off".
  std::string channels_last = "auto";
  /// Print the partition report and build logs.
  bool debug = false;

  // ---- Autocast (lowering/passes/autocast.cpp; docs/precision.md).
  /// Run f32 nodes in `autocast_low_precision_type`, except those the rules keep in f32.
  bool enable_autocast = false;
  /// "f16" or "bf16".
  std::string autocast_low_precision_type = "f16";
  /// ECMAScript regexes searched in each node's fx name and module path: matches stay f32.
  std::vector<std::string> autocast_excluded_nodes;
  /// Ops that stay f32: "aten::softmax" (every overload) or one overload
  /// ("aten::sum.dim_IntList").
  std::vector<std::string> autocast_excluded_ops;
  /// Nodes reading or writing a value whose measured max |x| exceeds this stay f32 (< 0: off).
  double autocast_max_output_threshold = 512.0;
  /// Reductions (matmul/conv inner dims, sums, softmax, norms) over more elements stay f32
  /// (< 0: no limit).
  int64_t autocast_max_depth_of_reduction = -1;
  /// Max |x| per fx node name, measured in f32 on calibration inputs (the Python layer runs
  /// them through the FX graph). Names without a measurement are not judged by the threshold.
  std::unordered_map<std::string, double> autocast_output_magnitudes;
  /// Matmuls and convolutions accumulate in f32. Ember's kernels always do (cuBLASLt
  /// COMPUTE_32F, cuDNN f32 compute, f32 on the CPU), so this changes nothing; kept for
  /// Torch-TensorRT's settings.
  bool use_fp32_acc = false;
};

}  // namespace ember::compiler
