// torch.classes.ember.Engine and torch.ops.ember.execute_engine (see docs/torch_bridge.md).
#include "engine_class.h"

#include <algorithm>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>

#ifdef EMBER_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <utility>

namespace ember::bridge {

namespace {

// Error messages are built with std::string, not TORCH_CHECK's c10::str (std::ostringstream):
// inside a library built with GCC 13 and loaded into a PyTorch process on Ubuntu 24.04 (the GPU
// machine), inline iostream code crashed (the cause: runtime/iostreams_check.h; fixed in the
// link since, and this needs no locale either way). std::runtime_error reaches Python as
// RuntimeError.
std::string text(const std::string& v) { return v; }
std::string text(const char* v) { return v; }
std::string text(const c10::Device& d) { return d.str(); }
template <class T, class = std::enable_if_t<std::is_arithmetic_v<T>>>
std::string text(T v) { return std::to_string(v); }

template <class... Args>
[[noreturn]] void fail(const Args&... args) {
  std::string msg;
  ((msg += text(args)), ...);
  throw std::runtime_error(msg);
}

#define EMBER_CHECK(cond, ...) \
  do {                         \
    if (!(cond)) fail(__VA_ARGS__); \
  } while (0)

// The compiler's ScalarType names (engine_state.h) as PyTorch dtypes.
c10::ScalarType torch_scalar_type(const std::string& name) {
  if (name == "f32") return c10::ScalarType::Float;
  if (name == "f16") return c10::ScalarType::Half;
  if (name == "bf16") return c10::ScalarType::BFloat16;
  if (name == "i8") return c10::ScalarType::Char;
  if (name == "u8") return c10::ScalarType::Byte;
  if (name == "i32") return c10::ScalarType::Int;
  if (name == "i64") return c10::ScalarType::Long;
  if (name == "bool") return c10::ScalarType::Bool;
  if (name == "f64") return c10::ScalarType::Double;
  if (name == "i16") return c10::ScalarType::Short;
  // engine_state_load has validated the names already.
  fail("ember.Engine: unknown torch_dtype '", name, "'");
}

c10::ScalarType engine_scalar_type(engine::DataType t) {
  switch (t) {
    case engine::DataType::kF32: return c10::ScalarType::Float;
    case engine::DataType::kF16: return c10::ScalarType::Half;
    case engine::DataType::kBF16: return c10::ScalarType::BFloat16;
    case engine::DataType::kI8: return c10::ScalarType::Char;
    case engine::DataType::kU8: return c10::ScalarType::Byte;
    case engine::DataType::kI32: return c10::ScalarType::Int;
    case engine::DataType::kI64: return c10::ScalarType::Long;
    case engine::DataType::kBool: return c10::ScalarType::Bool;
    case engine::DataType::kF8E4M3: return c10::ScalarType::Float8_e4m3fn;
  }
  fail("ember.Engine: invalid engine dtype ", static_cast<int>(t));
}

// How Python prints the dtype ("torch.float32"), for messages read by Python users.
std::string python_dtype_name(c10::ScalarType t) {
  switch (t) {
    case c10::ScalarType::Float: return "torch.float32";
    case c10::ScalarType::Double: return "torch.float64";
    case c10::ScalarType::Half: return "torch.float16";
    case c10::ScalarType::BFloat16: return "torch.bfloat16";
    case c10::ScalarType::Char: return "torch.int8";
    case c10::ScalarType::Byte: return "torch.uint8";
    case c10::ScalarType::Short: return "torch.int16";
    case c10::ScalarType::Int: return "torch.int32";
    case c10::ScalarType::Long: return "torch.int64";
    case c10::ScalarType::Bool: return "torch.bool";
    default: return std::string("torch.") + c10::toString(t);
  }
}

std::string names_list(const std::vector<BridgeIO>& list) {
  std::string s;
  for (const auto& io : list) s += (s.empty() ? "'" : ", '") + io.name + "'";
  return "[" + s + "]";
}

#ifdef EMBER_WITH_CUDA
/// Engine weights, activation arenas and library workspaces come from PyTorch's caching
/// allocator (on the current device and stream, which execute() sets to the inputs' device and
/// PyTorch's current stream), so they count in torch.cuda.memory_allocated() and go back to
/// PyTorch's pool with their context. Ember synchronizes a block's stream before freeing it.
class TorchDeviceAllocator final : public engine::DeviceAllocator {
 public:
  void* allocate(size_t bytes) override {
    return c10::cuda::CUDACachingAllocator::raw_alloc(bytes);
  }
  void deallocate(void* ptr) noexcept override {
    try {
      c10::cuda::CUDACachingAllocator::raw_delete(ptr);
    } catch (...) {  // raw_delete of a pointer it gave out does not throw; destructors must not
    }
  }
};

std::shared_ptr<engine::DeviceAllocator> device_allocator() {
  static const auto allocator = std::make_shared<TorchDeviceAllocator>();
  return allocator;
}
#else
std::shared_ptr<engine::DeviceAllocator> device_allocator() { return nullptr; }
#endif

}  // namespace

TorchEngine::TorchEngine(std::vector<std::string> state) {
  try {
    loaded_ = engine_state_load(std::move(state), device_allocator());
  } catch (const std::exception& e) {
    fail(e.what());
  }
  init_from_loaded();
}

TorchEngine::TorchEngine(const uint8_t* plan, size_t size, std::string metadata_json) {
  try {
    loaded_ = engine_plan_load(plan, size, std::move(metadata_json), device_allocator());
  } catch (const std::exception& e) {
    fail(e.what());
  }
  init_from_loaded();
}

void TorchEngine::init_from_loaded() {
  for (const auto& io : loaded_.metadata.inputs) {
    input_torch_types_.push_back(torch_scalar_type(io.torch_dtype));
    input_engine_types_.push_back(engine_scalar_type(io.engine_dtype));
  }
  for (const auto& io : loaded_.metadata.outputs) {
    output_torch_types_.push_back(torch_scalar_type(io.torch_dtype));
    output_engine_types_.push_back(engine_scalar_type(io.engine_dtype));
  }
  const std::string& backend = loaded_.engine->backend();
  bound_device_.store(loaded_.metadata.device_index);
#ifdef EMBER_WITH_CUDA
  EMBER_CHECK(backend == "cpu" || backend == "cuda", "ember.Engine: unknown back end '", backend, "'");
  device_type_ = backend == "cuda" ? c10::DeviceType::CUDA : c10::DeviceType::CPU;
#else
  EMBER_CHECK(backend == "cpu", "ember.Engine: back end '", backend,
              "' plans cannot run through this build of libember_torch (built without CUDA); "
              "build the engine for backend 'cpu'");
  device_type_ = c10::DeviceType::CPU;
#endif
}

std::unique_ptr<engine::ExecutionContext> TorchEngine::acquire_context(const PoolKey& key) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = idle_contexts_.find(key);
    if (it != idle_contexts_.end() && !it->second.empty()) {
      auto ctx = std::move(it->second.back());
      it->second.pop_back();
      --idle_count_;
      return ctx;
    }
  }
  auto ctx = loaded_.engine->create_execution_context();
  ctx->set_cuda_graphs(loaded_.metadata.cuda_graphs);
  return ctx;
}

void TorchEngine::retire_stats(const engine::ExecutionContext& ctx) {
  const auto st = ctx.cuda_graph_stats();
  retired_[0] += st.replays;
  retired_[1] += st.captures;
  retired_[2] += st.disabled ? 1 : 0;
  retired_[3] += st.staged_replays;
}

std::vector<int64_t> TorchEngine::cuda_graph_stats() {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<int64_t> total = retired_;
  for (const auto& [key, contexts] : idle_contexts_) {
    for (const auto& ctx : contexts) {
      const auto st = ctx->cuda_graph_stats();
      total[0] += st.replays;
      total[1] += st.captures;
      total[2] += st.disabled ? 1 : 0;
      total[3] += st.staged_replays;
    }
  }
  return total;
}

std::string TorchEngine::cuda_graph_disabled_reasons() {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<std::string> reasons = reasons_;
  for (const auto& [key, contexts] : idle_contexts_) {
    for (const auto& ctx : contexts) {
      const std::string r = ctx->cuda_graph_stats().reason;
      if (!r.empty() && std::find(reasons.begin(), reasons.end(), r) == reasons.end()) {
        reasons.push_back(r);
      }
    }
  }
  std::string out;
  for (const auto& r : reasons) out += (out.empty() ? "" : "\n") + r;
  return out;
}

int64_t TorchEngine::pooled_contexts() {
  std::lock_guard<std::mutex> lock(mutex_);
  return static_cast<int64_t>(idle_count_);
}

void TorchEngine::release_context(const PoolKey& key,
                                  std::unique_ptr<engine::ExecutionContext> ctx) {
  std::unique_ptr<engine::ExecutionContext> surplus;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto& idle = idle_contexts_[key];
    if (idle.size() < kMaxIdlePerStream && idle_count_ < kMaxIdle) {
      idle.push_back(std::move(ctx));
      ++idle_count_;
      return;
    }
    retire_stats(*ctx);
    const std::string r = ctx->cuda_graph_stats().reason;
    if (!r.empty() && std::find(reasons_.begin(), reasons_.end(), r) == reasons_.end()) {
      reasons_.push_back(r);
    }
    surplus = std::move(ctx);
  }
  // Freed outside the lock: a cuda context synchronizes its stream before its memory goes.
  surplus.reset();
}

namespace {

/// A run that was correct but slower than it should be: in Python, the "ember" logger
/// (ember._C installs the warning sink); in a C++ program, c10's warning (stderr unless the
/// program installs a c10::WarningHandler).
void report_slowdown(const std::string& message) {
  if (!engine::emit_warning(message)) {
    c10::warn(c10::Warning(c10::UserWarning(), {__func__, __FILE__, static_cast<uint32_t>(__LINE__)},
                           "ember: " + message, /*verbatim=*/true));
  }
}

}  // namespace

std::vector<at::Tensor> TorchEngine::execute(const std::vector<at::Tensor>& inputs) {
  const EngineMetadata& meta = loaded_.metadata;
  EMBER_CHECK(inputs.size() == meta.inputs.size(), "ember::execute_engine: the engine takes ",
              meta.inputs.size(), " input(s) ", names_list(meta.inputs), ", got ", inputs.size());

  // A cuda engine is bound to one GPU: the one its metadata names, or the one of its first run.
  // Its weights and contexts live there, so every input must be there too.
  int64_t device_index = -1;
  if (device_type_ == c10::DeviceType::CUDA) {
    device_index = bound_device_.load();
    if (device_index < 0) {
      int64_t first = -1;
      for (const at::Tensor& x : inputs) {
        if (x.defined() && x.device().is_cuda()) {
          first = x.device().index();
          break;
        }
      }
#ifdef EMBER_WITH_CUDA
      if (first < 0) first = c10::cuda::current_device();
#endif
      if (first < 0) first = 0;
      int64_t expected = -1;
      bound_device_.compare_exchange_strong(expected, first);
      device_index = bound_device_.load();
    }
  }
  const c10::Device engine_device =
      device_type_ == c10::DeviceType::CUDA
          ? c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(device_index))
          : c10::Device(c10::DeviceType::CPU);

  // Inputs in engine dtype, contiguous; kept alive until the engine has run.
  std::vector<at::Tensor> engine_inputs;
  engine_inputs.reserve(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    const BridgeIO& io = meta.inputs[i];
    const at::Tensor& x = inputs[i];
    EMBER_CHECK(x.defined(), "ember::execute_engine: input '", io.name, "' (#", i,
                ") is an undefined tensor");
    if (x.dim() == 0 && x.is_cpu() && engine_device.is_cuda()) {
      // A CPU scalar, which PyTorch's own CUDA ops accept too: a 0-dim constant the importer
      // gave the engine (torchvision Swin's mask fills) that a partition left to PyTorch.
      at::Tensor y = x.to(engine_device, input_engine_types_[i]);
      engine_inputs.push_back(std::move(y));
      continue;
    }
    EMBER_CHECK(x.device() == engine_device, "ember::execute_engine: input '", io.name, "' (#", i,
                ") is on device ", x.device(), " but this ", meta.backend,
                " engine needs device ", engine_device,
                device_type_ == c10::DeviceType::CUDA ? " (a cuda engine is bound to one GPU)" : "",
                "; move the input with .to('", engine_device, "')");
    EMBER_CHECK(x.scalar_type() == input_torch_types_[i], "ember::execute_engine: input '",
                io.name, "' (#", i, ") must have dtype ", python_dtype_name(input_torch_types_[i]),
                ", got ", python_dtype_name(x.scalar_type()),
                "; convert it with .to(", python_dtype_name(input_torch_types_[i]), ")");
    at::Tensor y = x.scalar_type() == input_engine_types_[i]
                       ? x.contiguous()
                       // f64 -> f32 rounds, i64 -> i32 truncates: the compiler chose the engine
                       // dtype knowing the value range.
                       : x.to(input_engine_types_[i]).contiguous();
    engine_inputs.push_back(std::move(y));
  }

  // CUDA engines run on PyTorch's current stream of their device, so they order with the
  // surrounding PyTorch work without synchronizing.
  void* stream = nullptr;
#ifdef EMBER_WITH_CUDA
  std::optional<c10::cuda::CUDAGuard> guard;
  if (device_type_ == c10::DeviceType::CUDA) {
    guard.emplace(engine_device);
    stream = c10::cuda::getCurrentCUDAStream(engine_device.index()).stream();
  }
#endif
  const PoolKey key{device_index, stream};
  std::unique_ptr<engine::ExecutionContext> ctx;
  try {
    ctx = acquire_context(key);  // a new context allocates its arena: errors name it
  } catch (const engine::Error& e) {
    fail("ember::execute_engine: ", e.what());
  }
  std::vector<at::Tensor> outputs;
  outputs.reserve(meta.outputs.size());
  try {
    for (size_t i = 0; i < engine_inputs.size(); ++i) {
      const BridgeIO& io = meta.inputs[i];
      const at::Tensor& x = engine_inputs[i];
      ctx->set_input_shape(io.name, std::vector<int64_t>(x.sizes().begin(), x.sizes().end()));
      ctx->set_tensor_address(io.name, x.data_ptr(), io.engine_dtype);
    }
    for (size_t i = 0; i < meta.outputs.size(); ++i) {
      const BridgeIO& io = meta.outputs[i];
      at::Tensor y = at::empty(ctx->tensor_shape(io.name),
                               at::TensorOptions().dtype(output_engine_types_[i]).device(engine_device));
      ctx->set_tensor_address(io.name, y.data_ptr(), io.engine_dtype);
      outputs.push_back(std::move(y));
    }
    if (device_type_ == c10::DeviceType::CUDA) {
      ctx->enqueue(stream);
    } else {
      ctx->execute();
    }
  } catch (const engine::Error& e) {
    release_context(key, std::move(ctx));
    fail("ember::execute_engine: ", e.what());
  }
  const std::string graph_warning = ctx->take_cuda_graph_warning();
  std::vector<std::string> slow_paths = ctx->take_warnings();
  release_context(key, std::move(ctx));
  for (const std::string& w : slow_paths) {
    // Once per engine and message (each context of the pool says it once): a layer that runs
    // correctly but slower than it should (oneDNN refused it on the CPU; cuDNN's graph API built
    // no plan for it on CUDA). torch.ops calls from Python install no Python warning handler,
    // so c10::warn would only reach stderr there: hence the sink.
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (!warned_.insert(w).second) continue;
    }
    report_slowdown(w);
  }
  if (!graph_warning.empty() && !graph_warning_given_.exchange(true)) {
    // Once per engine: the engine still runs, layer by layer, so this is a slowdown to report,
    // not an error.
    report_slowdown("CUDA graphs are off for an execution context of this engine, which now "
                    "runs layer by layer (slower): " + graph_warning +
                    ". Engine.cuda_graph_stats() counts such contexts.");
  }
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (output_engine_types_[i] != output_torch_types_[i]) {
      outputs[i] = outputs[i].to(output_torch_types_[i]);
    }
  }
  num_runs_.fetch_add(1);
  return outputs;
}

namespace {

std::vector<at::Tensor> execute_engine(const std::vector<at::Tensor>& inputs,
                                       const c10::intrusive_ptr<TorchEngine>& engine) {
  return engine->execute(inputs);
}

std::vector<std::string> io_names(const std::vector<BridgeIO>& list) {
  std::vector<std::string> out;
  for (const auto& io : list) out.push_back(io.name);
  return out;
}

std::vector<std::string> io_shapes(const std::vector<BridgeIO>& list) {
  std::vector<std::string> out;
  for (const auto& io : list) out.push_back(io.shape);
  return out;
}

std::vector<std::string> io_torch_dtypes(const std::vector<BridgeIO>& list) {
  std::vector<std::string> out;
  for (const auto& io : list) out.push_back(io.torch_dtype);
  return out;
}

using EnginePtr = c10::intrusive_ptr<TorchEngine>;

}  // namespace

}  // namespace ember::bridge

// The ember namespace belongs to this library: other translation units that add to it use
// TORCH_LIBRARY_FRAGMENT(ember, m).
TORCH_LIBRARY(ember, m) {
  using ember::bridge::EnginePtr;
  using ember::bridge::TorchEngine;
  m.class_<TorchEngine>("Engine")
      .def(torch::init<std::vector<std::string>>())
      // torch.export fakes script objects from (name, value) pairs; the fake class in
      // ember/_runtime.py rebuilds itself from the same state list.
      .def("__obj_flatten__",
           [](const EnginePtr& self) { return std::make_tuple(std::make_tuple(std::string("state"), self->state())); })
      .def("state", [](const EnginePtr& self) { return self->state(); })
      .def("backend", [](const EnginePtr& self) { return self->engine().backend(); })
      .def("inspect", [](const EnginePtr& self) { return self->engine().inspect_json(); })
      .def("metadata_json",
           [](const EnginePtr& self) { return ember::bridge::metadata_to_json(self->metadata()); })
      .def("input_names", [](const EnginePtr& self) { return ember::bridge::io_names(self->metadata().inputs); })
      .def("output_names", [](const EnginePtr& self) { return ember::bridge::io_names(self->metadata().outputs); })
      .def("input_shapes", [](const EnginePtr& self) { return ember::bridge::io_shapes(self->metadata().inputs); })
      .def("output_shapes", [](const EnginePtr& self) { return ember::bridge::io_shapes(self->metadata().outputs); })
      .def("input_dtypes",
           [](const EnginePtr& self) { return ember::bridge::io_torch_dtypes(self->metadata().inputs); })
      .def("output_dtypes",
           [](const EnginePtr& self) { return ember::bridge::io_torch_dtypes(self->metadata().outputs); })
      .def("num_runs", [](const EnginePtr& self) { return self->num_runs(); })
      .def("cuda_graph_stats", [](const EnginePtr& self) { return self->cuda_graph_stats(); })
      .def("cuda_graph_disabled_reasons",
           [](const EnginePtr& self) { return self->cuda_graph_disabled_reasons(); })
      .def("device_index", [](const EnginePtr& self) { return self->device_index(); })
      .def("pooled_contexts", [](const EnginePtr& self) { return self->pooled_contexts(); })
      .def("__repr__",
           [](const EnginePtr& self) {
             const auto& m = self->metadata();
             return "ember.Engine(backend=" + m.backend + ", inputs=" +
                    std::to_string(m.inputs.size()) + ", outputs=" + std::to_string(m.outputs.size()) + ")";
           })
      .def_pickle(
          [](const EnginePtr& self) { return self->state(); },
          [](std::vector<std::string> state) { return c10::make_intrusive<TorchEngine>(std::move(state)); });

  m.def("execute_engine(Tensor[] inputs, __torch__.torch.classes.ember.Engine engine) -> Tensor[]");
  // The compiler's way to make an Engine: the plan as a uint8 CPU tensor (a view of Python's
  // bytes, no copy) and the metadata JSON. Equal to Engine([tag, base64(plan), metadata]).
  m.def("engine_from_plan(Tensor plan, str metadata) -> __torch__.torch.classes.ember.Engine",
        [](const at::Tensor& plan, std::string metadata) {
          TORCH_CHECK(plan.device().is_cpu() && plan.scalar_type() == at::kByte && plan.dim() == 1,
                      "ember::engine_from_plan: the plan must be a 1-d uint8 CPU tensor, got ",
                      plan.scalar_type(), " of ", plan.dim(), " dims on ", plan.device());
          const at::Tensor bytes = plan.contiguous();
          return c10::make_intrusive<ember::bridge::TorchEngine>(
              bytes.data_ptr<uint8_t>(), static_cast<size_t>(bytes.numel()), std::move(metadata));
        });
}

// One kernel for every device key that can reach it: the kernel itself checks that the inputs
// live where the engine runs, so a CUDA tensor fed to a cpu engine gets a message naming the
// input and both devices rather than the dispatcher's "no kernel for CUDA". Meta/fake shapes come
// from the Python fake implementation (ember/_runtime.py).
TORCH_LIBRARY_IMPL(ember, CPU, m) { m.impl("execute_engine", &ember::bridge::execute_engine); }
TORCH_LIBRARY_IMPL(ember, CUDA, m) { m.impl("execute_engine", &ember::bridge::execute_engine); }
// Engines are inference-only: outputs never require grad (no autograd graph is recorded), rather
// than the default fallback that lets backward run through the op with silently wrong gradients.
TORCH_LIBRARY_IMPL(ember, Autograd, m) {
  m.impl("execute_engine", torch::CppFunction::makeFallthrough());
}
