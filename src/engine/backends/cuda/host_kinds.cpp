// Which layer kinds run through host_fallback as a whole: none today, every kind has a device
// kernel (a kernel may still call host_fallback for a case it does not cover, such as a rank
// above kMaxRank; the capture of such a call fails and the context runs layer by layer). A new
// kind without a device kernel lists itself in kHostKinds and calls host_fallback from its
// run(), so the inspector shows "cuda.host.<Kind>" and the runtime never captures its plans.
#include <algorithm>
#include <array>

#include "backends/cuda/cuda_backend.h"

namespace ember::engine::cuda {

namespace {
constexpr std::array<LayerKind, 0> kHostKinds{};
}  // namespace

bool has_device_kernel(LayerKind kind) {
  return std::find(kHostKinds.begin(), kHostKinds.end(), kind) == kHostKinds.end();
}

// Constants never reach run(): execute_layers reads them in place.
void run(const ConstantParams&, const CudaArgs&) {}

}  // namespace ember::engine::cuda
