// ember._C compiler bindings: the FX importer builds a compiler::Graph through these calls, then
// lowering, partitioning and per-segment engine builds run in C++.
//
// Arguments arrive as tagged tuples, ("int", 3), ("sym", "s0*2"), ("tensor", "%name"), ...:
// the Python importer knows torch's types, this side knows the IR's.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <set>

#include "ember/compiler/compile.h"
#include "ember/compiler/conversion.h"
#include "ember/compiler/lowering.h"
#include "ember/compiler/partitioning.h"

namespace py = pybind11;
using namespace ember::compiler;
using ember::engine::DimExpr;

namespace {

ScalarType parse_dtype(const std::string& name) {
  auto t = scalar_type_from_name(name);
  if (!t) throw Error("unknown dtype '" + name + "'");
  return *t;
}

DimExpr parse_dim(const py::handle& h) {
  if (py::isinstance<py::int_>(h)) return DimExpr(h.cast<int64_t>());
  return DimExpr::parse(h.cast<std::string>());
}

Shape parse_shape(const py::list& dims) {
  Shape s;
  for (const auto& d : dims) s.push_back(parse_dim(d));
  return s;
}

Value* find(Graph& g, const std::string& name) {
  Value* v = g.find_value(name);
  if (v == nullptr) throw Error("importer: no value named '" + name + "'");
  return v;
}

Arg parse_arg(Graph& g, const py::tuple& t) {
  const auto tag = t[0].cast<std::string>();
  if (tag == "none") return NoneArg{};
  if (tag == "bool") return t[1].cast<bool>();
  if (tag == "int") return t[1].cast<int64_t>();
  if (tag == "float") return t[1].cast<double>();
  if (tag == "str") return t[1].cast<std::string>();
  if (tag == "dtype") return parse_dtype(t[1].cast<std::string>());
  if (tag == "sym") return DimExpr::parse(t[1].cast<std::string>());
  if (tag == "ints") return parse_shape(t[1].cast<py::list>());
  if (tag == "floats") return t[1].cast<std::vector<double>>();
  if (tag == "bools") return t[1].cast<std::vector<bool>>();
  if (tag == "tensor") return find(g, t[1].cast<std::string>());
  if (tag == "tensors") {
    std::vector<Value*> out;
    for (const auto& e : t[1].cast<py::list>()) {
      out.push_back(e.is_none() ? nullptr : find(g, e.cast<std::string>()));
    }
    return out;
  }
  throw Error("importer: unknown argument tag '" + tag + "'");
}

CompileSettings parse_settings(const py::dict& d) {
  CompileSettings s;
  for (const auto& [k, v] : d) {
    const auto key = k.cast<std::string>();
    if (key == "min_block_size") s.min_block_size = v.cast<int64_t>();
    else if (key == "torch_executed_ops") s.torch_executed_ops = v.cast<std::vector<std::string>>();
    else if (key == "torch_executed_modules") s.torch_executed_modules = v.cast<std::vector<std::string>>();
    else if (key == "torch_executed_nodes")
      s.torch_executed_nodes = v.cast<std::vector<std::pair<std::string, std::string>>>();
    else if (key == "require_full_compilation") s.require_full_compilation = v.cast<bool>();
    else if (key == "truncate_double") s.truncate_double = v.cast<bool>();
    else if (key == "optimization_level") s.optimization_level = v.cast<int>();
    else if (key == "backend") s.backend = v.cast<std::string>();
    else if (key == "channels_last") s.channels_last = v.cast<std::string>();
    else if (key == "debug") s.debug = v.cast<bool>();
    else if (key == "enable_autocast") s.enable_autocast = v.cast<bool>();
    else if (key == "autocast_low_precision_type") s.autocast_low_precision_type = v.cast<std::string>();
    else if (key == "autocast_excluded_nodes") s.autocast_excluded_nodes = v.cast<std::vector<std::string>>();
    else if (key == "autocast_excluded_ops") s.autocast_excluded_ops = v.cast<std::vector<std::string>>();
    else if (key == "autocast_max_output_threshold") s.autocast_max_output_threshold = v.cast<double>();
    else if (key == "autocast_max_depth_of_reduction") s.autocast_max_depth_of_reduction = v.cast<int64_t>();
    else if (key == "autocast_output_magnitudes") {
      s.autocast_output_magnitudes = v.cast<std::unordered_map<std::string, double>>();
    }
    else if (key == "use_fp32_acc") s.use_fp32_acc = v.cast<bool>();
    else throw Error("unknown compiler setting '" + key + "'");
  }
  return s;
}

// Keeps a Python object alive from C++ (the tensor whose memory a constant borrows).
std::shared_ptr<const void> keep_alive(uintptr_t ptr, py::object owner) {
  auto* holder = new py::object(std::move(owner));
  return std::shared_ptr<const void>(reinterpret_cast<const void*>(ptr), [holder](const void*) {
    py::gil_scoped_acquire gil;
    delete holder;
  });
}

py::dict io_dict(const EngineIO& io) {
  py::dict d;
  d["name"] = io.name;
  d["value"] = io.value;
  d["fx_name"] = io.fx_name;
  d["torch_dtype"] = scalar_type_name(io.torch_dtype);
  d["engine_dtype"] = ember::engine::dtype_name(io.engine_dtype);
  d["shape"] = io.shape;
  return d;
}

py::list value_names(const std::vector<Value*>& vs) {
  py::list out;
  for (const Value* v : vs) out.append(py::make_tuple(v->name(), v->fx_name()));
  return out;
}

struct PyPartition {
  PartitionResult result;
};

}  // namespace

void bind_compiler(py::module_& m) {
  py::class_<Graph>(m, "Graph")
      .def(py::init<>())
      .def("add_input",
           [](Graph& g, const std::string& name, const std::string& dtype, const py::list& shape,
              const std::string& fx_name) {
             g.add_input(name, parse_dtype(dtype), parse_shape(shape))->set_fx_name(fx_name);
           })
      .def("add_constant",
           [](Graph& g, const std::string& name, const std::string& dtype, const py::list& shape,
              uintptr_t data_ptr, size_t nbytes, py::object owner, const std::string& fx_name) {
             ConstantData data{keep_alive(data_ptr, std::move(owner)), nbytes};
             g.add_constant(name, parse_dtype(dtype), parse_shape(shape), std::move(data))
                 ->set_fx_name(fx_name);
           })
      .def("add_node",
           [](Graph& g, const std::string& op, const py::list& args, const py::list& out_types,
              const std::vector<std::string>& out_names,
              const std::vector<std::string>& out_fx_names, const std::string& fx_name,
              const std::string& module_path, const std::vector<std::string>& module_types) {
             std::vector<Arg> a;
             for (const auto& x : args) a.push_back(parse_arg(g, x.cast<py::tuple>()));
             std::vector<TensorType> types;
             for (const auto& t : out_types) {
               auto tt = t.cast<py::tuple>();
               types.push_back({parse_dtype(tt[0].cast<std::string>()),
                                parse_shape(tt[1].cast<py::list>())});
             }
             Node* n = g.add_node(op, std::move(a), types, out_names);
             n->set_fx_name(fx_name);
             n->set_module(module_path, module_types);
             for (size_t i = 0; i < out_fx_names.size() && i < n->outputs().size(); ++i) {
               n->output(i)->set_fx_name(out_fx_names[i]);
             }
           })
      .def("set_outputs",
           [](Graph& g, const std::vector<std::string>& names) {
             std::vector<Value*> out;
             for (const auto& n : names) out.push_back(find(g, n));
             g.set_outputs(out);
           })
      .def("add_symbol",
           [](Graph& g, const std::string& name, int64_t min, int64_t opt, int64_t max) {
             if (!(min <= opt && opt <= max)) {
               throw Error("symbol " + name + ": needs min <= opt <= max, got " +
                           std::to_string(min) + ", " + std::to_string(opt) + ", " +
                           std::to_string(max));
             }
             g.symbols().push_back({name, SymbolRange{min, opt, max}});
           })
      .def("num_nodes", &Graph::num_nodes)
      .def("to_string", &Graph::to_string)
      .def("node_ops",
           [](const Graph& g) {
             std::vector<std::string> out;
             for (const Node* n : g.nodes()) out.push_back(n->op());
             return out;
           })
      .def("lower", [](Graph& g, const py::dict& settings) {
        return lower(g, parse_settings(settings)).log;
      })
      // lower() with autocast's decisions: {"log": [...], "autocast_kept": [(fx name, op,
      // reason)], "autocast_lowered": n}.
      .def("lower_report", [](Graph& g, const py::dict& settings) {
        const LoweringReport r = lower(g, parse_settings(settings));
        py::dict d;
        d["log"] = r.log;
        py::list kept;
        for (const AutocastDecision& k : r.autocast.kept) {
          kept.append(py::make_tuple(k.node, k.op, k.reason));
        }
        d["autocast_kept"] = kept;
        d["autocast_lowered"] = r.autocast.lowered;
        return d;
      })
      // Every node output PyTorch can name becomes a graph output too (one value per fx name,
      // the one the node computes): the debug build behind ember.debug.compare.
      .def("mark_intermediates_as_outputs", [](Graph& g) {
        std::vector<Value*> outs = g.outputs();
        std::set<const Value*> present(outs.begin(), outs.end());
        std::set<std::string> seen;
        for (const Node* n : g.nodes()) {
          if (n->fx_name().empty()) continue;  // compiler-made casts copy a named value
          for (Value* v : n->outputs()) {
            if (v->fx_name().empty() || !scalar_type_is_float(v->dtype())) continue;
            if (!seen.insert(v->fx_name()).second || present.count(v) != 0) continue;
            outs.push_back(v);
          }
        }
        const size_t added = outs.size() - g.outputs().size();
        g.set_outputs(std::move(outs));
        return added;
      });

  py::class_<PyPartition>(m, "Partition")
      .def("report", [](const PyPartition& p) { return p.result.report(); })
      .def("segments",
           [](const PyPartition& p) {
             py::list out;
             for (const Segment& s : p.result.segments) {
               py::dict d;
               d["engine"] = s.engine;
               py::list nodes;
               py::list ops;
               for (const Node* n : s.nodes) {
                 nodes.append(n->fx_name());
                 ops.append(n->op());
               }
               d["nodes"] = nodes;
               d["ops"] = ops;
               d["inputs"] = value_names(s.inputs);
               d["outputs"] = value_names(s.outputs);
               d["compute_nodes"] = s.compute_nodes;
               out.append(d);
             }
             return out;
           })
      .def("fallback", [](const PyPartition& p) {
        py::list out;
        for (const auto& [n, why] : p.result.fallback) {
          out.append(py::make_tuple(n->fx_name(), n->op(), why));
        }
        return out;
      });

  m.def("partition",
        [](const Graph& g, const py::dict& settings, bool global) {
          return PyPartition{partition(g, parse_settings(settings), global)};
        },
        py::arg("graph"), py::arg("settings"), py::arg("global_partitioner") = true);

  m.def("build_segment",
        [](const Graph& g, const PyPartition& p, size_t index, const py::dict& settings,
           std::shared_ptr<ember::engine::TimingCache> timing_cache) {
          if (index >= p.result.segments.size() || !p.result.segments[index].engine) {
            throw Error("build_segment: segment " + std::to_string(index) +
                        " is not an engine segment");
          }
          const CompileSettings s = parse_settings(settings);
          SegmentEngine e;
          {
            py::gil_scoped_release release;
            e = build_segment(g, p.result.segments[index], s, std::move(timing_cache));
          }
          py::dict d;
          d["plan"] = py::bytes(reinterpret_cast<const char*>(e.plan.data()), e.plan.size());
          py::list ins, outs;
          for (const auto& io : e.inputs) ins.append(io_dict(io));
          for (const auto& io : e.outputs) outs.append(io_dict(io));
          d["inputs"] = ins;
          d["outputs"] = outs;
          d["build_log"] = e.build_log;
          d["build_seconds"] = e.build_seconds;
          return d;
        },
        py::arg("graph"), py::arg("partition"), py::arg("index"), py::arg("settings"),
        py::arg("timing_cache") = nullptr);

  m.def("autocast_rules", [] {
    py::list out;
    for (const AutocastRule& r : autocast_rules()) out.append(py::make_tuple(r.op, r.category, r.why));
    return out;
  });

  m.def("segment_fingerprint",
        [](const Graph& g, const PyPartition& p, size_t index) {
          if (index >= p.result.segments.size()) {
            throw Error("segment_fingerprint: no segment " + std::to_string(index));
          }
          const SegmentFingerprint f = segment_fingerprint(g, p.result.segments[index]);
          // Read-only views of the constants' data, valid while `g` lives: the caller hashes
          // them at once (python/ember/_engine_cache.py).
          py::list data;
          for (const Value* c : f.constants) {
            const ConstantData& d = c->constant();
            if (d.data == nullptr) {
              data.append(py::bytes());
            } else {
              data.append(py::memoryview::from_memory(d.data.get(),
                                                      static_cast<py::ssize_t>(d.nbytes)));
            }
          }
          return py::make_tuple(f.text, data);
        },
        py::arg("graph"), py::arg("partition"), py::arg("index"),
        "The segment's canonical text (values named by position, no metadata) and the data of "
        "the constants it names %c0, %c1, ... (memoryviews valid while the graph lives).");

  m.def("converter_ops", [] { return ConverterRegistry::instance().ops(); });
  m.def("converter_files", [] {
    py::dict out;
    auto& r = ConverterRegistry::instance();
    for (const auto& op : r.ops()) out[py::str(op)] = r.entries(op).front()->file;
    return out;
  });
}
