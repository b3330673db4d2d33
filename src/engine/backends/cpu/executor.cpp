#include "backends/cpu/executor.h"

#include <chrono>
#include <cstring>
#include <string>

#include "backends/cpu/profile.h"
#include "runtime/shapes.h"

namespace ember::engine::cpu {

namespace {

/// "MatrixMultiply 'fc1' [4,512]": a profile row names the layer and its output shape.
std::string profile_name(const Layer& l, const KernelArgs& args) {
  std::string s = l.describe() + " [";
  if (!args.outputs.empty()) {
    const std::vector<int64_t>& d = args.outputs[0]->dims;
    for (size_t i = 0; i < d.size(); ++i) s += (i ? "," : "") + std::to_string(d[i]);
  }
  return s + "]";
}

}  // namespace

void execute_layers(const Network& net, const std::vector<std::vector<int64_t>>& dims,
                    const std::vector<void*>& addrs, const SymbolBindings* symbols,
                    KernelCache* cache) {
  std::vector<HostTensor> views(dims.size());
  for (const Tensor* t : net.tensors()) {
    views[t->id()] = HostTensor{t->dtype(), dims[t->id()], addrs[t->id()]};
  }
  KernelArgs args;
  args.symbols = symbols;
  args.cache = cache;
  const bool profile = profiling_enabled();
  if (profile) profile_count_run();
  for (const Layer* l : net.layers()) {
    if (l->kind() == LayerKind::kConstant) {
      // Constants are read in place; only a constant that is also a network output is copied.
      const Weights& w = l->params_as<ConstantParams>().weights;
      void* dst = addrs[l->output()->id()];
      if (dst != w.data() && dst != nullptr) std::memcpy(dst, w.data(), w.nbytes());
      continue;
    }
    args.inputs.clear();
    args.outputs.clear();
    args.layer = l;
    for (const Tensor* in : l->inputs()) args.inputs.push_back(in ? &views[in->id()] : nullptr);
    for (const Tensor* out : l->outputs()) args.outputs.push_back(&views[out->id()]);
    try {
      if (profile) {
        const auto start = std::chrono::steady_clock::now();
        run_layer(l->params(), args);
        const std::chrono::duration<double, std::milli> ms = std::chrono::steady_clock::now() - start;
        profile_record(layer_kind_name(l->kind()), profile_name(*l, args), ms.count());
      } else {
        run_layer(l->params(), args);
      }
    } catch (const Error& e) {
      throw Error(l->describe() + ": " + e.what());
    }
  }
}

std::vector<OwnedTensor> execute_network(const Network& net, const std::vector<OwnedTensor>& inputs) {
  std::vector<std::vector<int64_t>> in_dims;
  for (const OwnedTensor& t : inputs) in_dims.push_back(t.dims);
  const SymbolBindings b = bind_input_shapes(net, in_dims);
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& t = *net.inputs()[i];
    if (inputs[i].dtype != t.dtype()) {
      throw Error("input '" + t.name() + "': expected " + dtype_name(t.dtype()) + ", got " +
                  dtype_name(inputs[i].dtype));
    }
    if (inputs[i].bytes.size() != static_cast<size_t>(dims_numel(inputs[i].dims)) * dtype_size(t.dtype())) {
      throw Error("input '" + t.name() + "': byte size does not match dims");
    }
  }
  const auto dims = evaluate_all_shapes(net, b);
  std::vector<std::vector<uint8_t>> storage(dims.size());
  std::vector<void*> addrs(dims.size(), nullptr);
  for (size_t i = 0; i < inputs.size(); ++i) {
    addrs[net.inputs()[i]->id()] = const_cast<uint8_t*>(inputs[i].bytes.data());
  }
  for (const Layer* l : net.layers()) {
    for (const Tensor* t : l->outputs()) {
      if (l->kind() == LayerKind::kConstant) {
        addrs[t->id()] = const_cast<void*>(l->params_as<ConstantParams>().weights.data());
        continue;
      }
      storage[t->id()].resize(static_cast<size_t>(dims_numel(dims[t->id()])) * dtype_size(t->dtype()));
      addrs[t->id()] = storage[t->id()].data();
    }
  }
  execute_layers(net, dims, addrs, &b);
  std::vector<OwnedTensor> outs;
  for (const Tensor* t : net.outputs()) {
    OwnedTensor o;
    o.dtype = t->dtype();
    o.dims = dims[t->id()];
    const size_t n = static_cast<size_t>(dims_numel(o.dims)) * dtype_size(o.dtype);
    const auto* p = static_cast<const uint8_t*>(addrs[t->id()]);
    o.bytes.assign(p, p + n);
    outs.push_back(std::move(o));
  }
  return outs;
}

}  // namespace ember::engine::cpu
