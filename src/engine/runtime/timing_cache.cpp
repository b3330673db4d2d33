// TimingCache: the map, its byte form, and the entry list the plan's timing section shares.
//
// Byte layout (little-endian), version 1:
//   header   magic "EMBRTCAC" (8) | format version u32 | flags u32 (0) | payload size u64 |
//            checksum u64 (FNV-1a 64 of the payload)                                (32 bytes)
//   payload  entries (write_timing_entries): list of (device | problem | choice bytes)
// The reader uses the plan's bounded cursor, so its messages have the plan reader's form
// ("timing cache: <what> at byte <offset>").
#include "ember/engine/timing_cache.h"

#include <cstring>
#include <set>

#include "plan/serialize.h"

namespace ember::engine {

namespace {

constexpr char kCacheMagic[8] = {'E', 'M', 'B', 'R', 'T', 'C', 'A', 'C'};
constexpr uint32_t kCacheFormatVersion = 1;
constexpr size_t kCacheHeaderBytes = 32;
constexpr size_t kCacheChecksumPos = 24;

}  // namespace

// ---------------------------------------------------------------- entry lists

void write_timing_entries(ByteWriter& out, const std::vector<TimingEntry>& entries) {
  out.count(entries.size(), "timing entry list");
  for (const TimingEntry& e : entries) {
    out.str(e.device, "timing entry device");
    out.str(e.problem, "timing entry problem");
    if (e.choice.size() > kTimingMaxChoiceBytes) {
      throw Error("timing cache: a choice of " + std::to_string(e.choice.size()) +
                  " bytes is longer than the " + std::to_string(kTimingMaxChoiceBytes) +
                  "-byte limit (problem '" + e.problem + "')");
    }
    out.count(e.choice.size(), "timing entry choice");
    out.raw(e.choice.data(), e.choice.size());
  }
}

std::vector<TimingEntry> read_timing_entries(ByteReader& in) {
  // An entry is at least three u32 lengths.
  const size_t count_at = in.offset();
  const size_t n = in.count("timing entry list", 12);
  if (n > kTimingMaxEntries) {
    ByteReader::fail("the timing entry list claims " + std::to_string(n) +
                         " entries; the limit is " + std::to_string(kTimingMaxEntries),
                     count_at);
  }
  std::vector<TimingEntry> entries;  // grows with the entries actually read
  std::set<std::pair<std::string, std::string>> seen;
  for (size_t i = 0; i < n; ++i) {
    TimingEntry& e = entries.emplace_back();
    const size_t at = in.offset();
    e.device = in.str("timing entry device");
    e.problem = in.str("timing entry problem");
    const size_t choice_at = in.offset();
    const size_t bytes = in.count("timing entry choice", 1);
    if (bytes > kTimingMaxChoiceBytes) {
      ByteReader::fail("timing entry " + std::to_string(i) + " has a " + std::to_string(bytes) +
                           "-byte choice; the limit is " + std::to_string(kTimingMaxChoiceBytes),
                       choice_at);
    }
    e.choice.resize(bytes);
    for (uint8_t& b : e.choice) b = in.u8("timing entry choice");
    if (!seen.emplace(e.device, e.problem).second) {
      ByteReader::fail("timing entry " + std::to_string(i) + " repeats the problem '" +
                           e.problem + "'",
                       at);
    }
  }
  return entries;
}

// ---------------------------------------------------------------- bytes

std::vector<uint8_t> TimingCache::serialize() const {
  ByteWriter out;
  out.raw(kCacheMagic, sizeof kCacheMagic);
  out.u32(kCacheFormatVersion);
  out.u32(0);  // flags: none defined
  out.u64(0);  // payload size, patched below
  out.u64(0);  // checksum, patched below
  write_timing_entries(out, entries());
  const size_t payload = out.size() - kCacheHeaderBytes;
  out.patch_u64(16, payload);
  out.patch_u64(kCacheChecksumPos, fnv1a64(out.bytes().data() + kCacheHeaderBytes, payload));
  return std::move(out.bytes());
}

std::shared_ptr<TimingCache> TimingCache::deserialize(const void* data, size_t size) {
  if (data == nullptr && size != 0) throw Error("timing cache: null data with a non-zero size");
  const uint8_t empty = 0;
  const auto* bytes = data == nullptr ? &empty : static_cast<const uint8_t*>(data);
  auto cache = std::make_shared<TimingCache>();
  try {
    ByteReader h(bytes, size, 0);
    uint8_t magic[sizeof kCacheMagic];
    for (uint8_t& c : magic) c = h.u8("magic");
    if (std::memcmp(magic, kCacheMagic, sizeof kCacheMagic) != 0) {
      ByteReader::fail("not an Ember timing cache (the data does not start with \"EMBRTCAC\")",
                       0);
    }
    const uint32_t version = h.u32("format version");
    if (version != kCacheFormatVersion) {
      ByteReader::fail("the cache has format version " + std::to_string(version) +
                           ", but this build reads version " +
                           std::to_string(kCacheFormatVersion) + "; delete it to start afresh",
                       8);
    }
    if (h.u32("flags") != 0) ByteReader::fail("unknown flags (version 1 defines none)", 12);
    const uint64_t payload = h.u64("payload size");
    const uint64_t checksum = h.u64("checksum");
    if (payload != size - kCacheHeaderBytes) {
      ByteReader::fail("truncated or padded: the header announces a " + std::to_string(payload) +
                           "-byte payload, but " + std::to_string(size - kCacheHeaderBytes) +
                           " bytes follow the header",
                       16);
    }
    if (fnv1a64(bytes + kCacheHeaderBytes, payload) != checksum) {
      ByteReader::fail("checksum mismatch: the cache is corrupt", kCacheChecksumPos);
    }
    ByteReader in(bytes + kCacheHeaderBytes, payload, kCacheHeaderBytes);
    cache->insert(read_timing_entries(in));
    if (in.remaining() != 0) {
      ByteReader::fail(std::to_string(in.remaining()) + " unexpected bytes after the entries",
                       in.offset());
    }
  } catch (const Error& e) {
    // The cursor's messages start with "plan: "; this is not a plan.
    std::string m = e.what();
    if (m.rfind("plan: ", 0) == 0) m = m.substr(6);
    throw Error("timing cache: " + m);
  }
  return cache;
}

// ---------------------------------------------------------------- the map

std::optional<std::vector<uint8_t>> TimingCache::lookup(const std::string& device,
                                                        const std::string& problem,
                                                        bool* checked) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = map_.find({device, problem});
  if (it == map_.end()) return std::nullopt;
  it->second.used = true;
  if (checked != nullptr) *checked = it->second.checked;
  return it->second.choice;
}

void TimingCache::store(const std::string& device, const std::string& problem,
                        std::vector<uint8_t> choice) {
  std::lock_guard<std::mutex> lock(mutex_);
  map_[{device, problem}] = Value{std::move(choice), true, true};
}

void TimingCache::mark_checked(const std::string& device, const std::string& problem) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = map_.find({device, problem});
  if (it != map_.end()) it->second.checked = true;
}

void TimingCache::insert(const std::vector<TimingEntry>& entries) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (const TimingEntry& e : entries) map_[{e.device, e.problem}] = Value{e.choice, false, false};
}

std::vector<TimingEntry> TimingCache::entries(bool used_only) const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<TimingEntry> out;
  for (const auto& [key, value] : map_) {
    if (used_only && !value.used) continue;
    out.push_back({key.first, key.second, value.choice});
  }
  return out;
}

size_t TimingCache::size() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return map_.size();
}

int64_t TimingCache::timed_problems() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return timed_;
}

void TimingCache::note_timed() {
  std::lock_guard<std::mutex> lock(mutex_);
  ++timed_;
}

}  // namespace ember::engine
