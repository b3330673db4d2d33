// Layer kinds that have no device kernel yet: each runs its CPU reference kernel through
// host_fallback. Giving a kind a device kernel = moving its run() overload from here to the
// family's .cu file and deleting its line in kHostKinds.
#include <algorithm>
#include <array>

#include "backends/cuda/cuda_backend.h"

namespace ember::engine::cuda {

namespace {
constexpr std::array kHostKinds = {
    LayerKind::kScatter,  LayerKind::kResize,    LayerKind::kTopK,     LayerKind::kCumulative,
};
}  // namespace

bool has_device_kernel(LayerKind kind) {
  return std::find(kHostKinds.begin(), kHostKinds.end(), kind) == kHostKinds.end();
}

// Constants never reach run(): execute_layers reads them in place.
void run(const ConstantParams&, const CudaArgs&) {}

void run(const ScatterParams&, const CudaArgs& a) { host_fallback(a); }
void run(const ResizeParams&, const CudaArgs& a) { host_fallback(a); }
void run(const TopKParams&, const CudaArgs& a) { host_fallback(a); }
void run(const CumulativeParams&, const CudaArgs& a) { host_fallback(a); }

}  // namespace ember::engine::cuda
