#include "test_util.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "backends/cpu/executor.h"
#include "backends/cpu/kernels.h"
#include "ember/engine/runtime.h"
#include "plan/plan.h"
#include "plan/serialize.h"

namespace ember::engine::test {

TestTensor TestTensor::floats(DataType dtype, std::vector<int64_t> dims, const std::vector<float>& v) {
  TestTensor t;
  t.dtype = dtype;
  t.dims = std::move(dims);
  t.bytes.resize(static_cast<size_t>(t.numel()) * dtype_size(dtype));
  EXPECT_EQ(static_cast<int64_t>(v.size()), t.numel()) << "TestTensor::floats value count";
  for (int64_t i = 0; i < t.numel() && i < static_cast<int64_t>(v.size()); ++i) {
    cpu::store_float(dtype, t.bytes.data(), i, v[i]);
  }
  return t;
}

TestTensor TestTensor::ints(DataType dtype, std::vector<int64_t> dims, const std::vector<int64_t>& v) {
  TestTensor t;
  t.dtype = dtype;
  t.dims = std::move(dims);
  t.bytes.resize(static_cast<size_t>(t.numel()) * dtype_size(dtype));
  EXPECT_EQ(static_cast<int64_t>(v.size()), t.numel()) << "TestTensor::ints value count";
  for (int64_t i = 0; i < t.numel() && i < static_cast<int64_t>(v.size()); ++i) {
    cpu::store_int(dtype, t.bytes.data(), i, v[i]);
  }
  return t;
}

TestTensor TestTensor::random(DataType dtype, std::vector<int64_t> dims, uint32_t seed, float lo,
                              float hi) {
  std::mt19937 gen(seed);
  const int64_t n = dims_numel(dims);
  if (dtype_is_float(dtype)) {
    std::uniform_real_distribution<float> dist(lo, hi);
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = dist(gen);
    return floats(dtype, std::move(dims), v);
  }
  if (dtype == DataType::kBool) {
    std::bernoulli_distribution dist(0.5);
    std::vector<int64_t> v(static_cast<size_t>(n));
    for (auto& x : v) x = dist(gen) ? 1 : 0;
    return ints(dtype, std::move(dims), v);
  }
  std::uniform_int_distribution<int64_t> dist(static_cast<int64_t>(std::floor(lo)),
                                              std::max<int64_t>(static_cast<int64_t>(std::floor(lo)),
                                                                static_cast<int64_t>(std::ceil(hi)) - 1));
  std::vector<int64_t> v(static_cast<size_t>(n));
  for (auto& x : v) x = dist(gen);
  return ints(dtype, std::move(dims), v);
}

std::vector<float> TestTensor::to_floats() const {
  std::vector<float> v(static_cast<size_t>(numel()));
  for (int64_t i = 0; i < numel(); ++i) v[i] = cpu::load_float(dtype, bytes.data(), i);
  return v;
}

std::vector<int64_t> TestTensor::to_ints() const {
  std::vector<int64_t> v(static_cast<size_t>(numel()));
  for (int64_t i = 0; i < numel(); ++i) v[i] = cpu::load_int(dtype, bytes.data(), i);
  return v;
}

int64_t TestTensor::numel() const { return dims_numel(dims); }

bool build_logs(const Network& net, int optimization_level, const std::string& prefix) {
  BuildReport report;
  BuilderConfig config;
  config.optimization_level = optimization_level;
  Builder(config).build(net, &report);
  for (const std::string& line : report.pass_log) {
    if (line.rfind(prefix, 0) == 0) return true;
  }
  return false;
}

std::vector<TestTensor> run_network_direct(const Network& net, const std::vector<TestTensor>& inputs) {
  std::vector<cpu::OwnedTensor> ins;
  for (const auto& t : inputs) ins.push_back({t.dtype, t.dims, t.bytes});
  std::vector<TestTensor> outs;
  for (auto& o : cpu::execute_network(net, ins)) outs.push_back({o.dtype, o.dims, std::move(o.bytes)});
  return outs;
}

std::vector<TestTensor> run_network(const Network& net, const std::vector<TestTensor>& inputs,
                                    const RunOptions& options) {
  BuilderConfig config;
  config.backend = "cpu";
  config.optimization_level = options.optimization_level;
  config.profiles = options.profiles;
  if (config.profiles.empty()) {
    OptimizationProfile p;
    for (size_t i = 0; i < inputs.size() && i < net.inputs().size(); ++i) {
      p.set_dimensions(net.inputs()[i]->name(), inputs[i].dims, inputs[i].dims, inputs[i].dims);
    }
    config.profiles.push_back(p);
  }
  const std::vector<uint8_t> plan = Builder(config).build(net);
  Runtime runtime;
  const auto engine = runtime.deserialize(plan.data(), plan.size());
  auto ctx = engine->create_execution_context();
  std::vector<TestTensor> outs;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const std::string& name = net.inputs()[i]->name();
    ctx->set_input_shape(name, inputs[i].dims);
    ctx->set_tensor_address(name, const_cast<uint8_t*>(inputs[i].bytes.data()));
  }
  for (const Tensor* t : net.outputs()) {
    TestTensor o;
    o.dtype = t->dtype();
    o.dims = ctx->tensor_shape(t->name());
    o.bytes.resize(static_cast<size_t>(o.numel()) * dtype_size(o.dtype));
    outs.push_back(std::move(o));
  }
  for (size_t i = 0; i < outs.size(); ++i) {
    ctx->set_tensor_address(net.outputs()[i]->name(), outs[i].bytes.data());
  }
  ctx->execute();
  // The plan must compute what the network says: compare with the reference executor.
  const auto direct = run_network_direct(net, inputs);
  EXPECT_EQ(direct.size(), outs.size());
  for (size_t i = 0; i < outs.size() && i < direct.size(); ++i) {
    EXPECT_EQ(direct[i].dims, outs[i].dims) << "output " << i << " dims: plan vs direct";
    if (dtype_is_float(outs[i].dtype)) {
      expect_close(outs[i], direct[i].to_floats(), outs[i].dtype, "plan vs direct output " + std::to_string(i));
    } else {
      expect_equal_ints(outs[i], direct[i].to_ints(), "plan vs direct output " + std::to_string(i));
    }
  }
  return outs;
}

Tolerance tolerance_for(DataType dtype) {
  switch (dtype) {
    case DataType::kF32: return {1e-5, 1e-5};
    case DataType::kF16: return {1e-3, 2e-3};   // ~2 ulp of binary16 (eps 9.8e-4)
    case DataType::kBF16: return {8e-3, 1.6e-2};  // ~2 ulp of bfloat16 (eps 7.8e-3)
    case DataType::kI8:
    case DataType::kU8:
    case DataType::kI32:
    case DataType::kI64:
    case DataType::kBool: return {0.0, 0.0};
    case DataType::kF8E4M3: return {0.0, 0.0};  // Quantize's outputs: bit-exact on every back end
  }
  return {0.0, 0.0};
}

void expect_close(const TestTensor& actual, const std::vector<float>& expected, DataType dtype,
                  const std::string& what) {
  ASSERT_EQ(actual.numel(), static_cast<int64_t>(expected.size())) << what << ": element count";
  const Tolerance tol = tolerance_for(dtype);
  const std::vector<float> a = actual.to_floats();
  int reported = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    const double e = expected[i], v = a[i];
    bool ok;
    if (std::isnan(e)) {
      ok = std::isnan(v);
    } else if (std::isinf(e)) {
      ok = v == e;
    } else {
      ok = std::fabs(v - e) <= tol.atol + tol.rtol * std::fabs(e);
    }
    if (!ok && reported++ < 5) {
      ADD_FAILURE() << what << ": element " << i << " is " << v << ", expected " << e << " ("
                    << dtype_name(dtype) << " tolerance atol " << tol.atol << " rtol " << tol.rtol
                    << ")";
    }
  }
}

void expect_equal_ints(const TestTensor& actual, const std::vector<int64_t>& expected,
                       const std::string& what) {
  ASSERT_EQ(actual.numel(), static_cast<int64_t>(expected.size())) << what << ": element count";
  const auto a = actual.to_ints();
  int reported = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    if (a[i] != expected[i] && reported++ < 5) {
      ADD_FAILURE() << what << ": element " << i << " is " << a[i] << ", expected " << expected[i];
    }
  }
}

void expect_error(const std::function<void()>& fn, const std::vector<std::string>& needles) {
  try {
    fn();
    ADD_FAILURE() << "expected an Error mentioning '" << needles.front() << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& n : needles) {
      EXPECT_NE(msg.find(n), std::string::npos) << "message '" << msg << "' lacks '" << n << "'";
    }
  }
}

void relabel_plan(std::vector<uint8_t>& plan, uint32_t version) {
  for (int i = 0; i < 4; ++i) plan[8 + i] = static_cast<uint8_t>(version >> (8 * i));
  const uint64_t h =
      plan_checksum(plan.data() + kPlanHeaderBytes, plan.size() - kPlanHeaderBytes, version);
  for (int i = 0; i < 8; ++i) plan[kPlanChecksumPos + i] = static_cast<uint8_t>(h >> (8 * i));
}

}  // namespace ember::engine::test
