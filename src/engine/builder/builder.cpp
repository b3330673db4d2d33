// Builder::build: the pass pipeline (passes live in builder/passes/, one file each).
#include "ember/engine/builder.h"

#include <chrono>
#include <cstdio>

#include "backends/backend.h"
#include "builder/passes/passes.h"

namespace ember::engine {

std::vector<std::string> available_backends() { return backend_names(); }

// Each optimization level adds passes (BuilderConfig::optimization_level): 1 constant folding, 2
// fusion (conv/matmul epilogues, the attention rewrite, pointwise chains), 3 layout (channels_last). The rest are
// required at every level; tactic timing included, since a plan without timed choices times
// them on its first call instead.
std::vector<Pass> default_passes() {
  return {
      {"validate", 0, pass_validate},
      {"infer_shapes", 0, pass_infer_shapes},
      {"fuse_quantized", 2, pass_fuse_quantized},
      {"fold_constants", 1, pass_fold_constants},
      {"remove_dead_layers", 0, pass_remove_dead_layers},
      {"recognize_rms_norms", 2, pass_recognize_rms_norms},
      {"absorb_casts", 2, pass_absorb_casts},
      {"fuse_epilogues", 2, pass_fuse_epilogues},
      {"quantize_norm_outputs", 2, pass_quantize_norm_outputs},
      {"channels_last", 3, pass_channels_last},
      {"pad_conv_channels", 3, pass_pad_conv_channels},
      {"simplify_attention", 2, pass_simplify_attention},
      {"fuse_epilogues_after_attention", 2, pass_fuse_epilogues_after_attention},
      {"gather_slices", 2, pass_gather_slices},
      {"compose_row_moves", 2, pass_compose_row_moves},
      {"fuse_epilogues_after_row_moves", 2, pass_fuse_epilogues_after_row_moves},
      {"fuse_pointwise", 2, pass_fuse_pointwise},
      {"merge_sibling_products", 2, pass_merge_sibling_products},
      {"select_implementations", 0, pass_select_implementations},
      {"plan_memory", 0, pass_plan_memory},
      {"time_tactics", 0, pass_time_tactics},
  };
}

std::vector<uint8_t> Builder::build(const Network& network, BuildReport* report) const {
  BuildState s;
  s.config = config_;
  s.plan.network = network.clone();
  for (const Pass& pass : default_passes()) {
    if (config_.optimization_level < pass.min_optimization_level) {
      s.log.push_back(pass.name + ": skipped at optimization level " +
                      std::to_string(config_.optimization_level));
      continue;
    }
    const size_t lines = s.log.size();
    const auto start = std::chrono::steady_clock::now();
    try {
      pass.run(s);
    } catch (const Error& e) {
      throw Error("build: pass " + pass.name + ": " + e.what());
    }
    // Each pass's line ends with its time, so slow passes show in the build log.
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    if (s.log.size() > lines) {
      char buf[32];
      std::snprintf(buf, sizeof buf, " (%.1f ms)", ms);
      s.log.back() += buf;
    }
  }
  std::vector<uint8_t> bytes = plan_write(s.plan);
  s.log.push_back("emit: " + std::to_string(bytes.size()) + " bytes");
  if (report != nullptr) {
    report->pass_log = s.log;
    report->arena_bytes = s.plan.arena_bytes;
    report->num_layers = static_cast<int>(s.plan.network.layers().size());
    report->timed_problems = s.timed_problems;
    report->timing_entries = static_cast<int64_t>(s.plan.timing.size());
  }
  return bytes;
}

}  // namespace ember::engine
