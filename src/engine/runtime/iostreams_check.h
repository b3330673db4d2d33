// Whether libstdc++'s iostreams format numbers inside libember.so in this process.
//
// A toolchain that links libstdc++ statically (the GPU machine's /opt/gcc/bin/g++ does) puts a
// copy of it into each shared library it links. While that copy's symbols were exported, a
// process that had loaded the system's libstdc++.so.6 first (any Python process that imported
// torch) bound part of them to the system's library: the two halves disagreed about the locale's
// facets, and a number written to a stream came out empty (a local reproduction) or crashed (the
// cuDNN frontend's `tag << engineId` in get_engine_tag, H100, 2026-12-06). CMakeLists.txt now
// keeps the copy's symbols local to each library (ember_private_runtime: --exclude-libs), which
// makes the copy whole again. This check says whether iostreams work here; the code that needs
// them (cuDNN attention, whose frontend uses them) asks it first.
#pragma once

#include <string>

namespace ember::engine {

/// What `"eng" << int64_t{42} << 0.5` formats to through std::ostringstream inside libember.so:
/// "eng420.5" when iostreams work in this process.
std::string iostreams_probe();

/// iostreams_probe() == "eng420.5", computed once per process.
bool iostreams_work();

}  // namespace ember::engine
