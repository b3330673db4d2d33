// Shape and type inference of layers (private to the engine).
//
// One `infer(const XParams&, InferContext&)` overload per layer kind, defined in the file of its
// family (src/engine/network/<family>.cpp). `infer_layer` dispatches with std::visit, so a kind
// without an overload is a compile error.
#pragma once

#include <string>
#include <vector>

#include "ember/engine/network.h"

namespace ember::engine {

/// The dtype and shape of one output.
struct TensorDesc {
  DataType dtype = DataType::kF32;
  Shape shape;
};

/// What an infer function sees and fills in. Its helpers throw Error with a message that the
/// caller prefixes with the layer ("Convolution 'conv1': ...").
class InferContext {
 public:
  explicit InferContext(std::vector<const Tensor*> inputs) : inputs_(std::move(inputs)) {}

  size_t num_inputs() const { return inputs_.size(); }
  /// True when input i is present (optional inputs may be nullptr).
  bool has(size_t i) const { return i < inputs_.size() && inputs_[i] != nullptr; }
  /// Input i; throws when absent.
  const Tensor& in(size_t i) const;
  DataType dtype(size_t i) const { return in(i).dtype(); }
  const Shape& shape(size_t i) const { return in(i).shape(); }
  int rank(size_t i) const { return in(i).rank(); }

  /// Throws Error(message) when !cond.
  static void require(bool cond, const std::string& message);
  /// Requires between min and max inputs (trailing optional ones may be nullptr).
  void expect_num_inputs(size_t min, size_t max) const;
  /// Requires input i to be a float type (f32/f16/bf16); `role` names it ("input", "weight").
  void expect_float(size_t i, const std::string& role) const;
  /// Requires input i to have dtype t.
  void expect_dtype(size_t i, DataType t, const std::string& role) const;
  /// Requires inputs i and j to share a dtype.
  void expect_same_dtype(size_t i, size_t j) const;
  /// Requires input i to have rank r (or in [lo, hi]).
  void expect_rank(size_t i, int r, const std::string& role) const;
  void expect_rank_between(size_t i, int lo, int hi, const std::string& role) const;
  /// Requires axis in [0, rank); `what` names the parameter.
  static void expect_axis(int64_t axis, int rank, const std::string& what);

  /// Records a == b: throws when both are constants and differ, records a run-time check when
  /// they may differ, and does nothing when they are provably equal.
  void check_equal(const DimExpr& a, const DimExpr& b, const std::string& what);
  /// Records a <= b likewise.
  void check_less_equal(const DimExpr& a, const DimExpr& b, const std::string& what);
  /// numpy broadcast of one dim pair: returns the output dim, recording a run-time check when
  /// needed; throws when both are constants that do not broadcast.
  DimExpr broadcast_dim(const DimExpr& a, const DimExpr& b, const std::string& what);
  /// numpy broadcast of whole shapes (aligned at the right).
  Shape broadcast_shapes(const Shape& a, const Shape& b);

  /// Appends an output.
  void add_output(DataType dtype, Shape shape) { outputs_.push_back({dtype, std::move(shape)}); }

  std::vector<TensorDesc>& outputs() { return outputs_; }
  std::vector<ShapeCheck>& checks() { return checks_; }

 private:
  std::vector<const Tensor*> inputs_;
  std::vector<TensorDesc> outputs_;
  std::vector<ShapeCheck> checks_;
};

/// True for a shape of one element ([] or [1]): a per-tensor scale or zero point.
inline bool one_element(const Shape& s) {
  return s.empty() || (s.size() == 1 && s[0].is_constant() && s[0].constant() == 1);
}

// One per layer kind (grouped by the file that defines them).
// constant.cpp / shape family (data_movement.cpp)
void infer(const ConstantParams& p, InferContext& ctx);
void infer(const ShuffleParams& p, InferContext& ctx);
void infer(const ConcatenationParams& p, InferContext& ctx);
void infer(const SliceParams& p, InferContext& ctx);
void infer(const GatherParams& p, InferContext& ctx);
void infer(const ScatterParams& p, InferContext& ctx);
void infer(const PaddingParams& p, InferContext& ctx);
void infer(const ResizeParams& p, InferContext& ctx);
void infer(const FillParams& p, InferContext& ctx);
void infer(const ShapeParams& p, InferContext& ctx);
void infer(const IdentityParams& p, InferContext& ctx);
// pointwise.cpp
void infer(const ActivationParams& p, InferContext& ctx);
void infer(const ElementWiseParams& p, InferContext& ctx);
void infer(const UnaryParams& p, InferContext& ctx);
void infer(const SelectParams& p, InferContext& ctx);
void infer(const CastParams& p, InferContext& ctx);
// linear.cpp (convolution, deconvolution, pooling, matrix multiply)
void infer(const ConvolutionParams& p, InferContext& ctx);
/// A convolution's output shape (NHWC under channels_last) from the shapes of x (input 0), the
/// weight (input 1) and the optional bias (input 2), with every geometry check of Convolution;
/// the dtypes are the caller's to check (QuantizedConvolution shares it).
Shape infer_convolution_shape(const ConvolutionParams& p, InferContext& ctx);
void infer(const DeconvolutionParams& p, InferContext& ctx);
void infer(const PoolingParams& p, InferContext& ctx);
void infer(const MatrixMultiplyParams& p, InferContext& ctx);
// reduction.cpp (reduce, topk, softmax, normalization, cumulative)
void infer(const ReduceParams& p, InferContext& ctx);
void infer(const TopKParams& p, InferContext& ctx);
void infer(const SoftMaxParams& p, InferContext& ctx);
void infer(const NormalizationParams& p, InferContext& ctx);
void infer(const CumulativeParams& p, InferContext& ctx);
// attention.cpp
void infer(const AttentionParams& p, InferContext& ctx);
// plugin.cpp
void infer(const PluginParams& p, InferContext& ctx);
// quantize.cpp
void infer(const QuantizeParams& p, InferContext& ctx);
void infer(const DequantizeParams& p, InferContext& ctx);
void infer(const QuantizedMatrixMultiplyParams& p, InferContext& ctx);
void infer(const QuantizedConvolutionParams& p, InferContext& ctx);
// fused_pointwise.cpp
void infer(const FusedPointwiseParams& p, InferContext& ctx);

/// Runs the overload for `params`.
inline void infer_layer(const LayerParams& params, InferContext& ctx) {
  std::visit([&ctx](const auto& p) { infer(p, ctx); }, params);
}

}  // namespace ember::engine
