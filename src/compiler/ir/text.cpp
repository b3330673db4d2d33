// The IR text form: arg_to_string, Graph::to_string and Graph::parse (docs/compiler_ir.md).
//
// The printer writes one construct per line and every literal in a form that reads back as the
// same Arg alternative (floats always carry a '.', an exponent, inf or nan; symbolic ints are
// wrapped in sym(...)), so parse(to_string(g)).to_string() == g.to_string(). The parser reads
// untrusted text: it never recurses, bounds every loop by the input length, and reports every
// problem as an Error that starts with "line N: ".
#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <new>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "ember/compiler/ir.h"

namespace ember::compiler {

namespace {

// ---------------------------------------------------------------------------------------------
// Lexical helpers shared by the printer and the parser.

bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_name_char(char c) { return is_alpha(c) || is_digit(c) || c == '.'; }
bool is_op_char(char c) { return is_name_char(c) || c == ':'; }
bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r'; }

// Words that start a line or are argument literals; an op or symbol spelled like one is quoted.
bool is_reserved(std::string_view s) {
  return s == "graph" || s == "symbol" || s == "constant" || s == "return" || s == "None" ||
         s == "True" || s == "False" || s == "sym" || s == "dtype" || s == "inf" || s == "nan";
}

template <class Pred>
bool all_chars(std::string_view s, Pred pred) {
  return !s.empty() && std::all_of(s.begin(), s.end(), pred);
}

// A string literal in double quotes; bytes outside printable ASCII become \xHH.
std::string quote(std::string_view s) {
  static const char kHex[] = "0123456789abcdef";
  std::string out = "\"";
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (ch) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (c < 0x20 || c >= 0x7f) {
          out += "\\x";
          out += kHex[c >> 4];
          out += kHex[c & 15];
        } else {
          out += ch;
        }
    }
  }
  out += '"';
  return out;
}

// Value names are printed bare when they are plain ([A-Za-z0-9_.]+), quoted otherwise.
std::string value_ref(const Value* v) {
  if (v == nullptr) return "None";
  const std::string& n = v->name();
  return "%" + (all_chars(n, is_name_char) ? n : quote(n));
}

std::string op_text(const std::string& op) {
  return all_chars(op, is_op_char) && !is_reserved(op) ? op : quote(op);
}

std::string symbol_text(const std::string& name) {
  const bool identifier =
      all_chars(name, is_name_char) && is_alpha(name[0]) && name.find('.') == std::string::npos;
  return identifier && !is_reserved(name) ? name : quote(name);
}

// The shortest text that reads back as exactly `d`, always recognizable as a float.
std::string format_double(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof(buf), d);
  std::string s(buf, res.ptr);
  if (s.find_first_of(".eE") == std::string::npos) s += ".0";
  return s;
}

std::string type_text(ScalarType dtype, const Shape& shape) {
  return std::string(scalar_type_name(dtype)) + engine::shape_to_string(shape);
}

template <class T, class F>
std::string join(const std::vector<T>& items, F f) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += ", ";
    out += f(items[i]);
  }
  return out;
}

struct ArgPrinter {
  std::string operator()(NoneArg) const { return "None"; }
  std::string operator()(bool b) const { return b ? "True" : "False"; }
  std::string operator()(int64_t v) const { return std::to_string(v); }
  std::string operator()(double d) const { return format_double(d); }
  std::string operator()(const std::string& s) const { return quote(s); }
  std::string operator()(ScalarType t) const {
    return std::string("dtype(") + scalar_type_name(t) + ")";
  }
  std::string operator()(const DimExpr& d) const { return "sym(" + d.to_string() + ")"; }
  std::string operator()(const std::vector<DimExpr>& l) const {
    return "[" + join(l, [](const DimExpr& d) { return d.to_string(); }) + "]";
  }
  std::string operator()(const std::vector<double>& l) const {
    return "[" + join(l, format_double) + "]";
  }
  std::string operator()(const std::vector<bool>& l) const {
    std::string out = "[";
    for (size_t i = 0; i < l.size(); ++i) {
      if (i > 0) out += ", ";
      out += l[i] ? "True" : "False";
    }
    return out + "]";
  }
  std::string operator()(const Value* v) const { return value_ref(v); }
  std::string operator()(const std::vector<Value*>& l) const {
    return "[" + join(l, value_ref) + "]";
  }
};

std::string attrs_text(const std::vector<std::pair<std::string, std::string>>& attrs) {
  if (attrs.empty()) return "";
  std::string out = " {";
  for (size_t i = 0; i < attrs.size(); ++i) {
    if (i > 0) out += ", ";
    out += attrs[i].first + "=" + attrs[i].second;
  }
  return out + "}";
}

std::string strings_text(const std::vector<std::string>& l) {
  return "[" + join(l, [](const std::string& s) { return quote(s); }) + "]";
}

// "%x: f32[2, 3]" plus the fx name when there is one.
std::string value_decl(const Value* v) {
  std::vector<std::pair<std::string, std::string>> attrs;
  if (!v->fx_name().empty()) attrs.emplace_back("fx", quote(v->fx_name()));
  return value_ref(v) + ": " + type_text(v->dtype(), v->shape()) + attrs_text(attrs);
}

// Output fx names the parser assumes when a node line has no out_fx attribute: a single output
// is the fx node itself; outputs of multi-output nodes are named by getitem nodes, so none.
std::vector<std::string> default_output_fx(const std::string& node_fx, size_t num_outputs) {
  return std::vector<std::string>(num_outputs, num_outputs == 1 ? node_fx : std::string());
}

}  // namespace

std::string arg_to_string(const Arg& arg) { return std::visit(ArgPrinter{}, arg); }

std::string Graph::to_string() const {
  std::string out = "graph(" + join(inputs_, value_decl) + "):\n";
  for (const auto& [name, range] : symbols_) {
    out += "  symbol " + symbol_text(name) + " = [" + std::to_string(range.min) + ", " +
           std::to_string(range.opt) + ", " + std::to_string(range.max) + "]\n";
  }
  for (const auto& v : values_) {
    if (v->is_constant()) out += "  constant " + value_decl(v.get()) + "\n";
  }
  for (const auto& n : nodes_) {
    out += "  ";
    if (!n->outputs_.empty()) out += join(n->outputs_, value_ref) + " = ";
    out += op_text(n->op_) + "(" + join(n->args_, arg_to_string) + ")";
    if (!n->outputs_.empty()) {
      out += " : " +
             join(n->outputs_, [](const Value* v) { return type_text(v->dtype(), v->shape()); });
    }
    std::vector<std::pair<std::string, std::string>> attrs;
    if (!n->fx_name_.empty()) attrs.emplace_back("fx", quote(n->fx_name_));
    if (!n->module_path_.empty()) attrs.emplace_back("module", quote(n->module_path_));
    if (!n->module_types_.empty()) {
      attrs.emplace_back("module_types", strings_text(n->module_types_));
    }
    std::vector<std::string> out_fx;
    for (const Value* v : n->outputs_) out_fx.push_back(v->fx_name());
    if (out_fx != default_output_fx(n->fx_name_, out_fx.size())) {
      attrs.emplace_back("out_fx", strings_text(out_fx));
    }
    out += attrs_text(attrs) + "\n";
  }
  out += "  return (" + join(outputs_, value_ref) + ")\n";
  return out;
}

// ---------------------------------------------------------------------------------------------
// Parsing

namespace {

// A problem on the current line; Graph::parse adds "line N: ".
[[noreturn]] void fail(const std::string& what) { throw Error(what); }

// Bounded, printable excerpt of untrusted text for messages.
std::string excerpt(std::string_view s) {
  constexpr size_t kMaxShown = 60;
  std::string q = quote(s.substr(0, kMaxShown));
  if (s.size() > kMaxShown) q.insert(q.size() - 1, "...");
  return q;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

// Parses an int or float literal that makes up all of `s`. Returns false when `s` has another
// form (a symbolic expression, say); throws when it looks numeric but is malformed.
bool parse_int_literal(std::string_view s, int64_t& out) {
  if (s.empty()) return false;
  const size_t digits_at = s[0] == '-' ? 1 : 0;
  if (digits_at >= s.size() || !std::all_of(s.begin() + digits_at, s.end(), is_digit)) {
    return false;
  }
  const auto res = std::from_chars(s.data(), s.data() + s.size(), out);
  if (res.ec == std::errc::result_out_of_range) {
    fail("integer " + excerpt(s) + " does not fit in 64 bits");
  }
  return res.ec == std::errc() && res.ptr == s.data() + s.size();
}

bool parse_float_literal(std::string_view s, double& out) {
  std::string_view body = s;
  const bool negative = !body.empty() && body[0] == '-';
  if (negative) body.remove_prefix(1);
  if (body == "inf") {
    out = negative ? -std::numeric_limits<double>::infinity()
                   : std::numeric_limits<double>::infinity();
    return true;
  }
  if (body == "nan") {
    out = std::numeric_limits<double>::quiet_NaN();
    return true;
  }
  // A float literal: digits with a '.' or an exponent, and nothing but number characters.
  if (body.empty() || !(is_digit(body[0]) || body[0] == '.')) return false;
  const bool number_chars = std::all_of(body.begin(), body.end(), [](char c) {
    return is_digit(c) || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-';
  });
  if (!number_chars || body.find_first_of(".eE") == std::string_view::npos) return false;
  const auto res = std::from_chars(s.data(), s.data() + s.size(), out);
  if (res.ec == std::errc::result_out_of_range) {
    fail("float " + excerpt(s) + " is out of range for a double");
  }
  if (res.ec != std::errc() || res.ptr != s.data() + s.size()) {
    fail("malformed float " + excerpt(s));
  }
  return true;
}

DimExpr parse_dim(std::string_view s) {
  try {
    return DimExpr::parse(s);
  } catch (const Error& e) {
    fail(std::string("bad size ") + excerpt(s) + ": " + e.what());
  }
}

// Reads one line left to right. '#' outside a string starts a comment.
class Cursor {
 public:
  explicit Cursor(std::string_view line) : s_(line) {}

  void skip_space() {
    while (pos_ < s_.size() && is_space(s_[pos_])) ++pos_;
    if (pos_ < s_.size() && s_[pos_] == '#') pos_ = s_.size();
  }
  bool at_end() {
    skip_space();
    return pos_ >= s_.size();
  }
  char peek() {
    skip_space();
    return pos_ < s_.size() ? s_[pos_] : '\0';
  }
  bool eat(char c) {
    if (peek() != c) return false;
    ++pos_;
    return true;
  }
  void expect(char c, const char* where) {
    if (!eat(c)) fail(std::string("expected '") + c + "' " + where + ", found " + current());
  }
  void expect_end() {
    if (!at_end()) fail("unexpected " + current() + " at the end of the line");
  }

  /// What is at the cursor, for messages.
  std::string current() {
    skip_space();
    if (pos_ >= s_.size()) return "the end of the line";
    return excerpt(s_.substr(pos_, 20));
  }

  /// A run of characters matching `pred` (possibly empty).
  template <class Pred>
  std::string_view word(Pred pred) {
    skip_space();
    const size_t start = pos_;
    while (pos_ < s_.size() && pred(s_[pos_])) ++pos_;
    return s_.substr(start, pos_ - start);
  }

  /// True and consumes `w` when the next word is exactly `w`.
  bool eat_word(std::string_view w) {
    skip_space();
    const size_t saved = pos_;
    if (word(is_op_char) == w) return true;
    pos_ = saved;
    return false;
  }

  /// A double-quoted string literal with the escapes `quote` writes.
  std::string quoted() {
    expect('"', "to start a string");
    std::string out;
    for (;;) {
      if (pos_ >= s_.size()) fail("unterminated string literal");
      const char c = s_[pos_++];
      if (c == '"') return out;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= s_.size()) fail("unterminated string literal");
      const char e = s_[pos_++];
      switch (e) {
        case '"':
          out += '"';
          break;
        case '\\':
          out += '\\';
          break;
        case 'n':
          out += '\n';
          break;
        case 't':
          out += '\t';
          break;
        case 'r':
          out += '\r';
          break;
        case 'x': {
          int v = 0;
          for (int i = 0; i < 2; ++i) {
            const char h = pos_ < s_.size() ? s_[pos_++] : '\0';
            int d = -1;
            if (h >= '0' && h <= '9') d = h - '0';
            if (h >= 'a' && h <= 'f') d = h - 'a' + 10;
            if (h >= 'A' && h <= 'F') d = h - 'A' + 10;
            if (d < 0) fail("bad \\x escape in a string literal: two hex digits expected");
            v = v * 16 + d;
          }
          out += static_cast<char>(v);
          break;
        }
        default:
          fail(std::string("unknown escape '\\") + e + "' in a string literal");
      }
    }
  }

  /// A bare name made of `pred` characters, or a string literal.
  template <class Pred>
  std::string name(Pred pred, const char* what) {
    if (peek() == '"') return quoted();
    const std::string_view w = word(pred);
    if (w.empty()) fail(std::string("expected ") + what + ", found " + current());
    return std::string(w);
  }

  /// "%name" or %"name".
  std::string value_name() {
    expect('%', "before a value name");
    if (pos_ < s_.size() && s_[pos_] == '"') return quoted();
    const size_t start = pos_;
    while (pos_ < s_.size() && is_name_char(s_[pos_])) ++pos_;
    if (pos_ == start) fail("expected a value name after '%', found " + current());
    return std::string(s_.substr(start, pos_ - start));
  }

  /// The raw text up to the next ',' or `close` outside parentheses and strings (not consumed),
  /// for list entries and sizes. Stops at a comment.
  std::string_view element(char close) {
    skip_space();
    const size_t start = pos_;
    int depth = 0;
    bool in_string = false;
    for (; pos_ < s_.size(); ++pos_) {
      const char c = s_[pos_];
      if (in_string) {
        if (c == '\\') {
          ++pos_;
        } else if (c == '"') {
          in_string = false;
        }
        continue;
      }
      if (c == '"') {
        in_string = true;
      } else if (c == '#') {
        break;
      } else if (c == '(') {
        ++depth;
      } else if (c == ')' && depth > 0) {
        --depth;
      } else if (depth == 0 && (c == ',' || c == close)) {
        break;
      } else if (c == '[' || c == ']' || c == '{' || c == '}') {
        fail("unexpected '" + std::string(1, c) + "' inside " +
             excerpt(s_.substr(start, pos_ - start + 1)));
      }
    }
    if (pos_ >= s_.size() || s_[pos_] == '#') {
      fail(std::string("missing '") + close + "' after " + excerpt(s_.substr(start)));
    }
    const std::string_view text = trim(s_.substr(start, pos_ - start));
    if (text.empty()) fail(std::string("empty entry before ") + current());
    return text;
  }

  /// The text inside a parenthesized group whose '(' was just consumed, consuming the ')'.
  std::string_view group() {
    const size_t start = pos_;
    int depth = 1;
    for (; pos_ < s_.size(); ++pos_) {
      if (s_[pos_] == '(') ++depth;
      if (s_[pos_] == ')' && --depth == 0) return s_.substr(start, pos_++ - start);
    }
    fail("missing ')' after " + excerpt(s_.substr(start)));
  }

 private:
  std::string_view s_;
  size_t pos_ = 0;
};

/// Parses the text form; one instance per call of Graph::parse.
class TextParser {
 public:
  Graph run(std::string_view text) {
    split_lines(text);
    size_t i = 0;
    while (i < lines_.size() && Cursor(lines_[i]).at_end()) ++i;
    if (i == lines_.size()) {
      line_error(lines_.empty() ? 1 : lines_.size(), "expected 'graph(...):', found no text");
    }
    on_line(i, [&](Cursor& c) { header(c); });
    bool returned = false;
    for (++i; i < lines_.size(); ++i) {
      Cursor probe(lines_[i]);
      if (probe.at_end()) continue;
      if (returned) line_error(i + 1, "text after the 'return' line");
      on_line(i, [&](Cursor& c) { returned = body_line(c); });
    }
    if (!returned) line_error(lines_.size(), "the graph ends without a 'return (...)' line");
    return std::move(g_);
  }

 private:
  void split_lines(std::string_view text) {
    size_t start = 0;
    for (;;) {
      const size_t nl = text.find('\n', start);
      lines_.push_back(text.substr(start, nl == std::string_view::npos ? nl : nl - start));
      if (nl == std::string_view::npos) break;
      start = nl + 1;
    }
  }

  [[noreturn]] static void line_error(size_t line, const std::string& what) {
    throw Error("line " + std::to_string(line) + ": " + what);
  }

  // Runs `f` on line i, prefixing any error with the line number.
  template <class F>
  void on_line(size_t i, F f) {
    try {
      Cursor c(lines_[i]);
      f(c);
    } catch (const std::bad_alloc&) {
      throw;
    } catch (const std::exception& e) {
      line_error(i + 1, e.what());
    }
  }

  // graph(%x: f32[2], %y: i64[s0]):
  void header(Cursor& c) {
    if (!c.eat_word("graph")) fail("expected 'graph(...):', found " + c.current());
    c.expect('(', "after 'graph'");
    if (!c.eat(')')) {
      for (;;) {
        const std::string name = c.value_name();
        c.expect(':', "after the input name");
        const TensorType type = value_type(c);
        Value* v = g_.add_input(name, type.dtype, type.shape);
        value_attrs(c, v);
        if (c.eat(')')) break;
        c.expect(',', "between graph inputs");
      }
    }
    c.expect(':', "after the graph inputs");
    c.expect_end();
  }

  // Returns true for the return line.
  bool body_line(Cursor& c) {
    if (c.peek() == '%') {
      node_line(c);
      return false;
    }
    if (c.eat_word("symbol")) {
      symbol_line(c);
      return false;
    }
    if (c.eat_word("constant")) {
      const std::string name = c.value_name();
      c.expect(':', "after the constant name");
      const TensorType type = value_type(c);
      Value* v = g_.add_constant(name, type.dtype, type.shape, ConstantData{});
      value_attrs(c, v);
      c.expect_end();
      return false;
    }
    if (c.eat_word("return")) {
      c.expect('(', "after 'return'");
      std::vector<Value*> outs;
      if (!c.eat(')')) {
        for (;;) {
          outs.push_back(lookup(c.value_name()));
          if (c.eat(')')) break;
          c.expect(',', "between returned values");
        }
      }
      c.expect_end();
      g_.set_outputs(std::move(outs));
      return true;
    }
    node_line(c);  // a node without outputs starts with its op
    return false;
  }

  void symbol_line(Cursor& c) {
    const std::string name = c.name(is_name_char, "a symbol name");
    if (g_.find_symbol(name) != nullptr) fail("symbol '" + name + "' is declared twice");
    c.expect('=', "after the symbol name");
    c.expect('[', "before the symbol range [min, opt, max]");
    int64_t v[3] = {0, 0, 0};
    for (int i = 0; i < 3; ++i) {
      const std::string_view t = c.element(']');
      if (!parse_int_literal(t, v[i])) fail("symbol range entry " + excerpt(t) + " is not an int");
      if (i < 2) c.expect(',', "in the symbol range [min, opt, max]");
    }
    c.expect(']', "after the symbol range [min, opt, max]");
    c.expect_end();
    if (v[0] < 0 || v[0] > v[1] || v[1] > v[2]) {
      fail("symbol '" + name + "' needs 0 <= min <= opt <= max, got [" + std::to_string(v[0]) +
           ", " + std::to_string(v[1]) + ", " + std::to_string(v[2]) + "]");
    }
    g_.symbols().emplace_back(name, SymbolRange{v[0], v[1], v[2]});
  }

  // %a, %b = op(args) : t1, t2 {attrs}    or, without outputs,    op(args) {attrs}
  void node_line(Cursor& c) {
    std::vector<std::string> names;
    if (c.peek() == '%') {
      for (;;) {
        names.push_back(c.value_name());
        if (c.eat('=')) break;
        c.expect(',', "between output names (or '=' after them)");
      }
    }
    const std::string op = c.name(is_op_char, "an op name");
    c.expect('(', ("after the op " + op).c_str());
    std::vector<Arg> args;
    if (!c.eat(')')) {
      for (;;) {
        args.push_back(arg(c));
        if (c.eat(')')) break;
        c.expect(',', "between arguments");
      }
    }
    std::vector<TensorType> types;
    if (!names.empty()) {
      c.expect(':', "before the output types");
      for (;;) {
        types.push_back(value_type(c));
        if (!c.eat(',')) break;
      }
      if (types.size() != names.size()) {
        fail("the node has " + std::to_string(names.size()) + " outputs but " +
             std::to_string(types.size()) + " output types");
      }
    }
    Node* node = g_.add_node(op, std::move(args), types, names);
    node_attrs(c, node);
    c.expect_end();
  }

  Value* lookup(const std::string& name) const {
    Value* v = g_.find_value(name);
    if (v == nullptr) {
      fail("%" + name + " is not defined; values must be defined before they are used");
    }
    return v;
  }

  // f32[s0, 3]
  static TensorType value_type(Cursor& c) {
    const std::string_view dtype_name = c.word(is_name_char);
    const auto dtype = scalar_type_from_name(dtype_name);
    if (!dtype) {
      fail("unknown dtype " + excerpt(dtype_name) +
           " (expected f32, f16, bf16, i8, u8, i32, i64, bool, f64 or i16)");
    }
    TensorType t;
    t.dtype = *dtype;
    c.expect('[', "before the shape");
    if (!c.eat(']')) {
      for (;;) {
        t.shape.push_back(parse_dim(c.element(']')));
        if (c.eat(']')) break;
        c.expect(',', "between shape dims");
      }
    }
    return t;
  }

  // One entry of an argument list; see docs/compiler_ir.md for the literal forms.
  Arg arg(Cursor& c) {
    const char first = c.peek();
    if (first == '%') return lookup(c.value_name());
    if (first == '"') return c.quoted();
    if (first == '[') return list(c);
    if (is_alpha(first)) {
      const std::string_view w = c.word(is_name_char);
      if (w == "None") return NoneArg{};
      if (w == "True") return true;
      if (w == "False") return false;
      if (w == "dtype") {
        c.expect('(', "after 'dtype'");
        const std::string_view name = c.word(is_name_char);
        const auto t = scalar_type_from_name(name);
        if (!t) fail("unknown dtype " + excerpt(name) + " in dtype(...)");
        c.expect(')', "after the dtype name");
        return *t;
      }
      if (w == "sym") {
        c.expect('(', "after 'sym'");
        return parse_dim(c.group());
      }
      if (w == "inf") return std::numeric_limits<double>::infinity();
      if (w == "nan") return std::numeric_limits<double>::quiet_NaN();
      fail("unknown argument " + excerpt(w) +
           " (symbolic ints are written sym(...), strings in double quotes)");
    }
    const std::string_view text =
        c.word([](char ch) { return is_name_char(ch) || ch == '-' || ch == '+'; });
    int64_t i = 0;
    if (parse_int_literal(text, i)) return i;
    double d = 0;
    if (parse_float_literal(text, d)) return d;
    if (text.empty()) fail("expected an argument, found " + c.current());
    fail("malformed number " + excerpt(text));
  }

  // [..]: the entries decide the list kind; an empty list is an int list.
  Arg list(Cursor& c) {
    c.expect('[', "to start a list");
    enum Kind { kNone, kTensor, kBool, kFloat, kInt };
    struct Entry {
      Kind kind;
      Value* tensor = nullptr;
      bool flag = false;
      double number = 0;
      DimExpr dim;
    };
    std::vector<Entry> entries;
    if (!c.eat(']')) {
      for (;;) {
        Entry e{kInt, nullptr, false, 0, DimExpr()};
        if (c.peek() == '%') {
          e.kind = kTensor;
          e.tensor = lookup(c.value_name());
        } else {
          const std::string_view t = c.element(']');
          int64_t i = 0;
          if (t == "None") {
            e.kind = kNone;
          } else if (t == "True" || t == "False") {
            e.kind = kBool;
            e.flag = t == "True";
          } else if (parse_int_literal(t, i)) {
            e.dim = DimExpr(i);
          } else if (parse_float_literal(t, e.number)) {
            e.kind = kFloat;
          } else if (t.front() == '"') {
            fail("lists of strings are not IR arguments");
          } else {
            e.dim = parse_dim(t);
          }
        }
        entries.push_back(std::move(e));
        if (c.eat(']')) break;
        c.expect(',', "between list entries");
      }
    }
    auto any = [&](Kind k) {
      return std::any_of(entries.begin(), entries.end(),
                         [&](const Entry& e) { return e.kind == k; });
    };
    auto mixed = [](const char* what) { fail(std::string("a list mixes ") + what); };
    if (any(kTensor) || any(kNone)) {
      std::vector<Value*> out;
      for (const Entry& e : entries) {
        if (e.kind != kTensor && e.kind != kNone) mixed("tensors with other values");
        out.push_back(e.tensor);
      }
      return out;
    }
    if (any(kBool)) {
      std::vector<bool> out;
      for (const Entry& e : entries) {
        if (e.kind != kBool) mixed("bools with numbers");
        out.push_back(e.flag);
      }
      return out;
    }
    if (any(kFloat)) {
      std::vector<double> out;
      for (const Entry& e : entries) {
        // Hand-written float lists may say "1" for 1.0; a symbolic size is an error.
        if (e.kind == kInt && !e.dim.is_constant()) mixed("floats with symbolic sizes");
        out.push_back(e.kind == kFloat ? e.number : static_cast<double>(e.dim.constant()));
      }
      return out;
    }
    std::vector<DimExpr> out;
    for (Entry& e : entries) out.push_back(std::move(e.dim));
    return out;
  }

  // {key="text", key=["a", "b"]}: the attributes' raw values, keys checked by the caller.
  static std::vector<std::pair<std::string, std::vector<std::string>>> attrs(Cursor& c) {
    std::vector<std::pair<std::string, std::vector<std::string>>> out;
    if (!c.eat('{')) return out;
    if (c.eat('}')) return out;
    for (;;) {
      std::string key(c.word(is_name_char));
      if (key.empty()) fail("expected an attribute name, found " + c.current());
      for (const auto& kv : out) {
        if (kv.first == key) fail("attribute '" + key + "' is given twice");
      }
      c.expect('=', ("after the attribute " + key).c_str());
      std::vector<std::string> values;
      if (c.eat('[')) {
        if (!c.eat(']')) {
          for (;;) {
            values.push_back(c.quoted());
            if (c.eat(']')) break;
            c.expect(',', "between strings");
          }
        }
        key += "[]";  // marks a list value so the caller can check the form
      } else {
        values.push_back(c.quoted());
      }
      out.emplace_back(std::move(key), std::move(values));
      if (c.eat('}')) return out;
      c.expect(',', "between attributes");
    }
  }

  static void value_attrs(Cursor& c, Value* v) {
    for (auto& [key, values] : attrs(c)) {
      if (key != "fx") fail("unknown value attribute '" + key + "' (only fx=\"...\")");
      v->set_fx_name(std::move(values[0]));
    }
  }

  static void node_attrs(Cursor& c, Node* n) {
    std::string module;
    std::vector<std::string> module_types;
    std::vector<std::string> out_fx;
    bool has_out_fx = false;
    for (auto& [key, values] : attrs(c)) {
      if (key == "fx") {
        n->set_fx_name(values[0]);
      } else if (key == "module") {
        module = values[0];
      } else if (key == "module_types[]") {
        module_types = std::move(values);
      } else if (key == "out_fx[]") {
        if (values.size() != n->outputs().size()) {
          fail("out_fx names " + std::to_string(values.size()) + " outputs; the node has " +
               std::to_string(n->outputs().size()));
        }
        out_fx = std::move(values);
        has_out_fx = true;
      } else {
        fail("unknown node attribute '" + key +
             "' (fx=\"...\", module=\"...\", module_types=[...], out_fx=[...])");
      }
    }
    n->set_module(std::move(module), std::move(module_types));
    if (!has_out_fx) out_fx = default_output_fx(n->fx_name(), n->outputs().size());
    for (size_t i = 0; i < out_fx.size(); ++i) n->output(i)->set_fx_name(out_fx[i]);
  }

  std::vector<std::string_view> lines_;
  Graph g_;
};

}  // namespace

Graph Graph::parse(std::string_view text) { return TextParser().run(text); }

}  // namespace ember::compiler
