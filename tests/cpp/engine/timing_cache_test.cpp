// The timing cache: the map (keys, checked/used flags, thread safety) and its byte form
// (round trip, and corrupt input rejected with an Error that says what and where, never a
// crash). Runs on the CPU; the GPU side is in cuda_timing_test.cpp.
#include "ember/engine/timing_cache.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "ember/engine/types.h"
#include "plan/serialize.h"

namespace ember::engine {
namespace {

const std::string kGpuA = "NVIDIA H100 80GB HBM3|sm90|132 SMs|cudart 13000|cublasLt 130100|cudnn 91900";
const std::string kGpuB = "NVIDIA H200|sm90|132 SMs|cudart 13000|cublasLt 130100|cudnn 91900";

std::vector<uint8_t> bytes_of(std::initializer_list<int> v) {
  std::vector<uint8_t> out;
  for (int x : v) out.push_back(static_cast<uint8_t>(x));
  return out;
}

std::shared_ptr<TimingCache> sample_cache() {
  auto c = std::make_shared<TimingCache>();
  c->store(kGpuA, "cublasLt f16 m=64 n=64 k=64", std::vector<uint8_t>(64, 7));
  c->store(kGpuA, "cudnn fwd f32 x=[2, 3, 7, 7]", bytes_of({1, 0, 0, 0, 3, 0, 0, 0}));
  c->store(kGpuB, "cublasLt f16 m=64 n=64 k=64", std::vector<uint8_t>(64, 9));
  c->store(kGpuA, "empty choice", {});
  return c;
}

// Loads `b` and expects an Error starting with "timing cache: " that contains `needle`.
void expect_cache_error(const std::vector<uint8_t>& b, const std::string& needle,
                        const std::string& what) {
  try {
    TimingCache::deserialize(b.data(), b.size());
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.rfind("timing cache: ", 0), 0u) << what << ": " << m;
    EXPECT_NE(m.find(needle), std::string::npos) << what << ": " << m;
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << ": threw a non-Error exception: " << e.what();
    return;
  }
  ADD_FAILURE() << what << ": was accepted";
}

void put_le(std::vector<uint8_t>& b, size_t pos, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) b[pos + i] = static_cast<uint8_t>(v >> (8 * i));
}

/// The cache's magic and version with zeroed flags, payload size and checksum: the caller
/// writes entries, then fixes the size and reseals.
ByteWriter header_with_zero_fields() {
  ByteWriter w;
  w.raw("EMBRTCAC", 8);
  w.u32(1);
  w.u32(0);
  w.u64(0);
  w.u64(0);
  return w;
}

// Recomputes the checksum (header bytes 24..31, over everything after the 32-byte header).
void reseal(std::vector<uint8_t>& b) {
  put_le(b, 24, fnv1a64(b.data() + 32, b.size() - 32), 8);
}

TEST(TimingCache, LookupStoreAndDeviceKeys) {
  TimingCache c;
  EXPECT_FALSE(c.lookup(kGpuA, "p"));
  c.store(kGpuA, "p", bytes_of({1, 2, 3}));
  bool checked = false;
  const auto hit = c.lookup(kGpuA, "p", &checked);
  ASSERT_TRUE(hit);
  EXPECT_EQ(*hit, bytes_of({1, 2, 3}));
  EXPECT_TRUE(checked);  // stored by this process
  // A choice timed on another GPU (or library version) is never returned for this one.
  EXPECT_FALSE(c.lookup(kGpuB, "p"));
  c.store(kGpuA, "p", bytes_of({4}));
  EXPECT_EQ(*c.lookup(kGpuA, "p"), bytes_of({4}));
  EXPECT_EQ(c.size(), 1u);
  EXPECT_EQ(c.timed_problems(), 0);
  c.note_timed();
  EXPECT_EQ(c.timed_problems(), 1);
}

TEST(TimingCache, LoadedEntriesAreUncheckedAndUnusedUntilLookedUp) {
  TimingCache c;
  c.insert({{kGpuA, "p", bytes_of({1})}, {kGpuA, "q", bytes_of({2})}});
  EXPECT_TRUE(c.entries(/*used_only=*/true).empty());
  bool checked = true;
  ASSERT_TRUE(c.lookup(kGpuA, "p", &checked));
  EXPECT_FALSE(checked);
  c.mark_checked(kGpuA, "p");
  ASSERT_TRUE(c.lookup(kGpuA, "p", &checked));
  EXPECT_TRUE(checked);
  const auto used = c.entries(true);
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(used[0].problem, "p");
  EXPECT_EQ(c.entries().size(), 2u);
}

TEST(TimingCache, RoundTripKeepsEveryEntry) {
  const auto original = sample_cache();
  const std::vector<uint8_t> b = original->serialize();
  const auto loaded = TimingCache::deserialize(b.data(), b.size());
  const auto a = original->entries(), c = loaded->entries();
  ASSERT_EQ(a.size(), c.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].device, c[i].device);
    EXPECT_EQ(a[i].problem, c[i].problem);
    EXPECT_EQ(a[i].choice, c[i].choice);
  }
  EXPECT_EQ(loaded->serialize(), b);  // canonical: the same bytes again
  EXPECT_EQ(loaded->timed_problems(), 0);
  // An empty cache round-trips too.
  const auto empty = TimingCache().serialize();
  EXPECT_EQ(TimingCache::deserialize(empty.data(), empty.size())->size(), 0u);
}

TEST(TimingCache, EveryTruncationIsAnErrorWithAnOffset) {
  const std::vector<uint8_t> b = sample_cache()->serialize();
  for (size_t n = 0; n < b.size(); ++n) {
    const std::vector<uint8_t> cut(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(n));
    expect_cache_error(cut, n < 32 ? "at byte" : "truncated", "first " + std::to_string(n) + " bytes");
  }
}

TEST(TimingCache, EveryBitFlipIsRejected) {
  const std::vector<uint8_t> original = sample_cache()->serialize();
  for (size_t i = 0; i < original.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      auto b = original;
      b[i] ^= static_cast<uint8_t>(1u << bit);
      expect_cache_error(b, "at byte", "bit " + std::to_string(bit) + " of byte " + std::to_string(i));
    }
  }
}

TEST(TimingCache, CorruptFieldsSayWhatAndWhere) {
  const std::vector<uint8_t> good = sample_cache()->serialize();
  {
    auto b = good;
    b[0] = 'X';
    expect_cache_error(b, "not an Ember timing cache", "magic");
  }
  {
    auto b = good;
    put_le(b, 8, 7, 4);
    expect_cache_error(b, "format version 7, but this build reads version 1", "version");
  }
  {
    auto b = good;
    put_le(b, 12, 1, 4);
    expect_cache_error(b, "unknown flags", "flags");
  }
  {
    auto b = good;
    b.push_back(0);
    expect_cache_error(b, "truncated or padded", "trailing byte");
  }
  {
    auto b = good;
    b.back() ^= 1;
    expect_cache_error(b, "checksum mismatch", "flipped payload byte");
  }
  {
    auto b = good;  // an entry count far beyond the bytes that follow
    put_le(b, 32, 0xfffffff0u, 4);
    reseal(b);
    expect_cache_error(b, "claims 4294967280 entries", "huge count");
  }
  {
    // More entries than the reader accepts, with enough bytes behind the count to pass its
    // bytes-per-entry check: refused before anything is allocated for them.
    ByteWriter w = header_with_zero_fields();
    w.u32(static_cast<uint32_t>(kTimingMaxEntries + 1));
    auto b = w.bytes();
    b.resize(b.size() + (kTimingMaxEntries + 1) * 12, 0);
    put_le(b, 16, b.size() - 32, 8);
    reseal(b);
    expect_cache_error(b, "claims 1048577 entries; the limit is 1048576 at byte", "too many");
  }
  {
    // A choice length beyond the limit, with enough bytes behind it to pass the count check.
    ByteWriter w = header_with_zero_fields();
    w.u32(1);
    w.str(kGpuA, "d");
    w.str("p", "p");
    w.u32(static_cast<uint32_t>(kTimingMaxChoiceBytes + 1));
    for (size_t i = 0; i <= kTimingMaxChoiceBytes; ++i) w.u8(0);
    auto b = w.bytes();
    put_le(b, 16, b.size() - 32, 8);
    reseal(b);
    expect_cache_error(b, "1025-byte choice; the limit is 1024 at byte", "long choice");
  }
  {
    // The same (device, problem) twice.
    ByteWriter w = header_with_zero_fields();
    write_timing_entries(w, {{kGpuA, "p", bytes_of({1})}, {kGpuA, "p", bytes_of({2})}});
    auto b = w.bytes();
    put_le(b, 16, b.size() - 32, 8);
    reseal(b);
    expect_cache_error(b, "timing entry 1 repeats the problem 'p'", "repeated key");
  }
  expect_cache_error({}, "truncated: magic", "empty");
}

TEST(TimingCache, ConcurrentStoresAndLookups) {
  TimingCache c;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&c, t] {
      for (int i = 0; i < 200; ++i) {
        const std::string p = "problem " + std::to_string(i % 50);
        if (!c.lookup(kGpuA, p)) {
          c.store(kGpuA, p, bytes_of({t, i}));
          c.note_timed();
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(c.size(), 50u);
  EXPECT_GE(c.timed_problems(), 50);
}

}  // namespace
}  // namespace ember::engine
