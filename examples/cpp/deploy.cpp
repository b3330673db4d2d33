// Runs a program compiled by Ember and saved as TorchScript, from C++ with libtorch and
// libember_torch.so only: no Python at run time.
//
//   ember_deploy model_ember.ts 1,3,224,224 [--iters 20] [--out output.bin]
//
// The input is deterministic (linspace(-1, 1) over the elements, reshaped), so a test can make
// the same tensor in Python and compare. --out writes the first output as raw float32.
// libember_torch.so must be loaded before torch::jit::load (it registers
// torch.classes.ember.Engine and ember::execute_engine): this program links it with
// --no-as-needed (see examples/cpp/CMakeLists.txt and docs/deployment.md).
#include <torch/script.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

std::vector<int64_t> parse_shape(const std::string& text) {
  std::vector<int64_t> shape;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) shape.push_back(std::stoll(item));
  return shape;
}

int usage() {
  std::cerr << "usage: ember_deploy MODEL.ts SHAPE [--iters N] [--out FILE]\n"
               "  SHAPE: the input shape, comma-separated (1,3,224,224)\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return usage();
  const std::string model_path = argv[1];
  std::vector<int64_t> shape;
  try {
    shape = parse_shape(argv[2]);
  } catch (const std::exception&) {
    std::cerr << "ember_deploy: '" << argv[2] << "' is not a shape like 1,3,224,224\n";
    return 2;
  }
  int iters = 20;
  std::string out_path;
  for (int i = 3; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--iters" && i + 1 < argc) iters = std::max(1, std::stoi(argv[++i]));
    else if (a == "--out" && i + 1 < argc) out_path = argv[++i];
    else return usage();
  }

  torch::jit::Module module;
  try {
    module = torch::jit::load(model_path);
  } catch (const std::exception& e) {
    std::cerr << "ember_deploy: cannot load '" << model_path << "': " << e.what() << "\n";
    return 1;
  }
  module.eval();
  torch::NoGradGuard no_grad;
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  at::Tensor input = torch::linspace(-1.0, 1.0, numel).reshape(shape);

  at::Tensor output;
  std::vector<double> ms;
  for (int i = 0; i < iters + 1; ++i) {
    const auto start = std::chrono::steady_clock::now();
    c10::IValue result = module.forward({input});
    const auto stop = std::chrono::steady_clock::now();
    if (i > 0) ms.push_back(std::chrono::duration<double, std::milli>(stop - start).count());
    output = result.isTuple() ? result.toTupleRef().elements()[0].toTensor() : result.toTensor();
  }
  std::sort(ms.begin(), ms.end());
  std::cout << "output shape " << output.sizes() << "\n";
  std::cout << "output[:5]";
  at::Tensor flat = output.to(torch::kFloat32).contiguous().reshape({-1});
  for (int64_t i = 0; i < std::min<int64_t>(5, flat.numel()); ++i) std::cout << " " << flat[i].item<float>();
  std::cout << "\nmedian " << ms[ms.size() / 2] << " ms over " << ms.size() << " runs\n";
  if (!out_path.empty()) {
    std::ofstream f(out_path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(flat.data_ptr<float>()),
            static_cast<std::streamsize>(flat.numel() * sizeof(float)));
    if (!f) {
      std::cerr << "ember_deploy: cannot write '" << out_path << "'\n";
      return 1;
    }
  }
  return 0;
}
