// A back end: one implementation of one interface, registered by name ("cpu", "cuda"). The
// runtime and the builder reach back-end code only through it, so they hold no back-end
// #ifdefs; the list of back ends in a build comes from CMake (registry.cpp).
//
// A back end answers three things: how each layer of a plan is implemented (the builder's
// select_implementations), the build-time tactic timing (time_tactics), and the per-context
// execution state that runs a plan (BackendContext).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ember/engine/network.h"
#include "ember/engine/runtime.h"

namespace ember::engine {

struct BuildState;

/// What an ExecutionContext hands its back end for one run: the network and, indexed by tensor
/// id, the evaluated dims and the addresses (arena slots, constants, the caller's I/O).
struct RunRequest {
  const Network* net = nullptr;
  const std::vector<std::vector<int64_t>>* dims = nullptr;
  const std::vector<void*>* addrs = nullptr;
  const SymbolBindings* symbols = nullptr;
  /// The input dims these dims were evaluated for (one shape signature).
  const std::vector<std::vector<int64_t>>* signature = nullptr;
};

/// The execution state one ExecutionContext keeps in its back end: activation memory, library
/// handles, prepared kernels, CUDA graphs.
class BackendContext {
 public:
  virtual ~BackendContext() = default;
  /// Base of the activation arena (the plan's arena offsets are relative to it).
  virtual uint8_t* arena() = 0;
  /// Where the output of a Constant layer lives for this back end.
  virtual void* constant_address(const Tensor& t) = 0;
  /// Runs every layer: to completion (cpu) or enqueued on `stream` (cuda).
  virtual void run(const RunRequest& request, void* stream) = 0;
  /// Waits until the work run() enqueued on `stream` is done (ExecutionContext::execute).
  virtual void synchronize(void* stream) = 0;
  /// See ExecutionContext::set_cuda_graphs; back ends without graphs ignore it.
  virtual void set_cuda_graphs(bool enabled) {}
  /// See ExecutionContext::cuda_graph_stats; back ends without graphs report "disabled".
  virtual ExecutionContext::GraphStats cuda_graph_stats() const {
    ExecutionContext::GraphStats st;
    st.disabled = true;
    return st;
  }
  /// See ExecutionContext::take_cuda_graph_warning.
  virtual std::string take_cuda_graph_warning() { return {}; }
  /// See ExecutionContext::take_warnings.
  virtual std::vector<std::string> take_warnings() { return {}; }
};

/// One back end.
class Backend {
 public:
  virtual ~Backend() = default;
  /// The name plans record ("cpu", "cuda").
  virtual std::string name() const = 0;
  /// The implementation recorded for `layer` in a plan ("<name>.<Kind>" unless the back end
  /// says otherwise, e.g. "cuda.host.<Kind>" for a kind it runs through the host).
  virtual std::string implementation(const Layer& layer) const {
    return name() + "." + layer_kind_name(layer.kind());
  }
  /// Why this back end runs `layer` slower (or less exactly) than the layer's kind promises,
  /// e.g. a quantized convolution its library cannot take; "" when it does not. The builder
  /// logs each such layer ("degraded: ...") and the Python layer warns through the "ember"
  /// logger.
  virtual std::string degradation(const Layer& layer) const { return {}; }
  /// Whether a float MatrixMultiply's fused activation `type` runs inside the product's own
  /// kernel (true by default). False makes it a pass over the output after the product (the
  /// CUDA back end: cuBLASLt's epilogues have ReLU and tanh-GELU only); fuse_epilogues then
  /// leaves such an activation to fuse_pointwise when pointwise layers read it, so that it
  /// joins them in one kernel instead of taking a pass of its own.
  virtual bool product_activation_in_kernel(ActivationType type) const { return true; }
  /// Whether fuse_pointwise puts row reductions (a Reduce over the last dim) into generated
  /// pointwise kernels by default (EMBER_FUSE_ROW_REDUCTIONS=1 or 0 overrides): the CPU's
  /// interpreter runs a row group in one pass; see the CUDA back end for why it says no.
  virtual bool row_reductions_in_generated_kernels() const { return true; }
  /// Whether fuse_pointwise makes a lone pointwise layer that broadcasts an operand (an SE
  /// gate [N, 1, 1, C] times its activation, a bias over rows) a FusedPointwise layer of its
  /// own: the CUDA back end's generated kernel reads such broadcasts a vector at a time, where
  /// its ElementWise kernel computes every element's offsets alone. False by default.
  virtual bool fuse_lone_broadcasts() const { return false; }
  /// The multiple of input channels this back end's fast kernels want for a channels_last
  /// convolution reading `dtype` tensors; the builder's pad_conv_channels pass pads other
  /// counts with zero channels (a network's 3-channel image). 1 (the default) pads nothing.
  virtual int64_t conv_channel_multiple(DataType dtype) const { return 1; }
  /// Adds what this back end stores with a FusedPointwise layer the builder's fuse_pointwise
  /// pass made (the CUDA back end: the generated kernel's source, and its image compiled for
  /// the build's GPU when there is one); `notes` (may be null) gets a line for the build log
  /// when something could not be done. Nothing by default.
  /// `input_dtypes` are the dtypes of the layer's inputs.
  virtual void prepare_fused_pointwise(FusedPointwiseParams& p,
                                       const std::vector<DataType>& input_dtypes,
                                       std::vector<std::string>* notes) const {}
  /// The builder's time_tactics pass for plans of this back end (nothing by default).
  virtual void time_tactics(BuildState& s) const {}
  /// A new execution context's state for `engine` (a plan of this back end).
  virtual std::unique_ptr<BackendContext> create_context(const Engine& engine) const = 0;
};

/// The back end called `name` in this build, or nullptr.
const Backend* find_backend(const std::string& name);
/// The names of the back ends in this build, "cpu" first.
std::vector<std::string> backend_names();

// Each back end's instance, defined in its folder (backends/<name>/) and listed by CMake.
const Backend& cpu_backend();
const Backend& cuda_backend();

}  // namespace ember::engine
