#include "backends/cpu/executor.h"
#include "builder/passes/passes.h"

namespace ember::engine {
namespace {

bool is_constant_output(const Tensor* t) {
  return t != nullptr && t->producer() != nullptr &&
         t->producer()->kind() == LayerKind::kConstant;
}

bool foldable(const Layer& l, int64_t max_bytes) {
  // Plugins are opaque: their code may not run on the host, and folding would take them out of
  // the plan the user asked for.
  if (l.kind() == LayerKind::kConstant || l.kind() == LayerKind::kPlugin) return false;
  for (const Tensor* in : l.inputs()) {
    if (in != nullptr && !is_constant_output(in)) return false;
  }
  // A Shape layer only needs its input's shape to be static, not its values.
  if (l.kind() != LayerKind::kShape && l.inputs().empty() && l.kind() != LayerKind::kFill) {
    return false;
  }
  for (const Tensor* t : l.outputs()) {
    if (!shape_is_static(t->shape())) return false;
    if (dims_numel(shape_evaluate(t->shape(), {})) * static_cast<int64_t>(dtype_size(t->dtype())) >
        max_bytes) {
      return false;
    }
  }
  return true;
}

bool foldable_shape(const Layer& l) {
  return l.kind() == LayerKind::kShape && l.input(0) != nullptr &&
         shape_is_static(l.input(0)->shape());
}

}  // namespace

void pass_fold_constants(BuildState& s) {
  Network& net = s.plan.network;
  int folded = 0;
  for (bool changed = true; changed;) {
    changed = false;
    for (Layer* l : net.layers()) {
      Weights w;
      if (foldable_shape(*l)) {
        const auto dims = shape_evaluate(l->input(0)->shape(), {});
        w = Weights::from_vector<int64_t>(DataType::kI64, {static_cast<int64_t>(dims.size())}, dims);
      } else if (foldable(*l, s.config.max_folded_constant_bytes)) {
        // Run the layer alone on the reference back end.
        Network one;
        std::vector<Tensor*> ins;
        for (const Tensor* in : l->inputs()) {
          ins.push_back(in == nullptr ? nullptr
                                      : one.add_constant(in->producer()->params_as<ConstantParams>().weights)->output());
        }
        Layer* copy = one.add_layer(l->params(), ins, l->name());
        if (copy->outputs().size() != 1) continue;  // multi-output layers stay (e.g. TopK)
        one.mark_output(copy->output());
        auto outs = cpu::execute_network(one, {});
        w = Weights::copy(outs[0].dtype, outs[0].dims, outs[0].bytes.data());
      } else {
        continue;
      }
      Layer* c = net.add_constant(std::move(w), l->name() + "#folded");
      net.replace_all_uses(l->output(), c->output());
      net.remove_layer(l);
      ++folded;
      changed = true;
      break;  // layers() changed: restart the scan
    }
  }
  s.log.push_back("fold_constants: folded " + std::to_string(folded) + " layers");
}

}  // namespace ember::engine
