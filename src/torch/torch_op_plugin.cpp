// The plugin creator for PyTorch custom ops ("ember::torch_op", version "1"): a custom op that
// ember.dynamo.plugin(op) (or the custom_ops_as_plugins setting) put into an engine runs as a
// Plugin layer that calls the op's own kernel, through PyTorch's dispatcher, on the engine's
// buffers (wrapped with from_blob, no copies in), on the engine's stream. So custom kernels stay
// inside engines instead of splitting the graph.
//
// Attributes (written by python/ember/plugins.py, one item per line):
//   ember-torch-op 1
//   op <schema name> <overload name, "" for the default>
//   arg <kind> <value>      one per schema argument, in order:
//                           t <input index> | tl <indices, comma-separated> | i <int> | f <double>
//                           | b <0|1> | n (None) | s <string, \n and \\ escaped>
//                           | il <ints> | fl <doubles> | bl <0|1s> | dt <ScalarType number>
//   out <engine dtype> <shape text>   one per op output, from the IR (the fake implementation)
//   graphs <0|1>            whether the kernel may be captured into a CUDA graph
// The op's outputs are copied into the engine's output buffers (casting when the engine keeps a
// narrower dtype, as it does for f64).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/ScalarType.h>

#ifdef EMBER_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "ember/engine/plugin.h"

namespace ember::torch_bridge {

namespace {

using engine::DataType;
using engine::Error;
using engine::Plugin;
using engine::PluginCreator;
using engine::PluginRunContext;
using engine::PluginTensor;
using engine::PluginTensorDesc;

constexpr const char* kCreatorName = "ember::torch_op";
constexpr const char* kCreatorVersion = "1";

c10::ScalarType torch_dtype(DataType t) {
  switch (t) {
    case DataType::kF32: return c10::ScalarType::Float;
    case DataType::kF16: return c10::ScalarType::Half;
    case DataType::kBF16: return c10::ScalarType::BFloat16;
    case DataType::kI8: return c10::ScalarType::Char;
    case DataType::kU8: return c10::ScalarType::Byte;
    case DataType::kI32: return c10::ScalarType::Int;
    case DataType::kI64: return c10::ScalarType::Long;
    case DataType::kBool: return c10::ScalarType::Bool;
    case DataType::kF8E4M3: return c10::ScalarType::Float8_e4m3fn;
  }
  return c10::ScalarType::Float;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  if (s.empty()) return out;
  size_t start = 0;
  for (size_t i = 0; i <= s.size(); ++i) {
    if (i == s.size() || s[i] == sep) {
      out.push_back(s.substr(start, i - start));
      start = i + 1;
    }
  }
  return out;
}

int64_t to_int(const std::string& s, const std::string& what) {
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || end == nullptr || *end != '\0') throw Error(what + ": '" + s + "' is not an integer");
  return v;
}

double to_double(const std::string& s, const std::string& what) {
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || end == nullptr || *end != '\0') throw Error(what + ": '" + s + "' is not a number");
  return v;
}

std::string unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      out += s[i + 1] == 'n' ? '\n' : s[i + 1];
      ++i;
    } else {
      out += s[i];
    }
  }
  return out;
}

// One schema argument of the call: a tensor input (or a list of them) by engine-input index, or
// a constant value.
struct Arg {
  enum class Kind { kTensor, kTensorList, kValue } kind = Kind::kValue;
  std::vector<int64_t> inputs;
  c10::IValue value;
};

class TorchOpPlugin final : public Plugin {
 public:
  explicit TorchOpPlugin(const std::vector<uint8_t>& attributes) {
    const std::string text(attributes.begin(), attributes.end());
    const std::vector<std::string> lines = split(text, '\n');
    if (lines.empty() || lines[0] != "ember-torch-op 1") {
      throw Error("not ember-torch-op version 1 attributes");
    }
    bool have_op = false;
    for (size_t i = 1; i < lines.size(); ++i) {
      const std::string& line = lines[i];
      if (line.empty()) continue;
      const size_t sp = line.find(' ');
      const std::string key = line.substr(0, sp);
      const std::string rest = sp == std::string::npos ? "" : line.substr(sp + 1);
      const std::string what = "attribute line " + std::to_string(i) + " (" + key + ")";
      if (key == "op") {
        const size_t sp2 = rest.find(' ');
        name_ = rest.substr(0, sp2);
        overload_ = sp2 == std::string::npos ? "" : rest.substr(sp2 + 1);
        have_op = true;
      } else if (key == "arg") {
        args_.push_back(parse_arg(rest, what));
      } else if (key == "out") {
        const size_t sp2 = rest.find(' ');
        const auto dtype = engine::dtype_from_name(rest.substr(0, sp2));
        if (!dtype || sp2 == std::string::npos) throw Error(what + ": expected '<dtype> <shape>'");
        outs_.push_back({*dtype, parse_shape(rest.substr(sp2 + 1), what)});
      } else if (key == "graphs") {
        graphs_ = rest == "1";
      } else {
        throw Error(what + ": unknown key");
      }
    }
    if (!have_op || outs_.empty()) throw Error("the attributes name no op or no outputs");
    for (const Arg& a : args_) {
      for (int64_t k : a.inputs) num_inputs_ = std::max<int64_t>(num_inputs_, k + 1);
    }
    // The op must exist in this process: a plan loaded where the op's module was not imported
    // fails here, at load, rather than at the first call.
    auto handle = c10::Dispatcher::singleton().findSchema({name_, overload_});
    if (!handle) {
      throw Error("the PyTorch op " + display() +
                  " is not registered in this process. Define it before loading the engine "
                  "(import the module that registers it with torch.library, or load its library "
                  "with torch.ops.load_library), then call ember.dynamo.plugin(torch.ops." +
                  python_name() + ")");
    }
    op_ = *handle;
    if (op_->schema().arguments().size() != args_.size()) {
      throw Error("the PyTorch op " + display() + " takes " +
                  std::to_string(op_->schema().arguments().size()) +
                  " arguments in this process, but the engine was built for " +
                  std::to_string(args_.size()) + " (another version of the op?)");
    }
  }

  std::vector<PluginTensorDesc> infer_outputs(
      const std::vector<PluginTensorDesc>& inputs) const override {
    if (static_cast<int64_t>(inputs.size()) != num_inputs_) {
      throw Error(display() + " takes " + std::to_string(num_inputs_) + " tensor inputs, got " +
                  std::to_string(inputs.size()));
    }
    return outs_;
  }

  bool supports_backend(const std::string& backend) const override {
    return backend == "cpu" || backend == "cuda";
  }

  bool supports_cuda_graphs() const override { return graphs_; }

  void enqueue(const std::vector<PluginTensor>& inputs, const std::vector<PluginTensor>& outputs,
               const PluginRunContext& ctx) const override {
    at::NoGradGuard no_grad;
    c10::Device device(c10::kCPU);
#ifdef EMBER_WITH_CUDA
    std::optional<c10::cuda::CUDAStreamGuard> stream_guard;
    if (ctx.backend == "cuda") {
      int index = 0;
      cudaGetDevice(&index);
      device = c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
      // The op's kernel launches on PyTorch's current stream: make it the engine's.
      stream_guard.emplace(c10::cuda::getStreamFromExternal(
          static_cast<cudaStream_t>(ctx.stream), device.index()));
    }
#endif
    auto wrap = [&](const PluginTensor& t) {
      return at::from_blob(t.data, t.dims, at::TensorOptions().dtype(torch_dtype(t.dtype)).device(device));
    };
    torch::jit::Stack stack;
    for (const Arg& a : args_) {
      switch (a.kind) {
        case Arg::Kind::kTensor: stack.emplace_back(wrap(inputs.at(a.inputs[0]))); break;
        case Arg::Kind::kTensorList: {
          std::vector<at::Tensor> list;
          for (int64_t k : a.inputs) list.push_back(wrap(inputs.at(k)));
          stack.emplace_back(std::move(list));
          break;
        }
        case Arg::Kind::kValue: stack.push_back(a.value); break;
      }
    }
#ifdef EMBER_WITH_CUDA
    // Inside a CUDA-graph capture, what the kernel allocates comes from a private pool that
    // outlives the graph (as torch.cuda.graph does), so a replay never writes to memory the
    // caching allocator has handed to someone else.
    const bool pooled = ctx.capturing && ctx.backend == "cuda";
    if (pooled) {
      auto stream = static_cast<cudaStream_t>(ctx.stream);
      c10::cuda::CUDACachingAllocator::beginAllocateToPool(
          device.index(), pool_id(), [stream](cudaStream_t s) { return s == stream; });
    }
    try {
      op_->callBoxed(stack);
    } catch (...) {
      if (pooled) c10::cuda::CUDACachingAllocator::endAllocateToPool(device.index(), pool_id());
      throw;
    }
    if (pooled) c10::cuda::CUDACachingAllocator::endAllocateToPool(device.index(), pool_id());
#else
    op_->callBoxed(stack);
#endif
    std::vector<at::Tensor> results;
    for (const c10::IValue& v : stack) {
      if (v.isTensor()) {
        results.push_back(v.toTensor());
      } else if (v.isTensorList()) {
        for (const at::Tensor& t : v.toTensorVector()) results.push_back(t);
      }
    }
    if (results.size() != outputs.size()) {
      throw Error(display() + " returned " + std::to_string(results.size()) +
                  " tensors; the engine expects " + std::to_string(outputs.size()));
    }
    for (size_t i = 0; i < outputs.size(); ++i) {
      at::Tensor out = wrap(outputs[i]);
      if (results[i].sizes() != out.sizes()) {
        throw Error(display() + " output " + std::to_string(i) + " has shape " +
                    c10::str(results[i].sizes()) + ", but its fake implementation said " +
                    c10::str(out.sizes()) + " (fix the op's register_fake)");
      }
      out.copy_(results[i]);
    }
  }

 private:
  std::string display() const {
    return "'" + name_ + (overload_.empty() ? ".default" : "." + overload_) + "'";
  }
  std::string python_name() const {
    std::string n = name_;
    const size_t p = n.find("::");
    if (p != std::string::npos) n.replace(p, 2, ".");
    return n + "." + (overload_.empty() ? "default" : overload_);
  }

#ifdef EMBER_WITH_CUDA
  // One pool per plugin instance, never released while the instance lives: graphs captured with
  // it point into it.
  c10::cuda::MempoolId_t pool_id() const {
    std::call_once(pool_once_, [this] {
      static std::atomic<uint64_t> next{1};
      // The second half is nonzero so the pool never collides with torch.cuda.graph's ids
      // (user-created pools count in the first half, graph pools in the second, both from 1).
      pool_ = {0, (uint64_t{1} << 62) + next++};
    });
    return pool_;
  }
  mutable std::once_flag pool_once_;
  mutable c10::cuda::MempoolId_t pool_{0, 0};
#endif

  static Arg parse_arg(const std::string& rest, const std::string& what) {
    const size_t sp = rest.find(' ');
    const std::string kind = rest.substr(0, sp);
    const std::string v = sp == std::string::npos ? "" : rest.substr(sp + 1);
    Arg a;
    if (kind == "t") {
      a.kind = Arg::Kind::kTensor;
      a.inputs.push_back(to_int(v, what));
    } else if (kind == "tl") {
      a.kind = Arg::Kind::kTensorList;
      for (const auto& s : split(v, ',')) a.inputs.push_back(to_int(s, what));
    } else if (kind == "i") {
      a.value = to_int(v, what);
    } else if (kind == "f") {
      a.value = to_double(v, what);
    } else if (kind == "b") {
      a.value = v == "1";
    } else if (kind == "n") {
      a.value = c10::IValue();
    } else if (kind == "s") {
      a.value = unescape(v);
    } else if (kind == "il") {
      std::vector<int64_t> l;
      for (const auto& s : split(v, ',')) l.push_back(to_int(s, what));
      a.value = l;
    } else if (kind == "fl") {
      std::vector<double> l;
      for (const auto& s : split(v, ',')) l.push_back(to_double(s, what));
      a.value = l;
    } else if (kind == "bl") {
      c10::List<bool> l;
      for (const auto& s : split(v, ',')) l.push_back(s == "1");
      a.value = l;
    } else if (kind == "dt") {
      a.value = to_int(v, what);  // a ScalarType travels as its number, as in TorchScript
    } else {
      throw Error(what + ": unknown argument kind '" + kind + "'");
    }
    for (int64_t k : a.inputs) {
      if (k < 0 || k > 4096) throw Error(what + ": input index " + std::to_string(k) + " out of range");
    }
    return a;
  }

  static engine::Shape parse_shape(const std::string& text, const std::string& what) {
    if (text.size() < 2 || text.front() != '[' || text.back() != ']') {
      throw Error(what + ": shape '" + text + "' must be written [d0, d1, ...]");
    }
    engine::Shape shape;
    const std::string body = text.substr(1, text.size() - 2);
    int depth = 0;
    size_t start = 0;
    for (size_t i = 0; i <= body.size(); ++i) {
      if (i < body.size() && body[i] == '(') ++depth;
      if (i < body.size() && body[i] == ')') --depth;
      if (i == body.size() || (body[i] == ',' && depth == 0)) {
        const std::string dim = body.substr(start, i - start);
        if (dim.find_first_not_of(' ') != std::string::npos) shape.push_back(engine::DimExpr::parse(dim));
        start = i + 1;
      }
    }
    return shape;
  }

  std::string name_;
  std::string overload_;
  std::vector<Arg> args_;
  std::vector<PluginTensorDesc> outs_;
  int64_t num_inputs_ = 0;
  bool graphs_ = false;
  std::optional<c10::OperatorHandle> op_;
};

class TorchOpCreator final : public PluginCreator {
 public:
  std::string name() const override { return kCreatorName; }
  std::string version() const override { return kCreatorVersion; }
  std::shared_ptr<const Plugin> create(const std::vector<uint8_t>& attributes) const override {
    return std::make_shared<TorchOpPlugin>(attributes);
  }
};

EMBER_REGISTER_PLUGIN(TorchOpCreator);

}  // namespace

}  // namespace ember::torch_bridge
