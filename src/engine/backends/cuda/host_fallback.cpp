// host_fallback: a layer without a device kernel runs the CPU reference kernel on host copies.
// Correct for every layer and dtype the CPU back end takes; slow (it synchronizes the stream),
// which the inspector makes visible ("cuda.host.<Kind>").
#include "backends/cpu/kernels.h"
#include "backends/cuda/cuda_backend.h"

namespace ember::engine::cuda {

void host_fallback(const CudaArgs& a) {
  size_t total = 0;
  for (const DeviceTensor* t : a.inputs) total += t != nullptr ? t->nbytes() : 0;
  for (const DeviceTensor* t : a.outputs) total += t->nbytes();
  auto* staging = static_cast<uint8_t*>(a.res->host_staging(total > 0 ? total : 1));
  std::vector<cpu::HostTensor> ins(a.inputs.size()), outs(a.outputs.size());
  cpu::KernelArgs ka;
  ka.symbols = a.symbols;
  size_t offset = 0;
  for (size_t i = 0; i < a.inputs.size(); ++i) {
    const DeviceTensor* t = a.inputs[i];
    if (t == nullptr) {
      ka.inputs.push_back(nullptr);
      continue;
    }
    ins[i] = cpu::HostTensor{t->dtype, t->dims, staging + offset};
    if (t->nbytes() > 0) {
      check(cudaMemcpyAsync(staging + offset, t->data, t->nbytes(), cudaMemcpyDeviceToHost,
                            a.stream()),
            "cudaMemcpyAsync (host fallback input)");
    }
    offset += t->nbytes();
    ka.inputs.push_back(&ins[i]);
  }
  for (size_t i = 0; i < a.outputs.size(); ++i) {
    outs[i] = cpu::HostTensor{a.outputs[i]->dtype, a.outputs[i]->dims, staging + offset};
    offset += a.outputs[i]->nbytes();
    ka.outputs.push_back(&outs[i]);
  }
  check(cudaStreamSynchronize(a.stream()), "cudaStreamSynchronize (host fallback)");
  cpu::run_layer(a.layer->params(), ka);
  for (size_t i = 0; i < a.outputs.size(); ++i) {
    if (a.outputs[i]->nbytes() == 0) continue;
    check(cudaMemcpyAsync(a.outputs[i]->data, outs[i].data, a.outputs[i]->nbytes(),
                          cudaMemcpyHostToDevice, a.stream()),
          "cudaMemcpyAsync (host fallback output)");
  }
  // The staging buffer is reused by the next fallback: wait for the copies out of it.
  check(cudaStreamSynchronize(a.stream()), "cudaStreamSynchronize (host fallback)");
}

}  // namespace ember::engine::cuda
