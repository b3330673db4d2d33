// segment_fingerprint: the engine cache's key text ignores names and metadata and keeps
// everything the engine is built from.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "ember/compiler/compile.h"
#include "ember/compiler/partitioning.h"

namespace ember::compiler {
namespace {

// One engine segment: relu(x @ w + b) * 2, with the given value names and fx metadata.
const char* kNamed = R"(graph(%x: f32[s0, 4] {fx="x"}):
  symbol s0 = [1, 2, 8]
  constant %w: f32[4, 4]
  constant %b: f32[4]
  %mm = aten::mm(%x, %w) : f32[s0, 4] {fx="mm", module="layer1"}
  %add = aten::add.Tensor(%mm, %b, 1) : f32[s0, 4] {fx="add"}
  %relu = aten::relu(%add) : f32[s0, 4] {fx="relu"}
  %out = aten::mul.Scalar(%relu, 2.0) : f32[s0, 4] {fx="out"}
  return (%out)
)";

// The fingerprint of the graph's only segment; `names` gets the constants' names in %c order
// (the fingerprint's Value pointers die with the graph, so they are read here).
std::string fingerprint(const std::string& text, std::vector<std::string>* names = nullptr) {
  Graph g = Graph::parse(text);
  CompileSettings settings;
  settings.min_block_size = 1;
  const PartitionResult p = partition(g, settings);
  EXPECT_EQ(p.segments.size(), 1u);
  if (p.segments.size() != 1 || !p.segments[0].engine) return "<not one engine segment>";
  const SegmentFingerprint f = segment_fingerprint(g, p.segments[0]);
  if (names != nullptr) {
    for (const Value* c : f.constants) names->push_back(c->name());
  }
  return f.text;
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) {
    s.replace(at, from.size(), to);
  }
  return s;
}

TEST(SegmentFingerprint, NamesByPositionWithoutMetadata) {
  std::vector<std::string> constants;
  const std::string text = fingerprint(kNamed, &constants);
  EXPECT_EQ(text,
            "segment(%i0: f32[_s0, 4]):\n"
            "  symbol _s0 = [1, 2, 8]\n"
            "  constant %c0: f32[4, 4]\n"
            "  constant %c1: f32[4]\n"
            "  %v0 = aten::mm(%i0, %c0) : f32[_s0, 4]\n"
            "  %v1 = aten::add.Tensor(%v0, %c1, 1) : f32[_s0, 4]\n"
            "  %v2 = aten::relu(%v1) : f32[_s0, 4]\n"
            "  %v3 = aten::mul.Scalar(%v2, 2.0) : f32[_s0, 4]\n"
            "  return (%v3)\n")
      << text;
  EXPECT_EQ(constants, (std::vector<std::string>{"w", "b"}));
}

TEST(SegmentFingerprint, RenamingValuesAndFxNamesChangesNothing) {
  std::string renamed = replace_all(kNamed, "%mm", "%matmul_7");
  renamed = replace_all(renamed, "fx=\"add\"", "fx=\"add_3\"");
  renamed = replace_all(renamed, "module=\"layer1\"", "module=\"encoder.0\"");
  renamed = replace_all(renamed, "%w", "%p_weight");
  ASSERT_NE(renamed, kNamed);
  EXPECT_EQ(fingerprint(renamed), fingerprint(kNamed));
}

TEST(SegmentFingerprint, RenamingSymbolsChangesNothing) {
  // The TorchScript importer names symbols after the method's arguments ("x_d0"), torch.export
  // after a counter ("s0"): symbols are named by their position in the graph's table.
  const std::string renamed = replace_all(kNamed, "s0", "images_d0");
  ASSERT_NE(renamed, kNamed);
  EXPECT_EQ(fingerprint(renamed), fingerprint(kNamed));
  // Symbolic int and int-list arguments too.
  const char* kView = R"(graph(%x: f32[s0, 4] {fx="x"}):
  symbol s0 = [1, 2, 8]
  %r = aten::relu(%x) : f32[s0, 4] {fx="relu"}
  %v = aten::view(%r, [s0*4]) : f32[s0*4] {fx="view"}
  %s = aten::slice.Tensor(%v, 0, 0, sym(s0*4), 1) : f32[s0*4] {fx="slice"}
  %o = aten::relu(%s) : f32[s0*4] {fx="out"}
  return (%o)
)";
  const std::string view = fingerprint(kView);
  EXPECT_NE(view.find("aten::view(%v0, [_s0*4])"), std::string::npos) << view;
  EXPECT_NE(view.find("aten::slice.Tensor(%v1, 0, 0, sym(_s0*4), 1)"), std::string::npos) << view;
  EXPECT_EQ(fingerprint(replace_all(kView, "s0", "batch")), view);
}

TEST(SegmentFingerprint, WhatTheEngineDependsOnChangesIt) {
  const std::string base = fingerprint(kNamed);
  // An argument, a range, a dtype, an op.
  EXPECT_NE(fingerprint(replace_all(kNamed, "2.0)", "3.0)")), base);
  EXPECT_NE(fingerprint(replace_all(kNamed, "[1, 2, 8]", "[1, 2, 16]")), base);
  EXPECT_NE(fingerprint(replace_all(kNamed, "f32", "f16")), base);
  EXPECT_NE(fingerprint(replace_all(kNamed, "aten::relu", "aten::sigmoid")), base);
}

}  // namespace
}  // namespace ember::compiler
