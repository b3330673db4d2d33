// The CPU back end behind the Backend interface: the reference kernels on host memory, with a
// per-context arena and kernel cache.
#include <string>
#include <utility>
#include <vector>

#include "backends/backend.h"
#include "backends/cpu/executor.h"

namespace ember::engine {

namespace {

class CpuContext final : public BackendContext {
 public:
  explicit CpuContext(int64_t arena_bytes) : arena_(static_cast<size_t>(arena_bytes)) {}
  uint8_t* arena() override { return arena_.data(); }
  void* constant_address(const Tensor& t) override {
    // Constants are read in place from the plan's weights.
    return const_cast<void*>(t.producer()->params_as<ConstantParams>().weights.data());
  }
  void run(const RunRequest& r, void* /*stream*/) override {
    cpu::execute_layers(*r.net, *r.dims, *r.addrs, r.symbols, &cache_);
  }
  void synchronize(void* /*stream*/) override {}  // run() is synchronous
  std::vector<std::string> take_warnings() override { return std::exchange(cache_.warnings, {}); }

 private:
  std::vector<uint8_t> arena_;
  cpu::KernelCache cache_;
};

class CpuBackend final : public Backend {
 public:
  std::string name() const override { return "cpu"; }
  std::unique_ptr<BackendContext> create_context(const Engine& engine) const override {
    return std::make_unique<CpuContext>(engine.arena_bytes());
  }
};

}  // namespace

const Backend& cpu_backend() {
  static const CpuBackend backend;
  return backend;
}

}  // namespace ember::engine
