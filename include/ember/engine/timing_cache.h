// The timing cache: which library algorithm (tactic) won for each problem, so that a build or a
// first call does not time the same problem twice. The role of TensorRT's ITimingCache.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace ember::engine {

/// One cached choice. `device` names the GPU and the library versions the choice was timed with
/// (a choice is only used where all of them match); `problem` describes the problem without
/// naming a layer (op, dtypes, dims, strides, epilogue, operand alignment); `choice` is the back
/// end's encoding of the winning algorithm. All three are opaque to everything but the back end
/// that wrote them.
struct TimingEntry {
  std::string device;
  std::string problem;
  std::vector<uint8_t> choice;
};

/// A thread-safe map from (device, problem) to a chosen algorithm. Each Engine owns one, shared
/// by its contexts; a BuilderConfig may hand one in to seed a build and receive what it timed.
///
/// Entries loaded from bytes are not trusted blindly: the back end checks a loaded choice
/// against the library before its first use (and times the problem again when the check fails),
/// then marks it checked.
class TimingCache {
 public:
  TimingCache() = default;
  TimingCache(const TimingCache&) = delete;
  TimingCache& operator=(const TimingCache&) = delete;

  /// Parses bytes written by serialize(). Throws Error("timing cache: ... at byte N") for
  /// truncated, corrupt or wrong-version input; never reads outside [data, data + size).
  static std::shared_ptr<TimingCache> deserialize(const void* data, size_t size);
  /// The entries as bytes: magic "EMBRTCAC", format version, entries, checksum.
  std::vector<uint8_t> serialize() const;

  /// The choice for (device, problem), or nothing. `checked` (optional) tells whether the
  /// choice was timed or checked by this process. Marks the entry used.
  std::optional<std::vector<uint8_t>> lookup(const std::string& device, const std::string& problem,
                                             bool* checked = nullptr) const;
  /// Records a choice timed (or checked) by this process, replacing any earlier one.
  void store(const std::string& device, const std::string& problem, std::vector<uint8_t> choice);
  /// Marks a loaded choice as checked against the library.
  void mark_checked(const std::string& device, const std::string& problem);
  /// Adds `entries` (unchecked, unused), replacing entries with the same key.
  void insert(const std::vector<TimingEntry>& entries);
  /// Every entry (sorted by device, then problem); with `used_only`, those looked up or stored
  /// since the cache was made, which is what one engine needs.
  std::vector<TimingEntry> entries(bool used_only = false) const;
  size_t size() const;

  /// Problems timed through this cache (a cache hit does not count): what tests use to see that
  /// a build with a full cache does no timing.
  int64_t timed_problems() const;
  /// Counts one timed problem (called by the back end).
  void note_timed();

 private:
  struct Value {
    std::vector<uint8_t> choice;
    bool checked = false;
    bool used = false;
  };
  mutable std::mutex mutex_;
  mutable std::map<std::pair<std::string, std::string>, Value> map_;
  int64_t timed_ = 0;
};

}  // namespace ember::engine
