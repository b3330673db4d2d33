// Writes the small CPU plans the torch-bridge tests run (tests/python/test_torch_bridge.py), so
// those tests need no compiler. Each plan is named after its network:
//
//   affine_relu.plan  x f32 [s0, 4]                      -> y = relu(x * 2 + 1)   f32 [s0, 4]
//   two_io.plan       a f32 [s0, 3], b i32 [s0, 3]       -> flat = reshape(a + f32(b), [s0*3])
//                                                           sq   = b * b           i32 [s0, 3]
//   Both profiles: s0 in [1, 8], opt 4.
//
//   ember_torch_make_plan OUT_DIR
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "ember/engine/builder.h"
#include "ember/engine/network.h"

using namespace ember::engine;

namespace {

Tensor* scalar_constant(Network& net, float value, const std::string& name) {
  return net.add_constant(Weights::from_vector(DataType::kF32, {1, 1}, std::vector<float>{value}),
                          name)
      ->output();
}

void write_plan(const Network& net, const std::string& path) {
  BuilderConfig config;
  config.backend = "cpu";
  config.profiles.push_back(OptimizationProfile().set_range("s0", 1, 4, 8));
  const std::vector<uint8_t> plan = Builder(config).build(net);
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(plan.data()), static_cast<std::streamsize>(plan.size()));
  if (!f) throw Error("cannot write " + path);
  std::printf("%s (%zu bytes)\n", path.c_str(), plan.size());
}

void make_affine_relu(const std::string& dir) {
  Network net;
  Tensor* x = net.add_input("input_0", DataType::kF32, {DimExpr::symbol("s0"), 4});
  Tensor* y = net.add_elementwise(x, scalar_constant(net, 2.0f, "two"), ElementWiseOp::kProd, "mul")
                  ->output();
  y = net.add_elementwise(y, scalar_constant(net, 1.0f, "one"), ElementWiseOp::kSum, "add")
          ->output();
  y = net.add_activation(y, ActivationType::kRelu, 0, 0, "relu")->output();
  net.mark_output(y, "output_0");
  write_plan(net, dir + "/affine_relu.plan");
}

void make_two_io(const std::string& dir) {
  Network net;
  const DimExpr s0 = DimExpr::symbol("s0");
  Tensor* a = net.add_input("input_0", DataType::kF32, {s0, 3});
  Tensor* b = net.add_input("input_1", DataType::kI32, {s0, 3});
  Tensor* bf = net.add_cast(b, DataType::kF32, "cast_b")->output();
  Tensor* sum = net.add_elementwise(a, bf, ElementWiseOp::kSum, "sum")->output();
  Tensor* flat = net.add_reshape(sum, {s0 * 3}, "flatten")->output();
  Tensor* sq = net.add_elementwise(b, b, ElementWiseOp::kProd, "square")->output();
  net.mark_output(flat, "output_0");
  net.mark_output(sq, "output_1");
  write_plan(net, dir + "/two_io.plan");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  try {
    make_affine_relu(argv[1]);
    make_two_io(argv[1]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ember_torch_make_plan: %s\n", e.what());
    return 1;
  }
  return 0;
}
