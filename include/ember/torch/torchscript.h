// The TorchScript path of Ember in C++ (the role of torch_tensorrt::torchscript): a
// torch::jit::Module in, a torch::jit::Module out whose forward calls ember::execute_engine for
// every engine segment and runs everything else as TorchScript. Link libember_torch.so (with
// --no-as-needed, or load it explicitly) so its operator and class registrations run.
//
//   ember::torchscript::CompileSpec spec;
//   spec.inputs.push_back(ember::torchscript::Input::range({1, 3, 224, 224}, {8, 3, 224, 224},
//                                                          {32, 3, 224, 224}));
//   torch::jit::Module compiled = ember::torchscript::compile(module, spec);
//   compiled.save("model_ember.ts");
//
// See docs/torchscript.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/csrc/jit/api/module.h>

#include "ember/compiler/ir.h"
#include "ember/compiler/settings.h"

namespace ember::torchscript {

/// One tensor input of the compiled method: a static shape (min = opt = max) or a range, whose
/// dims with min != max are dynamic (symbols of the engines' optimization profiles).
struct Input {
  std::vector<int64_t> min_shape;
  std::vector<int64_t> opt_shape;
  std::vector<int64_t> max_shape;
  compiler::ScalarType dtype = compiler::ScalarType::kF32;

  /// A static shape.
  static Input fixed(std::vector<int64_t> shape,
                     compiler::ScalarType dtype = compiler::ScalarType::kF32);
  /// A shape range; every dim with min != max is dynamic.
  static Input range(std::vector<int64_t> min_shape, std::vector<int64_t> opt_shape,
                     std::vector<int64_t> max_shape,
                     compiler::ScalarType dtype = compiler::ScalarType::kF32);
  /// Parses "(1,3,224,224)@f16" or "[(1,3,224,224);(4,3,224,224);(8,3,224,224)]@f32" (the
  /// emberc form; "@dtype" is optional and defaults to f32). Throws compiler::Error showing the
  /// expected form.
  static Input parse(const std::string& text);
  /// The form parse() reads.
  std::string to_string() const;
};

/// What to compile and how: the method's inputs and the compiler settings shared with Python
/// (min_block_size, torch_executed_ops, torch_executed_modules, require_full_compilation,
/// truncate_double, backend = the device, ...).
struct CompileSpec {
  std::vector<Input> inputs;
  compiler::CompileSettings settings;
  /// The method to compile.
  std::string method = "forward";
  /// Merge non-adjacent supported nodes into one engine (the global partitioner); false:
  /// adjacent nodes only.
  bool use_global_partitioner = true;
  /// CUDA engines replay a CUDA graph per input-shape signature; false runs them layer by layer.
  /// Stored in each engine's metadata, so it holds after torch.jit.save / load.
  bool cuda_graphs = true;
};

/// What the TorchScript path did: the partition report and each node left to TorchScript.
struct CompileReport {
  std::string partition_report;
  /// One line per TorchScript node that was not imported or falls back: "kind: reason".
  std::vector<std::string> fallback;
  /// Engines built.
  int num_engines = 0;
  /// Lowering log of the TorchScript passes and the compiler's lowering.
  std::vector<std::string> log;
};

/// Compiles `module`'s method: TorchScript lowering (freeze, inline, constant propagation, dead
/// code elimination, dropout removal, tuple lowering, in-place ops to functional, peephole),
/// import into the compiler IR (static nodes evaluated), the compiler's lowering, partitioning,
/// conversion and engine builds, then a new module whose method calls ember::execute_engine per
/// engine segment and keeps the rest as TorchScript. `report` (optional) receives what happened.
/// Throws compiler::Error (require_full_compilation, bad inputs) with a message saying what.
torch::jit::Module compile(const torch::jit::Module& module, const CompileSpec& spec,
                           CompileReport* report = nullptr);

/// The operators of `method` (after lowering) that Ember can neither evaluate nor convert, one
/// line each ("aten::nonzero: no converter", "prim::If: control flow runs in TorchScript").
/// Empty when the whole method can become engines (shape-dependent validators aside).
std::vector<std::string> check_method_operator_support(const torch::jit::Module& module,
                                                       const std::string& method = "forward");

/// Compiles `method` into ONE engine and returns its plan bytes. Throws compiler::Error listing
/// every node that cannot be converted (this mode is full compilation by definition).
std::vector<uint8_t> convert_method_to_engine(const torch::jit::Module& module,
                                              const std::string& method, const CompileSpec& spec);

/// A new module whose forward(self, *inputs) runs the plan through ember::execute_engine and
/// returns its outputs (one tensor, or a tuple when there are several). The I/O dtypes are the
/// plan's.
torch::jit::Module embed_engine_in_new_module(const std::vector<uint8_t>& plan);

}  // namespace ember::torchscript
