// A SIGSEGV handler to preload into a crashing process (the GPU machine has no debugger that
// Ember's tools rely on): prints each frame's library and offset, which addr2line turns into a
// function and line of a library built with -g1, e.g.
//   gcc -shared -fPIC -o /tmp/segv.so tools/debug/segv_backtrace.c -ldl
//   LD_PRELOAD=/tmp/segv.so python3 bench/attention_bench.py ... 2> crash.log
//   grep "SEGV frame" crash.log | grep libember | while read -r a b c lib off rest; do
//     addr2line -C -f -e build/gpu/libember.so "$off"; done
// (how the cuDNN attention crash inside Python was located, 2026-12-06). Frames without debug
// information (PLT stubs, other libraries) resolve only approximately.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <execinfo.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
static void on_segv(int sig, siginfo_t* si, void* ctx) {
  (void)sig;
  (void)ctx;
  void* b[64];
  int n = backtrace(b, 64);
  for (int i = 0; i < n; ++i) {
    Dl_info info;
    if (dladdr(b[i], &info) && info.dli_fname) {
      fprintf(stderr, "SEGV frame %d: %s +0x%lx (%s)\n", i, info.dli_fname,
              (unsigned long)((char*)b[i] - (char*)info.dli_fbase),
              info.dli_sname ? info.dli_sname : "?");
    }
  }
  fprintf(stderr, "SEGV addr %p\n", si->si_addr);
  _exit(139);
}
__attribute__((constructor)) static void init(void) {
  struct sigaction sa = {0};
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO;
  sigaction(SIGSEGV, &sa, 0);
}
