// Small questions the rewriting passes ask about the graph (declared in passes.h).
#include <cstdlib>
#include <cstring>

#include "backends/cpu/kernels.h"
#include "builder/passes/passes.h"

namespace ember::engine {

std::vector<float> to_floats(const Weights& w) {
  std::vector<float> v(static_cast<size_t>(w.numel()));
  for (int64_t i = 0; i < w.numel(); ++i) v[i] = cpu::load_float(w.dtype(), w.data(), i);
  return v;
}

Weights from_floats(DataType dtype, std::vector<int64_t> dims, const std::vector<float>& v) {
  Weights w = Weights::zeros(dtype, std::move(dims));
  auto* out = const_cast<void*>(w.data());  // freshly allocated, not shared yet
  for (size_t i = 0; i < v.size(); ++i) cpu::store_float(dtype, out, static_cast<int64_t>(i), v[i]);
  return w;
}

/// Concatenates rank-2 weights along the product's N axis (rows when transpose_b: [N, K]).
Weights concat_product_weights(const std::vector<const Weights*>& ws, bool transpose_b) {
  const DataType dt = ws[0]->dtype();
  const size_t elem = dtype_size(dt);
  const int64_t k = transpose_b ? ws[0]->dims()[1] : ws[0]->dims()[0];
  int64_t n = 0;
  for (const Weights* w : ws) n += transpose_b ? w->dims()[0] : w->dims()[1];
  std::vector<uint8_t> bytes;
  bytes.reserve(static_cast<size_t>(n * k) * elem);
  if (transpose_b) {  // [N_i, K] blocks one after another
    for (const Weights* w : ws) {
      const auto* b = static_cast<const uint8_t*>(w->data());
      bytes.insert(bytes.end(), b, b + w->nbytes());
    }
    return Weights::copy(dt, {n, k}, bytes.data());
  }
  for (int64_t row = 0; row < k; ++row) {  // [K, N_i] side by side
    for (const Weights* w : ws) {
      const size_t row_bytes = static_cast<size_t>(w->dims()[1]) * elem;
      const auto* b = static_cast<const uint8_t*>(w->data()) + static_cast<size_t>(row) * row_bytes;
      bytes.insert(bytes.end(), b, b + row_bytes);
    }
  }
  return Weights::copy(dt, {k, n}, bytes.data());
}

bool same_epilogue(const Epilogue& a, const Epilogue& b) {
  return a.scale == b.scale && a.fused_activation == b.fused_activation &&
         (!a.fused_activation ||
          (a.activation == b.activation && a.alpha == b.alpha && a.beta == b.beta));
}

Tensor* concat_biases(Network& net, const std::vector<const Weights*>& biases,
                      const std::vector<int64_t>& widths, const std::string& name) {
  const Weights* any = nullptr;
  for (const Weights* b : biases) any = b != nullptr ? b : any;
  if (any == nullptr) return nullptr;
  const size_t elem = dtype_size(any->dtype());
  std::vector<uint8_t> bytes;
  int64_t n = 0;
  for (size_t i = 0; i < biases.size(); ++i) {
    if (const Weights* b = biases[i]) {
      const auto* d = static_cast<const uint8_t*>(b->data());
      bytes.insert(bytes.end(), d, d + b->nbytes());
    } else {
      bytes.insert(bytes.end(), static_cast<size_t>(widths[i]) * elem, uint8_t{0});  // +0.0
    }
    n += widths[i];
  }
  return net.add_constant(Weights::copy(any->dtype(), {n}, bytes.data()),
                          unique_layer_name(net, name))
      ->output();
}

Tensor* rows_of_heads(Network& net, Tensor* y, int64_t e) {
  Shape shape = y->shape();
  shape.back() = DimExpr(shape.back().constant() / e);
  shape.push_back(DimExpr(e));
  for (Layer* c : net.consumers(y)) {
    if (is_pure_reshape(c) && c->output()->shape() == shape) return c->output();
  }
  return net.add_reshape(y, shape, unique_layer_name(net, y->name() + "/rows"))->output();
}

bool switched_off_by_env(const char* name) {
  const char* env = std::getenv(name);
  return env != nullptr && std::strcmp(env, "0") == 0;
}

bool fuse_pointwise_enabled(const BuilderConfig& config) {
  return config.fuse_pointwise && config.optimization_level >= 2 &&
         !switched_off_by_env("EMBER_FUSE_POINTWISE");
}

Layer* sole_consumer(const Network& net, const Tensor* t) {
  if (t->is_output()) return nullptr;
  const auto users = net.consumers(t);
  if (users.size() != 1) return nullptr;
  // A consumer reading t twice (x + x) is not a pattern here.
  int reads = 0;
  for (const Tensor* in : users[0]->inputs()) reads += in == t ? 1 : 0;
  return reads == 1 ? users[0] : nullptr;
}

std::string unique_layer_name(const Network& net, std::string base) {
  while (net.find_layer(base) != nullptr) base += "'";
  return base;
}

const Weights* constant_of(const Tensor* t) {
  if (t == nullptr || t->producer() == nullptr ||
      t->producer()->kind() != LayerKind::kConstant) {
    return nullptr;
  }
  return &t->producer()->params_as<ConstantParams>().weights;
}

namespace {

bool identity(const std::vector<int64_t>& perm) {
  for (size_t i = 0; i < perm.size(); ++i) {
    if (perm[i] != static_cast<int64_t>(i)) return false;
  }
  return true;
}

}  // namespace

bool is_pure_reshape(const Layer* l) {
  if (l == nullptr || l->kind() != LayerKind::kShuffle) return false;
  const auto& p = l->params_as<ShuffleParams>();
  return identity(p.first_transpose) && identity(p.second_transpose);
}

bool is_pure_transpose(const Layer* l, const std::vector<int64_t>& perm) {
  if (l == nullptr || l->kind() != LayerKind::kShuffle) return false;
  const auto& p = l->params_as<ShuffleParams>();
  return p.first_transpose == perm && !p.has_reshape && identity(p.second_transpose);
}

}  // namespace ember::engine
