// Engine::inspect_json: per-layer information as JSON, parameters through their fields() lists.
#include <cstdio>
#include <string>

#include "ember/engine/runtime.h"
#include "plan/plan.h"
#include "runtime/cost.h"

namespace ember::engine {
namespace {

std::string quote(const std::string& s) {
  std::string out = "\"";
  for (const char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

// A string builder with ostream-like `<<`. Not std::ostringstream: inside a Python extension
// loaded after PyTorch, iostreams crashed on the GPU machine (Ubuntu 24.04 / GCC 13). The cause,
// found later: that compiler links libstdc++ statically, and the copy in libember.so was
// half-bound to the system's library that torch loads (runtime/iostreams_check.h; fixed by
// ember_private_runtime in CMakeLists.txt). This builder stays: it needs no locale at all.
class Text {
 public:
  Text& operator<<(const std::string& v) { s_ += v; return *this; }
  Text& operator<<(const char* v) { s_ += v; return *this; }
  Text& operator<<(int64_t v) { s_ += std::to_string(v); return *this; }
  Text& operator<<(int v) { s_ += std::to_string(v); return *this; }
  Text& operator<<(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.17g", v);
    s_ += buf;
    return *this;
  }
  const std::string& str() const { return s_; }

 private:
  std::string s_;
};

// Writes "name": value pairs for every field of a params struct.
class JsonFields {
 public:
  explicit JsonFields(Text& os) : os_(os) {}
  void operator()(const char* name, const int64_t& v) { key(name) << v; }
  void operator()(const char* name, const bool& v) { key(name) << (v ? "true" : "false"); }
  void operator()(const char* name, const double& v) { key(name) << v; }
  void operator()(const char* name, const DataType& v) { key(name) << quote(dtype_name(v)); }
  void operator()(const char* name, const std::vector<int64_t>& v) { list(name, v); }
  void operator()(const char* name, const std::vector<double>& v) { list(name, v); }
  void operator()(const char* name, const Shape& v) { key(name) << quote(shape_to_string(v)); }
  void operator()(const char* name, const std::string& v) { key(name) << quote(v); }
  /// Bytes (a plugin's attributes): their count, and the bytes in hex when there are few.
  void operator()(const char* name, const std::vector<uint8_t>& v) {
    static const char kHex[] = "0123456789abcdef";
    std::string hex;
    for (size_t i = 0; i < v.size() && i < 64; ++i) {
      hex += kHex[v[i] >> 4];
      hex += kHex[v[i] & 15];
    }
    key(name) << "{\"bytes\": " << static_cast<int64_t>(v.size()) << ", \"hex\": " << quote(hex)
              << (v.size() > 64 ? ", \"truncated\": true}" : "}");
  }
  void operator()(const char* name, const Weights& w) {
    key(name) << "{\"dtype\": " << quote(dtype_name(w.dtype())) << ", \"dims\": " << quote(dims_to_string(w.dims())) << "}";
  }
  template <class E, class = std::enable_if_t<std::is_enum_v<E>>>
  void operator()(const char* name, const E& v) {
    key(name) << static_cast<int>(v);
  }

 private:
  Text& key(const char* name) {
    os_ << (first_ ? "" : ", ") << quote(name) << ": ";
    first_ = false;
    return os_;
  }
  template <class T>
  void list(const char* name, const std::vector<T>& v) {
    key(name) << "[";
    for (size_t i = 0; i < v.size(); ++i) os_ << (i ? ", " : "") << v[i];
    os_ << "]";
  }
  Text& os_;
  bool first_ = true;
};

void tensor_list(Text& os, const std::vector<Tensor*>& ts) {
  os << "[";
  bool first = true;
  for (const Tensor* t : ts) {
    os << (first ? "" : ", ");
    first = false;
    if (t == nullptr) {
      os << "null";
      continue;
    }
    os << "{\"name\": " << quote(t->name()) << ", \"dtype\": " << quote(dtype_name(t->dtype()))
       << ", \"shape\": " << quote(shape_to_string(t->shape())) << "}";
  }
  os << "]";
}

}  // namespace

std::string Engine::inspect_json() const {
  const PlanModel& p = *plan_;
  Text os;
  os << "{\"backend\": " << quote(p.backend) << ", \"arena_bytes\": " << p.arena_bytes
     << ", \"inputs\": ";
  tensor_list(os, p.network.inputs());
  os << ", \"outputs\": ";
  tensor_list(os, p.network.outputs());
  os << ", \"layers\": [";
  const auto layers = p.network.layers();
  double flops = 0.0, bytes = 0.0;
  bool all_static = true;
  const auto offset = [&p](const Tensor* t) {  // arena offset; -1 for I/O and constants
    return t != nullptr && static_cast<size_t>(t->id()) < p.placements.size()
               ? p.placements[static_cast<size_t>(t->id())].arena_offset
               : int64_t{-1};
  };
  for (size_t i = 0; i < layers.size(); ++i) {
    const Layer* l = layers[i];
    os << (i ? ",\n  " : "\n  ") << "{\"name\": " << quote(l->name()) << ", \"type\": "
       << quote(layer_kind_name(l->kind())) << ", \"implementation\": "
       << quote(i < p.impls.size() ? p.impls[i] : "") << ", \"inputs\": ";
    tensor_list(os, l->inputs());
    os << ", \"outputs\": ";
    tensor_list(os, l->outputs());
    // The least work (runtime/cost.h): null where a shape is symbolic. A reshape the memory
    // plan placed on its input's slot moves nothing.
    const bool aliased = l->kind() == LayerKind::kShuffle && offset(l->output()) >= 0 &&
                         offset(l->output()) == offset(l->input(0));
    const std::optional<LayerCost> cost = layer_cost(*l, aliased);
    if (cost) {
      os << ", \"flops\": " << cost->flops << ", \"bytes\": " << cost->bytes;
      flops += cost->flops;
      bytes += cost->bytes;
    } else {
      os << ", \"flops\": null, \"bytes\": null";
      all_static = false;
    }
    os << ", \"params\": {";
    std::visit(
        [&os](const auto& params) {
          JsonFields v(os);
          const_cast<std::decay_t<decltype(params)>&>(params).fields(v);
        },
        l->params());
    os << "}}";
  }
  os << "\n], ";
  if (all_static) {
    os << "\"flops\": " << flops << ", \"bytes\": " << bytes << "}";
  } else {
    os << "\"flops\": null, \"bytes\": null}";
  }
  return os.str();
}

}  // namespace ember::engine
