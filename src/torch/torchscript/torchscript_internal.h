// Internals of the TorchScript path shared by its files: lowering on the TorchScript IR
// (lowering.cpp), import into the compiler IR (importer.cpp) and the new module (embedder.cpp).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <ATen/core/ivalue.h>
#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/ir/ir.h>

#include "engine_state.h"
#include "ember/compiler/compile.h"
#include "ember/compiler/ir.h"
#include "ember/compiler/partitioning.h"
#include "ember/engine/timing_cache.h"
#include "ember/torch/torchscript.h"

namespace ember::torchscript {

namespace jit = torch::jit;

/// A method graph after TorchScript lowering, with the frozen module that owns its constants.
struct LoweredMethod {
  jit::Module frozen;
  std::shared_ptr<jit::Graph> graph;
  std::vector<std::string> log;
};

/// Clones `module`, sets it to eval, freezes it and runs the lowering passes on `method`.
LoweredMethod lower_module(const jit::Module& module, const std::string& method);
/// The passes on a graph alone (inline, dropout removal, tuple lowering, mutation removal,
/// constant propagation, peephole, dead code elimination, then Ember's rewrites). Appends one
/// line per pass that changed something to `log`.
void lower_graph(const std::shared_ptr<jit::Graph>& graph, std::vector<std::string>* log);

/// What the importer decided for a TorchScript node.
enum class NodeRole {
  kImported,    ///< An aten node in the compiler IR (may still fall back when partitioned).
  kOpaque,      ///< In the IR under "torchscript::<kind>" (no converter): tensors in and out, so
                ///< the partitioner sees the dependency; always runs in TorchScript.
  kStatic,      ///< Evaluated at compile time (sizes, constants, lists of them): no IR node.
  kTorchScript  ///< Not in the IR (its results are not tensors): runs in TorchScript.
};

/// An int known at compile time as c + sum(a * symbol): symbols index ImportResult::symbols.
struct Affine {
  int64_t c = 0;
  std::vector<std::pair<int, int64_t>> terms;  ///< (symbol index, coefficient)
};

/// A dynamic dim of a method input: the symbol's name and where to read it at run time.
struct SymbolInfo {
  std::string name;
  int input = 0;  ///< Index among the method's inputs (self excluded).
  int dim = 0;
};

/// The importer's answer. IR nodes and values are named after the TorchScript node/value
/// (fx_name), which survives the compiler's lowering (replace_all_uses keeps it), so these maps
/// stay valid after lowering rewrote the IR.
struct ImportResult {
  compiler::Graph graph;
  std::vector<SymbolInfo> symbols;
  std::unordered_map<const jit::Node*, NodeRole> role;
  /// Why a node runs in TorchScript (opaque and TorchScript roles).
  std::unordered_map<const jit::Node*, std::string> reason;
  /// fx_name of the IR node of each imported or opaque TorchScript node.
  std::unordered_map<const jit::Node*, std::string> node_name;
  /// fx_name of the IR value of each TorchScript tensor in the IR.
  std::unordered_map<const jit::Value*, std::string> value_name;
  /// The TorchScript value of each IR fx_name.
  std::unordered_map<std::string, jit::Value*> ts_value;
  /// Static values that are the same in every evaluation run (insertable as constants).
  std::unordered_map<const jit::Value*, c10::IValue> constant;
  /// Static ints and int lists that depend on dynamic dims (one Affine per int; `is_list`).
  std::unordered_map<const jit::Value*, std::pair<bool, std::vector<Affine>>> affine;
};

/// Imports `graph` (lowered; input 0 is the module) for the given inputs. Never throws for an
/// unsupported node: it becomes opaque or stays in TorchScript, with its reason.
ImportResult import_graph(const std::shared_ptr<jit::Graph>& graph,
                          const std::vector<Input>& inputs);

/// "aten::add.Tensor" for a node with a schema, else the kind ("prim::If").
std::string ts_op_key(const jit::Node* node);

/// Values used inside `n`'s blocks (or as its inputs) that are defined outside `n`: what a node
/// with control flow reads from the graph around it.
std::vector<jit::Value*> free_values(jit::Node* n);

/// One built engine segment: the engine object and, in engine order, the fx names (TorchScript
/// values) it reads and writes.
struct BuiltEngine {
  c10::IValue engine;  ///< torch.classes.ember.Engine
  std::vector<std::string> inputs;
  std::vector<std::string> outputs;
  /// fx names of the IR nodes inside the engine.
  std::vector<std::string> nodes;
};

/// The new method graph (input 0 typed `self_type`): every TorchScript node outside engines is
/// copied (static values become constants, or size arithmetic on the inputs when they depend on
/// dynamic dims), each engine is one ember::execute_engine call reading attribute
/// `_ember_engine_<k>`. A value an engine computes but does not output is recomputed in
/// TorchScript.
std::shared_ptr<jit::Graph> embed_graph(const std::shared_ptr<jit::Graph>& graph,
                                        const ImportResult& imported,
                                        const std::vector<BuiltEngine>& engines,
                                        const c10::TypePtr& self_type);

/// True when every result of `n` (a node outside the IR) is read only by imported IR nodes,
/// which hold its content as arguments (list literals, a Tensor[] op whose ListUnpack was
/// imported as one node with it).
bool absorbed_by_ir(const jit::Node* n, const ImportResult& imported);

/// The fx names of IR tensors that TorchScript nodes outside the IR read (tuples, lists, control
/// flow, the method's return): the IR graph's outputs.
std::vector<std::string> values_read_by_torchscript(const std::shared_ptr<jit::Graph>& graph,
                                                    const ImportResult& imported);

/// One compilation in stages, so that the caller decides for each engine segment whether to
/// build it or to take a plan from elsewhere (the engine cache, which lives in Python and keys
/// plans by compiler::segment_fingerprint like the dynamo path):
///
///   Compilation c(module, spec);       // TorchScript lowering, import, lowering, partitioning
///   for (size_t k : c.engine_segments()) c.add_engine(k, c.build(k));   // or a cached plan
///   torch::jit::Module out = c.finish();
///
/// compile() is exactly this loop; the Python layer drives the same stages through
/// torch.classes.ember.TSCompilation.
class Compilation {
 public:
  /// Lowers, imports and partitions `module`'s method. Throws compiler::Error for bad inputs and,
  /// with require_full_compilation, listing every node that would run in TorchScript.
  Compilation(const jit::Module& module, const CompileSpec& spec);

  /// Indices of the partition's engine segments that can become engines (in order); a segment
  /// that reads or writes a value the compiler made (no TorchScript value) is reported in
  /// report().fallback and left out.
  const std::vector<size_t>& engine_segments() const { return engine_segments_; }
  /// Number of IR nodes of segment `k`.
  size_t segment_size(size_t k) const;
  /// The engine cache's key text and constants of segment `k` (the dynamo path's function).
  compiler::SegmentFingerprint fingerprint(size_t k) const;
  /// Builds segment `k` (with timing_cache() when set). Throws what the build throws.
  compiler::SegmentEngine build(size_t k) const;
  /// The engine metadata (I/O names, dtypes, shapes, back end, cuda_graphs) of a plan built for
  /// segment `k`, as torch.classes.ember.Engine stores it.
  bridge::EngineMetadata metadata(const compiler::SegmentEngine& built) const;
  /// Uses `plan` with I/O `io` (its inputs and outputs in the plan's order; back end and
  /// cuda_graphs are this compilation's) as segment `k`'s engine. Throws when the plan does not
  /// load or does not match `io`.
  void add_engine(size_t k, std::vector<uint8_t> plan, const bridge::EngineMetadata& io);
  /// Segment `k` runs in TorchScript because `why` (a failed build): reported as fallback.
  void add_failure(size_t k, const std::string& why);
  /// The new module: engines added so far, everything else TorchScript. Call once.
  jit::Module finish();

  /// The report (complete after finish()).
  const CompileReport& report() const { return report_; }
  /// Tactic timing shared by every build of this compilation (null: none).
  std::shared_ptr<engine::TimingCache> timing_cache;

 private:
  CompileSpec spec_;
  LoweredMethod lowered_;
  ImportResult imported_;
  compiler::PartitionResult partition_;
  CompileReport report_;
  std::vector<size_t> engine_segments_;
  std::map<size_t, BuiltEngine> engines_;
  bool finished_ = false;
};

}  // namespace ember::torchscript
