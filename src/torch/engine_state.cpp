// The Engine state format (see engine_state.h): base64, a small JSON reader for the metadata,
// and the checks that tie the metadata to the plan.
#include "engine_state.h"

#include <array>
#include <map>
#include <stdexcept>
#include <utility>

namespace ember::bridge {

namespace {

[[noreturn]] void fail(const std::string& message) {
  throw std::runtime_error("ember.Engine state: " + message);
}

constexpr char kBase64Alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// Compiler ScalarType names (ember/compiler/ir.h); the bridge does not link the compiler.
constexpr std::array<const char*, 10> kTorchDtypeNames = {"f32", "f16", "bf16", "i8",  "u8",
                                                          "i32", "i64", "bool", "f64", "i16"};

// ---------------------------------------------------------------- JSON
// Just enough JSON for the metadata: objects, arrays, strings (with escapes, \u for ASCII and
// BMP), numbers, true/false/null. Nesting is bounded so hostile text cannot overflow the stack.

struct Json {
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject };
  Kind kind = Kind::kNull;
  bool boolean = false;
  double number = 0;
  std::string string;
  std::vector<Json> array;
  std::vector<std::pair<std::string, Json>> object;

  const Json* find(std::string_view key) const {
    for (const auto& [k, v] : object) {
      if (k == key) return &v;
    }
    return nullptr;
  }
};

class JsonParser {
 public:
  explicit JsonParser(std::string_view text) : text_(text) {}

  Json parse_all() {
    Json v = parse_value(0);
    skip_space();
    if (pos_ != text_.size()) error("unexpected text after the JSON value");
    return v;
  }

 private:
  static constexpr int kMaxDepth = 32;

  [[noreturn]] void error(const std::string& what) const {
    fail("metadata JSON: " + what + " at offset " + std::to_string(pos_));
  }
  void skip_space() {
    while (pos_ < text_.size() &&
           (text_[pos_] == ' ' || text_[pos_] == '\n' || text_[pos_] == '\r' || text_[pos_] == '\t')) {
      ++pos_;
    }
  }
  bool consume(char c) {
    skip_space();
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!consume(c)) error(std::string("expected '") + c + "'");
  }
  bool consume_word(std::string_view word) {
    if (text_.substr(pos_, word.size()) == word) {
      pos_ += word.size();
      return true;
    }
    return false;
  }

  Json parse_value(int depth) {
    if (depth > kMaxDepth) error("nesting deeper than " + std::to_string(kMaxDepth));
    skip_space();
    if (pos_ >= text_.size()) error("unexpected end of text");
    Json v;
    const char c = text_[pos_];
    if (c == '{') {
      ++pos_;
      v.kind = Json::Kind::kObject;
      if (consume('}')) return v;
      do {
        skip_space();
        std::string key = parse_string();
        expect(':');
        v.object.emplace_back(std::move(key), parse_value(depth + 1));
      } while (consume(','));
      expect('}');
    } else if (c == '[') {
      ++pos_;
      v.kind = Json::Kind::kArray;
      if (consume(']')) return v;
      do {
        v.array.push_back(parse_value(depth + 1));
      } while (consume(','));
      expect(']');
    } else if (c == '"') {
      v.kind = Json::Kind::kString;
      v.string = parse_string();
    } else if (consume_word("true")) {
      v.kind = Json::Kind::kBool;
      v.boolean = true;
    } else if (consume_word("false")) {
      v.kind = Json::Kind::kBool;
    } else if (consume_word("null")) {
      v.kind = Json::Kind::kNull;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      const size_t start = pos_;
      while (pos_ < text_.size() && std::string_view("+-0123456789.eE").find(text_[pos_]) !=
                                        std::string_view::npos) {
        ++pos_;
      }
      v.kind = Json::Kind::kNumber;
      try {
        v.number = std::stod(std::string(text_.substr(start, pos_ - start)));
      } catch (const std::exception&) {
        error("malformed number");
      }
    } else {
      error(std::string("unexpected character '") + c + "'");
    }
    return v;
  }

  std::string parse_string() {
    if (pos_ >= text_.size() || text_[pos_] != '"') error("expected a string");
    ++pos_;
    std::string out;
    while (true) {
      if (pos_ >= text_.size()) error("unterminated string");
      const char c = text_[pos_++];
      if (c == '"') return out;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= text_.size()) error("unterminated escape");
      const char e = text_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          if (pos_ + 4 > text_.size()) error("truncated \\u escape");
          unsigned code = 0;
          for (int i = 0; i < 4; ++i) {
            const char h = text_[pos_++];
            code <<= 4;
            if (h >= '0' && h <= '9') code |= static_cast<unsigned>(h - '0');
            else if (h >= 'a' && h <= 'f') code |= static_cast<unsigned>(h - 'a' + 10);
            else if (h >= 'A' && h <= 'F') code |= static_cast<unsigned>(h - 'A' + 10);
            else error("bad hex digit in \\u escape");
          }
          // UTF-8 encode (surrogate pairs are not needed for names and dtypes).
          if (code < 0x80) {
            out += static_cast<char>(code);
          } else if (code < 0x800) {
            out += static_cast<char>(0xC0 | (code >> 6));
            out += static_cast<char>(0x80 | (code & 0x3F));
          } else {
            out += static_cast<char>(0xE0 | (code >> 12));
            out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (code & 0x3F));
          }
          break;
        }
        default:
          error(std::string("unknown escape '\\") + e + "'");
      }
    }
  }

  std::string_view text_;
  size_t pos_ = 0;
};

void json_write_string(const std::string& s, std::string& out) {
  out += '"';
  for (const char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          static constexpr char kHex[] = "0123456789abcdef";
          out += "\\u00";
          out += kHex[(c >> 4) & 0xF];
          out += kHex[c & 0xF];
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

const std::string& json_string_field(const Json& object, std::string_view key,
                                     const std::string& where) {
  const Json* v = object.find(key);
  if (v == nullptr) fail("metadata " + where + " has no \"" + std::string(key) + "\" key");
  if (v->kind != Json::Kind::kString) {
    fail("metadata " + where + " key \"" + std::string(key) + "\" must be a string");
  }
  return v->string;
}

std::vector<BridgeIO> json_io_list(const Json& root, std::string_view key) {
  const Json* list = root.find(key);
  if (list == nullptr || list->kind != Json::Kind::kArray) {
    fail("metadata needs an \"" + std::string(key) + "\" array");
  }
  std::vector<BridgeIO> out;
  for (size_t i = 0; i < list->array.size(); ++i) {
    const Json& item = list->array[i];
    const std::string where = std::string(key) + "[" + std::to_string(i) + "]";
    if (item.kind != Json::Kind::kObject) fail("metadata " + where + " must be an object");
    BridgeIO io;
    io.name = json_string_field(item, "name", where);
    io.torch_dtype = json_string_field(item, "torch_dtype", where);
    if (!is_torch_dtype_name(io.torch_dtype)) {
      fail("metadata " + where + " ('" + io.name + "') has unknown torch_dtype '" + io.torch_dtype +
           "' (expected one of f32 f16 bf16 i8 u8 i32 i64 bool f64 i16)");
    }
    const std::string& engine_dtype = json_string_field(item, "engine_dtype", where);
    const auto dt = engine::dtype_from_name(engine_dtype);
    if (!dt) {
      fail("metadata " + where + " ('" + io.name + "') has unknown engine_dtype '" + engine_dtype +
           "' (expected one of f32 f16 bf16 i8 u8 i32 i64 bool)");
    }
    io.engine_dtype = *dt;
    if (const Json* shape = item.find("shape"); shape != nullptr) {
      if (shape->kind != Json::Kind::kString) fail("metadata " + where + " shape must be a string");
      io.shape = shape->string;
    }
    out.push_back(std::move(io));
  }
  return out;
}

// Rank of a shape text "[a, b, c]" ("[]" is rank 0); -1 when it is not bracketed.
int shape_text_rank(const std::string& text) {
  if (text.size() < 2 || text.front() != '[' || text.back() != ']') return -1;
  if (text.find_first_not_of(' ', 1) == text.size() - 1) return 0;
  int rank = 1, depth = 0;
  for (size_t i = 1; i + 1 < text.size(); ++i) {
    if (text[i] == '(') ++depth;
    if (text[i] == ')') --depth;
    if (text[i] == ',' && depth == 0) ++rank;
  }
  return rank;
}

void check_io_list(std::vector<BridgeIO>& meta, const std::vector<const engine::IOTensorInfo*>& plan,
                   const char* kind) {
  auto names = [](const auto& list, auto get) {
    std::string s;
    for (const auto& x : list) s += (s.empty() ? "" : ", ") + get(x);
    return "[" + s + "]";
  };
  const std::string meta_names = names(meta, [](const BridgeIO& io) { return io.name; });
  const std::string plan_names =
      names(plan, [](const engine::IOTensorInfo* t) { return t->name; });
  if (meta.size() != plan.size() || meta_names != plan_names) {
    fail(std::string("metadata ") + kind + " " + meta_names + " do not match the plan's " + kind +
         " " + plan_names + "; the metadata belongs to a different plan (rebuild the engine)");
  }
  for (size_t i = 0; i < meta.size(); ++i) {
    BridgeIO& io = meta[i];
    const engine::IOTensorInfo& t = *plan[i];
    if (io.engine_dtype != t.dtype) {
      fail(std::string(kind).substr(0, std::string(kind).size() - 1) + " '" + io.name +
           "': metadata engine_dtype " + engine::dtype_name(io.engine_dtype) + " but the plan has " +
           engine::dtype_name(t.dtype));
    }
    const std::string plan_shape = engine::shape_to_string(t.shape);
    if (io.shape.empty()) {
      io.shape = plan_shape;
    } else if (shape_text_rank(io.shape) != static_cast<int>(t.shape.size())) {
      fail(std::string(kind).substr(0, std::string(kind).size() - 1) + " '" + io.name +
           "': metadata shape " + io.shape + " does not have the rank of the plan's shape " +
           plan_shape);
    }
  }
}

}  // namespace

bool is_torch_dtype_name(std::string_view name) {
  for (const char* n : kTorchDtypeNames) {
    if (name == n) return true;
  }
  return false;
}

std::string base64_encode(const void* data, size_t size) {
  const auto* p = static_cast<const uint8_t*>(data);
  std::string out((size + 2) / 3 * 4, '=');
  char* o = out.data();
  size_t i = 0;
  for (; i + 3 <= size; i += 3, o += 4) {
    const uint32_t v = (uint32_t{p[i]} << 16) | (uint32_t{p[i + 1]} << 8) | p[i + 2];
    o[0] = kBase64Alphabet[(v >> 18) & 63];
    o[1] = kBase64Alphabet[(v >> 12) & 63];
    o[2] = kBase64Alphabet[(v >> 6) & 63];
    o[3] = kBase64Alphabet[v & 63];
  }
  if (size - i == 1) {  // "xx=="
    const uint32_t v = uint32_t{p[i]} << 16;
    o[0] = kBase64Alphabet[(v >> 18) & 63];
    o[1] = kBase64Alphabet[(v >> 12) & 63];
  } else if (size - i == 2) {  // "xxx="
    const uint32_t v = (uint32_t{p[i]} << 16) | (uint32_t{p[i + 1]} << 8);
    o[0] = kBase64Alphabet[(v >> 18) & 63];
    o[1] = kBase64Alphabet[(v >> 12) & 63];
    o[2] = kBase64Alphabet[(v >> 6) & 63];
  }
  return out;
}

std::vector<uint8_t> base64_decode(std::string_view text) {
  // 0x80 marks a byte that is not in the alphabet ('=' included: padding is handled apart).
  static const std::array<uint8_t, 256> value = [] {
    std::array<uint8_t, 256> v{};
    v.fill(0x80);
    for (int i = 0; i < 64; ++i) v[static_cast<uint8_t>(kBase64Alphabet[i])] = static_cast<uint8_t>(i);
    return v;
  }();
  if (text.size() % 4 != 0) {
    fail("plan base64 has length " + std::to_string(text.size()) +
         ", not a multiple of 4 (truncated or not base64)");
  }
  auto invalid_at = [](size_t position) {
    fail("plan base64 has an invalid character at position " + std::to_string(position) +
         " (the state string is corrupted or not base64; re-save the engine)");
  };
  // Padding is only allowed as the end of the last group: "xxx=" or "xx==".
  size_t pad = 0;
  if (!text.empty() && text.back() == '=') pad = text[text.size() - 2] == '=' ? 2 : 1;
  const size_t groups = text.size() / 4;
  std::vector<uint8_t> out(groups * 3 - pad);
  // Every group but a padded last one, without a branch per character (a 1 GB plan's state
  // decoded at ~0.1 GB/s before): invalid characters only set the 0x80 bit of `bad`, and a
  // second scan finds the first of them for the message.
  const size_t plain = pad != 0 ? groups - 1 : groups;
  const auto* in = reinterpret_cast<const uint8_t*>(text.data());
  uint8_t* o = out.data();
  uint8_t bad = 0;
  for (size_t g = 0; g < plain; ++g, in += 4, o += 3) {
    const uint32_t a = value[in[0]], b = value[in[1]], c = value[in[2]], d = value[in[3]];
    bad |= static_cast<uint8_t>(a | b | c | d);
    const uint32_t v = (a << 18) | (b << 12) | (c << 6) | d;
    o[0] = static_cast<uint8_t>(v >> 16);
    o[1] = static_cast<uint8_t>(v >> 8);
    o[2] = static_cast<uint8_t>(v);
  }
  if (bad & 0x80) {
    for (size_t i = 0; i < plain * 4; ++i) {
      if (value[static_cast<uint8_t>(text[i])] & 0x80) invalid_at(i);
    }
  }
  if (pad != 0) {  // the last group: 2 or 3 characters, then '='
    const size_t at = plain * 4;
    uint32_t v = 0;
    for (size_t j = 0; j < 4; ++j) {
      const bool is_pad = j >= 4 - pad;
      const uint8_t ch = static_cast<uint8_t>(text[at + j]);
      const uint8_t d = is_pad ? (ch == '=' ? 0 : 0x80) : value[ch];
      if (d & 0x80) invalid_at(at + j);
      v = (v << 6) | d;
    }
    o[0] = static_cast<uint8_t>(v >> 16);
    if (pad < 2) o[1] = static_cast<uint8_t>(v >> 8);
  }
  return out;
}

EngineMetadata metadata_from_json(std::string_view json) {
  const Json root = JsonParser(json).parse_all();
  if (root.kind != Json::Kind::kObject) fail("metadata JSON must be an object");
  EngineMetadata m;
  m.backend = json_string_field(root, "backend", "object");
  if (const Json* g = root.find("cuda_graphs")) {
    if (g->kind != Json::Kind::kBool) fail("metadata key \"cuda_graphs\" must be true or false");
    m.cuda_graphs = g->boolean;
  }
  if (const Json* d = root.find("device_index")) {
    if (d->kind != Json::Kind::kNumber || d->number != static_cast<double>(static_cast<int64_t>(d->number)) ||
        d->number < -1 || d->number > 1024) {
      fail("metadata key \"device_index\" must be an integer GPU index (or -1 for none)");
    }
    m.device_index = static_cast<int64_t>(d->number);
    if (m.device_index >= 0 && m.backend != "cuda") {
      fail("metadata has device_index " + std::to_string(m.device_index) + " but back end '" +
           m.backend + "'; only cuda engines are bound to a GPU");
    }
  }
  m.inputs = json_io_list(root, "inputs");
  m.outputs = json_io_list(root, "outputs");
  return m;
}

std::string metadata_to_json(const EngineMetadata& metadata) {
  std::string out = "{\"backend\": ";
  json_write_string(metadata.backend, out);
  out += metadata.cuda_graphs ? ", \"cuda_graphs\": true" : ", \"cuda_graphs\": false";
  if (metadata.device_index >= 0) out += ", \"device_index\": " + std::to_string(metadata.device_index);
  auto write_list = [&](const char* key, const std::vector<BridgeIO>& list) {
    out += ", \"";
    out += key;
    out += "\": [";
    for (size_t i = 0; i < list.size(); ++i) {
      const BridgeIO& io = list[i];
      if (i > 0) out += ", ";
      out += "{\"name\": ";
      json_write_string(io.name, out);
      out += ", \"torch_dtype\": ";
      json_write_string(io.torch_dtype, out);
      out += ", \"engine_dtype\": ";
      json_write_string(engine::dtype_name(io.engine_dtype), out);
      out += ", \"shape\": ";
      json_write_string(io.shape, out);
      out += '}';
    }
    out += ']';
  };
  write_list("inputs", metadata.inputs);
  write_list("outputs", metadata.outputs);
  out += '}';
  return out;
}

void metadata_check(EngineMetadata& metadata, const engine::Engine& engine) {
  if (metadata.backend != engine.backend()) {
    fail("metadata says back end '" + metadata.backend + "' but the plan was built for '" +
         engine.backend() + "'");
  }
  std::vector<const engine::IOTensorInfo*> inputs, outputs;
  for (const auto& t : engine.io_tensors()) (t.is_input ? inputs : outputs).push_back(&t);
  check_io_list(metadata.inputs, inputs, "inputs");
  check_io_list(metadata.outputs, outputs, "outputs");
}

namespace {

/// The engine and its checked metadata (both ways in; the caller fills in the state list).
LoadedEngineState load_plan(const uint8_t* plan, size_t size, std::string_view metadata_json,
                            std::shared_ptr<engine::DeviceAllocator> allocator) {
  LoadedEngineState loaded;
  loaded.metadata = metadata_from_json(metadata_json);
  try {
    engine::Runtime runtime;
    runtime.set_device_allocator(std::move(allocator));
    loaded.engine = runtime.deserialize(plan, size);
  } catch (const engine::Error& e) {
    fail(std::string("the plan does not load: ") + e.what());
  }
  metadata_check(loaded.metadata, *loaded.engine);
  return loaded;
}

}  // namespace

LoadedEngineState engine_state_load(std::vector<std::string> state,
                                    std::shared_ptr<engine::DeviceAllocator> allocator) {
  if (state.empty()) fail("empty state list; expected [format tag, plan base64, metadata JSON]");
  if (state[0] != kEngineStateTag) {
    // A tag is short; anything long is probably not a tag at all.
    const std::string found = state[0].size() > 40 ? state[0].substr(0, 40) + "..." : state[0];
    fail(std::string("expected format tag '") + kEngineStateTag + "' but found '" + found +
         "' (saved by an incompatible Ember version, or not an Ember engine state)");
  }
  if (state.size() != kEngineStateSize) {
    fail("format " + state[0] + " has " + std::to_string(kEngineStateSize) +
         " strings [tag, plan base64, metadata JSON], got " + std::to_string(state.size()));
  }
  const std::vector<uint8_t> plan = base64_decode(state[1]);
  LoadedEngineState loaded = load_plan(plan.data(), plan.size(), state[2], std::move(allocator));
  loaded.state = std::move(state);
  return loaded;
}

LoadedEngineState engine_plan_load(const uint8_t* plan, size_t size, std::string metadata_json,
                                   std::shared_ptr<engine::DeviceAllocator> allocator) {
  LoadedEngineState loaded = load_plan(plan, size, metadata_json, std::move(allocator));
  loaded.state = {kEngineStateTag, base64_encode(plan, size), std::move(metadata_json)};
  return loaded;
}

}  // namespace ember::bridge
