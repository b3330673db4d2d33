// Runtime, Engine and ExecutionContext.
#include "ember/engine/runtime.h"

#include <cstdio>
#include <functional>

#include "backends/backend.h"
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
  std::unique_ptr<BackendContext> backend;        // arena, library state, graphs
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
  const Backend* backend = find_backend(p.backend);
  if (backend == nullptr) {  // the plan reader refuses such plans; kept for a clear message
    throw Error("this plan is for the " + p.backend + " back end, which this build does not include");
  }
  state_->backend = backend->create_context(*engine_);
  uint8_t* base = state_->backend->arena();
  for (const Tensor* t : tensors) {
    const Layer* prod = t->producer();
    if (prod != nullptr && prod->kind() == LayerKind::kConstant && !t->is_output()) {
      state_->addrs[t->id()] = state_->backend->constant_address(*t);
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
  run(nullptr);
  state_->backend->synchronize(nullptr);
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
  RunRequest request;
  request.net = &net;
  request.dims = &state_->dims;
  request.addrs = &state_->addrs;
  request.symbols = &state_->bindings;
  request.signature = &state_->signature;
  state_->backend->run(request, stream);
}

void ExecutionContext::set_cuda_graphs(bool enabled) { state_->backend->set_cuda_graphs(enabled); }

ExecutionContext::GraphStats ExecutionContext::cuda_graph_stats() const {
  return state_->backend->cuda_graph_stats();
}

std::string ExecutionContext::take_cuda_graph_warning() {
  return state_->backend->take_cuda_graph_warning();
}

std::vector<std::string> ExecutionContext::take_backend_warnings() {
  return state_->backend->take_backend_warnings();
}

void ExecutionContext::enqueue(void* stream) {
  // The CPU back end has no streams: it runs to completion.
  run(stream);
}

}  // namespace ember::engine
