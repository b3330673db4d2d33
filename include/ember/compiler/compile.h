// Building an engine for one segment: conversion into an engine::Network, then the engine's
// Builder. The Python layer calls this once per engine segment.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ember/compiler/ir.h"
#include "ember/compiler/partitioning.h"
#include "ember/compiler/settings.h"
#include "ember/engine/network.h"
#include "ember/engine/timing_cache.h"

namespace ember::compiler {

/// One engine I/O tensor as PyTorch sees it.
struct EngineIO {
  std::string name;        ///< Engine tensor name ("input_0", "output_1").
  std::string value;       ///< IR value name.
  std::string fx_name;     ///< torch.fx node name of the value.
  ScalarType torch_dtype;  ///< dtype on the PyTorch side (cast at the boundary when it differs).
  engine::DataType engine_dtype;
  std::string shape;       ///< Symbolic shape text, "[s0, 3, 224, 224]".
};

/// A built segment.
struct SegmentEngine {
  std::vector<uint8_t> plan;
  std::vector<EngineIO> inputs;
  std::vector<EngineIO> outputs;
  std::vector<std::string> build_log;
  double build_seconds = 0.0;
};

/// Converts the segment's nodes into a network (inputs named input_<i>, outputs output_<i>).
/// Throws Error naming the node whose converter failed.
engine::Network convert_segment(const Graph& g, const Segment& segment,
                                const CompileSettings& settings);

/// Converts and builds the segment with one optimization profile made from the graph's symbol
/// ranges. `timing_cache` (optional) seeds the build's tactic timing and receives its choices
/// (BuilderConfig::timing_cache); one cache serves every segment of a compilation.
SegmentEngine build_segment(const Graph& g, const Segment& segment,
                            const CompileSettings& settings,
                            std::shared_ptr<engine::TimingCache> timing_cache = nullptr);

/// What a segment's engine is made from, independent of names: the engine cache's key text.
struct SegmentFingerprint {
  /// The segment in the IR text form with every value renamed by position (%i0.. inputs, %c0..
  /// constants in order of first use, %v0.. node outputs) and no metadata (fx names, module
  /// paths), so renaming nodes or moving the segment in a bigger graph leaves it unchanged.
  /// Symbol ranges of the graph are included (they set the engine's profile).
  std::string text;
  /// The constants the text names %c0, %c1, ... in that order: their data is part of the key
  /// (the caller hashes it; the text prints only their types).
  std::vector<const Value*> constants;
};

/// The fingerprint of `segment` in `g` (see SegmentFingerprint).
SegmentFingerprint segment_fingerprint(const Graph& g, const Segment& segment);

}  // namespace ember::compiler
