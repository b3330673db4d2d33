// Byte-level building blocks of the plan format (private to the engine): a little-endian writer,
// a bounded reader cursor, the enum counts used to validate serialized enums, and the two
// visitors that walk every params struct's `fields(v)` list. The JSON inspector follows the same
// pattern (one visitor, one overload per field type), so a new field type is a compile error in
// every visitor until it is handled.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "ember/engine/layers.h"
#include "ember/engine/timing_cache.h"
#include "ember/engine/types.h"
#include "ember/engine/weights.h"

namespace ember::engine {

/// Header layout (see plan.h): magic, version u32, flags u32, then these u64 fields.
inline constexpr size_t kPlanHeaderBytes = 48;
inline constexpr size_t kPlanPayloadSizePos = 16;
inline constexpr size_t kPlanChecksumPos = 24;
inline constexpr size_t kPlanWeightsOffsetPos = 32;
inline constexpr size_t kPlanWeightsSizePos = 40;

/// Longest string (name, implementation, dimension expression) a plan may contain.
inline constexpr size_t kPlanMaxStringBytes = size_t{1} << 16;

// ---------------------------------------------------------------- enum counts

/// Number of enumerators of each enum that appears in a plan; a serialized value must be below
/// it. An enum without a specialization here fails to compile in both visitors.
template <class E>
inline constexpr int kEnumCount = 0;
// clang-format off
template <> inline constexpr int kEnumCount<DataType> = kNumDataTypes;
template <> inline constexpr int kEnumCount<LayerKind> = kNumLayerKinds;
template <> inline constexpr int kEnumCount<PoolingType> = kNumPoolingTypes;
template <> inline constexpr int kEnumCount<ActivationType> = kNumActivationTypes;
template <> inline constexpr int kEnumCount<ElementWiseOp> = kNumElementWiseOps;
template <> inline constexpr int kEnumCount<UnaryOp> = kNumUnaryOps;
template <> inline constexpr int kEnumCount<ReduceOp> = kNumReduceOps;
template <> inline constexpr int kEnumCount<TopKOp> = kNumTopKOps;
template <> inline constexpr int kEnumCount<GatherMode> = kNumGatherModes;
template <> inline constexpr int kEnumCount<ScatterReduction> = kNumScatterReductions;
template <> inline constexpr int kEnumCount<NormalizationType> = kNumNormalizationTypes;
template <> inline constexpr int kEnumCount<ResizeMode> = kNumResizeModes;
template <> inline constexpr int kEnumCount<ResizeCoordinate> = kNumResizeCoordinates;
template <> inline constexpr int kEnumCount<ResizeRounding> = kNumResizeRoundings;
template <> inline constexpr int kEnumCount<PaddingMode> = kNumPaddingModes;
template <> inline constexpr int kEnumCount<CumulativeOp> = kNumCumulativeOps;
template <> inline constexpr int kEnumCount<FillOp> = kNumFillOps;
// clang-format on

/// Default-constructed params of `kind` (the variant alternative whose index is the kind).
LayerParams default_layer_params(LayerKind kind);

/// Calls `fields(visitor)` on the active alternative of `params`.
template <class V>
void visit_layer_fields(LayerParams& params, V& visitor) {
  std::visit([&visitor](auto& p) { p.fields(visitor); }, params);
}

// ---------------------------------------------------------------- bytes out

/// Appends little-endian values to a byte vector.
class ByteWriter {
 public:
  void u8(uint8_t v) { bytes_.push_back(v); }
  void u32(uint32_t v) { put(v, 4); }
  void i32(int32_t v) { put(static_cast<uint32_t>(v), 4); }
  void u64(uint64_t v) { put(v, 8); }
  void i64(int64_t v) { put(static_cast<uint64_t>(v), 8); }
  void f64(double v) {
    uint64_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    put(bits, 8);
  }
  /// A u32 element count; throws when it does not fit.
  void count(size_t n, const char* what);
  /// u32 length + bytes; throws when longer than kPlanMaxStringBytes.
  void str(const std::string& s, const char* what);
  void raw(const void* data, size_t size) {
    const auto* p = static_cast<const uint8_t*>(data);
    bytes_.insert(bytes_.end(), p, p + size);
  }
  /// Overwrites 8 bytes at `pos` (for header fields known only at the end).
  void patch_u64(size_t pos, uint64_t v) {
    for (int i = 0; i < 8; ++i) bytes_[pos + i] = static_cast<uint8_t>(v >> (8 * i));
  }

  size_t size() const { return bytes_.size(); }
  std::vector<uint8_t>& bytes() { return bytes_; }

 private:
  void put(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) bytes_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  std::vector<uint8_t> bytes_;
};

// ---------------------------------------------------------------- bytes in

/// A cursor over [data, data + size) that never reads past the end: every read checks the
/// remaining bytes first and throws Error("plan: <what> at byte <offset>"). Offsets in messages
/// are file offsets (`base` is the file offset of `data`).
class ByteReader {
 public:
  ByteReader(const uint8_t* data, size_t size, size_t base)
      : data_(data), size_(size), base_(base) {}

  uint8_t u8(const char* what) { return static_cast<uint8_t>(get(what, 1)); }
  uint32_t u32(const char* what) { return static_cast<uint32_t>(get(what, 4)); }
  int32_t i32(const char* what) {
    return static_cast<int32_t>(static_cast<uint32_t>(get(what, 4)));
  }
  uint64_t u64(const char* what) { return get(what, 8); }
  int64_t i64(const char* what) { return static_cast<int64_t>(get(what, 8)); }
  double f64(const char* what) {
    const uint64_t bits = get(what, 8);
    double v;
    std::memcpy(&v, &bits, sizeof v);
    return v;
  }
  /// A bool stored as one byte, 0 or 1.
  bool boolean(const char* what);
  /// An enum stored as one byte, checked against kEnumCount<E>.
  template <class E>
  E enumeration(const char* what) {
    static_assert(kEnumCount<E> > 0, "add a kEnumCount specialization for this enum");
    const size_t at = offset();
    const uint8_t v = u8(what);
    if (v >= kEnumCount<E>) {
      fail(std::string(what) + " has value " + std::to_string(v) + ", but only 0.." +
               std::to_string(kEnumCount<E> - 1) + " are defined",
           at);
    }
    return static_cast<E>(v);
  }
  /// A u32 element count, checked so that `count * min_element_bytes` fits in the remaining
  /// bytes: a corrupt count never causes a large allocation.
  size_t count(const char* what, size_t min_element_bytes);
  /// u32 length + bytes, at most kPlanMaxStringBytes.
  std::string str(const char* what);

  /// File offset of the next byte.
  size_t offset() const { return base_ + pos_; }
  size_t remaining() const { return size_ - pos_; }
  /// Throws Error("plan: <message> at byte <at>").
  [[noreturn]] static void fail(const std::string& message, size_t at);

 private:
  uint64_t get(const char* what, size_t n);

  const uint8_t* data_;
  size_t size_;
  size_t base_;
  size_t pos_ = 0;
};

// ---------------------------------------------------------------- params visitors

/// Collects constant data into the weight blob, each constant aligned, shared Weights stored once.
class WeightsBlobWriter {
 public:
  /// Returns the offset of `w`'s bytes in the blob (relative to the blob's start).
  uint64_t add(const Weights& w);
  const std::vector<uint8_t>& bytes() const { return blob_; }

 private:
  struct Entry {
    const void* data;
    size_t size;
    uint64_t offset;
  };
  std::vector<Entry> entries_;
  std::vector<uint8_t> blob_;
};

/// Writes one params struct: `params.fields(writer)`.
///
/// Encodings: int64/double 8 bytes, bool and enums 1 byte, vectors u32 count + elements (strings
/// and byte vectors: u32 length + bytes), Shape
/// u32 rank + one DimExpr::to_string text per dim, Weights as blob offset u64, byte size u64,
/// dtype u8, dims (u32 count + i64 each).
class ParamsWriter {
 public:
  ParamsWriter(ByteWriter& out, WeightsBlobWriter& weights) : out_(out), weights_(weights) {}

  void operator()(const char* /*name*/, const int64_t& v) { out_.i64(v); }
  void operator()(const char* /*name*/, const bool& v) { out_.u8(v ? 1 : 0); }
  void operator()(const char* /*name*/, const double& v) { out_.f64(v); }
  void operator()(const char* name, const std::vector<int64_t>& v);
  void operator()(const char* name, const std::vector<double>& v);
  void operator()(const char* name, const Shape& v);
  void operator()(const char* name, const Weights& v);
  /// A string (a plugin's creator name and version): u32 length + bytes.
  void operator()(const char* name, const std::string& v) { out_.str(v, name); }
  /// Raw bytes (a plugin's attributes): u32 count + bytes.
  void operator()(const char* name, const std::vector<uint8_t>& v);
  /// Every enum, DataType included.
  template <class E, class = std::enable_if_t<std::is_enum_v<E>>>
  void operator()(const char* /*name*/, const E& v) {
    static_assert(kEnumCount<E> > 0, "add a kEnumCount specialization for this enum");
    out_.u8(static_cast<uint8_t>(v));
  }

 private:
  ByteWriter& out_;
  WeightsBlobWriter& weights_;
};

/// Reads one params struct written by ParamsWriter, validating every value's encoding (enum
/// ranges, bool bytes, counts against the remaining bytes, dimension text, weight ranges).
/// Semantic checks are left to the layer's infer function, which rebuilding the network runs.
class ParamsReader {
 public:
  /// `blob` is the plan's weight section, already copied into memory owned by `owner`;
  /// Weights read here borrow from it.
  ParamsReader(ByteReader& in, const uint8_t* blob, size_t blob_size,
               std::shared_ptr<const void> owner)
      : in_(in), blob_(blob), blob_size_(blob_size), owner_(std::move(owner)) {}

  void operator()(const char* name, int64_t& v) { v = in_.i64(name); }
  void operator()(const char* name, bool& v) { v = in_.boolean(name); }
  void operator()(const char* name, double& v) { v = in_.f64(name); }
  void operator()(const char* name, std::vector<int64_t>& v);
  void operator()(const char* name, std::vector<double>& v);
  void operator()(const char* name, Shape& v);
  void operator()(const char* name, Weights& v);
  void operator()(const char* name, std::string& v) { v = in_.str(name); }
  void operator()(const char* name, std::vector<uint8_t>& v);
  template <class E, class = std::enable_if_t<std::is_enum_v<E>>>
  void operator()(const char* name, E& v) {
    v = in_.enumeration<E>(name);
  }

 private:
  ByteReader& in_;
  const uint8_t* blob_;
  size_t blob_size_;
  std::shared_ptr<const void> owner_;
};

/// Writes a Shape (u32 rank + dimension texts); shared by params and tensor records.
void write_shape(ByteWriter& out, const Shape& shape, const char* what);
/// Reads a Shape written by write_shape; malformed text is an Error naming the byte offset.
Shape read_shape(ByteReader& in, const char* what);

/// Longest timing-cache choice (a back end's encoding of one algorithm) a plan or cache holds.
inline constexpr size_t kTimingMaxChoiceBytes = 1024;
/// The most entries one timing list may hold (a model has hundreds of problems): a crafted count
/// must not make the reader allocate gigabytes before the bytes run out.
inline constexpr size_t kTimingMaxEntries = size_t{1} << 20;

/// Writes timing-cache entries: a list of (device string | problem string | choice: u32 length
/// + bytes). Shared by the plan's timing section and TimingCache::serialize.
void write_timing_entries(ByteWriter& out, const std::vector<TimingEntry>& entries);
/// Reads entries written by write_timing_entries, bounds-checked; a repeated (device, problem)
/// key or an over-long choice is an Error naming the byte offset.
std::vector<TimingEntry> read_timing_entries(ByteReader& in);

/// FNV-1a 64 of [data, data + size).
uint64_t fnv1a64(const uint8_t* data, size_t size);

/// The checksum of a plan's bytes after its header, as format `version` defines it: from
/// version 13 FNV-1a's step over 64-bit little-endian words in four interleaved lanes (each
/// step a bijection of its lane, so any change to one word changes the result), the lanes then
/// folded the same way and the last size % 32 bytes taken one at a time; before, byte-wise
/// FNV-1a 64 (one multiply per byte: about 1 s per GB on the development machine).
uint64_t plan_checksum(const uint8_t* data, size_t size, uint32_t version);

}  // namespace ember::engine
