// See iostreams_check.h.
#include "runtime/iostreams_check.h"

#include <cstdint>
#include <locale>
#include <sstream>

namespace ember::engine {

std::string iostreams_probe() {
  std::ostringstream s;
  s.imbue(std::locale::classic());  // a program's global locale must not change the answer
  s << "eng" << int64_t{42} << 0.5;
  return s.str();
}

bool iostreams_work() {
  static const bool works = iostreams_probe() == "eng420.5";
  return works;
}

}  // namespace ember::engine
