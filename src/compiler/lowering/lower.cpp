// The lowering pipeline: every pass in a fixed order, repeated until a round changes nothing,
// because each pass can expose work for the others (a removed clone lets a transpose of a
// constant fold; folding leaves constants for dead-code removal).
#include <string>

#include "ember/compiler/lowering.h"

namespace ember::compiler {

namespace {

// Rounds are few in practice (two or three); the cap only guards against passes that undo
// each other.
constexpr int kMaxRounds = 4;

}  // namespace

LoweringReport lower(Graph& g, const CompileSettings& settings) {
  LoweringReport report;
  for (int round = 1; round <= kMaxRounds; ++round) {
    int changed = 0;
    auto run = [&](const char* name, const char* verb, int n) {
      report.log.push_back(std::string(name) + ": " + verb + " " + std::to_string(n) +
                           (n == 1 ? " node" : " nodes"));
      changed += n;
    };
    run("remove_noops", "removed", lower_remove_noops(g));
    run("canonicalize", "rewrote", lower_canonicalize(g));
    run("recognize_gelu", "rewrote", lower_recognize_gelu(g));
    run("fold_constants", "folded", lower_fold_constants(g, settings));
    run("remove_dead_code", "removed", lower_remove_dead_code(g));
    if (changed == 0) {
      report.log.push_back("lower: done after " + std::to_string(round) +
                           (round == 1 ? " round" : " rounds"));
      return report;
    }
  }
  report.log.push_back("lower: stopped after " + std::to_string(kMaxRounds) +
                       " rounds with passes still changing the graph");
  return report;
}

}  // namespace ember::compiler
