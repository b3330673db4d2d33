// The new method graph: TorchScript nodes outside engines copied, each engine one
// ember::execute_engine call (seed 003's trt::execute_engine shape):
//
//   %engine = prim::GetAttr[name="_ember_engine_0"](%self)
//   %in = prim::ListConstruct(%x)
//   %out = ember::execute_engine(%in, %engine)
//   %y = prim::ListUnpack(%out)
//
// Nodes are emitted on demand (an explicit stack, no recursion), starting from the nodes with
// side effects in their original order and then the method's outputs, so every node comes after
// what it reads whatever order the segments have, and nodes only engines needed disappear.
#include <torch/csrc/jit/ir/constants.h>

#include <functional>
#include <set>

#include "torchscript_internal.h"

namespace ember::torchscript {

std::shared_ptr<jit::Graph> embed_graph(const std::shared_ptr<jit::Graph>& graph,
                                        const ImportResult& imported,
                                        const std::vector<BuiltEngine>& engines,
                                        const c10::TypePtr& self_type) {
  auto ng = std::make_shared<jit::Graph>();
  std::unordered_map<const jit::Value*, jit::Value*> env;
  jit::Value* self = ng->addInput("self")->setType(self_type);
  env[graph->inputs()[0]] = self;
  for (size_t i = 1; i < graph->inputs().size(); ++i) {
    jit::Value* in = graph->inputs()[i];
    env[in] = ng->addInput(in->debugName())->setType(in->type());
  }
  // Which engine outputs which TorchScript value.
  std::unordered_map<const jit::Value*, size_t> engine_of;
  for (size_t k = 0; k < engines.size(); ++k) {
    for (const std::string& name : engines[k].outputs) engine_of[imported.ts_value.at(name)] = k;
  }
  std::vector<bool> engine_done(engines.size(), false);
  std::set<const jit::Node*> node_done;

  auto emit_int = [&](const Affine& a) {
    jit::Value* acc = nullptr;
    for (const auto& [s, coef] : a.terms) {
      const SymbolInfo& info = imported.symbols[s];
      jit::Value* size = ng->insert(c10::aten::size, {env.at(graph->inputs()[info.input + 1]),
                                                      static_cast<int64_t>(info.dim)});
      jit::Value* term = coef == 1 ? size : ng->insert(c10::aten::mul, {size, coef});
      acc = acc == nullptr ? term : ng->insert(c10::aten::add, {acc, term});
    }
    if (acc == nullptr) return ng->insertConstant(a.c);
    return a.c == 0 ? acc : ng->insert(c10::aten::add, {acc, a.c});
  };

  // Items: (0, value), (1, engine index), (2, node).
  struct Item {
    int kind;
    const void* ptr;
    size_t k;
  };
  auto value_item = [](const jit::Value* v) { return Item{0, v, 0}; };
  auto node_item = [](const jit::Node* n) { return Item{2, n, 0}; };

  // A value that needs no node: a constant or size arithmetic. True when it is now in env.
  auto try_direct = [&](const jit::Value* v) {
    if (auto c = imported.constant.find(v); c != imported.constant.end()) {
      if (auto inserted = jit::tryInsertConstant(*ng, c->second)) {
        (*inserted)->setType(v->type());
        env[v] = *inserted;
        return true;
      }
    }
    if (auto a = imported.affine.find(v); a != imported.affine.end()) {
      const auto& [is_list, forms] = a->second;
      if (!is_list) {
        env[v] = emit_int(forms[0]);
      } else {
        std::vector<jit::Value*> items;
        for (const Affine& f : forms) items.push_back(emit_int(f));
        env[v] = ng->insertNode(ng->createList(c10::IntType::get(), items))->output();
      }
      return true;
    }
    return false;
  };

  auto done = [&](const Item& it) {
    if (it.kind == 0) return env.count(static_cast<const jit::Value*>(it.ptr)) != 0;
    if (it.kind == 1) return static_cast<bool>(engine_done[it.k]);
    return node_done.count(static_cast<const jit::Node*>(it.ptr)) != 0;
  };
  auto deps = [&](const Item& it) {
    std::vector<Item> out;
    if (it.kind == 0) {
      const auto* v = static_cast<const jit::Value*>(it.ptr);
      if (auto e = engine_of.find(v); e != engine_of.end()) {
        out.push_back(Item{1, nullptr, e->second});
      } else if (!try_direct(v)) {
        out.push_back(node_item(v->node()));
      }
    } else if (it.kind == 1) {
      for (const std::string& name : engines[it.k].inputs) {
        out.push_back(value_item(imported.ts_value.at(name)));
      }
    } else {
      for (jit::Value* v : free_values(const_cast<jit::Node*>(static_cast<const jit::Node*>(it.ptr)))) {
        out.push_back(value_item(v));
      }
    }
    return out;
  };
  auto build = [&](const Item& it) {
    if (it.kind == 0) return;  // set by its engine, node or try_direct
    if (it.kind == 1) {
      const BuiltEngine& e = engines[it.k];
      std::vector<jit::Value*> ins;
      for (const std::string& name : e.inputs) ins.push_back(env.at(imported.ts_value.at(name)));
      jit::Value* list = ng->insertNode(ng->createList(c10::TensorType::get(), ins))->output();
      jit::Value* engine = ng->insertGetAttr(self, "_ember_engine_" + std::to_string(it.k));
      jit::Value* result =
          ng->insert(c10::Symbol::fromQualString("ember::execute_engine"), {list, engine});
      jit::Node* unpack = ng->insertNode(ng->createListUnpack(result, e.outputs.size()));
      for (size_t i = 0; i < e.outputs.size(); ++i) {
        const jit::Value* ts = imported.ts_value.at(e.outputs[i]);
        unpack->output(i)->setType(ts->type());
        env[ts] = unpack->output(i);
      }
      engine_done[it.k] = true;
      return;
    }
    auto* n = const_cast<jit::Node*>(static_cast<const jit::Node*>(it.ptr));
    jit::Node* copy = ng->insertNode(ng->createClone(n, [&](jit::Value* v) { return env.at(v); }));
    for (size_t i = 0; i < n->outputs().size(); ++i) env[n->outputs()[i]] = copy->outputs()[i];
    node_done.insert(n);
  };
  auto ensure = [&](const Item& root) {
    std::vector<Item> stack{root};
    std::set<std::pair<int, const void*>> active;
    while (!stack.empty()) {
      Item it = stack.back();
      if (done(it)) {
        stack.pop_back();
        continue;
      }
      std::vector<Item> pending;
      for (const Item& d : deps(it)) {
        if (!done(d)) pending.push_back(d);
      }
      if (done(it)) {  // try_direct settled it
        stack.pop_back();
        continue;
      }
      if (!pending.empty()) {
        const std::pair<int, const void*> key{it.kind, it.kind == 1 ? reinterpret_cast<const void*>(it.k + 1) : it.ptr};
        if (!active.insert(key).second) {
          std::string chain;
          for (const Item& s : stack) {
            if (s.kind == 0) chain += " value %" + static_cast<const jit::Value*>(s.ptr)->debugName();
            else if (s.kind == 1) chain += " engine " + std::to_string(s.k);
            else chain += " node " + ts_op_key(static_cast<const jit::Node*>(s.ptr));
          }
          throw compiler::Error("ember.ts: internal error: a cycle between engines and TorchScript "
                                "nodes while building the new method:" + chain);
        }
        stack.insert(stack.end(), pending.begin(), pending.end());
        continue;
      }
      build(it);
      stack.pop_back();
    }
  };

  // Nodes whose effects nobody reads through a value: keep them, in their order.
  for (jit::Node* n : graph->nodes()) {
    auto role = imported.role.find(n);
    const bool in_ir = role != imported.role.end() &&
                       (role->second == NodeRole::kImported || role->second == NodeRole::kStatic);
    const c10::FunctionSchema* schema = n->maybeSchema();
    const bool effects = n->hasSideEffects() || n->outputs().empty() ||
                         (schema != nullptr && schema->is_mutable());
    if (!in_ir && effects) ensure(node_item(n));
  }
  for (jit::Value* out : graph->outputs()) {
    ensure(value_item(out));
    ng->registerOutput(env.at(out));
  }
  return ng;
}

}  // namespace ember::torchscript
