// Lowering on the TorchScript IR, before import: PyTorch's own JIT passes, in the order that
// leaves the importer a flat graph of aten ops over constants and inputs.
//
// Ember adds no pattern rewrites of its own here: the TorchScript spellings of ops
// (aten::_convolution, aten::linear, aten::flatten.using_ints, aten::batch_norm, aten::max_pool2d,
// aten::dropout, ...) are registry entries of the converter library, and the few spellings that
// need facts only known at import (aten::type_as and aten::to.other need the other tensor's dtype)
// are rewritten by the importer (importer.cpp). In-place ops become functional through PyTorch's
// RemoveTensorMutation, which proves that no alias observes the change; those it cannot prove stay
// in place and run in TorchScript.
#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/freeze_module.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/csrc/jit/passes/lower_tuples.h>
#include <torch/csrc/jit/passes/peephole.h>
#include <torch/csrc/jit/passes/remove_dropout.h>
#include <torch/csrc/jit/passes/remove_mutation.h>

#include "torchscript_internal.h"

namespace ember::torchscript {

namespace {

size_t count_nodes(jit::Block* block) {
  size_t n = 0;
  for (jit::Node* node : block->nodes()) {
    ++n;
    for (jit::Block* b : node->blocks()) n += count_nodes(b);
  }
  return n;
}

}  // namespace

void lower_graph(const std::shared_ptr<jit::Graph>& graph, std::vector<std::string>* log) {
  auto run = [&](const char* name, const std::function<void()>& pass) {
    const std::string before = graph->toString(false);
    const size_t nodes_before = count_nodes(graph->block());
    pass();
    if (log != nullptr && graph->toString(false) != before) {
      log->push_back(std::string("torchscript ") + name + ": " + std::to_string(nodes_before) +
                     " -> " + std::to_string(count_nodes(graph->block())) + " nodes");
    }
  };
  std::shared_ptr<jit::Graph> g = graph;
  run("inline", [&] { jit::Inline(*g); });
  run("remove_dropout", [&] { jit::removeDropout(g); });
  // Tuples built and taken apart inside the method go away; the method keeps its signature
  // (a tuple return stays one value, as torch.jit.save requires).
  run("lower_tuples", [&] { jit::LowerSimpleTuples(g); });
  run("constant_propagation", [&] { jit::ConstantPropagation(g); });
  run("remove_list_mutation", [&] { jit::RemoveListMutation(g); });
  run("inplace_to_functional", [&] {
    jit::InplaceToFunctionalActivation(g);
    jit::RemoveTensorMutation(g);
  });
  run("peephole", [&] { jit::PeepholeOptimize(g); });
  run("constant_propagation", [&] { jit::ConstantPropagation(g); });
  run("dead_code_elimination", [&] { jit::EliminateDeadCode(g); });
}

LoweredMethod lower_module(const jit::Module& module, const std::string& method) {
  if (!module.find_method(method)) {
    throw compiler::Error("ember.ts: the module has no method '" + method +
                          "' (compile a method it defines, e.g. forward)");
  }
  // Freezing folds parameters and attributes into constants; it works on a clone so the
  // caller's module keeps its training flag and weights.
  jit::Module copy = module.clone();
  copy.eval();
  LoweredMethod out;
  // Freezing keeps forward; another method must be named to survive it.
  std::vector<std::string> keep;
  if (method != "forward") keep.push_back(method);
  out.frozen = jit::freeze_module(copy, keep, /*freezeInterfaces=*/true);
  out.graph = out.frozen.get_method(method).graph()->copy();
  lower_graph(out.graph, &out.log);
  return out;
}

}  // namespace ember::torchscript
