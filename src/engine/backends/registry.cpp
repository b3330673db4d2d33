// The back ends of this build. CMake writes ember_backends.inc with one EMBER_BACKEND(name) line
// per back end it builds (cpu always; cuda when nvcc, cuBLASLt and cuDNN were found), so adding a
// back end means a folder, its `<name>_backend()` and one line in CMakeLists.txt.
#include "backends/backend.h"

namespace ember::engine {

namespace {

const std::vector<const Backend*>& registered() {
  static const std::vector<const Backend*> list = {
#define EMBER_BACKEND(name) &name##_backend(),
#include "ember_backends.inc"
#undef EMBER_BACKEND
  };
  return list;
}

}  // namespace

const Backend* find_backend(const std::string& name) {
  for (const Backend* b : registered()) {
    if (b->name() == name) return b;
  }
  return nullptr;
}

std::vector<std::string> backend_names() {
  std::vector<std::string> out;
  for (const Backend* b : registered()) out.push_back(b->name());
  return out;
}

}  // namespace ember::engine
