// Forward convolution through cuDNN's graph (backend) API, with the execution plan built once
// per context, layer and problem and kept in the layer's prepared state (conv_graph.cpp).
//
// Why: cuDNN 9 implements the legacy cudnnConvolutionForward / cudnnConvolutionBiasActivation-
// Forward over its graph back end and redoes that work on every call (~240 us of host time per
// convolution on an H100, 2026-12-05), which dominated Ember's layer-by-layer runs. Through the
// graph API the operation graph, the heuristic query and the plan's finalization happen once;
// a call only packs the operand addresses (a variant pack, itself kept while they repeat) and
// calls cudnnBackendExecute.
//
// Selection lives in linear.cpp's run(ConvolutionParams): this path first, the legacy path
// when EMBER_CUDNN_CONV=legacy, when this path does not cover a layer, or when cuDNN refuses
// to build a plan for it (reported once per context and layer through the back end's warnings).
//
// No cuDNN header here: the engine tests include this file for the counters below.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "backends/cuda/cuda_backend.h"
#include "backends/cuda/quantize_kernels.h"

namespace ember::engine::cuda {

/// Whether convolutions go through cuDNN's graph API: true unless EMBER_CUDNN_CONV=legacy. Read
/// each time a layer's state is prepared (not once per process), so that one process can build
/// and compare contexts under both settings.
bool conv_graph_selected();

/// What the convolution layer hands the graph path: its epilogue-fusion policy (shared with the
/// legacy path, see conv_fusion_mode in linear.cpp), the workspace limit and tactic logging.
struct ConvGraphOptions {
  /// kTimed: fused and unfused plans are timed against each other when tactics are timed, and
  /// the fused one is preferred otherwise; kOff: never fused; kForce: fused whenever cuDNN
  /// builds a plan for it.
  enum class Fusion { kTimed, kOff, kForce } fusion = Fusion::kTimed;
  size_t max_workspace = 0;  ///< Plans needing more scratch than this are skipped.
  bool log = false;          ///< EMBER_TACTIC_LOG=1: print candidates, timings and the choice.
  /// The layer's problem text for the timing cache (the legacy path's key, which the graph path
  /// extends with its own prefix and fields); called only when the context has a timing cache.
  std::function<std::string()> problem;
};

/// What run_conv_graph did.
enum class ConvGraphStatus {
  kRan,         ///< The convolution and its whole epilogue are enqueued.
  kNotCovered,  ///< A problem this path does not take (see run_conv_graph); nothing enqueued.
  kRefused,     ///< cuDNN built no plan for it; nothing enqueued, `why` says what failed.
};

/// Runs one Convolution layer (`a`, with the bias and residual the caller checked, nullptr when
/// absent) through the graph API: y = act(scale * conv(x, w) + bias + residual). With a bias
/// and relu or no activation the epilogue is part of the cuDNN graph (pointwise ADD, ADD, RELU_FWD
/// ops on virtual f32 tensors); otherwise, or when cuDNN has no fused plan, the graph is the
/// convolution alone and launch_epilogue does the rest in one pass, as on the legacy path.
///
/// Not covered (the legacy path runs it): EMBER_CUDNN_CONV=legacy, a residual overlapping the
/// output (only the legacy fused call documents that in-place form), the first call of a problem
/// while the stream is being captured (plan building is kept out of captures; Ember's own
/// captures always follow an eager call that built the plan), and ranks other than 1-3 spatial
/// dims (2 when channels_last).
/// A refusal is remembered with the layer's state, so later calls go straight to the legacy path.
ConvGraphStatus run_conv_graph(const ConvolutionParams& p, const CudaArgs& a, const void* bias,
                               const void* residual, const ConvGraphOptions& options,
                               std::string* why);

/// Runs a QuantizedConvolution through the graph API (quantized_conv.cpp's run_graph checks
/// what it takes: 2-d, groups = 1, channels_last, symmetric activations whose channels are the
/// layer's, relu or no activation). x [N, H, W, C] and w [K, R, S, C] (INT8 or FP8) are a's
/// inputs 0 and 1 as they are, y [N, OH, OW, K] its output. The one graph is the convolution
/// (exact int32 or tensor-core f32 sums) and `e`'s whole epilogue as pointwise ops on f32:
///
///   y = [e.out_scale: / out_scale] act(conv(x, w) * scale * x_scale * w_scale[k] + bias[k]
///                                      + residual)
///
/// written once in y's type: the float output type (p.out, also the bias's and residual's), or
/// int8 / FP8 E4M3 when it requantizes. kRefused when cuDNN has no engine for the graph
/// (remembered with the layer's state: later calls go straight to the caller's other path),
/// kNotCovered with EMBER_CUDNN_CONV=legacy, a residual overlapping y, and inside a capture
/// for a problem not prepared before.
ConvGraphStatus run_quantized_conv_graph(const QuantizedConvolutionParams& p,
                                         const ProductEpilogue& e, const CudaArgs& a,
                                         const ConvGraphOptions& options, std::string* why);

/// Process-wide counts of the graph path's work, for tests and profiling.
struct ConvGraphCounters {
  int64_t preparations = 0;  ///< Layer states built (operation graph, heuristics, plan).
  int64_t plans = 0;         ///< Execution plans finalized (several per preparation when timed).
  int64_t executions = 0;    ///< cudnnBackendExecute calls that ran a layer (timing excluded).
  int64_t refusals = 0;      ///< Preparations that found no plan (the layer then runs legacy).
};

/// The counters so far (atomic reads; they only grow).
ConvGraphCounters conv_graph_counters();

}  // namespace ember::engine::cuda
