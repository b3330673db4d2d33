// ember._C extension bindings: the engine's network-definition API and the conversion context,
// for converters written in Python (python/ember/extending.py, docs/extending.md).
//
// A Python converter is registered into the same ConverterRegistry the C++ converters use, with
// a C++ ConvertFn/ValidateFn that calls back into Python. Conversion runs from Python
// (ember._C.build_segment releases the GIL while it builds; ember._C.partition and Graph.lower
// keep it), so each callback takes the GIL with gil_scoped_acquire, which works in both cases.
//
// Lifetimes: the Network, Tensor, Layer, Node and Value objects Python sees are references into
// C++ objects that live only for one conversion (or one validator call); they are handed out
// with return_value_policy::reference and must not be kept past the callback (documented).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <set>
#include <type_traits>

#include "ember/compiler/conversion.h"
#include "ember/engine/network.h"

namespace py = pybind11;
using namespace ember::engine;
using ember::compiler::ConversionContext;
using ember::compiler::ConversionError;
using ember::compiler::ConverterEntry;
using ember::compiler::ConverterRegistry;
using ember::compiler::Node;
using ember::compiler::Reason;
using ember::compiler::ScalarType;
using ember::compiler::Value;

namespace {

// ---- Python values <-> engine types

DataType to_dtype(const py::handle& h) {
  // "f16", an ember dtype name, or a torch.dtype (whose str() is "torch.float16").
  static const std::pair<const char*, DataType> kTorch[] = {
      {"torch.float32", DataType::kF32},   {"torch.float16", DataType::kF16},
      {"torch.bfloat16", DataType::kBF16}, {"torch.int8", DataType::kI8},
      {"torch.uint8", DataType::kU8},      {"torch.int32", DataType::kI32},
      {"torch.int64", DataType::kI64},     {"torch.bool", DataType::kBool},
      {"torch.float8_e4m3fn", DataType::kF8E4M3}};
  const std::string s = py::str(h);
  if (auto d = dtype_from_name(s)) return *d;
  for (const auto& [name, d] : kTorch) {
    if (s == name) return d;
  }
  throw Error("unknown dtype '" + s + "': use one of f32, f16, bf16, i8, u8, i32, i64, bool, f8e4m3 " +
              "or the matching torch.dtype");
}

DimExpr to_dim(const py::handle& h) {
  if (py::isinstance<py::bool_>(h)) throw Error("a bool where a dimension was expected");
  if (py::isinstance<py::int_>(h)) return DimExpr(h.cast<int64_t>());
  if (py::isinstance<py::str>(h)) return DimExpr::parse(h.cast<std::string>());
  throw Error("a dimension must be an int or symbolic text such as 's0*2', got " +
              std::string(py::str(py::type::of(h).attr("__name__"))));
}

Shape to_shape(const py::handle& h) {
  Shape s;
  for (const auto& d : h) s.push_back(to_dim(d));
  return s;
}

py::object dim_to_py(const DimExpr& d) {
  if (d.is_constant()) return py::int_(d.constant());
  return py::str(d.to_string());
}

py::list shape_to_py(const Shape& s) {
  py::list out;
  for (const DimExpr& d : s) out.append(dim_to_py(d));
  return out;
}

// Sets a layer's parameter fields from Python keyword arguments, through the same fields()
// lists the plan writer and the inspector visit, so every parameter of every layer kind is
// reachable by its documented name. Unknown names are an error that lists the known ones.
class FieldSetter {
 public:
  FieldSetter(const py::dict& values, std::string layer)
      : values_(values), layer_(std::move(layer)) {}

  template <class T>
  void operator()(const char* name, T& field) {
    known_.push_back(name);
    if (!values_.contains(name)) return;
    used_.insert(name);
    const py::handle h = values_[name];
    try {
      set(h, field);
    } catch (const std::exception& e) {
      throw Error(layer_ + " parameter '" + name + "': " + e.what());
    }
  }

  void check_all_used() const {
    for (const auto& [k, v] : values_) {
      const std::string key = py::str(k);
      if (used_.count(key) == 0) {
        std::string list;
        for (const auto& n : known_) list += (list.empty() ? "" : ", ") + n;
        throw Error(layer_ + " has no parameter '" + key +
                    "' (its parameters: " + (list.empty() ? "none" : list) + ")");
      }
    }
  }

 private:
  static void set(const py::handle& h, bool& f) { f = h.cast<bool>(); }
  static void set(const py::handle& h, int64_t& f) { f = h.cast<int64_t>(); }
  static void set(const py::handle& h, double& f) { f = h.cast<double>(); }
  static void set(const py::handle& h, std::vector<int64_t>& f) {
    f = h.cast<std::vector<int64_t>>();
  }
  static void set(const py::handle& h, std::vector<double>& f) {
    f = h.cast<std::vector<double>>();
  }
  static void set(const py::handle& h, Shape& f) { f = to_shape(h); }
  static void set(const py::handle& h, DataType& f) { f = to_dtype(h); }
  static void set(const py::handle&, Weights&) {
    throw Error("weights are given through add_constant");
  }
  static void set(const py::handle& h, std::string& f) { f = h.cast<std::string>(); }
  static void set(const py::handle& h, std::vector<uint8_t>& f) {
    const std::string bytes = h.cast<py::bytes>();
    f.assign(bytes.begin(), bytes.end());
  }
  template <class E, std::enable_if_t<std::is_enum_v<E>, int> = 0>
  static void set(const py::handle& h, E& f) {
    // The bound enum (ember._C.ActivationType.RELU) or its member name ("RELU").
    if (py::isinstance<py::str>(h)) {
      py::object type = py::type::of(py::cast(E{}));
      const std::string name = h.cast<std::string>();
      if (!py::hasattr(type, name.c_str())) {
        throw Error("'" + name + "' is not a member of " +
                    std::string(py::str(type.attr("__name__"))));
      }
      f = type.attr(name.c_str()).template cast<E>();
      return;
    }
    f = h.cast<E>();
  }

  const py::dict& values_;
  std::string layer_;
  std::vector<std::string> known_;
  std::set<std::string> used_;
};

template <class P>
P params_from(const py::dict& kwargs, const std::string& layer) {
  P p;
  FieldSetter setter(kwargs, layer);
  p.fields(setter);
  setter.check_all_used();
  return p;
}

// LayerParams of the kind named `kind` ("Convolution"), default-constructed.
template <size_t I = 0>
LayerParams params_of_kind(size_t index) {
  if constexpr (I < std::variant_size_v<LayerParams>) {
    if (index == I) return LayerParams(std::in_place_index<I>);
    return params_of_kind<I + 1>(index);
  } else {
    throw Error("bad layer kind index");
  }
}

LayerParams params_named(const std::string& kind, const py::dict& kwargs) {
  for (int i = 0; i < kNumLayerKinds; ++i) {
    if (kind != layer_kind_name(static_cast<LayerKind>(i))) continue;
    if (static_cast<LayerKind>(i) == LayerKind::kConstant) {
      throw Error("use add_constant for Constant layers");
    }
    LayerParams p = params_of_kind(static_cast<size_t>(i));
    std::visit(
        [&](auto& params) {
          FieldSetter setter(kwargs, kind);
          params.fields(setter);
          setter.check_all_used();
        },
        p);
    return p;
  }
  std::string list;
  for (int i = 0; i < kNumLayerKinds; ++i) {
    list += (i ? ", " : "") + std::string(layer_kind_name(static_cast<LayerKind>(i)));
  }
  throw Error("unknown layer kind '" + kind + "' (kinds: " + list + ")");
}

std::string pop_name(py::kwargs& kw) {
  if (!kw.contains("name")) return "";
  std::string n = py::str(kw["name"]);
  PyDict_DelItemString(kw.ptr(), "name");
  return n;
}

// ---- The Python converter trampolines

std::string python_error_text(const py::error_already_set& e) {
  // "ValueError: message" without pybind11's traceback lines: the node and the converter are
  // named by the caller, and the message stays one line in the partition report.
  std::string type = "Exception";
  if (e.type()) type = py::str(e.type().attr("__name__"));
  return type + ": " + std::string(py::str(e.value()));
}

struct PyNodeRef {
  const Node* node;
};

struct PyContextRef {
  ConversionContext* ctx;
  const Node* node;
};

void set_python_outputs(ConversionContext& ctx, const Node& node, const py::object& result) {
  std::vector<py::object> outs;
  if (py::isinstance<Tensor>(result)) {
    outs.push_back(result);
  } else if (py::isinstance<py::tuple>(result) || py::isinstance<py::list>(result)) {
    for (const auto& o : result) outs.push_back(py::reinterpret_borrow<py::object>(o));
  } else {
    throw Error("the converter returned " +
                std::string(py::str(py::type::of(result).attr("__name__"))) +
                "; return an engine tensor (ctx.net.add_*(...).output()) or a tuple of them, "
                "one per output of the node");
  }
  if (outs.size() != node.outputs().size()) {
    throw Error("the converter returned " + std::to_string(outs.size()) + " tensors; " +
                node.describe() + " has " + std::to_string(node.outputs().size()) + " outputs");
  }
  for (size_t i = 0; i < outs.size(); ++i) {
    if (outs[i].is_none()) {
      if (node.output_is_read(i)) {
        throw Error("the converter returned None for output " + std::to_string(i) +
                    ", which PyTorch reads");
      }
      continue;
    }
    ctx.set_output(node, i, outs[i].cast<Tensor*>());
  }
}

// Holds a Python callable for the registry's whole life. The registry is a static that outlives
// the interpreter: once Python is finalized the reference is leaked rather than released.
std::shared_ptr<py::object> hold(py::object fn) {
  return std::shared_ptr<py::object>(new py::object(std::move(fn)), [](py::object* o) {
    if (Py_IsInitialized() != 0) {
      py::gil_scoped_acquire gil;
      delete o;
    }
  });
}

void register_python_converter(const std::string& op, py::object convert, py::object validate,
                               bool supports_dynamic, int priority, const std::string& label) {
  if (op.empty()) throw Error("register_converter: the op key is empty");
  if (label.rfind("python:", 0) != 0) {
    throw Error("register_converter: the label must start with 'python:'");
  }
  auto fn = hold(std::move(convert));
  ConverterEntry e;
  e.op = op;
  e.priority = priority;
  e.supports_dynamic = supports_dynamic;
  e.file = label;
  e.convert = [fn](ConversionContext& ctx, const Node& node) {
    py::gil_scoped_acquire gil;
    try {
      py::object result = (*fn)(PyContextRef{&ctx, &node}, PyNodeRef{&node});
      set_python_outputs(ctx, node, result);
    } catch (py::error_already_set& err) {
      throw Error(python_error_text(err));
    }
  };
  if (!validate.is_none()) {
    auto vfn = hold(std::move(validate));
    e.validate = [vfn, label](const Node& node, const ember::compiler::CompileSettings&) -> Reason {
      py::gil_scoped_acquire gil;
      try {
        py::object r = (*vfn)(PyNodeRef{&node});
        if (r.is_none()) return std::nullopt;
        if (py::isinstance<py::str>(r)) return r.cast<std::string>();
        return std::string("rejected by the capability validator of ") + label;
      } catch (py::error_already_set& err) {
        return "the capability validator of " + label + " raised " + python_error_text(err);
      }
    };
  }
  ConverterRegistry::instance().add(std::move(e));
}

py::object value_arg(const Value* v) {
  if (v == nullptr) return py::none();
  return py::cast(v, py::return_value_policy::reference);
}

py::object arg_to_py(const ember::compiler::Arg& a) {
  using namespace ember::compiler;
  return std::visit(
      [](const auto& x) -> py::object {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, NoneArg>) {
          return py::none();
        } else if constexpr (std::is_same_v<T, bool> || std::is_same_v<T, int64_t> ||
                             std::is_same_v<T, double> || std::is_same_v<T, std::string>) {
          return py::cast(x);
        } else if constexpr (std::is_same_v<T, ScalarType>) {
          return py::str(scalar_type_name(x));
        } else if constexpr (std::is_same_v<T, DimExpr>) {
          return dim_to_py(x);
        } else if constexpr (std::is_same_v<T, std::vector<DimExpr>>) {
          return shape_to_py(x);
        } else if constexpr (std::is_same_v<T, std::vector<double>> ||
                             std::is_same_v<T, std::vector<bool>>) {
          return py::cast(x);
        } else if constexpr (std::is_same_v<T, Value*>) {
          return value_arg(x);
        } else {
          py::list out;
          for (const Value* v : x) out.append(value_arg(v));
          return out;
        }
      },
      a);
}

}  // namespace

void bind_extending(py::module_& m) {
  // ---- enums of layer parameters (member names as TensorRT's Python API spells them)
  py::enum_<ActivationType>(m, "ActivationType")
      .value("RELU", ActivationType::kRelu)
      .value("SIGMOID", ActivationType::kSigmoid)
      .value("TANH", ActivationType::kTanh)
      .value("LEAKY_RELU", ActivationType::kLeakyRelu)
      .value("ELU", ActivationType::kElu)
      .value("SELU", ActivationType::kSelu)
      .value("SOFTSIGN", ActivationType::kSoftsign)
      .value("SOFTPLUS", ActivationType::kSoftplus)
      .value("CLIP", ActivationType::kClip)
      .value("HARD_SIGMOID", ActivationType::kHardSigmoid)
      .value("GELU_ERF", ActivationType::kGeluErf)
      .value("GELU_TANH", ActivationType::kGeluTanh)
      .value("SILU", ActivationType::kSilu);
  py::enum_<PoolingType>(m, "PoolingType")
      .value("MAX", PoolingType::kMax)
      .value("AVERAGE", PoolingType::kAverage);
  py::enum_<ElementWiseOp>(m, "ElementWiseOp")
      .value("SUM", ElementWiseOp::kSum)
      .value("PROD", ElementWiseOp::kProd)
      .value("MAX", ElementWiseOp::kMax)
      .value("MIN", ElementWiseOp::kMin)
      .value("SUB", ElementWiseOp::kSub)
      .value("DIV", ElementWiseOp::kDiv)
      .value("POW", ElementWiseOp::kPow)
      .value("FLOOR_DIV", ElementWiseOp::kFloorDiv)
      .value("AND", ElementWiseOp::kAnd)
      .value("OR", ElementWiseOp::kOr)
      .value("XOR", ElementWiseOp::kXor)
      .value("EQUAL", ElementWiseOp::kEqual)
      .value("GREATER", ElementWiseOp::kGreater)
      .value("LESS", ElementWiseOp::kLess);
  py::enum_<UnaryOp>(m, "UnaryOp")
      .value("EXP", UnaryOp::kExp)
      .value("LOG", UnaryOp::kLog)
      .value("SQRT", UnaryOp::kSqrt)
      .value("RSQRT", UnaryOp::kRsqrt)
      .value("RECIPROCAL", UnaryOp::kReciprocal)
      .value("ABS", UnaryOp::kAbs)
      .value("NEG", UnaryOp::kNeg)
      .value("SIN", UnaryOp::kSin)
      .value("COS", UnaryOp::kCos)
      .value("TAN", UnaryOp::kTan)
      .value("ASIN", UnaryOp::kAsin)
      .value("ACOS", UnaryOp::kAcos)
      .value("ATAN", UnaryOp::kAtan)
      .value("SINH", UnaryOp::kSinh)
      .value("COSH", UnaryOp::kCosh)
      .value("ASINH", UnaryOp::kAsinh)
      .value("ACOSH", UnaryOp::kAcosh)
      .value("ATANH", UnaryOp::kAtanh)
      .value("CEIL", UnaryOp::kCeil)
      .value("FLOOR", UnaryOp::kFloor)
      .value("ROUND", UnaryOp::kRound)
      .value("ERF", UnaryOp::kErf)
      .value("NOT", UnaryOp::kNot)
      .value("SIGN", UnaryOp::kSign)
      .value("IS_INF", UnaryOp::kIsInf)
      .value("IS_NAN", UnaryOp::kIsNan);
  py::enum_<ReduceOp>(m, "ReduceOp")
      .value("SUM", ReduceOp::kSum)
      .value("PROD", ReduceOp::kProd)
      .value("MAX", ReduceOp::kMax)
      .value("MIN", ReduceOp::kMin)
      .value("AVG", ReduceOp::kAvg);
  py::enum_<TopKOp>(m, "TopKOp").value("MAX", TopKOp::kMax).value("MIN", TopKOp::kMin);
  py::enum_<GatherMode>(m, "GatherMode")
      .value("DEFAULT", GatherMode::kDefault)
      .value("ELEMENT", GatherMode::kElement)
      .value("ND", GatherMode::kNd);
  py::enum_<ScatterReduction>(m, "ScatterReduction")
      .value("NONE", ScatterReduction::kNone)
      .value("SUM", ScatterReduction::kSum)
      .value("PROD", ScatterReduction::kProd)
      .value("MAX", ScatterReduction::kMax)
      .value("MIN", ScatterReduction::kMin);
  py::enum_<NormalizationType>(m, "NormalizationType")
      .value("LAYER", NormalizationType::kLayer)
      .value("GROUP", NormalizationType::kGroup)
      .value("INSTANCE", NormalizationType::kInstance)
      .value("RMS", NormalizationType::kRms);
  py::enum_<ResizeMode>(m, "ResizeMode")
      .value("NEAREST", ResizeMode::kNearest)
      .value("LINEAR", ResizeMode::kLinear)
      .value("CUBIC", ResizeMode::kCubic);
  py::enum_<ResizeCoordinate>(m, "ResizeCoordinate")
      .value("ALIGN_CORNERS", ResizeCoordinate::kAlignCorners)
      .value("HALF_PIXEL", ResizeCoordinate::kHalfPixel)
      .value("ASYMMETRIC", ResizeCoordinate::kAsymmetric);
  py::enum_<ResizeRounding>(m, "ResizeRounding")
      .value("FLOOR", ResizeRounding::kFloor)
      .value("HALF_UP", ResizeRounding::kHalfUp);
  py::enum_<PaddingMode>(m, "PaddingMode")
      .value("CONSTANT", PaddingMode::kConstant)
      .value("REFLECT", PaddingMode::kReflect)
      .value("REPLICATE", PaddingMode::kReplicate)
      .value("CIRCULAR", PaddingMode::kCircular);
  py::enum_<CumulativeOp>(m, "CumulativeOp").value("SUM", CumulativeOp::kSum);
  py::enum_<FillOp>(m, "FillOp")
      .value("CONSTANT", FillOp::kConstant)
      .value("ARANGE", FillOp::kArange);

  // ---- tensors and layers of the network being built
  py::class_<Tensor>(m, "Tensor", "An engine tensor handle, valid during its conversion only.")
      .def_property_readonly("name", &Tensor::name)
      .def_property_readonly("dtype", [](const Tensor& t) { return dtype_name(t.dtype()); })
      .def_property_readonly(
          "shape", [](const Tensor& t) { return shape_to_py(t.shape()); },
          "Dims: an int, or symbolic text ('s0', 's0*2') for dynamic dims.")
      .def_property_readonly("rank", &Tensor::rank)
      .def_property_readonly("is_input", &Tensor::is_input)
      .def("__repr__", [](const Tensor& t) {
        return "<ember Tensor '" + t.name() + "' " + dtype_name(t.dtype()) + " " +
               shape_to_string(t.shape()) + ">";
      });
  py::class_<Layer>(m, "Layer", "An engine layer handle, valid during its conversion only.")
      .def_property_readonly("name", &Layer::name)
      .def_property_readonly("kind", [](const Layer& l) { return layer_kind_name(l.kind()); })
      .def("output", &Layer::output, py::arg("index") = 0, py::return_value_policy::reference)
      .def_property_readonly("outputs", &Layer::outputs, py::return_value_policy::reference)
      .def("__repr__", &Layer::describe);

  constexpr auto ref = py::return_value_policy::reference;
  py::class_<Network>(m, "Network",
                      "The network a segment is converted into (the role of TensorRT's "
                      "INetworkDefinition). Layer parameters are keyword arguments named as in "
                      "include/ember/engine/layers.h.")
      .def(
          "add_layer",
          [](Network& n, const std::string& kind, std::vector<Tensor*> inputs, py::kwargs kw) {
            const std::string name = pop_name(kw);
            return n.add_layer(params_named(kind, kw), std::move(inputs), name);
          },
          py::arg("kind"), py::arg("inputs"), ref,
          "Any layer kind by name ('Convolution', 'ElementWise', ...), its parameters as "
          "keywords.")
      .def(
          "add_constant",
          [](Network& n, const py::buffer& data, const py::object& dtype, std::vector<int64_t> dims,
             const std::string& name) {
            const py::buffer_info info = data.request();
            const DataType d = to_dtype(dtype);
            const size_t want = static_cast<size_t>(dims_numel(dims)) * dtype_size(d);
            const size_t have = static_cast<size_t>(info.size * info.itemsize);
            if (want != have) {
              throw Error("add_constant: " + std::to_string(have) + " bytes given, a " +
                          dtype_name(d) + " tensor of dims " + dims_to_string(dims) + " needs " +
                          std::to_string(want));
            }
            return n.add_constant(Weights::copy(d, std::move(dims), info.ptr), name);
          },
          py::arg("data"), py::arg("dtype"), py::arg("dims"), py::arg("name") = "", ref,
          "A Constant layer from C-contiguous bytes (copied). ctx.constant(torch_tensor) is "
          "the convenient form.")
      .def(
          "add_convolution",
          [](Network& n, Tensor* x, Tensor* w, Tensor* b, py::kwargs kw) {
            const std::string name = pop_name(kw);
            return n.add_convolution(x, w, b, params_from<ConvolutionParams>(kw, "Convolution"),
                                     name);
          },
          py::arg("x"), py::arg("weight"), py::arg("bias") = nullptr, ref)
      .def(
          "add_deconvolution",
          [](Network& n, Tensor* x, Tensor* w, Tensor* b, py::kwargs kw) {
            const std::string name = pop_name(kw);
            return n.add_deconvolution(x, w, b,
                                       params_from<DeconvolutionParams>(kw, "Deconvolution"), name);
          },
          py::arg("x"), py::arg("weight"), py::arg("bias") = nullptr, ref)
      .def(
          "add_pooling",
          [](Network& n, Tensor* x, py::kwargs kw) {
            const std::string name = pop_name(kw);
            return n.add_pooling(x, params_from<PoolingParams>(kw, "Pooling"), name);
          },
          py::arg("x"), ref)
      .def("add_activation", &Network::add_activation, py::arg("x"), py::arg("type"),
           py::arg("alpha") = 0.0, py::arg("beta") = 0.0, py::arg("name") = "", ref)
      .def("add_elementwise", &Network::add_elementwise, py::arg("a"), py::arg("b"), py::arg("op"),
           py::arg("name") = "", ref)
      .def("add_unary", &Network::add_unary, py::arg("x"), py::arg("op"), py::arg("name") = "", ref)
      .def("add_reduce", &Network::add_reduce, py::arg("x"), py::arg("op"), py::arg("axes"),
           py::arg("keep_dims"), py::arg("name") = "", ref)
      .def("add_topk", &Network::add_topk, py::arg("x"), py::arg("op"), py::arg("k"),
           py::arg("axis"), py::arg("name") = "", ref)
      .def("add_softmax", &Network::add_softmax, py::arg("x"), py::arg("axis"),
           py::arg("log") = false, py::arg("name") = "", ref)
      .def("add_matrix_multiply", &Network::add_matrix_multiply, py::arg("a"),
           py::arg("transpose_a"), py::arg("b"), py::arg("transpose_b"), py::arg("name") = "", ref)
      .def(
          "add_shuffle",
          [](Network& n, Tensor* x, py::kwargs kw) {
            const std::string name = pop_name(kw);
            return n.add_shuffle(x, params_from<ShuffleParams>(kw, "Shuffle"), name);
          },
          py::arg("x"), ref)
      .def(
          "add_reshape",
          [](Network& n, Tensor* x, const py::list& shape, const std::string& name) {
            return n.add_reshape(x, to_shape(shape), name);
          },
          py::arg("x"), py::arg("shape"), py::arg("name") = "", ref)
      .def("add_transpose", &Network::add_transpose, py::arg("x"), py::arg("perm"),
           py::arg("name") = "", ref)
      .def("add_concatenation", &Network::add_concatenation, py::arg("xs"), py::arg("axis"),
           py::arg("name") = "", ref)
      .def(
          "add_slice",
          [](Network& n, Tensor* x, const py::list& start, const py::list& size,
             std::vector<int64_t> stride, const std::string& name) {
            return n.add_slice(x, to_shape(start), to_shape(size), std::move(stride), name);
          },
          py::arg("x"), py::arg("start"), py::arg("size"), py::arg("stride"), py::arg("name") = "",
          ref)
      .def(
          "add_gather",
          [](Network& n, Tensor* data, Tensor* indices, py::kwargs kw) {
            const std::string name = pop_name(kw);
            return n.add_gather(data, indices, params_from<GatherParams>(kw, "Gather"), name);
          },
          py::arg("data"), py::arg("indices"), ref)
      .def(
          "add_scatter",
          [](Network& n, Tensor* data, Tensor* indices, Tensor* updates, py::kwargs kw) {
            const std::string name = pop_name(kw);
            return n.add_scatter(data, indices, updates, params_from<ScatterParams>(kw, "Scatter"),
                                 name);
          },
          py::arg("data"), py::arg("indices"), py::arg("updates"), ref)
      .def("add_select", &Network::add_select, py::arg("condition"), py::arg("a"), py::arg("b"),
           py::arg("name") = "", ref)
      .def(
          "add_cast",
          [](Network& n, Tensor* x, const py::object& to, const std::string& name) {
            return n.add_cast(x, to_dtype(to), name);
          },
          py::arg("x"), py::arg("to"), py::arg("name") = "", ref)
      .def(
          "add_normalization",
          [](Network& n, Tensor* x, Tensor* scale, Tensor* bias, py::kwargs kw) {
            const std::string name = pop_name(kw);
            return n.add_normalization(x, scale, bias,
                                       params_from<NormalizationParams>(kw, "Normalization"), name);
          },
          py::arg("x"), py::arg("scale"), py::arg("bias"), ref)
      .def(
          "add_resize",
          [](Network& n, Tensor* x, py::kwargs kw) {
            const std::string name = pop_name(kw);
            return n.add_resize(x, params_from<ResizeParams>(kw, "Resize"), name);
          },
          py::arg("x"), ref)
      .def(
          "add_padding",
          [](Network& n, Tensor* x, py::kwargs kw) {
            const std::string name = pop_name(kw);
            return n.add_padding(x, params_from<PaddingParams>(kw, "Padding"), name);
          },
          py::arg("x"), ref)
      .def(
          "add_cumulative",
          [](Network& n, Tensor* x, py::kwargs kw) {
            const std::string name = pop_name(kw);
            return n.add_cumulative(x, params_from<CumulativeParams>(kw, "Cumulative"), name);
          },
          py::arg("x"), ref)
      .def(
          "add_fill",
          [](Network& n, py::kwargs kw) {
            const std::string name = pop_name(kw);
            return n.add_fill(params_from<FillParams>(kw, "Fill"), name);
          },
          ref)
      .def("add_shape", &Network::add_shape, py::arg("x"), py::arg("name") = "", ref)
      .def("add_identity", &Network::add_identity, py::arg("x"), py::arg("name") = "", ref)
      .def(
          "add_plugin",
          [](Network& n, std::vector<Tensor*> inputs, const std::string& creator,
             const std::string& version, const py::bytes& attributes, const std::string& name) {
            const std::string bytes = attributes;
            return n.add_plugin(std::move(inputs), creator, version,
                                std::vector<uint8_t>(bytes.begin(), bytes.end()), name);
          },
          py::arg("inputs"), py::arg("creator"), py::arg("version"),
          py::arg("attributes") = py::bytes(), py::arg("name") = "", ref,
          "A Plugin layer: the plugin of the registered creator (name, version) made from "
          "`attributes` (bytes), on `inputs`; its outputs are what the plugin infers.")
      .def(
          "add_attention",
          [](Network& n, Tensor* q, Tensor* k, Tensor* v, Tensor* mask, py::kwargs kw) {
            const std::string name = pop_name(kw);
            std::vector<Tensor*> ins{q, k, v};
            if (mask != nullptr) ins.push_back(mask);
            return n.add_layer(params_from<AttentionParams>(kw, "Attention"), std::move(ins), name);
          },
          py::arg("query"), py::arg("key"), py::arg("value"), py::arg("mask") = nullptr, ref);

  // ---- the IR node being converted (read-only)
  py::class_<Value>(m, "IRValue", "A tensor value of the compiler IR (the node's view).")
      .def_property_readonly("name", &Value::name)
      .def_property_readonly("fx_name", &Value::fx_name)
      .def_property_readonly("dtype", [](const Value& v) { return scalar_type_name(v.dtype()); })
      .def_property_readonly("shape", [](const Value& v) { return shape_to_py(v.shape()); })
      .def_property_readonly("rank", &Value::rank)
      .def_property_readonly("is_constant", &Value::is_constant)
      .def("__repr__", [](const Value& v) {
        return "<ember IRValue %" + v.name() + " " + scalar_type_name(v.dtype()) + " " +
               shape_to_string(v.shape()) + ">";
      });
  py::class_<PyNodeRef>(m, "IRNode", "The compiler IR node a converter is asked about.")
      .def_property_readonly("op", [](const PyNodeRef& n) { return n.node->op(); })
      .def_property_readonly("name", [](const PyNodeRef& n) { return n.node->fx_name(); })
      .def_property_readonly("module_path",
                             [](const PyNodeRef& n) { return n.node->module_path(); })
      .def_property_readonly(
          "args",
          [](const PyNodeRef& n) {
            py::list out;
            for (const auto& a : n.node->args()) out.append(arg_to_py(a));
            return out;
          },
          "Arguments in schema order: IRValue for tensors, Python values "
          "for the rest (symbolic sizes as text).")
      .def_property_readonly("outputs",
                             [](const PyNodeRef& n) {
                               py::list out;
                               for (const Value* v : n.node->outputs()) out.append(value_arg(v));
                               return out;
                             })
      .def("output_is_read", [](const PyNodeRef& n, size_t i) { return n.node->output_is_read(i); })
      .def("describe", [](const PyNodeRef& n) { return n.node->describe(); })
      .def("__repr__",
           [](const PyNodeRef& n) { return "<ember IRNode " + n.node->describe() + ">"; });

  // ---- the conversion context (the helpers C++ converters share)
  py::class_<PyContextRef>(m, "ConversionContext",
                           "State of converting one segment: its network and helpers.")
      .def_property_readonly(
          "net", [](const PyContextRef& c) { return &c.ctx->net(); }, ref)
      .def_property_readonly("backend",
                             [](const PyContextRef& c) { return c.ctx->settings().backend; })
      .def_property_readonly(
          "truncate_double",
          [](const PyContextRef& c) { return c.ctx->settings().truncate_double; })
      .def(
          "tensor", [](PyContextRef& c, const Value* v) { return c.ctx->tensor(v); },
          py::arg("value"), ref,
          "The engine tensor of an IR value (constants become Constant layers on first use).")
      .def(
          "engine_dtype",
          [](const PyContextRef& c, const std::string& ir_dtype) {
            auto t = ember::compiler::scalar_type_from_name(ir_dtype);
            if (!t) throw Error("unknown IR dtype '" + ir_dtype + "'");
            return dtype_name(c.ctx->engine_dtype(*t));
          },
          py::arg("ir_dtype"), "The engine dtype a value of this IR dtype has inside engines.")
      .def(
          "cast",
          [](PyContextRef& c, Tensor* t, const py::object& to, const std::string& name) {
            return c.ctx->cast(t, to_dtype(to), name);
          },
          py::arg("x"), py::arg("to"), py::arg("name") = "", ref,
          "x cast to `to` (no layer when it already has that dtype).")
      .def(
          "scalar",
          [](PyContextRef& c, double value, const py::object& dtype, int rank) {
            return c.ctx->scalar(value, to_dtype(dtype), rank);
          },
          py::arg("value"), py::arg("dtype"), py::arg("rank") = 0, ref,
          "A scalar constant with `rank` 1-dims, for broadcasting.")
      .def(
          "int_vector",
          [](PyContextRef& c, const std::vector<int64_t>& values, const py::object& dtype) {
            return c.ctx->int_vector(values, to_dtype(dtype));
          },
          py::arg("values"), py::arg("dtype") = "i64", ref)
      .def(
          "broadcast_rank",
          [](PyContextRef& c, Tensor* t, int rank) { return c.ctx->broadcast_rank(t, rank); },
          py::arg("x"), py::arg("rank"), ref,
          "x reshaped to `rank` by prepending 1-dims (numpy broadcasting made explicit).")
      .def(
          "layer_name",
          [](PyContextRef& c, const std::string& suffix) {
            return c.ctx->layer_name(*c.node, suffix);
          },
          py::arg("suffix") = "", "A unique layer name derived from the node.");

  m.def("register_python_converter", &register_python_converter, py::arg("op"), py::arg("convert"),
        py::arg("validate"), py::arg("supports_dynamic"), py::arg("priority"), py::arg("label"),
        "Registers fn(ctx, node) -> tensor(s) for `op` in the converter registry (see "
        "ember.extending.converter, which wraps user converters).");
  m.def(
      "remove_converter",
      [](const std::string& op, const std::string& label) {
        return ConverterRegistry::instance().remove(op, label);
      },
      py::arg("op"), py::arg("label"));
  m.def("converter_entries", [] {
    py::list out;
    auto& r = ConverterRegistry::instance();
    for (const auto& op : r.ops()) {
      for (const ConverterEntry* e : r.entries(op)) {
        py::dict d;
        d["op"] = e->op;
        d["file"] = e->file;
        d["priority"] = e->priority;
        d["supports_dynamic"] = e->supports_dynamic;
        d["has_validator"] = static_cast<bool>(e->validate);
        out.append(d);
      }
    }
    return out;
  });

  // A converter failure names the node, so dynamo.compile can send that node alone to PyTorch.
  // Leaked on purpose: the type lives as long as the module, which outlives any static.
  static py::handle conversion_error =
      py::exception<ConversionError>(m, "ConversionError", m.attr("EngineError")).release();
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const ConversionError& e) {
      py::object err = conversion_error(e.what());
      err.attr("node") = e.node();
      err.attr("converter") = e.converter();
      PyErr_SetObject(conversion_error.ptr(), err.ptr());
    }
  });
}
