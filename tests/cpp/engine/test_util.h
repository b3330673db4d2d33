// Shared helpers for the engine test suites: host tensors, running a network through the whole
// pipeline, and the per-dtype tolerances (written once here; never loosened to make a test pass).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "ember/engine/builder.h"
#include "ember/engine/network.h"

namespace ember::engine::test {

/// A host tensor with its own bytes.
struct TestTensor {
  DataType dtype = DataType::kF32;
  std::vector<int64_t> dims;
  std::vector<uint8_t> bytes;

  /// Values rounded to `dtype` (any dtype; integers truncate, bool is != 0).
  static TestTensor floats(DataType dtype, std::vector<int64_t> dims, const std::vector<float>& v);
  /// Integer values stored as `dtype` (any dtype).
  static TestTensor ints(DataType dtype, std::vector<int64_t> dims, const std::vector<int64_t>& v);
  /// Uniform values in [lo, hi) (integers: whole numbers in that range), deterministic per seed.
  static TestTensor random(DataType dtype, std::vector<int64_t> dims, uint32_t seed, float lo = -1.0f,
                           float hi = 1.0f);
  std::vector<float> to_floats() const;
  std::vector<int64_t> to_ints() const;
  int64_t numel() const;
};

/// How a test network is run.
struct RunOptions {
  /// Profiles for the builder; empty = one profile per symbol spanning exactly the given inputs'
  /// values (min = opt = max).
  std::vector<OptimizationProfile> profiles;
  int optimization_level = 3;
};

/// Builds `net` for the CPU back end, serializes the plan, deserializes it, and runs it on
/// `inputs` (in net.inputs() order). Returns the outputs in net.outputs() order. The result is
/// also checked against running the network directly (the reference executor).
std::vector<TestTensor> run_network(const Network& net, const std::vector<TestTensor>& inputs,
                                    const RunOptions& options = {});

/// Runs the network directly, without builder or plan (the reference executor).
std::vector<TestTensor> run_network_direct(const Network& net, const std::vector<TestTensor>& inputs);

/// Whether building `net` for the CPU at `optimization_level` logs a pass line that starts with
/// `prefix` (BuildReport::pass_log).
bool build_logs(const Network& net, int optimization_level, const std::string& prefix);

/// Absolute and relative tolerance: |a - e| <= atol + rtol * |e|.
struct Tolerance {
  double atol;
  double rtol;
};
/// The tolerance for results stored as `dtype` (f32 1e-5/1e-5 ... see test_util.cpp).
Tolerance tolerance_for(DataType dtype);

/// Expects every element of `actual` within tolerance_for(dtype) of `expected` (NaN matches NaN,
/// inf matches the same inf). `what` labels failures.
void expect_close(const TestTensor& actual, const std::vector<float>& expected, DataType dtype,
                  const std::string& what);
/// Expects exact integer equality.
void expect_equal_ints(const TestTensor& actual, const std::vector<int64_t>& expected,
                       const std::string& what);

/// Calls fn and expects an Error whose message contains every needle.
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& needles);

/// Relabels a serialized plan as format `version` and recomputes its checksum the way that
/// version defines it (byte-wise before 13): how tests make an older plan from a new one.
void relabel_plan(std::vector<uint8_t>& plan, uint32_t version);

}  // namespace ember::engine::test
