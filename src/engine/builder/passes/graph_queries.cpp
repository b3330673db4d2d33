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
