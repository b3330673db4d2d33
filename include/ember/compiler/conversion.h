// Conversion: aten nodes -> engine network layers, through a registry of converters.
//
// A converter is defined and registered in one file per op family under
// src/compiler/converters/ (see docs/adding_a_converter.md):
//
//   EMBER_CONVERTER(relu, {"aten::relu"}, /*dynamic=*/true, validate_float_input) {
//     ctx.set_output(node, 0, ctx.net().add_activation(ctx.input(node, 0), ActivationType::kRelu)
//                                 ->output());
//   }
//
// The partitioner asks the registry what is supported (a converter exists, its validator
// accepts the node, the node is not excluded by the settings); it keeps no list of its own.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "ember/compiler/ir.h"
#include "ember/compiler/settings.h"
#include "ember/engine/network.h"

namespace ember::compiler {

class ConversionContext;

/// Why a node cannot be converted, or nullopt when it can.
using Reason = std::optional<std::string>;

/// Adds the layers for `node` and records its outputs with ctx.set_output.
using ConvertFn = std::function<void(ConversionContext& ctx, const Node& node)>;
/// Says whether this converter takes this particular node (dtypes, argument values, dynamic
/// dims). Must not touch the network.
using ValidateFn = std::function<Reason(const Node& node, const CompileSettings& settings)>;

/// One registered converter.
struct ConverterEntry {
  std::string op;                 ///< Schema key, "aten::add.Tensor".
  ConvertFn convert;
  ValidateFn validate;            ///< May be empty: accepts every node.
  int priority = 0;               ///< Higher wins when several converters accept a node.
  bool supports_dynamic = true;   ///< False: only nodes whose shapes are all static.
  std::string file;               ///< Source file, for the coverage listing.
};

/// The process-wide converter registry.
class ConverterRegistry {
 public:
  static ConverterRegistry& instance();
  /// Registers `entry` (several entries per op are allowed; see priority).
  void add(ConverterEntry entry);
  /// The converter that takes `node` under `settings` (highest priority whose validator
  /// accepts), or nullptr with `why` set to every rejection reason.
  const ConverterEntry* find(const Node& node, const CompileSettings& settings,
                             std::string* why = nullptr) const;
  /// True when any converter is registered for `op`.
  bool has(const std::string& op) const;
  /// Every registered schema key, sorted.
  std::vector<std::string> ops() const;
  /// Every entry for `op`.
  std::vector<const ConverterEntry*> entries(const std::string& op) const;
  /// Removes the entries for `op` whose `file` is `file` (converters registered at run time,
  /// from Python, name themselves there). Returns how many were removed.
  size_t remove(const std::string& op, const std::string& file);

 private:
  std::map<std::string, std::vector<ConverterEntry>> entries_;
};

/// A converter failed on one node. Carries the node's fx name and the converter's file so the
/// Python layer can send that node alone back to PyTorch and rebuild (see dynamo.compile).
class ConversionError : public Error {
 public:
  ConversionError(const std::string& message, std::string node_fx_name, std::string converter)
      : Error(message), node_(std::move(node_fx_name)), converter_(std::move(converter)) {}
  /// The fx name of the node whose converter failed ("" for compiler-made nodes).
  const std::string& node() const { return node_; }
  /// The converter's file (or "python:<module>.<function>").
  const std::string& converter() const { return converter_; }

 private:
  std::string node_;
  std::string converter_;
};

/// Registers a converter at static-initialization time. The converter library is linked whole
/// so these statics are kept; tests check that registration happened.
struct ConverterRegistration {
  ConverterRegistration(std::vector<std::string> ops, ConvertFn convert, ValidateFn validate,
                        bool supports_dynamic, int priority, const char* file);
};

#define EMBER_CONCAT_INNER(a, b) a##b
#define EMBER_CONCAT(a, b) EMBER_CONCAT_INNER(a, b)

/// Defines `static void convert_<name>(ConversionContext& ctx, const Node& node)` and registers
/// it for the listed schema keys. `validate` is a ValidateFn or nullptr.
#define EMBER_CONVERTER_P(name, ops, dynamic, validate, priority)                         \
  static void EMBER_CONCAT(convert_, name)(::ember::compiler::ConversionContext & ctx,  \
                                           const ::ember::compiler::Node& node);        \
  static const ::ember::compiler::ConverterRegistration EMBER_CONCAT(register_, name)(  \
      std::vector<std::string> ops, &EMBER_CONCAT(convert_, name), validate, dynamic,   \
      priority, __FILE__);                                                              \
  static void EMBER_CONCAT(convert_, name)(::ember::compiler::ConversionContext & ctx,  \
                                           const ::ember::compiler::Node& node)
#define EMBER_CONVERTER(name, ops, dynamic, validate) \
  EMBER_CONVERTER_P(name, ops, dynamic, validate, 0)

/// State of converting one segment: the network being built, the IR value -> engine tensor
/// map and the settings. Helpers here keep converters short.
class ConversionContext {
 public:
  ConversionContext(engine::Network& net, const CompileSettings& settings)
      : net_(net), settings_(settings) {}

  engine::Network& net() { return net_; }
  const CompileSettings& settings() const { return settings_; }

  /// Binds an IR value to an engine tensor (segment inputs; set_output for node outputs).
  void bind(const Value* v, engine::Tensor* t);
  /// The engine tensor of `v`. Constants become Constant layers on first use (f64/i64 narrowed
  /// per truncate_double). Throws Error when `v` was never bound.
  engine::Tensor* tensor(const Value* v);
  /// The engine tensor of node argument `i` (must be a tensor).
  engine::Tensor* input(const Node& node, size_t i) { return tensor(node.arg_tensor(i)); }
  /// Records output `i` of `node`. Casts `t` to the engine dtype of the output value when they
  /// differ, and checks the rank.
  void set_output(const Node& node, size_t i, engine::Tensor* t);

  /// The engine dtype a value of IR type `t` has inside engines (f64 -> f32 and, with
  /// truncate_double, i64 -> i32... see settings). Throws Error when it has none.
  engine::DataType engine_dtype(ScalarType t) const;
  /// `t` cast to `to` (no layer when it already has that dtype).
  engine::Tensor* cast(engine::Tensor* t, engine::DataType to, const std::string& name = "");
  /// A scalar constant of `dtype` with rank `rank` (all dims 1), for broadcasting against
  /// tensors of that rank.
  engine::Tensor* scalar(double value, engine::DataType dtype, int rank = 0);
  /// A 1-d i32/i64 constant tensor of the given values.
  engine::Tensor* int_vector(const std::vector<int64_t>& values, engine::DataType dtype);
  /// Node argument `i` as an engine tensor: a tensor argument is used as is, a number becomes
  /// a scalar constant of `dtype` and rank `rank`. Cast to `dtype` either way.
  engine::Tensor* operand(const Node& node, size_t i, engine::DataType dtype, int rank);
  /// `t` reshaped to rank `rank` by prepending 1-dims (numpy broadcasting made explicit).
  engine::Tensor* broadcast_rank(engine::Tensor* t, int rank);
  /// A unique layer name derived from the node ("convolution_3/bias").
  std::string layer_name(const Node& node, const std::string& suffix = "");

 private:
  engine::Network& net_;
  const CompileSettings& settings_;
  std::unordered_map<const Value*, engine::Tensor*> tensors_;
  int64_t name_counter_ = 0;
};

/// Normalizes a possibly negative dim against `rank`; throws Error naming the node when out of
/// range.
int64_t normalize_dim(int64_t dim, int64_t rank, const Node& node);

}  // namespace ember::compiler
