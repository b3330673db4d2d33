// EMBER_LAYER_PROFILE=1: per-layer host time of the CPU back end (see profile.h).
//
// The table is kept per process rather than per context because the question it answers is
// "where did this model's time go", across every engine the process ran; it is printed once, at
// exit, so timed loops are not slowed by printing.
#include "backends/cpu/profile.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

namespace ember::engine::cpu {

namespace {

struct Stat {
  int64_t calls = 0;
  double ms = 0.0;
};

class ProfileTable {
 public:
  void record(const char* kind, const std::string& what, double ms) {
    std::lock_guard<std::mutex> lock(mutex_);
    Stat& k = by_kind_[kind];
    k.calls += 1;
    k.ms += ms;
    Stat& l = by_layer_[what];
    l.calls += 1;
    l.ms += ms;
  }
  void count_run() {
    std::lock_guard<std::mutex> lock(mutex_);
    runs_ += 1;
  }
  ~ProfileTable() { print(); }

 private:
  void print() const {
    if (runs_ == 0) return;
    double total = 0.0;
    for (const auto& [kind, s] : by_kind_) total += s.ms;
    const double per_run = total / static_cast<double>(runs_);
    std::fprintf(stderr, "\n[ember profile] CPU back end, %lld network run(s), %.2f ms of layer time per run\n",
                 static_cast<long long>(runs_), per_run);
    std::fprintf(stderr, "%-22s %10s %12s %7s\n", "layer kind", "calls/run", "ms/run", "share");
    std::vector<std::pair<std::string, Stat>> kinds(by_kind_.begin(), by_kind_.end());
    std::sort(kinds.begin(), kinds.end(),
              [](const auto& a, const auto& b) { return a.second.ms > b.second.ms; });
    const auto runs = static_cast<double>(runs_);
    for (const auto& [kind, s] : kinds) {
      std::fprintf(stderr, "%-22s %10.1f %12.3f %6.1f%%\n", kind.c_str(),
                   static_cast<double>(s.calls) / runs, s.ms / runs, 100.0 * s.ms / total);
    }
    std::vector<std::pair<std::string, Stat>> layers(by_layer_.begin(), by_layer_.end());
    std::sort(layers.begin(), layers.end(),
              [](const auto& a, const auto& b) { return a.second.ms > b.second.ms; });
    constexpr size_t kTop = 25;
    std::fprintf(stderr, "slowest layers (ms per call):\n");
    for (size_t i = 0; i < std::min(kTop, layers.size()); ++i) {
      const Stat& s = layers[i].second;
      std::fprintf(stderr, "  %9.3f  %s\n", s.ms / static_cast<double>(s.calls),
                   layers[i].first.c_str());
    }
  }

  std::mutex mutex_;
  std::map<std::string, Stat> by_kind_;
  std::map<std::string, Stat> by_layer_;
  int64_t runs_ = 0;
};

ProfileTable& table() {
  static ProfileTable t;  // destroyed (and printed) at exit
  return t;
}

}  // namespace

bool profiling_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("EMBER_LAYER_PROFILE");
    return e != nullptr && *e != '\0' && std::string(e) != "0";
  }();
  return on;
}

void profile_record(const char* kind, const std::string& what, double ms) {
  table().record(kind, what, ms);
}

void profile_count_run() { table().count_run(); }

}  // namespace ember::engine::cpu
