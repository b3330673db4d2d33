// The compiler IR: a DAG of aten nodes in topological order, torch-free.
//
// A Graph holds Values (tensors: graph inputs, constants and node outputs) and Nodes (one aten
// op each, keyed by its schema name "aten::add.Tensor"; the default overload is written without
// a suffix: "aten::relu"). Node arguments are the op's arguments in schema order: tensors are
// Value pointers, everything else is a constant Arg. Symbolic sizes (torch.export SymInts) are
// engine DimExprs over named symbols, so a shape like [s0, 12] flows straight into the engine.
//
// Values carry the FX node name they came from (`fx_name`), which is how the Python layer maps
// partitioning results back onto the torch.fx graph.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>
#include <vector>

#include "ember/engine/dim.h"
#include "ember/engine/types.h"

namespace ember::compiler {

using engine::DimExpr;
using engine::Error;
using engine::Shape;

/// Element types a torch tensor can have in the IR. A superset of the engine's DataType: f64
/// and i16 exist in PyTorch programs and are narrowed (truncate_double) or rejected by converters.
enum class ScalarType : uint8_t {
  kF32, kF16, kBF16, kI8, kU8, kI32, kI64, kBool, kF64, kI16,
  kF8E4M3,  ///< torch.float8_e4m3fn (only Quantize/Dequantize produce and read it in engines)
};
/// Number of ScalarType enumerators.
inline constexpr int kNumScalarTypes = 11;
/// "f32", "f64", "i16", ... (the engine's names for the shared ones).
const char* scalar_type_name(ScalarType t);
/// Parses a name produced by scalar_type_name; nullopt when unknown.
std::optional<ScalarType> scalar_type_from_name(std::string_view name);
/// True for f32, f16, bf16 and f64.
bool scalar_type_is_float(ScalarType t);
/// The engine dtype, or nullopt for f64/i16 (which a converter must narrow first).
std::optional<engine::DataType> to_engine_dtype(ScalarType t);
/// The IR type of an engine dtype.
ScalarType from_engine_dtype(engine::DataType t);

class Node;
class Graph;

/// Constant tensor data, borrowed from its owner (PyTorch) and kept alive through `owner`.
/// Data is C-contiguous. `data` may be null in graphs parsed from text (shape-only tests).
struct ConstantData {
  std::shared_ptr<const void> data;
  /// Size of the data in bytes (numel * element size); 0 with null data.
  size_t nbytes = 0;
};

/// A tensor value.
class Value {
 public:
  enum class Kind : uint8_t { kInput, kConstant, kNodeOutput };
  Kind kind() const { return kind_; }
  bool is_input() const { return kind_ == Kind::kInput; }
  bool is_constant() const { return kind_ == Kind::kConstant; }
  /// Unique in the graph: "%name" in the text form.
  const std::string& name() const { return name_; }
  ScalarType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  /// The producing node (kNodeOutput only), and which of its outputs this is.
  Node* producer() const { return producer_; }
  int output_index() const { return output_index_; }
  /// Constant data (kConstant only).
  const ConstantData& constant() const { return constant_; }
  /// Name of the torch.fx node this value is, or "" when the compiler made it. For a
  /// multi-output op the importer names each output by its getitem node.
  const std::string& fx_name() const { return fx_name_; }
  void set_fx_name(std::string name) { fx_name_ = std::move(name); }
  /// The dtype PyTorch gives this value's fx node. It differs from dtype() only where a pass
  /// changed the precision (autocast runs an f32 node in f16): engines cast at the boundary.
  ScalarType torch_dtype() const { return torch_dtype_.value_or(dtype_); }
  void set_torch_dtype(ScalarType t) { torch_dtype_ = t; }
  /// Position in Graph::values() (renumbered by Graph::compact()).
  int id() const { return id_; }

 private:
  friend class Graph;
  Kind kind_ = Kind::kInput;
  std::string name_;
  ScalarType dtype_ = ScalarType::kF32;
  Shape shape_;
  Node* producer_ = nullptr;
  int output_index_ = 0;
  ConstantData constant_;
  std::string fx_name_;
  std::optional<ScalarType> torch_dtype_;
  int id_ = -1;
};

/// None (an omitted optional argument).
struct NoneArg {
  friend bool operator==(NoneArg, NoneArg) { return true; }
};

/// A node argument. Integers that are symbolic sizes are DimExprs; int lists are always
/// vectors of DimExpr (constant or symbolic). A tensor list may hold nullptr for None entries
/// (aten::index takes Tensor?[]).
using Arg = std::variant<NoneArg, bool, int64_t, double, std::string, ScalarType, DimExpr,
                         std::vector<DimExpr>, std::vector<double>, std::vector<bool>, Value*,
                         std::vector<Value*>>;

/// "None", "True", "3", "[2, s0]", "%x", ... (the text form).
std::string arg_to_string(const Arg& arg);

/// One aten op application.
class Node {
 public:
  /// Schema key: "aten::convolution", "aten::add.Tensor".
  const std::string& op() const { return op_; }
  const std::vector<Arg>& args() const { return args_; }
  size_t num_args() const { return args_.size(); }
  const std::vector<Value*>& outputs() const { return outputs_; }
  Value* output(size_t i = 0) const { return outputs_.at(i); }
  /// Every tensor this node reads (Value args and the entries of Value lists), in order.
  std::vector<Value*> input_values() const;
  /// Whether PyTorch code reads output `i`. The FX importer names an output after the node that
  /// reads it (the getitem of a multi-output op) and leaves outputs nobody reads unnamed, so
  /// converters may skip or reject secondary outputs (pooling indices, batch-norm statistics)
  /// by asking this. Compiler-made values are unnamed too: ask only about imported nodes.
  bool output_is_read(size_t i) const {
    return i < outputs_.size() && !outputs_[i]->fx_name().empty();
  }

  // ---- Typed argument access: throws Error naming the node, position and expected type.
  /// True when position i is absent or None.
  bool arg_is_none(size_t i) const;
  Value* arg_tensor(size_t i) const;
  /// Tensor or nullptr for None/absent.
  Value* arg_optional_tensor(size_t i) const;
  std::vector<Value*> arg_tensor_list(size_t i) const;
  /// An int; a symbolic size throws (use arg_dim).
  int64_t arg_int(size_t i) const;
  /// `fallback` when absent or None.
  int64_t arg_int_or(size_t i, int64_t fallback) const;
  /// An int or symbolic size.
  DimExpr arg_dim(size_t i) const;
  /// A list of constant ints (a single int is a one-element list, as PyTorch allows).
  std::vector<int64_t> arg_ints(size_t i) const;
  /// A list of ints or symbolic sizes.
  std::vector<DimExpr> arg_dims(size_t i) const;
  /// A float (ints are accepted).
  double arg_double(size_t i) const;
  double arg_double_or(size_t i, double fallback) const;
  bool arg_bool(size_t i) const;
  bool arg_bool_or(size_t i, bool fallback) const;
  const std::string& arg_string(size_t i) const;
  std::optional<ScalarType> arg_scalar_type(size_t i) const;
  /// True when position i holds a number (bool, int, float or symbolic size), not a tensor.
  bool arg_is_scalar(size_t i) const;

  /// Qualified name of the innermost nn.Module this node came from ("layer1.0.conv1"), and the
  /// class names of all enclosing modules outermost first ("torchvision.models.resnet.ResNet").
  const std::string& module_path() const { return module_path_; }
  const std::vector<std::string>& module_types() const { return module_types_; }
  void set_module(std::string path, std::vector<std::string> types) {
    module_path_ = std::move(path);
    module_types_ = std::move(types);
  }
  /// Name of the torch.fx node ("" for compiler-made nodes).
  const std::string& fx_name() const { return fx_name_; }
  void set_fx_name(std::string name) { fx_name_ = std::move(name); }
  /// Position in Graph::nodes().
  int index() const { return index_; }
  /// "aten::convolution 'convolution_3'" for messages.
  std::string describe() const;

 private:
  friend class Graph;
  const Arg& arg_at(size_t i, const char* want) const;
  std::string op_;
  std::vector<Arg> args_;
  std::vector<Value*> outputs_;
  std::string module_path_;
  std::vector<std::string> module_types_;
  std::string fx_name_;
  int index_ = -1;
};

/// A tensor type: dtype and symbolic shape.
struct TensorType {
  ScalarType dtype = ScalarType::kF32;
  Shape shape;
};

/// Symbol range of a torch.export dynamic dim: min <= opt <= max.
struct SymbolRange {
  int64_t min = 1;
  int64_t opt = 1;
  int64_t max = 1;
};

/// The whole program. Not copyable (values point at nodes).
class Graph {
 public:
  Graph() = default;
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
  Graph(Graph&&) noexcept = default;
  Graph& operator=(Graph&&) noexcept = default;
  ~Graph();

  /// Declares a graph input; names are unique.
  Value* add_input(const std::string& name, ScalarType dtype, Shape shape);
  /// Declares a constant (parameter, buffer or lifted constant). Shape must be static.
  Value* add_constant(const std::string& name, ScalarType dtype, Shape shape, ConstantData data);
  /// Appends a node; outputs get names `output_names` (unique) and the given types. Every Value
  /// argument must already be in the graph (inputs, constants or earlier outputs).
  Node* add_node(const std::string& op, std::vector<Arg> args,
                 const std::vector<TensorType>& output_types,
                 const std::vector<std::string>& output_names);
  /// Inserts a node before `before` (same rules); for rewrite passes.
  Node* insert_node_before(Node* before, const std::string& op, std::vector<Arg> args,
                           const std::vector<TensorType>& output_types,
                           const std::vector<std::string>& output_names);
  /// Marks the graph outputs, in order (a value may appear more than once).
  void set_outputs(std::vector<Value*> outputs);

  const std::vector<Value*>& inputs() const { return inputs_; }
  const std::vector<Value*>& outputs() const { return outputs_; }
  std::vector<Value*> constants() const;
  /// Nodes in topological order.
  std::vector<Node*> nodes() const;
  std::vector<Value*> values() const;
  Value* find_value(std::string_view name) const;
  size_t num_nodes() const { return nodes_.size(); }

  /// Symbol ranges of the dynamic dims (from Input ranges), keyed by symbol name.
  std::vector<std::pair<std::string, SymbolRange>>& symbols() { return symbols_; }
  const std::vector<std::pair<std::string, SymbolRange>>& symbols() const { return symbols_; }
  /// The range of `symbol`, or nullptr.
  const SymbolRange* find_symbol(std::string_view symbol) const;

  // ---- Mutation for passes.
  /// Every use of `from` (node args and graph outputs) becomes `to`. `to` inherits `from`'s
  /// fx_name when it has none.
  void replace_all_uses(Value* from, Value* to);
  /// Removes a node; none of its outputs may still be used.
  void remove_node(Node* node);
  /// Nodes reading `v`, in order.
  std::vector<Node*> users(const Value* v) const;
  /// True when `v` is read by a node or is a graph output.
  bool is_used(const Value* v) const;
  /// Drops constants no node uses and renumbers values and nodes.
  void compact();
  /// A fresh value name with the given prefix ("%fold_3").
  std::string fresh_name(const std::string& prefix);

  /// The text form (see docs/compiler_ir.md); parse(to_string()).to_string() == to_string().
  std::string to_string() const;
  /// Parses the text form; constants get no data. Throws Error starting "line N: " on malformed
  /// text (never crashes); values must be defined before they are used.
  static Graph parse(std::string_view text);

 private:
  Value* new_value(Value::Kind kind, const std::string& name, ScalarType dtype, Shape shape);
  void renumber();
  std::vector<std::unique_ptr<Value>> values_;
  std::unordered_map<std::string, Value*> by_name_;  // every value in values_, by name
  std::vector<std::unique_ptr<Node>> nodes_;
  std::vector<Value*> inputs_;
  std::vector<Value*> outputs_;
  std::vector<std::pair<std::string, SymbolRange>> symbols_;
  int64_t fresh_counter_ = 0;
};

}  // namespace ember::compiler
