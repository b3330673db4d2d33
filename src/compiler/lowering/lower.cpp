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

void run_rounds(Graph& g, const CompileSettings& settings, LoweringReport& report) {
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
    // After folding, so scales and masks made with torch.full are constants it can read.
    run("recognize_attention", "rewrote", lower_recognize_attention(g));
    run("remove_dead_code", "removed", lower_remove_dead_code(g));
    if (changed == 0) {
      report.log.push_back("lower: done after " + std::to_string(round) +
                           (round == 1 ? " round" : " rounds"));
      return;
    }
  }
  report.log.push_back("lower: stopped after " + std::to_string(kMaxRounds) +
                       " rounds with passes still changing the graph");
}

}  // namespace

LoweringReport lower(Graph& g, const CompileSettings& settings) {
  LoweringReport report;
  run_rounds(g, settings, report);
  if (!settings.enable_autocast) return report;
  // Once, after the rounds: the rule table and the rewrites (GELU recognition, canonical
  // reductions) need the canonical graph, and the casts it inserts are final.
  report.autocast = lower_autocast(g, settings);
  const AutocastReport& a = report.autocast;
  report.log.push_back("autocast: " + std::to_string(a.lowered) + " nodes in " +
                       settings.autocast_low_precision_type + ", " +
                       std::to_string(a.kept.size()) + " kept in f32, " +
                       std::to_string(a.casts) + " casts inserted, " +
                       std::to_string(a.pairs_removed) + " redundant cast pairs bypassed");
  const int pairs = lower_remove_cast_pairs(g);
  report.log.push_back("remove_cast_pairs: bypassed " + std::to_string(pairs) +
                       (pairs == 1 ? " pair" : " pairs"));
  const int removed = lower_remove_dead_code(g);
  report.log.push_back("remove_dead_code: removed " + std::to_string(removed) +
                       (removed == 1 ? " node" : " nodes"));
  return report;
}

}  // namespace ember::compiler
