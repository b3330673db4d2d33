// How often the CPU back end fell back from oneDNN to its reference kernels, and a test hook
// that forces it. Declared without oneDNN's headers, so tests and builds without oneDNN can
// use them (the count then stays 0 and the hook does nothing).
#pragma once

#include <cstdint>

namespace ember::engine::cpu {

/// Layer runs, since the process started, in which oneDNN refused a layer (when its primitive
/// was created or when it ran) and the reference kernel ran it instead. Tests assert it does
/// not move where oneDNN is expected to run everything.
int64_t dnnl_fallback_count();

/// Test hook: while `on`, every oneDNN kernel refuses its layer as oneDNN does when it cannot
/// take a configuration (status "unimplemented"), so the fallback and its report can be tested.
void dnnl_refuse_for_testing(bool on);

/// Whether dnnl_refuse_for_testing is on.
bool dnnl_refusing_for_testing();

}  // namespace ember::engine::cpu
