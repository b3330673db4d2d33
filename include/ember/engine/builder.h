// The builder: turns a Network into a serialized plan through named, separately tested passes.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ember/engine/dim.h"
#include "ember/engine/network.h"
#include "ember/engine/timing_cache.h"

namespace ember::engine {

/// min <= opt <= max for one symbol.
struct DimRange {
  int64_t min = 1;
  int64_t opt = 1;
  int64_t max = 1;
};

/// The range of input shapes an engine must accept. Ranges are per symbol; set_dimensions
/// derives them from whole input shapes the way TensorRT profiles are written.
class OptimizationProfile {
 public:
  /// Sets the range of `symbol`.
  OptimizationProfile& set_range(const std::string& symbol, int64_t min, int64_t opt, int64_t max);
  /// Records min/opt/max shapes of input `input`; the builder turns each symbolic dim of that
  /// input into its symbol's range (and checks the constant dims match).
  OptimizationProfile& set_dimensions(const std::string& input, std::vector<int64_t> min,
                                      std::vector<int64_t> opt, std::vector<int64_t> max);
  /// Symbol ranges after resolve() (or as set).
  const std::map<std::string, DimRange, std::less<>>& ranges() const { return ranges_; }
  /// Turns set_dimensions entries into symbol ranges against `network`'s inputs and checks
  /// that every symbol of the inputs has a range. Throws Error naming the input/dim/symbol.
  void resolve(const Network& network);
  /// The ranges as intervals [min, max].
  SymbolRanges intervals() const;
  /// Bindings at the min, opt or max point.
  SymbolBindings at_min() const;
  SymbolBindings at_opt() const;
  SymbolBindings at_max() const;

 private:
  struct InputDims {
    std::string input;
    std::vector<int64_t> min, opt, max;
  };
  std::map<std::string, DimRange, std::less<>> ranges_;
  std::vector<InputDims> input_dims_;
};

/// Which convolutions the builder's channels_last pass moves to NHWC.
enum class ChannelsLast : uint8_t {
  /// The builder's choice. Today: as kHalf. With the convolution algorithms timed on the GPU
  /// (2026-12-04, H200), ResNet-50 f16 ran 1.477 ms at batch 32 in NHWC against 2.489 in NCHW
  /// (docs/cuda_backend.md).
  kAuto,
  kHalf,  ///< f16/bf16 2-d convolutions of CUDA builds (tensor-core convolution wants NHWC).
  kOn,    ///< Every 2-d float convolution, on any back end (for tests and experiments).
  kOff,   ///< None: everything stays NCHW.
};

/// The highest optimization level (BuilderConfig::optimization_level): every pass runs.
constexpr int kMaxOptimizationLevel = 3;

/// Build settings.
struct BuilderConfig {
  /// At least one profile when the network has symbolic dims; the first is the default.
  std::vector<OptimizationProfile> profiles;
  /// 0..kMaxOptimizationLevel; each level adds passes: 0 only the required ones (shape
  /// inference, dead-layer removal, implementation choice, memory planning, tactic timing),
  /// 1 constant folding, 2 fusion (conv/matmul epilogues, int8/fp8 products, the attention
  /// rewrite, pointwise chains), 3 layout (channels_last). Higher values are an error.
  int optimization_level = 3;
  /// Upper bound for the activation arena in bytes (0 = no limit); exceeding it fails the build.
  int64_t memory_limit = 0;
  /// Back end to build for: "cpu" (always built in) or "cuda" (when compiled with CUDA).
  std::string backend = "cpu";
  /// Largest constant (bytes) the constant folder may produce.
  int64_t max_folded_constant_bytes = 64 << 20;
  /// Tactic choices to start from and to add to (TensorRT's IBuilderConfig::setTimingCache).
  /// A "cuda" build on a machine with a GPU times every matmul and convolution problem the
  /// cache lacks (running the plan once at the first profile's opt shapes), stores the choices
  /// in the plan, and adds them here; save it with TimingCache::serialize for the next build.
  /// Null: the build starts from an empty cache and keeps its choices only in the plan.
  std::shared_ptr<TimingCache> timing_cache;
  /// The channels_last pass (optimization level 3).
  ChannelsLast channels_last = ChannelsLast::kAuto;
  /// The fuse_pointwise pass (optimization level 2): chains of pointwise layers become one
  /// FusedPointwise layer (one generated kernel on the GPU). The environment variable
  /// EMBER_FUSE_POINTWISE=0 turns it off too, for A/B timing without a code change.
  bool fuse_pointwise = true;
};

/// What each pass did, for logs and tests.
struct BuildReport {
  std::vector<std::string> pass_log;  ///< One line per pass: "fold_constants: folded 3 layers".
  int64_t arena_bytes = 0;
  int num_layers = 0;
  int64_t timed_problems = 0;  ///< Problems timed on the GPU (not found in the timing cache).
  int64_t timing_entries = 0;  ///< Tactic choices stored in the plan.
};

/// Builds plans. Stateless apart from its config; reuse freely.
class Builder {
 public:
  explicit Builder(BuilderConfig config) : config_(std::move(config)) {}
  /// Runs every pass and returns the serialized plan. Throws Error naming the pass and layer.
  std::vector<uint8_t> build(const Network& network, BuildReport* report = nullptr) const;
  const BuilderConfig& config() const { return config_; }

 private:
  BuilderConfig config_;
};

/// Back ends compiled into this library ("cpu", and "cuda" when built with CUDA).
std::vector<std::string> available_backends();

}  // namespace ember::engine
