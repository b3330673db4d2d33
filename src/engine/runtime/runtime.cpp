// Runtime, Engine and ExecutionContext.
#include "ember/engine/runtime.h"

#include <cstdio>
#include <functional>

#include "backends/cpu/executor.h"
#ifdef EMBER_WITH_CUDA
#include "backends/cuda/cuda_backend.h"
#endif
#include "plan/plan.h"
#include "runtime/shapes.h"

namespace ember::engine {

// ---------------------------------------------------------------- Runtime

std::shared_ptr<const Engine> Runtime::deserialize(const void* data, size_t size) const {
  auto plan = std::make_unique<PlanModel>(plan_read(data, size));
  std::shared_ptr<Engine> engine(new Engine());
  for (const Tensor* t : plan->network.inputs()) engine->io_.push_back({t->name(), t->dtype(), t->shape(), true});
  for (const Tensor* t : plan->network.outputs()) engine->io_.push_back({t->name(), t->dtype(), t->shape(), false});
  engine->timing_->insert(plan->timing);
  engine->plan_ = std::move(plan);
  engine->allocator_ = allocator_;
  return engine;
}

std::shared_ptr<const Engine> Runtime::deserialize_file(const std::string& path) const {
  // stdio, not iostreams (see the note on Text in inspector.cpp).
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) throw Error("plan file '" + path + "' cannot be opened");
  std::vector<char> bytes;
  char buf[1 << 16];
  size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) bytes.insert(bytes.end(), buf, buf + n);
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) throw Error("plan file '" + path + "' could not be read");
  try {
    return deserialize(bytes.data(), bytes.size());
  } catch (const Error& e) {
    throw Error("plan file '" + path + "': " + e.what());
  }
}

// ---------------------------------------------------------------- Engine

Engine::~Engine() = default;

const IOTensorInfo& Engine::io_tensor(const std::string& name) const {
  for (const auto& t : io_) {
    if (t.name == name) return t;
  }
  std::string names;
  for (const auto& t : io_) names += (names.empty() ? "" : ", ") + t.name;
  throw Error("engine has no input or output named '" + name + "' (it has: " + names + ")");
}

const std::string& Engine::backend() const { return plan_->backend; }
size_t Engine::num_profiles() const { return plan_->profiles.size(); }
int64_t Engine::arena_bytes() const { return plan_->arena_bytes; }

std::map<std::string, Interval, std::less<>> Engine::profile_ranges(size_t index) const {
  if (index >= plan_->profiles.size()) {
    throw Error("engine has " + std::to_string(plan_->profiles.size()) + " profiles; no profile " +
                std::to_string(index));
  }
  return plan_->profiles[index].intervals();
}

std::shared_ptr<void> Engine::device_weights() const {
#ifdef EMBER_WITH_CUDA
  std::lock_guard<std::mutex> lock(device_mutex_);
  if (!device_weights_) device_weights_ = std::make_shared<cuda::DeviceWeights>(plan_->network, allocator_);
  return device_weights_;
#else
  throw Error("this build of Ember has no CUDA back end");
#endif
}

std::unique_ptr<ExecutionContext> Engine::create_execution_context() const {
  return std::unique_ptr<ExecutionContext>(new ExecutionContext(shared_from_this()));
}

// ---------------------------------------------------------------- ExecutionContext

struct ExecutionContext::State {
  size_t profile = 0;
  std::vector<std::vector<int64_t>> input_dims;   // per network input; empty until set
  std::vector<bool> input_set;
  std::vector<void*> addrs;                       // per tensor id
  std::vector<bool> address_set;                  // per tensor id: I/O given by the caller
  std::vector<std::vector<int64_t>> dims;         // per tensor id, for the current signature
  std::vector<std::vector<int64_t>> signature;    // input dims the dims were evaluated for
  SymbolBindings bindings;                        // symbol values of that signature
  bool shapes_valid = false;
  std::vector<uint8_t> arena;                     // CPU back end's activation memory
  cpu::KernelCache cpu_cache;                     // CPU kernels' prepared state
  bool cuda = false;                              // a "cuda" plan: device memory, streams
#ifdef EMBER_WITH_CUDA
  std::shared_ptr<void> device_weights;           // cuda::DeviceWeights of the engine
  std::unique_ptr<cuda::ContextState> device;     // device arena, library handles, graphs
  std::vector<int> io_ids;                        // tensor ids of the inputs and outputs
  bool capturable = true;                         // no layer runs through the host fallback
#endif
};

ExecutionContext::ExecutionContext(std::shared_ptr<const Engine> engine)
    : engine_(std::move(engine)), state_(std::make_unique<State>()) {
  const PlanModel& p = engine_->plan();
  const size_t n_in = p.network.inputs().size();
  state_->input_dims.resize(n_in);
  state_->input_set.assign(n_in, false);
  const auto tensors = p.network.tensors();
  state_->addrs.assign(tensors.size(), nullptr);
  state_->address_set.assign(tensors.size(), false);
  state_->cuda = p.backend == "cuda";
  uint8_t* base = nullptr;
  std::function<void*(const Tensor*)> constant_address = [](const Tensor* t) -> void* {
    return const_cast<void*>(t->producer()->params_as<ConstantParams>().weights.data());
  };
  if (state_->cuda) {
#ifdef EMBER_WITH_CUDA
    cuda::check_device_for_plan(p.target);
    state_->device_weights = engine_->device_weights();
    state_->device = std::make_unique<cuda::ContextState>(p.arena_bytes, engine_->allocator_,
                                                          &engine_->timing_cache());
    base = state_->device->arena();
    const auto* dw = static_cast<const cuda::DeviceWeights*>(state_->device_weights.get());
    constant_address = [dw](const Tensor* t) { return dw->address(t->id()); };
    for (const Tensor* t : p.network.inputs()) state_->io_ids.push_back(t->id());
    for (const Tensor* t : p.network.outputs()) state_->io_ids.push_back(t->id());
    for (const std::string& impl : p.impls) {
      if (impl.rfind("cuda.host", 0) == 0) state_->capturable = false;
    }
#else
    throw Error("this plan is for the cuda back end, which this build does not include");
#endif
  } else {
    state_->arena.resize(static_cast<size_t>(p.arena_bytes));
    base = state_->arena.data();
  }
  for (const Tensor* t : tensors) {
    const Layer* prod = t->producer();
    if (prod != nullptr && prod->kind() == LayerKind::kConstant && !t->is_output()) {
      state_->addrs[t->id()] = constant_address(t);
    } else if (p.placements[t->id()].arena_offset >= 0) {
      state_->addrs[t->id()] = base + p.placements[t->id()].arena_offset;
    }
  }
}

ExecutionContext::~ExecutionContext() = default;

void ExecutionContext::set_optimization_profile(size_t index) {
  if (index >= engine_->num_profiles()) {
    throw Error("set_optimization_profile: engine has " + std::to_string(engine_->num_profiles()) +
                " profiles; no profile " + std::to_string(index));
  }
  state_->profile = index;
  state_->shapes_valid = false;
}

void ExecutionContext::set_input_shape(const std::string& name, const std::vector<int64_t>& dims) {
  const Network& net = engine_->plan().network;
  const auto& inputs = net.inputs();
  size_t i = 0;
  while (i < inputs.size() && inputs[i]->name() != name) ++i;
  if (i == inputs.size()) {
    engine_->io_tensor(name);  // throws with the list of names when unknown
    throw Error("set_input_shape: '" + name + "' is an output, not an input");
  }
  const Tensor& t = *inputs[i];
  if (dims.size() != t.shape().size()) {
    throw Error("set_input_shape: input '" + name + "' has rank " + std::to_string(t.rank()) + " " +
                shape_to_string(t.shape()) + ", got dims " + dims_to_string(dims));
  }
  const auto ranges = engine_->profile_ranges(state_->profile);
  for (size_t d = 0; d < dims.size(); ++d) {
    const DimExpr& e = t.shape()[d];
    if (e.is_constant()) {
      if (dims[d] != e.constant()) {
        throw Error("set_input_shape: input '" + name + "' dim " + std::to_string(d) + " is " +
                    std::to_string(dims[d]) + " but the engine was built for " +
                    std::to_string(e.constant()));
      }
      continue;
    }
    const Interval r = ranges.at(e.symbol_name());
    if (dims[d] < r.lo || dims[d] > r.hi) {
      throw Error("set_input_shape: input '" + name + "' dim " + std::to_string(d) + " (symbol '" +
                  e.symbol_name() + "') is " + std::to_string(dims[d]) +
                  ", outside the optimization profile range [" + std::to_string(r.lo) + ", " +
                  std::to_string(r.hi) + "]");
    }
  }
  state_->input_dims[i] = dims;
  state_->input_set[i] = true;
}

void ExecutionContext::prepare() {
  const Network& net = engine_->plan().network;
  for (size_t i = 0; i < state_->input_set.size(); ++i) {
    if (!state_->input_set[i]) {
      throw Error("input '" + net.inputs()[i]->name() + "' has no shape: call set_input_shape");
    }
  }
  if (state_->shapes_valid && state_->signature == state_->input_dims) return;
  // A new shape signature: bind symbols (inputs sharing a symbol must agree), check the shape
  // conditions the builder left for run time, and evaluate every tensor's dims once.
  state_->bindings = bind_input_shapes(net, state_->input_dims);
  state_->dims = evaluate_all_shapes(net, state_->bindings);
  state_->signature = state_->input_dims;
  state_->shapes_valid = true;
}

std::vector<int64_t> ExecutionContext::tensor_shape(const std::string& name) {
  engine_->io_tensor(name);
  prepare();
  return state_->dims[engine_->plan().network.find_tensor(name)->id()];
}

void ExecutionContext::set_tensor_address(const std::string& name, void* data) {
  engine_->io_tensor(name);
  // A null address is allowed (PyTorch gives one for empty tensors); run() rejects it unless
  // the tensor has no elements for the current shapes.
  const int id = engine_->plan().network.find_tensor(name)->id();
  state_->addrs[id] = data;
  state_->address_set[id] = true;
}

void ExecutionContext::set_tensor_address(const std::string& name, void* data, DataType dtype) {
  const IOTensorInfo& io = engine_->io_tensor(name);
  if (io.dtype != dtype) {
    throw Error(std::string(io.is_input ? "input" : "output") + " '" + name + "' is " +
                dtype_name(io.dtype) + ", but the buffer given is " + dtype_name(dtype));
  }
  set_tensor_address(name, data);
}

void ExecutionContext::execute() {
  if (state_->cuda) {
#ifdef EMBER_WITH_CUDA
    enqueue(nullptr);
    cuda::check(cudaStreamSynchronize(nullptr), "cudaStreamSynchronize (execute)");
    return;
#endif
  }
  run(nullptr);
}

void ExecutionContext::run(void* stream) {
  prepare();
  const Network& net = engine_->plan().network;
  for (const auto& io : engine_->io_tensors()) {
    const Tensor* t = net.find_tensor(io.name);
    const char* kind = io.is_input ? "input" : "output";
    if (!state_->address_set[t->id()]) {
      throw Error(std::string(kind) + " '" + io.name + "' has no address: call set_tensor_address");
    }
    if (state_->addrs[t->id()] == nullptr && dims_numel(state_->dims[t->id()]) != 0) {
      throw Error(std::string(kind) + " '" + io.name + "' has a null address but " +
                  dims_to_string(state_->dims[t->id()]) + " elements to hold");
    }
  }
  if (state_->cuda) {
#ifdef EMBER_WITH_CUDA
    const auto* dw = static_cast<const cuda::DeviceWeights*>(state_->device_weights.get());
    cuda::enqueue_network(net, state_->dims, state_->addrs, &state_->bindings, *dw,
                          *state_->device, static_cast<cudaStream_t>(stream), state_->signature,
                          state_->io_ids, net.inputs().size(), state_->capturable);
    return;
#endif
  }
  cpu::execute_layers(net, state_->dims, state_->addrs, &state_->bindings, &state_->cpu_cache);
}

void ExecutionContext::set_cuda_graphs(bool enabled) {
#ifdef EMBER_WITH_CUDA
  if (state_->device) {
    cuda::GraphCache& g = state_->device->graphs();
    g.enabled = enabled;
    g.clear();
    // Turning graphs on again starts afresh: a capture that failed is tried again.
    g.disabled_reason.clear();
    g.reported = false;
    g.window_captures = g.window_replays = 0;
    g.no_zero_copy.clear();
  }
#else
  (void)enabled;
#endif
}

ExecutionContext::GraphStats ExecutionContext::cuda_graph_stats() const {
  GraphStats st;
  st.disabled = true;
  // A cpu plan has no graphs: counted as disabled, with no reason to report.
#ifdef EMBER_WITH_CUDA
  if (state_->device) {
    const cuda::GraphCache& g = state_->device->graphs();
    st.replays = g.replays;
    st.staged_replays = g.staged_replays;
    st.captures = g.captures;
    st.disabled = !g.enabled || !g.disabled_reason.empty() || !state_->capturable;
    if (!g.enabled) {
      st.reason = "CUDA graphs are off for this context (cuda_graphs=False)";
    } else if (!g.disabled_reason.empty()) {
      st.reason = g.disabled_reason;
    } else if (!state_->capturable) {
      st.reason = "the plan has a layer that runs through the host fallback (cuda.host)";
    }
  }
#endif
  return st;
}

std::string ExecutionContext::take_cuda_graph_warning() {
#ifdef EMBER_WITH_CUDA
  if (state_->device) {
    cuda::GraphCache& g = state_->device->graphs();
    if (g.enabled && !g.disabled_reason.empty() && !g.reported) {
      g.reported = true;
      return g.disabled_reason;
    }
  }
#endif
  return {};
}

void ExecutionContext::enqueue(void* stream) {
  // The CPU back end has no streams: it runs to completion.
  run(stream);
}

}  // namespace ember::engine
