// The network definition: tensors and layers, built through add_* calls the way TensorRT's
// INetworkDefinition is. Every add_* infers the output dtypes and symbolic shapes at once and
// throws an Error naming the layer and the reason when the inputs do not fit.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "ember/engine/dim.h"
#include "ember/engine/layers.h"
#include "ember/engine/types.h"

namespace ember::engine {

class Layer;
class Network;

/// A shape condition that could not be decided from symbols alone; the builder proves it over
/// the profile where it can, and the runtime checks the rest once per new input-shape signature.
struct ShapeCheck {
  enum class Kind : uint8_t {
    kEqual,          ///< a == b
    kBroadcastable,  ///< a == b || a == 1 || b == 1
    kLessEqual,      ///< a <= b
  };
  Kind kind = Kind::kEqual;
  DimExpr a;
  DimExpr b;
  std::string what;  ///< What is being checked, e.g. "input dim 1 (channels) equals weight dim 1".
};

/// A value flowing between layers. Owned by its Network.
class Tensor {
 public:
  const std::string& name() const { return name_; }
  DataType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  /// The layer that computes this tensor; nullptr for network inputs.
  Layer* producer() const { return producer_; }
  bool is_input() const { return producer_ == nullptr; }
  bool is_output() const { return is_output_; }
  /// Position in Network::tensors() (stable until the network is compacted).
  int id() const { return id_; }

 private:
  friend class Network;
  std::string name_;
  DataType dtype_ = DataType::kF32;
  Shape shape_;
  Layer* producer_ = nullptr;
  bool is_output_ = false;
  int id_ = -1;
};

/// One operation. Owned by its Network.
class Layer {
 public:
  LayerKind kind() const { return static_cast<LayerKind>(params_.index()); }
  const std::string& name() const { return name_; }
  /// Inputs in the order the layer documents; optional inputs may be nullptr.
  const std::vector<Tensor*>& inputs() const { return inputs_; }
  Tensor* input(size_t i) const { return i < inputs_.size() ? inputs_[i] : nullptr; }
  const std::vector<Tensor*>& outputs() const { return outputs_; }
  Tensor* output(size_t i = 0) const { return outputs_.at(i); }
  const LayerParams& params() const { return params_; }
  /// The parameters as their concrete type; throws std::bad_variant_access on a kind mismatch.
  template <class P>
  const P& params_as() const {
    return std::get<P>(params_);
  }
  /// Conditions on symbolic shapes this layer needs at run time (see ShapeCheck).
  const std::vector<ShapeCheck>& shape_checks() const { return checks_; }
  /// "Convolution 'conv1'" for messages.
  std::string describe() const;

 private:
  friend class Network;
  std::string name_;
  LayerParams params_;
  std::vector<Tensor*> inputs_;
  std::vector<Tensor*> outputs_;
  std::vector<ShapeCheck> checks_;
};

/// A network definition. Not copyable (tensors point at each other); use clone().
class Network {
 public:
  Network() = default;
  Network(const Network&) = delete;
  Network& operator=(const Network&) = delete;
  Network(Network&&) noexcept = default;
  Network& operator=(Network&&) noexcept = default;
  ~Network();

  /// Declares an input. Dims are constants or symbols (DimExpr::symbol("batch")); inputs may
  /// share a symbol, which then means the same size. Names must be unique and non-empty.
  Tensor* add_input(const std::string& name, DataType dtype, const Shape& shape);

  /// Generic form of every add_* below: validates, infers outputs, names the layer (`name` or
  /// "<kind>_<n>") and its outputs ("<layer>:<i>"). Throws Error naming the layer on failure.
  Layer* add_layer(LayerParams params, std::vector<Tensor*> inputs, const std::string& name = "");

  Layer* add_constant(Weights weights, const std::string& name = "");
  Layer* add_convolution(Tensor* x, Tensor* w, Tensor* bias, ConvolutionParams p,
                         const std::string& name = "");
  Layer* add_deconvolution(Tensor* x, Tensor* w, Tensor* bias, DeconvolutionParams p,
                           const std::string& name = "");
  Layer* add_pooling(Tensor* x, PoolingParams p, const std::string& name = "");
  Layer* add_activation(Tensor* x, ActivationType type, double alpha = 0.0, double beta = 0.0,
                        const std::string& name = "");
  Layer* add_elementwise(Tensor* a, Tensor* b, ElementWiseOp op, const std::string& name = "");
  Layer* add_unary(Tensor* x, UnaryOp op, const std::string& name = "");
  Layer* add_reduce(Tensor* x, ReduceOp op, std::vector<int64_t> axes, bool keep_dims,
                    const std::string& name = "");
  Layer* add_topk(Tensor* x, TopKOp op, int64_t k, int64_t axis, const std::string& name = "");
  Layer* add_softmax(Tensor* x, int64_t axis, bool log = false, const std::string& name = "");
  Layer* add_matrix_multiply(Tensor* a, bool transpose_a, Tensor* b, bool transpose_b,
                             const std::string& name = "");
  Layer* add_shuffle(Tensor* x, ShuffleParams p, const std::string& name = "");
  /// Shorthand for a shuffle that only reshapes.
  Layer* add_reshape(Tensor* x, const Shape& shape, const std::string& name = "");
  /// Shorthand for a shuffle that only transposes.
  Layer* add_transpose(Tensor* x, std::vector<int64_t> perm, const std::string& name = "");
  Layer* add_concatenation(std::vector<Tensor*> xs, int64_t axis, const std::string& name = "");
  Layer* add_slice(Tensor* x, Shape start, Shape size, std::vector<int64_t> stride,
                   const std::string& name = "");
  Layer* add_gather(Tensor* data, Tensor* indices, GatherParams p, const std::string& name = "");
  Layer* add_scatter(Tensor* data, Tensor* indices, Tensor* updates, ScatterParams p,
                     const std::string& name = "");
  Layer* add_select(Tensor* condition, Tensor* a, Tensor* b, const std::string& name = "");
  Layer* add_cast(Tensor* x, DataType to, const std::string& name = "");
  Layer* add_normalization(Tensor* x, Tensor* scale, Tensor* bias, NormalizationParams p,
                           const std::string& name = "");
  Layer* add_resize(Tensor* x, ResizeParams p, const std::string& name = "");
  Layer* add_padding(Tensor* x, PaddingParams p, const std::string& name = "");
  Layer* add_cumulative(Tensor* x, CumulativeParams p, const std::string& name = "");
  Layer* add_fill(FillParams p, const std::string& name = "");
  Layer* add_shape(Tensor* x, const std::string& name = "");
  Layer* add_identity(Tensor* x, const std::string& name = "");
  /// A Plugin layer (see plugin.h): the plugin of the registered creator `creator`, `version`,
  /// made from `attributes`, on `inputs`; its outputs are what the plugin infers. Throws Error
  /// naming the layer when no such creator is registered or the plugin rejects its inputs.
  Layer* add_plugin(std::vector<Tensor*> inputs, const std::string& creator,
                    const std::string& version, std::vector<uint8_t> attributes,
                    const std::string& name = "");
  /// Quantize x with `scale` (and `zero_point`, nullptr when symmetric): see QuantizeParams.
  Layer* add_quantize(Tensor* x, Tensor* scale, Tensor* zero_point, QuantizeParams p,
                      const std::string& name = "");
  /// Dequantize q with `scale` (and `zero_point`, nullptr when symmetric): see DequantizeParams.
  Layer* add_dequantize(Tensor* q, Tensor* scale, Tensor* zero_point, DequantizeParams p,
                        const std::string& name = "");

  /// Marks `t` as a network output and, when `name` is given, renames it.
  void mark_output(Tensor* t, const std::string& name = "");

  const std::vector<Tensor*>& inputs() const { return inputs_; }
  const std::vector<Tensor*>& outputs() const { return outputs_; }
  /// Layers in insertion (= topological) order.
  std::vector<Layer*> layers() const;
  std::vector<Tensor*> tensors() const;
  Tensor* find_tensor(const std::string& name) const;
  Layer* find_layer(const std::string& name) const;

  /// Deep copy (weights are shared, not copied).
  Network clone() const;

  // ---- Mutation used by builder passes ----
  /// Makes every consumer (and output mark) of `from` use `to` instead. dtypes and ranks must
  /// match. When `from` was an output, `to` takes its name. Layers are then re-sorted so that
  /// producers still precede consumers.
  void replace_all_uses(Tensor* from, Tensor* to);
  /// Removes a layer and its outputs; none of its outputs may still be used or be an output.
  void remove_layer(Layer* layer);
  /// Re-runs shape/type inference of every layer in order (after a pass changed things), and
  /// checks that each output keeps its dtype and rank.
  void reinfer();
  /// Layers that consume `t`.
  std::vector<Layer*> consumers(const Tensor* t) const;

 private:
  Tensor* new_tensor(std::string name, DataType dtype, Shape shape, Layer* producer);
  void check_owned(const Tensor* t, const std::string& where) const;
  void renumber();
  void sort_topologically();

  std::vector<std::unique_ptr<Tensor>> tensors_;
  std::vector<std::unique_ptr<Layer>> layers_;
  std::vector<Tensor*> inputs_;
  std::vector<Tensor*> outputs_;
  int64_t auto_name_counter_ = 0;
};

}  // namespace ember::engine
