// ember._C: the Python extension: the engine runtime (load a plan, inspect it, run it on host
// buffers) and the compiler (compiler_bindings.cpp). The torch bridge is a separate library,
// libember_torch.so, loaded through torch.ops.load_library.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <set>
#include <string>

#include "backends/cpu/dnnl_fallback.h"
#include "ember/engine/plugin.h"
#include "ember/engine/builder.h"
#include "ember/engine/runtime.h"
#include "ember/engine/timing_cache.h"
#include "runtime/iostreams_check.h"

namespace py = pybind11;
using namespace ember::engine;

namespace {

struct PyEngine {
  std::shared_ptr<const Engine> engine;
  // ExecutionContext::take_warnings messages already logged (run() makes a context per call;
  // each slow path is said once per engine). Guarded by the GIL.
  mutable std::set<std::string> warned;

  explicit PyEngine(const py::bytes& plan) {
    const std::string_view bytes = plan;
    engine = Runtime().deserialize(bytes.data(), bytes.size());
  }

  std::vector<std::tuple<std::string, std::string, std::string, bool>> io() const {
    std::vector<std::tuple<std::string, std::string, std::string, bool>> out;
    for (const auto& t : engine->io_tensors()) {
      out.emplace_back(t.name, dtype_name(t.dtype), shape_to_string(t.shape), t.is_input);
    }
    return out;
  }

  // inputs: name -> object with the buffer protocol (C-contiguous, checked by the caller).
  py::dict run(const py::dict& inputs) const {
    if (engine->backend() != "cpu") {
      // Its inputs and outputs would be device addresses; numpy arrays are host memory.
      throw Error("Engine.run runs 'cpu' plans on numpy arrays; this plan is for the '" +
                  engine->backend() +
                  "' back end, whose inputs and outputs live on the device. Run it from PyTorch "
                  "(torch.classes.ember.Engine with CUDA tensors, or ember.compile), or build the "
                  "plan for backend 'cpu'");
    }
    auto ctx = engine->create_execution_context();
    std::vector<py::buffer_info> keep;
    for (const auto& t : engine->io_tensors()) {
      if (!t.is_input) continue;
      py::buffer buf = inputs[py::str(t.name)].cast<py::buffer>();
      keep.push_back(buf.request());
      const py::buffer_info& info = keep.back();
      ctx->set_input_shape(t.name, std::vector<int64_t>(info.shape.begin(), info.shape.end()));
      if (info.size * static_cast<py::ssize_t>(dtype_size(t.dtype)) != info.size * info.itemsize) {
        throw Error("input '" + t.name + "': element size does not match " + dtype_name(t.dtype));
      }
      ctx->set_tensor_address(t.name, info.ptr);
    }
    py::dict result;
    std::vector<std::pair<std::string, py::bytearray>> outs;
    for (const auto& t : engine->io_tensors()) {
      if (t.is_input) continue;
      const auto dims = ctx->tensor_shape(t.name);
      py::bytearray buf(nullptr, static_cast<size_t>(dims_numel(dims)) * dtype_size(t.dtype));
      ctx->set_tensor_address(t.name, PyByteArray_AsString(buf.ptr()));
      result[py::str(t.name)] = py::make_tuple(buf, dtype_name(t.dtype), dims);
    }
    {
      py::gil_scoped_release release;
      ctx->execute();
    }
    for (const std::string& w : ctx->take_warnings()) {
      // A slow path (a layer oneDNN refused, run by the reference kernel): correct but slower,
      // so a warning on the "ember" logger (the sink below), once per engine.
      if (warned.insert(w).second) emit_warning(w);
    }
    return result;
  }
};

}  // namespace

void bind_compiler(py::module_& m);
void bind_extending(py::module_& m);

PYBIND11_MODULE(_C, m) {
  m.doc() = "Ember native extension";
  m.attr("__version__") = "0.1.0";
  py::register_exception<Error>(m, "EngineError", PyExc_RuntimeError);
  m.def("_iostreams_probe", &ember::engine::iostreams_probe,
        "What libember.so's std::ostringstream makes of \"eng\" << 42 << 0.5 in this process "
        "(\"eng420.5\" when iostreams work; runtime/iostreams_check.h).");
  m.def("available_backends", &available_backends);
  m.def("load_library", &ember::engine::load_library, py::arg("path"),
        "dlopen()s a shared library (RTLD_GLOBAL) so its static initializers register its plugin "
        "creators and converters in the process-wide registries of libember.so.");
  m.def("plugin_creators", &ember::engine::plugin_creators,
        "(name, version) of every plugin creator registered in this process, sorted.");
  m.attr("PLAN_FORMAT_VERSION") = ember::engine::plan_format_version();
  // Run-time warnings of engines (the torch bridge's too, which shares libember.so) go to the
  // "ember" logger. Removed at exit, before the interpreter goes away.
  set_warning_sink([](const std::string& message) {
    if (!Py_IsInitialized()) return;
    py::gil_scoped_acquire gil;
    try {
      py::module_::import("logging").attr("getLogger")("ember").attr("warning")(py::str(message));
    } catch (py::error_already_set& e) {
      e.discard_as_unraisable("ember: writing a warning to the 'ember' logger");
    }
  });
  py::module_::import("atexit").attr("register")(
      py::cpp_function([] { set_warning_sink(nullptr); }));
  m.def("_dnnl_fallback_count", &ember::engine::cpu::dnnl_fallback_count,
        "Testing: layer runs the CPU back end gave to its reference kernels because oneDNN "
        "refused them, since the process started.");
  m.def("_dnnl_refuse_for_testing", &ember::engine::cpu::dnnl_refuse_for_testing, py::arg("on"),
        "Testing: while on, oneDNN refuses every layer (status unimplemented), so the fallback "
        "and its warning can be tested.");
  py::class_<PyEngine>(m, "Engine")
      .def(py::init<const py::bytes&>(), py::arg("plan"))
      .def("backend", [](const PyEngine& e) { return e.engine->backend(); })
      .def("io", &PyEngine::io)
      .def("inspect_json", [](const PyEngine& e) { return e.engine->inspect_json(); })
      .def("timing_cache",
           [](const PyEngine& e) {
             const std::vector<uint8_t> b = e.engine->timing_cache().serialize();
             return py::bytes(reinterpret_cast<const char*>(b.data()), b.size());
           },
           "The engine's timing cache (the plan's tactic choices and any timed since) as "
           "bytes, loadable with TimingCache.from_bytes.")
      .def("run", &PyEngine::run);
  py::class_<TimingCache, std::shared_ptr<TimingCache>>(
      m, "TimingCache", "Tactic choices per problem (see ember/engine/timing_cache.h).")
      .def(py::init<>())
      .def_static(
          "from_bytes",
          [](const py::bytes& data) {
            const std::string_view b = data;
            return TimingCache::deserialize(b.data(), b.size());
          },
          py::arg("data"))
      .def("serialize",
           [](const TimingCache& c) {
             const std::vector<uint8_t> b = c.serialize();
             return py::bytes(reinterpret_cast<const char*>(b.data()), b.size());
           })
      .def(
          "store",
          [](TimingCache& c, const std::string& device, const std::string& problem,
             const py::bytes& choice) {
            const std::string_view b = choice;
            c.store(device, problem, std::vector<uint8_t>(b.begin(), b.end()));
          },
          py::arg("device"), py::arg("problem"), py::arg("choice"),
          "Records a choice (what the CUDA back end does after timing a problem); for tests and "
          "tools that prepare a cache.")
      .def(
          "lookup",
          [](TimingCache& c, const std::string& device, const std::string& problem) -> py::object {
            auto choice = c.lookup(device, problem);
            if (!choice) return py::none();
            return py::bytes(reinterpret_cast<const char*>(choice->data()), choice->size());
          },
          py::arg("device"), py::arg("problem"), "The choice for (device, problem), or None.")
      .def("__len__", &TimingCache::size)
      .def("timed_problems", &TimingCache::timed_problems);
  bind_compiler(m);
  bind_extending(m);
}
