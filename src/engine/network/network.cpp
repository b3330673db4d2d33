// Network definition: tensors, layers, and the inference that runs on every add_* call.
#include "ember/engine/network.h"

#include <algorithm>
#include <cctype>
#include <set>
#include <unordered_map>

#include "ember/engine/plugin.h"
#include "network/infer.h"

namespace ember::engine {

// ---------------------------------------------------------------- names

const char* layer_kind_name(LayerKind kind) {
  switch (kind) {
    case LayerKind::kConstant: return "Constant";
    case LayerKind::kConvolution: return "Convolution";
    case LayerKind::kDeconvolution: return "Deconvolution";
    case LayerKind::kPooling: return "Pooling";
    case LayerKind::kActivation: return "Activation";
    case LayerKind::kElementWise: return "ElementWise";
    case LayerKind::kUnary: return "Unary";
    case LayerKind::kReduce: return "Reduce";
    case LayerKind::kTopK: return "TopK";
    case LayerKind::kSoftMax: return "SoftMax";
    case LayerKind::kMatrixMultiply: return "MatrixMultiply";
    case LayerKind::kShuffle: return "Shuffle";
    case LayerKind::kConcatenation: return "Concatenation";
    case LayerKind::kSlice: return "Slice";
    case LayerKind::kGather: return "Gather";
    case LayerKind::kScatter: return "Scatter";
    case LayerKind::kSelect: return "Select";
    case LayerKind::kCast: return "Cast";
    case LayerKind::kNormalization: return "Normalization";
    case LayerKind::kResize: return "Resize";
    case LayerKind::kPadding: return "Padding";
    case LayerKind::kCumulative: return "Cumulative";
    case LayerKind::kFill: return "Fill";
    case LayerKind::kShape: return "Shape";
    case LayerKind::kIdentity: return "Identity";
    case LayerKind::kAttention: return "Attention";
    case LayerKind::kPlugin: return "Plugin";
    case LayerKind::kQuantize: return "Quantize";
    case LayerKind::kDequantize: return "Dequantize";
    case LayerKind::kQuantizedMatrixMultiply: return "QuantizedMatrixMultiply";
    case LayerKind::kQuantizedConvolution: return "QuantizedConvolution";
    case LayerKind::kFusedPointwise: return "FusedPointwise";
  }
  return "Invalid";
}

std::string Layer::describe() const {
  return std::string(layer_kind_name(kind())) + " '" + name_ + "'";
}

// ---------------------------------------------------------------- InferContext

const Tensor& InferContext::in(size_t i) const {
  if (!has(i)) throw Error("input " + std::to_string(i) + " is missing");
  return *inputs_[i];
}

void InferContext::require(bool cond, const std::string& message) {
  if (!cond) throw Error(message);
}

void InferContext::expect_num_inputs(size_t min, size_t max) const {
  require(inputs_.size() >= min && inputs_.size() <= max,
          "expects " + (min == max ? std::to_string(min)
                                   : std::to_string(min) + " to " + std::to_string(max)) +
              " inputs, got " + std::to_string(inputs_.size()));
  for (size_t i = 0; i < min; ++i) require(inputs_[i] != nullptr, "input " + std::to_string(i) + " is missing");
}

void InferContext::expect_float(size_t i, const std::string& role) const {
  require(dtype_is_float(dtype(i)), role + " (input " + std::to_string(i) +
                                        ") must be f32, f16 or bf16, got " + dtype_name(dtype(i)));
}

void InferContext::expect_dtype(size_t i, DataType t, const std::string& role) const {
  require(dtype(i) == t, role + " (input " + std::to_string(i) + ") must be " + dtype_name(t) +
                             ", got " + dtype_name(dtype(i)));
}

void InferContext::expect_same_dtype(size_t i, size_t j) const {
  require(dtype(i) == dtype(j), "inputs " + std::to_string(i) + " and " + std::to_string(j) +
                                    " must have one dtype, got " + dtype_name(dtype(i)) + " and " +
                                    dtype_name(dtype(j)) + " (insert a Cast layer)");
}

void InferContext::expect_rank(size_t i, int r, const std::string& role) const {
  require(rank(i) == r, role + " (input " + std::to_string(i) + ") must have rank " +
                            std::to_string(r) + ", got shape " + shape_to_string(shape(i)));
}

void InferContext::expect_rank_between(size_t i, int lo, int hi, const std::string& role) const {
  require(rank(i) >= lo && rank(i) <= hi,
          role + " (input " + std::to_string(i) + ") must have rank " + std::to_string(lo) +
              " to " + std::to_string(hi) + ", got shape " + shape_to_string(shape(i)));
}

void InferContext::expect_axis(int64_t axis, int rank, const std::string& what) {
  require(axis >= 0 && axis < rank, what + " " + std::to_string(axis) + " is out of range [0, " +
                                        std::to_string(rank) + ")");
}

void InferContext::check_equal(const DimExpr& a, const DimExpr& b, const std::string& what) {
  if (a == b) return;
  if (a.is_constant() && b.is_constant()) {
    throw Error(what + ": " + a.to_string() + " != " + b.to_string());
  }
  checks_.push_back({ShapeCheck::Kind::kEqual, a, b, what});
}

void InferContext::check_less_equal(const DimExpr& a, const DimExpr& b, const std::string& what) {
  if (a == b) return;
  if (a.is_constant() && b.is_constant()) {
    if (a.constant() <= b.constant()) return;
    throw Error(what + ": " + a.to_string() + " > " + b.to_string());
  }
  checks_.push_back({ShapeCheck::Kind::kLessEqual, a, b, what});
}

DimExpr InferContext::broadcast_dim(const DimExpr& a, const DimExpr& b, const std::string& what) {
  if (a == b) return a;
  if (a.is_constant() && a.constant() == 1) return b;
  if (b.is_constant() && b.constant() == 1) return a;
  if (a.is_constant() && b.is_constant()) {
    throw Error(what + ": dims " + a.to_string() + " and " + b.to_string() + " do not broadcast");
  }
  checks_.push_back({ShapeCheck::Kind::kBroadcastable, a, b, what});
  return max(a, b);
}

Shape InferContext::broadcast_shapes(const Shape& a, const Shape& b) {
  const size_t r = std::max(a.size(), b.size());
  Shape out(r);
  for (size_t i = 0; i < r; ++i) {
    const size_t ia = i + a.size(), ib = i + b.size();  // right-aligned positions + r
    const DimExpr da = ia >= r ? a[ia - r] : DimExpr(1);
    const DimExpr db = ib >= r ? b[ib - r] : DimExpr(1);
    out[i] = broadcast_dim(da, db, "broadcast of " + shape_to_string(a) + " and " +
                                       shape_to_string(b) + " at output dim " + std::to_string(i));
  }
  return out;
}

// ---------------------------------------------------------------- Network

Network::~Network() = default;

namespace {

bool valid_identifier(const std::string& s) {
  if (s.empty()) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return std::isprint(static_cast<unsigned char>(c)) != 0;
  });
}

/// FP8 tensors only come out of Quantize (or a layer norm's quantized output) and go into
/// Dequantize (or the fused low-precision products and convolutions); on the way they may be
/// moved (Shuffle, Identity) or be constants. Arithmetic on them would need E4M3 semantics in
/// every kernel, so every other layer refuses them here, in one place.
void check_f8_use(LayerKind kind, const std::vector<Tensor*>& inputs,
                  const std::vector<TensorDesc>& outputs) {
  if (kind == LayerKind::kConstant || kind == LayerKind::kQuantize ||
      kind == LayerKind::kDequantize || kind == LayerKind::kQuantizedMatrixMultiply ||
      kind == LayerKind::kQuantizedConvolution || kind == LayerKind::kShuffle ||
      kind == LayerKind::kIdentity) {
    return;
  }
  bool f8 = false;
  for (const Tensor* t : inputs) f8 = f8 || (t != nullptr && t->dtype() == DataType::kF8E4M3);
  // A Normalization's f8e4m3 output is its quantized output (its inference checks that).
  if (kind != LayerKind::kNormalization) {
    for (const TensorDesc& d : outputs) f8 = f8 || d.dtype == DataType::kF8E4M3;
  }
  if (f8) {
    throw Error("f8e4m3 tensors go only through Quantize, Dequantize, Shuffle and Identity "
                "(dequantize first)");
  }
}

}  // namespace

Tensor* Network::new_tensor(std::string name, DataType dtype, Shape shape, Layer* producer) {
  auto t = std::make_unique<Tensor>();
  t->name_ = std::move(name);
  t->dtype_ = dtype;
  t->shape_ = std::move(shape);
  t->producer_ = producer;
  t->id_ = static_cast<int>(tensors_.size());
  tensors_.push_back(std::move(t));
  return tensors_.back().get();
}

void Network::check_owned(const Tensor* t, const std::string& where) const {
  if (t == nullptr) throw Error(where + ": null tensor");
  if (t->id_ < 0 || static_cast<size_t>(t->id_) >= tensors_.size() ||
      tensors_[t->id_].get() != t) {
    throw Error(where + ": tensor '" + t->name_ + "' does not belong to this network (or was removed)");
  }
}

Tensor* Network::add_input(const std::string& name, DataType dtype, const Shape& shape) {
  const std::string where = "add_input '" + name + "'";
  if (!valid_identifier(name)) throw Error(where + ": input names must be non-empty and printable");
  if (find_tensor(name) != nullptr) throw Error(where + ": a tensor with this name already exists");
  for (size_t i = 0; i < shape.size(); ++i) {
    const DimExpr& d = shape[i];
    if (d.is_constant() ? d.constant() < 0 : !d.is_symbol()) {
      throw Error(where + ": dim " + std::to_string(i) + " is " + d.to_string() +
                  "; input dims must be constants >= 0 or plain symbols");
    }
  }
  Tensor* t = new_tensor(name, dtype, shape, nullptr);
  inputs_.push_back(t);
  return t;
}

Layer* Network::add_layer(LayerParams params, std::vector<Tensor*> inputs, const std::string& name) {
  auto layer = std::make_unique<Layer>();
  layer->params_ = std::move(params);
  const std::string kind = layer_kind_name(layer->kind());
  std::string lname = name;
  if (lname.empty()) {
    do {
      lname = kind + "_" + std::to_string(auto_name_counter_++);
    } while (find_layer(lname) != nullptr);
  } else if (find_layer(lname) != nullptr) {
    throw Error(kind + " '" + lname + "': a layer with this name already exists");
  }
  layer->name_ = lname;
  const std::string where = layer->describe();
  if (auto* plugin = std::get_if<PluginParams>(&layer->params_); plugin && !plugin->plugin) {
    // The instance comes from the process's plugin registry: a network (or a plan being read)
    // that names a creator this process lacks fails here, naming it.
    try {
      plugin->plugin = create_plugin(plugin->creator, plugin->version, plugin->attributes);
    } catch (const std::exception& e) {
      throw Error(where + ": " + e.what());
    }
  }
  std::vector<const Tensor*> cins;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (inputs[i] != nullptr) check_owned(inputs[i], where + " input " + std::to_string(i));
    cins.push_back(inputs[i]);
  }
  InferContext ctx(std::move(cins));
  try {
    check_f8_use(layer->kind(), inputs, {});  // before infer: its message says what to do
    infer_layer(layer->params_, ctx);
    check_f8_use(layer->kind(), {}, ctx.outputs());
  } catch (const Error& e) {
    throw Error(where + ": " + e.what());
  }
  layer->inputs_ = std::move(inputs);
  layer->checks_ = std::move(ctx.checks());
  Layer* raw = layer.get();
  layers_.push_back(std::move(layer));
  const auto& outs = ctx.outputs();
  for (size_t i = 0; i < outs.size(); ++i) {
    raw->outputs_.push_back(new_tensor(lname + ":" + std::to_string(i), outs[i].dtype, outs[i].shape, raw));
  }
  return raw;
}

Layer* Network::add_plugin(std::vector<Tensor*> inputs, const std::string& creator,
                           const std::string& version, std::vector<uint8_t> attributes,
                           const std::string& name) {
  PluginParams p;
  p.creator = creator;
  p.version = version;
  p.attributes = std::move(attributes);
  return add_layer(std::move(p), std::move(inputs), name);
}
Layer* Network::add_constant(Weights weights, const std::string& name) {
  return add_layer(ConstantParams{std::move(weights)}, {}, name);
}
Layer* Network::add_convolution(Tensor* x, Tensor* w, Tensor* bias, ConvolutionParams p,
                                const std::string& name) {
  std::vector<Tensor*> ins{x, w};
  if (bias != nullptr) ins.push_back(bias);
  return add_layer(std::move(p), std::move(ins), name);
}
Layer* Network::add_deconvolution(Tensor* x, Tensor* w, Tensor* bias, DeconvolutionParams p,
                                  const std::string& name) {
  std::vector<Tensor*> ins{x, w};
  if (bias != nullptr) ins.push_back(bias);
  return add_layer(std::move(p), std::move(ins), name);
}
Layer* Network::add_pooling(Tensor* x, PoolingParams p, const std::string& name) {
  return add_layer(std::move(p), {x}, name);
}
Layer* Network::add_activation(Tensor* x, ActivationType type, double alpha, double beta,
                               const std::string& name) {
  return add_layer(ActivationParams{type, alpha, beta}, {x}, name);
}
Layer* Network::add_elementwise(Tensor* a, Tensor* b, ElementWiseOp op, const std::string& name) {
  return add_layer(ElementWiseParams{op}, {a, b}, name);
}
Layer* Network::add_unary(Tensor* x, UnaryOp op, const std::string& name) {
  return add_layer(UnaryParams{op}, {x}, name);
}
Layer* Network::add_reduce(Tensor* x, ReduceOp op, std::vector<int64_t> axes, bool keep_dims,
                           const std::string& name) {
  return add_layer(ReduceParams{op, std::move(axes), keep_dims}, {x}, name);
}
Layer* Network::add_topk(Tensor* x, TopKOp op, int64_t k, int64_t axis, const std::string& name) {
  TopKParams p;
  p.op = op;
  p.k = k;
  p.axis = axis;
  return add_layer(p, {x}, name);
}
Layer* Network::add_softmax(Tensor* x, int64_t axis, bool log, const std::string& name) {
  return add_layer(SoftMaxParams{axis, log, false}, {x}, name);
}
Layer* Network::add_matrix_multiply(Tensor* a, bool transpose_a, Tensor* b, bool transpose_b,
                                    const std::string& name) {
  return add_layer(MatrixMultiplyParams{transpose_a, transpose_b, {}}, {a, b}, name);
}
Layer* Network::add_shuffle(Tensor* x, ShuffleParams p, const std::string& name) {
  return add_layer(std::move(p), {x}, name);
}
Layer* Network::add_reshape(Tensor* x, const Shape& shape, const std::string& name) {
  ShuffleParams p;
  p.has_reshape = true;
  p.reshape = shape;
  return add_shuffle(x, std::move(p), name);
}
Layer* Network::add_transpose(Tensor* x, std::vector<int64_t> perm, const std::string& name) {
  ShuffleParams p;
  p.first_transpose = std::move(perm);
  return add_shuffle(x, std::move(p), name);
}
Layer* Network::add_concatenation(std::vector<Tensor*> xs, int64_t axis, const std::string& name) {
  return add_layer(ConcatenationParams{axis}, std::move(xs), name);
}
Layer* Network::add_slice(Tensor* x, Shape start, Shape size, std::vector<int64_t> stride,
                          const std::string& name) {
  return add_layer(SliceParams{std::move(start), std::move(size), std::move(stride)}, {x}, name);
}
Layer* Network::add_gather(Tensor* data, Tensor* indices, GatherParams p, const std::string& name) {
  return add_layer(p, {data, indices}, name);
}
Layer* Network::add_scatter(Tensor* data, Tensor* indices, Tensor* updates, ScatterParams p,
                            const std::string& name) {
  return add_layer(p, {data, indices, updates}, name);
}
Layer* Network::add_select(Tensor* condition, Tensor* a, Tensor* b, const std::string& name) {
  return add_layer(SelectParams{}, {condition, a, b}, name);
}
Layer* Network::add_cast(Tensor* x, DataType to, const std::string& name) {
  return add_layer(CastParams{to}, {x}, name);
}
Layer* Network::add_normalization(Tensor* x, Tensor* scale, Tensor* bias, NormalizationParams p,
                                  const std::string& name) {
  return add_layer(p, {x, scale, bias}, name);
}
Layer* Network::add_resize(Tensor* x, ResizeParams p, const std::string& name) {
  return add_layer(std::move(p), {x}, name);
}
Layer* Network::add_padding(Tensor* x, PaddingParams p, const std::string& name) {
  return add_layer(std::move(p), {x}, name);
}
Layer* Network::add_cumulative(Tensor* x, CumulativeParams p, const std::string& name) {
  return add_layer(p, {x}, name);
}
Layer* Network::add_fill(FillParams p, const std::string& name) {
  return add_layer(std::move(p), {}, name);
}
Layer* Network::add_shape(Tensor* x, const std::string& name) {
  return add_layer(ShapeParams{}, {x}, name);
}
Layer* Network::add_identity(Tensor* x, const std::string& name) {
  return add_layer(IdentityParams{}, {x}, name);
}
Layer* Network::add_quantize(Tensor* x, Tensor* scale, Tensor* zero_point, QuantizeParams p,
                             const std::string& name) {
  return add_layer(p, {x, scale, zero_point}, name);
}
Layer* Network::add_dequantize(Tensor* q, Tensor* scale, Tensor* zero_point, DequantizeParams p,
                               const std::string& name) {
  return add_layer(p, {q, scale, zero_point}, name);
}

void Network::mark_output(Tensor* t, const std::string& name) {
  check_owned(t, "mark_output");
  if (!name.empty() && name != t->name_) {
    if (find_tensor(name) != nullptr) {
      throw Error("mark_output: cannot rename '" + t->name_ + "' to '" + name +
                  "': a tensor with that name already exists");
    }
    if (t->is_input()) {
      throw Error("mark_output: cannot rename network input '" + t->name_ + "'");
    }
    t->name_ = name;
  }
  if (t->is_output_) return;
  t->is_output_ = true;
  outputs_.push_back(t);
}

std::vector<Layer*> Network::layers() const {
  std::vector<Layer*> out;
  out.reserve(layers_.size());
  for (const auto& l : layers_) out.push_back(l.get());
  return out;
}

std::vector<Tensor*> Network::tensors() const {
  std::vector<Tensor*> out;
  out.reserve(tensors_.size());
  for (const auto& t : tensors_) out.push_back(t.get());
  return out;
}

Tensor* Network::find_tensor(const std::string& name) const {
  for (const auto& t : tensors_) {
    if (t->name_ == name) return t.get();
  }
  return nullptr;
}

Layer* Network::find_layer(const std::string& name) const {
  for (const auto& l : layers_) {
    if (l->name_ == name) return l.get();
  }
  return nullptr;
}

Network Network::clone() const {
  // Inputs first, then layer outputs in layer order: the canonical tensor order plans rely on.
  Network n;
  n.auto_name_counter_ = auto_name_counter_;
  std::unordered_map<const Tensor*, Tensor*> map;
  for (const Tensor* in : inputs_) map[in] = n.add_input(in->name_, in->dtype_, in->shape_);
  for (const auto& l : layers_) {
    auto copy = std::make_unique<Layer>();
    copy->name_ = l->name_;
    copy->params_ = l->params_;
    copy->checks_ = l->checks_;
    for (Tensor* in : l->inputs_) copy->inputs_.push_back(in == nullptr ? nullptr : map.at(in));
    Layer* raw = copy.get();
    n.layers_.push_back(std::move(copy));
    for (Tensor* out : l->outputs_) {
      Tensor* t = n.new_tensor(out->name_, out->dtype_, out->shape_, raw);
      raw->outputs_.push_back(t);
      map[out] = t;
    }
  }
  for (Tensor* out : outputs_) {
    Tensor* t = map.at(out);
    t->is_output_ = true;
    n.outputs_.push_back(t);
  }
  return n;
}

std::vector<Layer*> Network::consumers(const Tensor* t) const {
  std::vector<Layer*> out;
  for (const auto& l : layers_) {
    if (std::find(l->inputs_.begin(), l->inputs_.end(), t) != l->inputs_.end()) {
      out.push_back(l.get());
    }
  }
  return out;
}

void Network::replace_all_uses(Tensor* from, Tensor* to) {
  check_owned(from, "replace_all_uses");
  check_owned(to, "replace_all_uses");
  if (from == to) return;
  if (from->dtype_ != to->dtype_ || from->rank() != to->rank()) {
    throw Error("replace_all_uses: '" + from->name_ + "' and '" + to->name_ +
                "' differ in dtype or rank");
  }
  for (auto& l : layers_) {
    for (Tensor*& in : l->inputs_) {
      if (in == from) in = to;
    }
  }
  if (from->is_output_) {
    const auto it = std::find(outputs_.begin(), outputs_.end(), from);
    if (to->is_output_ || to->is_input()) {
      // `to` cannot carry two names: keep `from` alive as an identity of `to`.
      from->is_output_ = false;
      outputs_.erase(it);
      std::string name = from->name_;
      from->name_ += "#replaced";
      Layer* id = add_identity(to);
      id->outputs_[0]->name_ = name;
      id->outputs_[0]->is_output_ = true;
      outputs_.insert(outputs_.begin() + (it - outputs_.begin()), id->outputs_[0]);
      return;
    }
    std::swap(from->name_, to->name_);
    from->is_output_ = false;
    to->is_output_ = true;
    *it = to;
  }
  sort_topologically();
}

void Network::sort_topologically() {
  // Stable depth-first order: a layer is emitted after the producers of its inputs, otherwise
  // in its current position.
  std::vector<std::unique_ptr<Layer>> sorted;
  std::unordered_map<const Layer*, size_t> index;
  for (size_t i = 0; i < layers_.size(); ++i) index[layers_[i].get()] = i;
  std::vector<uint8_t> state(layers_.size(), 0);  // 0 new, 1 visiting, 2 done
  std::vector<std::pair<size_t, size_t>> stack;   // (layer, next input to look at)
  for (size_t root = 0; root < layers_.size(); ++root) {
    if (state[root] != 0) continue;
    stack.push_back({root, 0});
    state[root] = 1;
    while (!stack.empty()) {
      auto& [li, next] = stack.back();
      Layer* l = layers_[li].get();
      if (next < l->inputs_.size()) {
        Tensor* in = l->inputs_[next++];
        if (in == nullptr || in->producer_ == nullptr) continue;
        const size_t pi = index.at(in->producer_);
        if (state[pi] == 1) throw Error("network has a cycle through " + l->describe());
        if (state[pi] == 0) {
          state[pi] = 1;
          stack.push_back({pi, 0});
        }
        continue;
      }
      state[li] = 2;
      stack.pop_back();
      sorted.push_back(std::move(layers_[li]));
    }
  }
  layers_ = std::move(sorted);
}

void Network::remove_layer(Layer* layer) {
  const auto it = std::find_if(layers_.begin(), layers_.end(),
                               [&](const auto& l) { return l.get() == layer; });
  if (it == layers_.end()) throw Error("remove_layer: layer is not in this network");
  for (Tensor* out : layer->outputs_) {
    if (out->is_output_ || !consumers(out).empty()) {
      throw Error("remove_layer: " + layer->describe() + " output '" + out->name_ +
                  "' is still used");
    }
  }
  std::set<const Tensor*> dead(layer->outputs_.begin(), layer->outputs_.end());
  layers_.erase(it);
  tensors_.erase(std::remove_if(tensors_.begin(), tensors_.end(),
                                [&](const auto& t) { return dead.count(t.get()) != 0; }),
                 tensors_.end());
  renumber();
}

void Network::renumber() {
  for (size_t i = 0; i < tensors_.size(); ++i) tensors_[i]->id_ = static_cast<int>(i);
}

void Network::reinfer() {
  for (auto& l : layers_) {
    std::vector<const Tensor*> cins(l->inputs_.begin(), l->inputs_.end());
    InferContext ctx(std::move(cins));
    try {
      infer_layer(l->params_, ctx);
    } catch (const Error& e) {
      throw Error(l->describe() + ": " + e.what());
    }
    const auto& outs = ctx.outputs();
    if (outs.size() != l->outputs_.size()) {
      throw Error(l->describe() + ": output count changed during re-inference");
    }
    for (size_t i = 0; i < outs.size(); ++i) {
      Tensor* t = l->outputs_[i];
      if (outs[i].dtype != t->dtype_ || outs[i].shape.size() != t->shape_.size()) {
        throw Error(l->describe() + ": output " + std::to_string(i) +
                    " changed dtype or rank during re-inference");
      }
      t->shape_ = outs[i].shape;
    }
    l->checks_ = std::move(ctx.checks());
  }
}

}  // namespace ember::engine
