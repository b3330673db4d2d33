// A probe for the cuDNN-attention crash inside Python (bench/results/2026-12-06-h100-session27.md):
// builds and runs one cuDNN frontend SDPA graph (f16, B=2 H=4 L=S=128 E=64, composite node) with
// nothing of Ember around it. Built both as a shared library (ctypes loads it into a Python
// process, with or without torch imported first) and as an executable, so the runs tell whether
// the crash needs Python, torch, or Ember. tools/debug/cudnn_sdpa_probe.sh builds and runs the
// matrix on the GPU machine. (It worked every way: the crash came from how the GPU machine's
// compiler linked libstdc++ into libember.so; see runtime/iostreams_check.h.)
#include <algorithm>
#include <cstdio>
#include <cuda_runtime.h>
#include <cudnn.h>
#include <memory>
#include <unordered_map>
#include <vector>

#include <cudnn_frontend.h>

namespace fe = cudnn_frontend;

/// One problem: B, H, L (queries), S (keys), E (head size), causal, packed (0: Q, K, V and O each
/// [B, H, seq, E] contiguous; 1: Q, K and V thirds of one seq-major [B, seq, 3*H*E] projection,
/// O seq-major [B, L, H*E], BERT's layout), composite (1: the composite node; 0: the frontend's
/// choice).
extern "C" int ember_probe_sdpa_problem(int64_t B, int64_t H, int64_t L, int64_t S, int64_t E,
                                        int causal, int packed, int composite) {
  std::printf("probe: cudnnGetVersion %zu, headers %d\n", cudnnGetVersion(), CUDNN_VERSION);
  std::fflush(stdout);
  cudnnHandle_t handle = nullptr;
  if (cudnnCreate(&handle) != CUDNN_STATUS_SUCCESS) {
    std::printf("probe: cudnnCreate failed\n");
    return 1;
  }
  std::printf("probe: B=%lld H=%lld L=%lld S=%lld E=%lld causal=%d packed=%d\n", (long long)B,
              (long long)H, (long long)L, (long long)S, (long long)E, causal, packed);
  auto g = std::make_shared<fe::graph::Graph>();
  g->set_io_data_type(fe::DataType_t::HALF)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  auto strides = [&](int64_t seq, int64_t row) -> std::vector<int64_t> {
    if (packed) return {seq * row, E, row, 1};
    return {H * seq * E, seq * E, E, 1};
  };
  auto t = [&](const char* name, int64_t uid, int64_t seq) {
    return g->tensor(fe::graph::Tensor_attributes()
                         .set_name(name)
                         .set_uid(uid)
                         .set_dim({B, H, seq, E})
                         .set_stride(strides(seq, 3 * H * E)));
  };
  auto q = t("Q", 1, L), k = t("K", 2, S), v = t("V", 3, S);
  auto opts = fe::graph::SDPA_attributes().set_name("probe").set_generate_stats(false).set_attn_scale(
      0.125f);
  if (causal) opts.set_causal_mask(true);
  if (composite) opts.set_implementation(fe::AttentionImplementation_t::COMPOSITE);
  auto outs = g->sdpa(q, k, v, std::move(opts));
  outs[0]->set_output(true).set_uid(4).set_dim({B, H, L, E}).set_stride(strides(L, H * E));
  const char* stage = "validate";
  fe::error_t e = g->validate();
  if (e.is_good()) stage = "build_operation_graph", e = g->build_operation_graph(handle);
  if (e.is_good()) stage = "create_execution_plans", e = g->create_execution_plans({fe::HeurMode_t::A});
  std::printf("probe: %s done (%s)\n", stage, e.get_message().c_str());
  std::fflush(stdout);
  if (e.is_good()) stage = "check_support", e = g->check_support(handle);
  if (e.is_good()) stage = "build_plans", e = g->build_plans(handle, fe::BuildPlanPolicy_t::HEURISTICS_CHOICE);
  int64_t ws = 0;
  if (e.is_good()) stage = "get_workspace_size", e = g->get_workspace_size(ws);
  if (!e.is_good()) {
    std::printf("probe: %s failed: %s\n", stage, e.get_message().c_str());
    return 2;
  }
  void *dq, *dk, *dv, *dout, *dws = nullptr;
  const size_t bytes = static_cast<size_t>(B * H * std::max(L, S) * E) * 2 * 3;
  cudaMalloc(&dq, bytes), cudaMalloc(&dk, bytes), cudaMalloc(&dv, bytes), cudaMalloc(&dout, bytes);
  cudaMemset(dq, 0, bytes), cudaMemset(dk, 0, bytes), cudaMemset(dv, 0, bytes);
  if (ws > 0) cudaMalloc(&dws, static_cast<size_t>(ws));
  // Packed: K and V are the second and third thirds of Q's projection rows.
  if (packed) dk = static_cast<char*>(dq) + H * E * 2, dv = static_cast<char*>(dq) + 2 * H * E * 2;
  std::unordered_map<int64_t, void*> pack = {{1, dq}, {2, dk}, {3, dv}, {4, dout}};
  e = g->execute(handle, pack, dws);
  const cudaError_t ce = cudaDeviceSynchronize();
  std::printf("probe: execute %s, sync %s, workspace %lld\n", e.is_good() ? "ok" : e.get_message().c_str(),
              cudaGetErrorString(ce), static_cast<long long>(ws));
  if (packed) dk = dv = nullptr;
  cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dout), cudaFree(dws);
  cudnnDestroy(handle);
  return e.is_good() && ce == cudaSuccess ? 0 : 3;
}

extern "C" int ember_probe_sdpa(int composite) {
  return ember_probe_sdpa_problem(2, 4, 128, 128, 64, 0, 0, composite);
}

#if defined(EMBER_PROBE_MAIN)
#include <cstdlib>
// probe [B H L S E causal packed composite]
int main(int argc, char** argv) {
  if (argc < 9) return ember_probe_sdpa(1);
  int64_t v[8];
  for (int i = 0; i < 8; ++i) v[i] = std::atoll(argv[i + 1]);
  return ember_probe_sdpa_problem(v[0], v[1], v[2], v[3], v[4], int(v[5]), int(v[6]), int(v[7]));
}
#endif
