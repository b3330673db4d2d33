// The compiler IR: construction, typed argument access, mutation, and the text form (printing,
// parsing, round trips, errors, and robustness against malformed text).
#include "ember/compiler/ir.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace ember::compiler {
namespace {

using engine::DimExpr;

// Runs `f`, expects an Error whose message contains every one of `parts`.
template <class F>
void expect_error(F f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no Error thrown; expected one containing '" << parts.front() << "'";
  } catch (const Error& e) {
    for (const std::string& p : parts) {
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos)
          << "message: " << e.what() << "\nmissing: " << p;
    }
  }
}

// Checks that the text form is a fixed point: printing the parsed graph gives the same text.
void expect_round_trip(const Graph& g) {
  const std::string text = g.to_string();
  const Graph back = Graph::parse(text);
  EXPECT_EQ(back.to_string(), text);
}

const DimExpr kS0 = DimExpr::symbol("s0");

// A small graph: x -> relu -> add(w) -> output.
struct SmallGraph {
  Graph g;
  Value* x = nullptr;
  Value* w = nullptr;
  Node* relu = nullptr;
  Node* add = nullptr;

  SmallGraph() {
    x = g.add_input("x", ScalarType::kF32, {kS0, 4});
    w = g.add_constant("w", ScalarType::kF32, {4}, ConstantData{});
    relu = g.add_node("aten::relu", {x}, {{ScalarType::kF32, {kS0, 4}}}, {"relu"});
    add = g.add_node("aten::add.Tensor", {relu->output(), w, int64_t{1}},
                     {{ScalarType::kF32, {kS0, 4}}}, {"add"});
    g.set_outputs({add->output()});
  }
};

// ---------------------------------------------------------------------------------------------
// Construction

TEST(IrGraph, BuildsValuesAndNodes) {
  SmallGraph s;
  EXPECT_EQ(s.g.inputs(), std::vector<Value*>{s.x});
  EXPECT_EQ(s.g.constants(), std::vector<Value*>{s.w});
  EXPECT_EQ(s.g.num_nodes(), 2u);
  EXPECT_EQ(s.relu->index(), 0);
  EXPECT_EQ(s.add->index(), 1);
  EXPECT_EQ(s.add->output()->producer(), s.add);
  EXPECT_EQ(s.add->output()->output_index(), 0);
  EXPECT_TRUE(s.x->is_input());
  EXPECT_TRUE(s.w->is_constant());
  EXPECT_EQ(s.relu->output()->kind(), Value::Kind::kNodeOutput);
  EXPECT_EQ(s.g.find_value("relu"), s.relu->output());
  EXPECT_EQ(s.g.find_value("nope"), nullptr);
  EXPECT_EQ(s.add->input_values(), (std::vector<Value*>{s.relu->output(), s.w}));
  EXPECT_EQ(s.g.users(s.relu->output()), std::vector<Node*>{s.add});
  EXPECT_TRUE(s.g.is_used(s.add->output()));  // a graph output
  EXPECT_EQ(s.relu->describe(), "aten::relu 'relu'");
  s.relu->set_fx_name("relu_1");
  EXPECT_EQ(s.relu->describe(), "aten::relu 'relu_1'");
}

TEST(IrGraph, RejectsInvalidConstruction) {
  SmallGraph s;
  expect_error([&] { s.g.add_input("x", ScalarType::kF32, {}); }, {"'x' already exists"});
  expect_error([&] { s.g.add_constant("c", ScalarType::kF32, {kS0}, {}); },
               {"constant 'c'", "symbolic shape [s0]"});
  expect_error([&] { s.g.add_node("", {}, {}, {}); }, {"needs an op"});
  expect_error([&] { s.g.add_node("aten::relu", {}, {{}}, {}); }, {"1 output types but 0 names"});
  Graph other;
  Value* foreign = other.add_input("f", ScalarType::kF32, {});
  expect_error([&] { s.g.add_node("aten::relu", {foreign}, {{}}, {"r2"}); },
               {"aten::relu", "not in this graph"});
  expect_error([&] { s.g.add_node("aten::relu", {static_cast<Value*>(nullptr)}, {{}}, {"r3"}); },
               {"null tensor argument"});
  expect_error([&] { s.g.set_outputs({foreign}); }, {"not a value of this graph"});
}

TEST(IrGraph, InsertsNodesBeforeAnother) {
  SmallGraph s;
  Node* n = s.g.insert_node_before(s.add, "aten::neg", {s.relu->output()},
                                   {{ScalarType::kF32, {kS0, 4}}}, {"neg"});
  EXPECT_EQ(n->index(), 1);
  EXPECT_EQ(s.add->index(), 2);
  EXPECT_EQ(s.g.nodes()[1], n);
}

// ---------------------------------------------------------------------------------------------
// Typed argument access

TEST(IrNode, TypedArgumentAccess) {
  Graph g;
  Value* x = g.add_input("x", ScalarType::kF32, {2, 3});
  Node* n = g.add_node(
      "aten::test",
      {x, int64_t{3}, 2.5, true, std::string("mean"), ScalarType::kF16, DimExpr::symbol("s0") * 2,
       std::vector<DimExpr>{1, 2}, std::vector<Value*>{x, nullptr}, NoneArg{}},
      {{ScalarType::kF32, {2, 3}}}, {"out"});
  EXPECT_EQ(n->arg_tensor(0), x);
  EXPECT_EQ(n->arg_tensor_list(0), std::vector<Value*>{x});  // a single tensor is a list of one
  EXPECT_EQ(n->arg_int(1), 3);
  EXPECT_EQ(n->arg_ints(1), std::vector<int64_t>{3});
  EXPECT_EQ(n->arg_double(1), 3.0);
  EXPECT_EQ(n->arg_double(2), 2.5);
  EXPECT_TRUE(n->arg_bool(3));
  EXPECT_EQ(n->arg_int(3), 1);
  EXPECT_EQ(n->arg_string(4), "mean");
  EXPECT_EQ(n->arg_scalar_type(5), ScalarType::kF16);
  EXPECT_EQ(n->arg_dim(6), DimExpr::symbol("s0") * 2);
  EXPECT_EQ(n->arg_ints(7), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(n->arg_tensor_list(8), (std::vector<Value*>{x, nullptr}));
  EXPECT_TRUE(n->arg_is_none(9));
  EXPECT_TRUE(n->arg_is_none(42));  // absent counts as None
  EXPECT_EQ(n->arg_optional_tensor(9), nullptr);
  EXPECT_EQ(n->arg_int_or(9, 7), 7);
  EXPECT_EQ(n->arg_double_or(42, 0.5), 0.5);
  EXPECT_FALSE(n->arg_bool_or(9, false));
  EXPECT_EQ(n->arg_scalar_type(9), std::nullopt);
  EXPECT_TRUE(n->arg_is_scalar(1));
  EXPECT_TRUE(n->arg_is_scalar(6));
  EXPECT_FALSE(n->arg_is_scalar(0));
  EXPECT_FALSE(n->arg_is_scalar(42));
}

TEST(IrNode, TypedArgumentErrorsNameNodePositionAndType) {
  Graph g;
  Value* x = g.add_input("x", ScalarType::kF32, {2});
  Node* n = g.add_node(
      "aten::test", {x, 2.5, DimExpr::symbol("s0"), std::vector<DimExpr>{1, DimExpr::symbol("s1")}},
      {{ScalarType::kF32, {2}}}, {"out"});
  expect_error([&] { n->arg_int(0); }, {"aten::test 'out'", "argument 0", "an int", "Tensor %x"});
  expect_error([&] { n->arg_tensor(1); }, {"argument 1", "a Tensor", "float 2.5"});
  expect_error([&] { n->arg_int(2); }, {"argument 2", "symbolic size s0"});
  expect_error([&] { n->arg_ints(3); }, {"argument 3", "symbolic size s1"});
  expect_error([&] { n->arg_string(1); }, {"a string"});
  expect_error([&] { n->arg_bool(1); }, {"a bool"});
  expect_error([&] { n->arg_scalar_type(1); }, {"a dtype"});
  expect_error([&] { n->arg_tensor(4); }, {"argument 4", "missing", "4 arguments"});
}

// ---------------------------------------------------------------------------------------------
// Mutation

TEST(IrGraph, ReplaceAllUsesCoversArgsListsAndOutputs) {
  Graph g;
  Value* x = g.add_input("x", ScalarType::kF32, {2});
  Value* y = g.add_input("y", ScalarType::kF32, {2});
  Node* a = g.add_node("aten::relu", {x}, {{ScalarType::kF32, {2}}}, {"a"});
  a->output()->set_fx_name("relu");
  Node* cat =
      g.add_node("aten::cat", {std::vector<Value*>{a->output(), x, a->output()}, int64_t{0}},
                 {{ScalarType::kF32, {6}}}, {"cat"});
  Node* add = g.add_node("aten::add.Tensor", {a->output(), a->output()}, {{ScalarType::kF32, {2}}},
                         {"add"});
  g.set_outputs({a->output(), cat->output(), add->output()});

  Node* b = g.insert_node_before(cat, "aten::neg", {y}, {{ScalarType::kF32, {2}}}, {"b"});
  g.replace_all_uses(a->output(), b->output());
  EXPECT_EQ(cat->arg_tensor_list(0), (std::vector<Value*>{b->output(), x, b->output()}));
  EXPECT_EQ(add->arg_tensor(0), b->output());
  EXPECT_EQ(add->arg_tensor(1), b->output());
  EXPECT_EQ(g.outputs()[0], b->output());
  EXPECT_EQ(b->output()->fx_name(), "relu");  // inherited: b had no fx name
  EXPECT_FALSE(g.is_used(a->output()));

  // A value that has an fx name keeps it.
  Node* c = g.insert_node_before(cat, "aten::neg", {y}, {{ScalarType::kF32, {2}}}, {"c"});
  c->output()->set_fx_name("mine");
  g.replace_all_uses(b->output(), c->output());
  EXPECT_EQ(c->output()->fx_name(), "mine");
}

TEST(IrGraph, RemoveNodeOnlyWhenUnused) {
  SmallGraph s;
  expect_error([&] { s.g.remove_node(s.relu); }, {"cannot remove aten::relu", "%relu"});
  s.g.replace_all_uses(s.relu->output(), s.x);
  s.g.remove_node(s.relu);
  EXPECT_EQ(s.g.num_nodes(), 1u);
  EXPECT_EQ(s.g.find_value("relu"), nullptr);
  EXPECT_EQ(s.add->index(), 0);
  EXPECT_EQ(s.add->arg_tensor(0), s.x);
  // Value ids stay dense after removal.
  const auto values = s.g.values();
  for (size_t i = 0; i < values.size(); ++i) EXPECT_EQ(values[i]->id(), static_cast<int>(i));
}

TEST(IrGraph, CompactDropsUnusedConstants) {
  SmallGraph s;
  s.g.add_constant("unused", ScalarType::kF32, {1}, {});
  EXPECT_EQ(s.g.constants().size(), 2u);
  s.g.compact();
  EXPECT_EQ(s.g.constants(), std::vector<Value*>{s.w});
}

TEST(IrGraph, FreshNamesAreUnique) {
  SmallGraph s;
  s.g.add_input("fold_0", ScalarType::kF32, {});
  const std::string a = s.g.fresh_name("fold");
  EXPECT_NE(a, "fold_0");
  s.g.add_input(a, ScalarType::kF32, {});
  EXPECT_NE(s.g.fresh_name("fold"), a);
}

// ---------------------------------------------------------------------------------------------
// Text form

TEST(IrText, PrintsTheDocumentedForm) {
  Graph g;
  g.symbols().push_back({"s0", SymbolRange{1, 4, 8}});
  Value* x = g.add_input("x", ScalarType::kF32, {kS0, 3, 8, 8});
  g.add_input("y", ScalarType::kI64, {4});
  Value* w = g.add_constant("w", ScalarType::kF32, {16, 3, 3, 3}, {});
  Node* conv =
      g.add_node("aten::convolution",
                 {x, w, NoneArg{}, std::vector<DimExpr>{1, 1}, std::vector<DimExpr>{1, 1},
                  std::vector<DimExpr>{1, 1}, false, std::vector<DimExpr>{0, 0}, int64_t{1}},
                 {{ScalarType::kF32, {kS0, 16, 8, 8}}}, {"conv"});
  Node* max =
      g.add_node("aten::max.dim", {conv->output(), int64_t{1}, false},
                 {{ScalarType::kF32, {kS0, 8, 8}}, {ScalarType::kI64, {kS0, 8, 8}}}, {"a", "b"});
  g.set_outputs({conv->output(), max->output(0)});
  const std::string expected =
      "graph(%x: f32[s0, 3, 8, 8], %y: i64[4]):\n"
      "  symbol s0 = [1, 4, 8]\n"
      "  constant %w: f32[16, 3, 3, 3]\n"
      "  %conv = aten::convolution(%x, %w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1)"
      " : f32[s0, 16, 8, 8]\n"
      "  %a, %b = aten::max.dim(%conv, 1, False) : f32[s0, 8, 8], i64[s0, 8, 8]\n"
      "  return (%conv, %a)\n";
  EXPECT_EQ(g.to_string(), expected);
  expect_round_trip(g);
}

TEST(IrText, ParsesStructureTypesAndComments) {
  const Graph g = Graph::parse(R"(
# a comment line
graph(%x: f32[s0, 3, 8, 8], %y: i64[4]):   # trailing comment
  symbol s0 = [1, 4, 8]
  constant %w: f32[16, 3, 3, 3]
  %conv = aten::convolution(%x, %w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1) : f32[s0, 16, 8, 8]

  %a, %b = aten::max.dim(%conv, 1, False) : f32[s0, 8, 8], i64[s0, 8, 8]
  return (%conv, %a)
)");
  ASSERT_EQ(g.inputs().size(), 2u);
  EXPECT_EQ(g.inputs()[0]->shape(), (Shape{kS0, 3, 8, 8}));
  EXPECT_EQ(g.inputs()[1]->dtype(), ScalarType::kI64);
  ASSERT_NE(g.find_symbol("s0"), nullptr);
  EXPECT_EQ(g.find_symbol("s0")->opt, 4);
  ASSERT_EQ(g.constants().size(), 1u);
  EXPECT_EQ(g.constants()[0]->constant().data, nullptr);
  ASSERT_EQ(g.num_nodes(), 2u);
  const Node* conv = g.nodes()[0];
  EXPECT_EQ(conv->op(), "aten::convolution");
  EXPECT_EQ(conv->arg_tensor(1), g.constants()[0]);
  EXPECT_TRUE(conv->arg_is_none(2));
  EXPECT_EQ(conv->arg_ints(3), (std::vector<int64_t>{1, 1}));
  EXPECT_FALSE(conv->arg_bool(6));
  EXPECT_EQ(conv->arg_int(8), 1);
  const Node* max = g.nodes()[1];
  EXPECT_EQ(max->outputs().size(), 2u);
  EXPECT_EQ(max->output(1)->dtype(), ScalarType::kI64);
  EXPECT_EQ(g.outputs(), (std::vector<Value*>{conv->output(), max->output(0)}));
}

// Every Arg alternative prints in a form that parses back as the same alternative and value.
TEST(IrText, EveryArgKindRoundTrips) {
  Graph g;
  g.symbols().push_back({"s0", SymbolRange{1, 2, 16}});
  g.symbols().push_back({"seq", SymbolRange{0, 7, 512}});
  Value* x = g.add_input("x", ScalarType::kF16, {kS0, DimExpr::symbol("seq")});
  Value* y = g.add_input("y", ScalarType::kBool, {});
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<Arg> args = {
      NoneArg{},
      true,
      false,
      int64_t{0},
      int64_t{-42},
      std::numeric_limits<int64_t>::max(),
      std::numeric_limits<int64_t>::min(),
      1.0,
      -0.0,
      0.1,
      1e-05,
      -2.5e300,
      5e-324,
      inf,
      -inf,
      std::string("plain"),
      std::string("quote \" backslash \\ newline \n tab \t # hash \x01 \xc3\xa9"),
      std::string(""),
      ScalarType::kBF16,
      ScalarType::kBool,
      DimExpr::symbol("s0") * 2,
      DimExpr(5),  // a constant SymInt stays a SymInt
      floor_div(DimExpr::symbol("seq") + 1, DimExpr(2)),
      min(kS0, DimExpr::symbol("seq")) - 3,
      std::vector<DimExpr>{1, kS0 * 2, -1, max(kS0, DimExpr(4)), mod(kS0, DimExpr(3))},
      std::vector<DimExpr>{},
      std::vector<double>{1.0, 2.5, -inf, 1e20},
      std::vector<bool>{true, false},
      x,
      std::vector<Value*>{x, y, nullptr},
      std::vector<Value*>{nullptr},
  };
  Node* n = g.add_node("aten::everything", args, {{ScalarType::kF32, {kS0}}}, {"out"});
  g.set_outputs({n->output()});
  const std::string text = g.to_string();
  const Graph back = Graph::parse(text);
  EXPECT_EQ(back.to_string(), text);

  const Node* m = back.nodes()[0];
  ASSERT_EQ(m->num_args(), args.size());
  for (size_t i = 0; i < args.size(); ++i) {
    const Arg& a = args[i];
    const Arg& b = m->args()[i];
    ASSERT_EQ(a.index(), b.index()) << "argument " << i << ": " << arg_to_string(a);
    if (const auto* v = std::get_if<Value*>(&a)) {
      EXPECT_EQ((*v)->name(), std::get<Value*>(b)->name());
    } else if (const auto* l = std::get_if<std::vector<Value*>>(&a)) {
      const auto& lb = std::get<std::vector<Value*>>(b);
      ASSERT_EQ(l->size(), lb.size());
      for (size_t j = 0; j < l->size(); ++j) {
        EXPECT_EQ((*l)[j] == nullptr, lb[j] == nullptr);
        if ((*l)[j] != nullptr) EXPECT_EQ((*l)[j]->name(), lb[j]->name());
      }
    } else if (const auto* d = std::get_if<double>(&a)) {
      const double e = std::get<double>(b);
      EXPECT_EQ(*d, e) << "argument " << i;
      EXPECT_EQ(std::signbit(*d), std::signbit(e)) << "argument " << i;
    } else {
      EXPECT_TRUE(a == b) << "argument " << i << ": " << arg_to_string(a) << " vs "
                          << arg_to_string(b);
    }
  }
  // NaN has no equality; check it separately.
  EXPECT_EQ(arg_to_string(std::numeric_limits<double>::quiet_NaN()), "nan");
  const Graph nan_graph = Graph::parse(
      "graph():\n  %o = aten::f(nan, [nan, 1.0]) : f32[]\n"
      "  return (%o)\n");
  EXPECT_TRUE(std::isnan(nan_graph.nodes()[0]->arg_double(0)));
}

TEST(IrText, ArgToStringForms) {
  EXPECT_EQ(arg_to_string(NoneArg{}), "None");
  EXPECT_EQ(arg_to_string(true), "True");
  EXPECT_EQ(arg_to_string(int64_t{-3}), "-3");
  EXPECT_EQ(arg_to_string(1.0), "1.0");
  EXPECT_EQ(arg_to_string(1e-05), "1e-05");
  EXPECT_EQ(arg_to_string(-std::numeric_limits<double>::infinity()), "-inf");
  EXPECT_EQ(arg_to_string(std::string("a\"b")), "\"a\\\"b\"");
  EXPECT_EQ(arg_to_string(ScalarType::kF16), "dtype(f16)");
  EXPECT_EQ(arg_to_string(DimExpr::symbol("s0") * 2), "sym(s0*2)");
  EXPECT_EQ(arg_to_string(std::vector<DimExpr>{1, DimExpr::symbol("s0") * 2}), "[1, s0*2]");
  EXPECT_EQ(arg_to_string(std::vector<double>{1.0, 2.5}), "[1.0, 2.5]");
  EXPECT_EQ(arg_to_string(std::vector<bool>{true, false}), "[True, False]");
  EXPECT_EQ(arg_to_string(std::vector<Value*>{}), "[]");
}

TEST(IrText, ListKindsFromEntries) {
  const Graph g = Graph::parse(
      "graph(%a: f32[2]):\n"
      "  %o = aten::f([], [None, %a], [1, 2.5], [True], [s0 + 1, 2]) : f32[2]\n"
      "  return (%o)\n");
  const Node* n = g.nodes()[0];
  EXPECT_TRUE(std::holds_alternative<std::vector<DimExpr>>(n->args()[0]));  // empty: int list
  EXPECT_TRUE(std::holds_alternative<std::vector<Value*>>(n->args()[1]));
  EXPECT_EQ(std::get<std::vector<double>>(n->args()[2]), (std::vector<double>{1.0, 2.5}));
  EXPECT_EQ(std::get<std::vector<bool>>(n->args()[3]), std::vector<bool>{true});
  EXPECT_EQ(n->arg_dims(4), (std::vector<DimExpr>{DimExpr::symbol("s0") + 1, 2}));
}

TEST(IrText, MetadataAndOddNamesRoundTrip) {
  Graph g;
  Value* x = g.add_input("x.1", ScalarType::kF32, {2});
  x->set_fx_name("arg0_1");
  Value* w = g.add_input("has space", ScalarType::kF32, {2});
  Value* c = g.add_constant("p_weight", ScalarType::kI8, {2}, {});
  c->set_fx_name("p_weight");
  Node* a = g.add_node("aten::add.Tensor", {x, w}, {{ScalarType::kF32, {2}}}, {"add"});
  a->set_fx_name("add");  // the single output takes the node's fx name
  a->output()->set_fx_name("add");
  a->set_module("layer1.0.conv1", {"torchvision.models.resnet.ResNet", "torch.nn.Conv2d"});
  Node* m = g.add_node("aten::max.dim", {a->output(), int64_t{0}},
                       {{ScalarType::kF32, {}}, {ScalarType::kI64, {}}}, {"m0", "m1"});
  m->set_fx_name("max_1");
  m->output(0)->set_fx_name("getitem");
  m->output(1)->set_fx_name("getitem_1");
  Node* odd = g.add_node("aten::relu", {a->output()}, {{ScalarType::kF32, {2}}}, {"r"});
  odd->set_fx_name("relu");  // output keeps no fx name: needs out_fx to round-trip
  g.add_node("return", {a->output()}, {}, {});  // an op spelled like a keyword, no outputs
  g.add_node("ember::check", {}, {}, {});
  g.symbols().push_back({"odd symbol", SymbolRange{2, 2, 2}});
  g.set_outputs({m->output(0), w, c});

  const std::string text = g.to_string();
  EXPECT_NE(text.find("%x.1: f32[2] {fx=\"arg0_1\"}"), std::string::npos) << text;
  EXPECT_NE(text.find("%\"has space\": f32[2]"), std::string::npos) << text;
  EXPECT_NE(text.find("{fx=\"add\", module=\"layer1.0.conv1\", module_types=["
                      "\"torchvision.models.resnet.ResNet\", \"torch.nn.Conv2d\"]}"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("out_fx=[\"getitem\", \"getitem_1\"]"), std::string::npos) << text;
  EXPECT_NE(text.find("  \"return\"(%add)\n"), std::string::npos) << text;
  const Graph back = Graph::parse(text);
  EXPECT_EQ(back.to_string(), text);
  EXPECT_EQ(back.find_value("x.1")->fx_name(), "arg0_1");
  EXPECT_EQ(back.find_value("add")->fx_name(), "add");
  EXPECT_EQ(back.find_value("r")->fx_name(), "");
  EXPECT_EQ(back.find_value("m1")->fx_name(), "getitem_1");
  EXPECT_EQ(back.nodes()[0]->module_types().size(), 2u);
  EXPECT_EQ(back.nodes()[3]->op(), "return");
  EXPECT_EQ(back.nodes()[3]->outputs().size(), 0u);
}

// Each malformed text fails with the right line number and a message saying what is wrong.
TEST(IrText, ParseErrorsNameTheLine) {
  struct Case {
    const char* text;
    std::vector<std::string> parts;
  };
  const Case cases[] = {
      {"", {"line 1:", "expected 'graph(...):'"}},
      {"\n\n", {"line 3:", "no text"}},
      {"graf(%x: f32[2]):\n  return (%x)\n", {"line 1:", "expected 'graph"}},
      {"graph(%x: f32[2]:\n  return (%x)\n", {"line 1:", "between graph inputs"}},
      {"graph(%x: f99[2]):\n  return (%x)\n", {"line 1:", "unknown dtype", "f99"}},
      {"graph(%x: f32[2]):\n  %y = aten::relu(%z) : f32[2]\n  return (%y)\n",
       {"line 2:", "%z is not defined", "defined before"}},
      {"graph(%x: f32[2]):\n  %y = aten::relu(%y) : f32[2]\n  return (%y)\n",
       {"line 2:", "%y is not defined"}},
      {"graph(%x: f32[2]):\n  %x = aten::relu(%x) : f32[2]\n  return (%x)\n",
       {"line 2:", "'x' already exists"}},
      {"graph(%x: f32[2]):\n\n  %y = aten::relu(%x) : f32[2], f32[2]\n  return (%y)\n",
       {"line 3:", "1 outputs but 2 output types"}},
      {"graph(%x: f32[2]):\n  %y = aten::relu(%x\n  return (%y)\n", {"line 2:", "expected"}},
      {"graph(%x: f32[2]):\n  %y = aten::f(\"abc) : f32[2]\n  return (%y)\n",
       {"line 2:", "unterminated string"}},
      {"graph(%x: f32[2]):\n  %y = aten::f(\"\\q\") : f32[2]\n  return (%y)\n",
       {"line 2:", "unknown escape"}},
      {"graph(%x: f32[2]):\n  %y = aten::f(s0) : f32[2]\n  return (%y)\n",
       {"line 2:", "unknown argument", "sym(...)"}},
      {"graph(%x: f32[2]):\n  %y = aten::f(sym(s0 +)) : f32[2]\n  return (%y)\n",
       {"line 2:", "bad size"}},
      {"graph(%x: f32[2]):\n  %y = aten::f(99999999999999999999) : f32[2]\n  return (%y)\n",
       {"line 2:", "does not fit in 64 bits"}},
      {"graph(%x: f32[2]):\n  %y = aten::f(1.2.3) : f32[2]\n  return (%y)\n",
       {"line 2:", "malformed float"}},
      {"graph(%x: f32[2]):\n  %y = aten::f([%x, 1]) : f32[2]\n  return (%y)\n",
       {"line 2:", "mixes tensors"}},
      {"graph(%x: f32[2]):\n  %y = aten::f([True, 1]) : f32[2]\n  return (%y)\n",
       {"line 2:", "mixes bools"}},
      {"graph(%x: f32[2]):\n  %y = aten::f([1.5, s0]) : f32[2]\n  return (%y)\n",
       {"line 2:", "mixes floats"}},
      {"graph(%x: f32[2]):\n  %y = aten::f([[1]]) : f32[2]\n  return (%y)\n",
       {"line 2:", "unexpected '['"}},
      {"graph(%x: f32[2]):\n  %y = aten::f(dtype(f7)) : f32[2]\n  return (%y)\n",
       {"line 2:", "unknown dtype"}},
      {"graph(%x: f32[2]):\n  constant %c: f32[s0]\n  return (%x)\n",
       {"line 2:", "symbolic shape"}},
      {"graph(%x: f32[2]):\n  symbol s0 = [4, 2, 8]\n  return (%x)\n",
       {"line 2:", "min <= opt <= max"}},
      {"graph(%x: f32[2]):\n  symbol s0 = [1, 2, 8]\n  symbol s0 = [1, 2, 8]\n  return (%x)\n",
       {"line 3:", "declared twice"}},
      {"graph(%x: f32[2]):\n  symbol s0 = [1, 2]\n  return (%x)\n", {"line 2:", "symbol range"}},
      {"graph(%x: f32[2]):\n  %y = aten::relu(%x) : f32[2] {color=\"red\"}\n  return (%y)\n",
       {"line 2:", "unknown node attribute 'color'"}},
      {"graph(%x: f32[2] {fx=\"a\", fx=\"b\"}):\n  return (%x)\n", {"line 1:", "given twice"}},
      {"graph(%x: f32[2]):\n  %y = aten::relu(%x) : f32[2]\n", {"line 3:", "without a 'return"}},
      {"graph(%x: f32[2]):\n  return (%x)\n  %y = aten::relu(%x) : f32[2]\n",
       {"line 3:", "after the 'return'"}},
      {"graph(%x: f32[2]):\n  return (%q)\n", {"line 2:", "%q is not defined"}},
      {"graph(%x: f32[2]):\n  return (%x) extra\n", {"line 2:", "unexpected"}},
      {"graph(%x: f32[2, s0 // 0]):\n  return (%x)\n", {"line 1:", "bad size"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.text);
    expect_error([&] { Graph::parse(c.text); }, c.parts);
  }
}

// Malformed text of every kind (bytes flipped, lines dropped or swapped, truncation) either
// parses into a graph whose text round-trips, or throws Error with a line number; it never
// crashes or hangs.
TEST(IrText, SurvivesMutatedText) {
  const std::string seed =
      "graph(%x: f32[s0, 3, 8, 8] {fx=\"x\"}, %y: i64[4]):\n"
      "  symbol s0 = [1, 4, 8]\n"
      "  constant %w: f32[16, 3, 3, 3]\n"
      "  %conv = aten::convolution(%x, %w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1)"
      " : f32[s0, 16, 8, 8] {fx=\"conv\", module=\"m.c\", module_types=[\"M\", \"C\"]}\n"
      "  %a, %b = aten::max.dim(%conv, 1, False) : f32[s0, 8, 8], i64[s0, 8, 8]\n"
      "  %c = aten::f(\"s\\n\\x41\", dtype(f16), sym(floordiv(s0+1, 2)), [1.5, -inf],"
      " [True, False], [%a, None], 2.5e-3, -7) : f32[min(s0, 4), 2]\n"
      "  return (%conv, %a, %c)\n";
  ASSERT_NO_THROW(expect_round_trip(Graph::parse(seed)));

  const std::string alphabet = "%[](),:=\"\\#{} \n-.0123456789aesxfiNTF_";
  std::mt19937 rng(1234);
  int parsed = 0;
  constexpr int kCases = 240;
  for (int i = 0; i < kCases; ++i) {
    std::string text = seed;
    const int mutations = 1 + static_cast<int>(rng() % 4);
    for (int m = 0; m < mutations && !text.empty(); ++m) {
      const size_t pos = rng() % text.size();
      switch (rng() % 5) {
        case 0:
          text[pos] = alphabet[rng() % alphabet.size()];
          break;
        case 1:
          text.erase(pos, 1 + rng() % 8);
          break;
        case 2:
          text.insert(pos, 1, alphabet[rng() % alphabet.size()]);
          break;
        case 3:
          text.resize(pos);
          break;
        case 4:
          text.insert(pos, text.substr(rng() % text.size(), 1 + rng() % 20));
          break;
      }
    }
    try {
      const Graph g = Graph::parse(text);
      ++parsed;
      expect_round_trip(g);
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).rfind("line ", 0), 0u) << e.what() << "\ntext:\n" << text;
    }
  }
  // Some mutations (inside a string, a number) keep the text valid; most break it.
  EXPECT_GT(parsed, 0);
  EXPECT_LT(parsed, kCases);
}

TEST(IrText, DeepNestingAndHugeLinesAreErrorsNotCrashes) {
  const std::string deep = "graph(%x: f32[" + std::string(100000, '(') + "1" +
                           std::string(100000, ')') + "]):\n  return (%x)\n";
  expect_error([&] { Graph::parse(deep); }, {"line 1:"});
  std::string many = "graph(%x: f32[2]):\n  %y = aten::f([";
  for (int i = 0; i < 20000; ++i) many += "1, ";
  many += "1]) : f32[2]\n  return (%y)\n";
  EXPECT_EQ(std::get<std::vector<DimExpr>>(Graph::parse(many).nodes()[0]->args()[0]).size(),
            20001u);
}

}  // namespace
}  // namespace ember::compiler
