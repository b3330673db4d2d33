// plan_read: bytes -> PlanModel (layout in plan.h). Nothing read from the file is trusted: every
// read goes through a bounded cursor, every count is checked against the bytes left before
// anything is allocated for it, and the network is rebuilt through Network's own API, so each
// layer's parameters pass the same validation as at build time.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <vector>
#include <new>
#include <set>
#include <string>

#include "plan/plan.h"
#include "plan/serialize.h"

namespace ember::engine {

uint32_t plan_format_version() { return kPlanFormatVersion; }


// ---------------------------------------------------------------- building blocks

namespace {

template <size_t... I>
LayerParams default_layer_params_impl(size_t index, std::index_sequence<I...>) {
  LayerParams p;
  ((index == I ? static_cast<void>(p.emplace<I>()) : static_cast<void>(0)), ...);
  return p;
}

/// The first plan format version with layers of `kind` (older plans cannot hold one); kinds
/// older than every readable version say kPlanMinReadableVersion.
uint32_t first_version_with(LayerKind kind) {
  if (kind == LayerKind::kFusedPointwise) return 8;
  if (kind == LayerKind::kQuantizedConvolution) return 7;
  if (kind == LayerKind::kPlugin || kind == LayerKind::kQuantize ||
      kind == LayerKind::kDequantize || kind == LayerKind::kQuantizedMatrixMultiply) {
    return 6;
  }
  return kPlanMinReadableVersion;
}

std::string hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%016llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace

LayerParams default_layer_params(LayerKind kind) {
  return default_layer_params_impl(static_cast<size_t>(kind),
                                   std::make_index_sequence<std::variant_size_v<LayerParams>>{});
}

void ByteReader::fail(const std::string& message, size_t at) {
  throw Error("plan: " + message + " at byte " + std::to_string(at));
}

uint64_t ByteReader::get(const char* what, size_t n) {
  if (remaining() < n) {
    fail(std::string("truncated: ") + what + " needs " + std::to_string(n) + " bytes, " +
             std::to_string(remaining()) + " left",
         offset());
  }
  uint64_t v = 0;
  for (size_t i = 0; i < n; ++i) v |= static_cast<uint64_t>(data_[pos_ + i]) << (8 * i);
  pos_ += n;
  return v;
}

bool ByteReader::boolean(const char* what) {
  const size_t at = offset();
  const uint8_t v = u8(what);
  if (v > 1)
    fail(std::string(what) + " is a bool stored as " + std::to_string(v) + ", not 0 or 1", at);
  return v == 1;
}

size_t ByteReader::count(const char* what, size_t min_element_bytes) {
  const size_t at = offset();
  const size_t n = u32(what);
  if (min_element_bytes != 0 && n > remaining() / min_element_bytes) {
    fail(std::string(what) + " claims " + std::to_string(n) + " entries of at least " +
             std::to_string(min_element_bytes) + " bytes, but only " + std::to_string(remaining()) +
             " bytes follow",
         at);
  }
  return n;
}

std::string ByteReader::str(const char* what) {
  const size_t at = offset();
  const size_t n = u32(what);
  if (n > kPlanMaxStringBytes) {
    fail(std::string(what) + " is " + std::to_string(n) + " bytes long; the limit is " +
             std::to_string(kPlanMaxStringBytes),
         at);
  }
  if (n > remaining()) {
    fail(std::string("truncated: ") + what + " of " + std::to_string(n) + " bytes, " +
             std::to_string(remaining()) + " left",
         offset());
  }
  std::string s(reinterpret_cast<const char*>(data_ + pos_), n);
  pos_ += n;
  return s;
}

namespace {

// A shape as read: the parsed dims and the texts they came from (compared with the rebuilt
// network's shapes as text, which is what the writer wrote).
struct ShapeRecord {
  Shape shape;
  std::vector<std::string> texts;
};

/// A ParamsReader that skips some fields: fields later format versions added.
struct FieldsBut {
  ParamsReader& fields;
  std::vector<const char*> skip;
  template <class T> void operator()(const char* name, T& v) {
    for (const char* s : skip) {
      if (std::strcmp(name, s) == 0) return;
    }
    fields(name, v);
  }
};

ShapeRecord read_shape_record(ByteReader& in, const char* what) {
  ShapeRecord r;
  const size_t rank = in.count(what, 4);
  r.shape.reserve(rank);
  r.texts.reserve(rank);
  for (size_t i = 0; i < rank; ++i) {
    const size_t at = in.offset();
    std::string text = in.str(what);
    try {
      r.shape.push_back(DimExpr::parse(text));
    } catch (const Error& e) {
      ByteReader::fail(std::string(what) + " dim " + std::to_string(i) + " '" + text +
                           "' is not a dimension expression (" + e.what() + ")",
                       at);
    }
    r.texts.push_back(std::move(text));
  }
  return r;
}

}  // namespace

Shape read_shape(ByteReader& in, const char* what) { return read_shape_record(in, what).shape; }

void ParamsReader::operator()(const char* name, std::vector<int64_t>& v) {
  const size_t n = in_.count(name, 8);
  v.resize(n);
  for (int64_t& x : v) x = in_.i64(name);
}

void ParamsReader::operator()(const char* name, std::vector<double>& v) {
  const size_t n = in_.count(name, 8);
  v.resize(n);
  for (double& x : v) x = in_.f64(name);
}

void ParamsReader::operator()(const char* name, Shape& v) { v = read_shape(in_, name); }

void ParamsReader::operator()(const char* name, std::vector<uint8_t>& v) {
  const size_t n = in_.count(name, 1);
  v.resize(n);
  for (uint8_t& b : v) b = in_.u8(name);
}

void ParamsReader::operator()(const char* name, Weights& v) {
  const size_t at = in_.offset();
  const uint64_t offset = in_.u64(name);
  const uint64_t size = in_.u64(name);
  const auto dtype = in_.enumeration<DataType>(name);
  std::vector<int64_t> dims;
  (*this)(name, dims);
  const std::string what = std::string(name) + " " + dtype_name(dtype) + " " + dims_to_string(dims);
  if (offset % kPlanWeightAlignment != 0) {
    ByteReader::fail(what + " starts at weight offset " + std::to_string(offset) +
                         ", which is not a multiple of " + std::to_string(kPlanWeightAlignment),
                     at);
  }
  if (offset > blob_size_ || size > blob_size_ - offset) {
    ByteReader::fail(what + " occupies weight bytes [" + std::to_string(offset) + ", +" +
                         std::to_string(size) + "), outside the " + std::to_string(blob_size_) +
                         "-byte weight section",
                     at);
  }
  // Count elements only up to what `size` can hold, so the product never overflows.
  const auto elem = static_cast<uint64_t>(dtype_size(dtype));
  const uint64_t fits = size / elem;
  uint64_t numel = 1;
  for (int64_t d : dims) {
    if (d < 0) ByteReader::fail(what + " has a negative dimension", at);
    if (d != 0 && numel > fits / static_cast<uint64_t>(d)) {
      ByteReader::fail(
          what + " needs more than the " + std::to_string(size) + " bytes the plan gives it", at);
    }
    numel *= static_cast<uint64_t>(d);
  }
  if (numel * elem != size) {
    ByteReader::fail(what + " needs " + std::to_string(numel * elem) +
                         " bytes, but the plan gives it " + std::to_string(size),
                     at);
  }
  v = Weights::borrow(dtype, std::move(dims), blob_ + offset, owner_);
}

// ---------------------------------------------------------------- plan_read

namespace {

// A tensor record as written by plan_write's write_tensor.
struct TensorRecord {
  DataType dtype = DataType::kF32;
  ShapeRecord shape;
  int64_t arena_offset = -1;
};

constexpr size_t kMinTensorRecordBytes = 1 + 4 + 8;  // dtype, rank, arena offset

TensorRecord read_tensor(ByteReader& in) {
  TensorRecord r;
  r.dtype = in.enumeration<DataType>("tensor dtype");
  r.shape = read_shape_record(in, "tensor shape");
  r.arena_offset = in.i64("tensor arena offset");
  return r;
}

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
  return out;
}

// Rethrows an Error from the network, profile or dimension code with plan context.
template <class F>
auto with_context(const std::string& where, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error& e) {
    throw Error("plan: " + where + ": " + e.what());
  }
}

// Frees the weight section copy, allocated aligned so constants stay aligned in memory.
struct AlignedDelete {
  void operator()(uint8_t* p) const {
    ::operator delete[](p, std::align_val_t(kPlanWeightAlignment));
  }
};

class PlanReader {
 public:
  PlanReader(const uint8_t* data, size_t size, const PlanReadOptions& options)
      : data_(data), size_(size), options_(options) {}

  PlanModel read() {
    const size_t payload_size = read_header();
    ByteReader in(data_ + kPlanHeaderBytes, payload_size, kPlanHeaderBytes);
    read_backend(in);
    const size_t arena_at = in.offset();
    plan_.arena_bytes = in.i64("arena size");
    if (plan_.arena_bytes < 0) {
      ByteReader::fail("arena size " + std::to_string(plan_.arena_bytes) + " is negative",
                       arena_at);
    }
    read_target(in);
    read_profiles(in);
    read_inputs(in);
    read_layers(in);
    read_outputs(in);
    plan_.timing = read_timing_entries(in);
    if (in.remaining() != 0) {
      ByteReader::fail(std::to_string(in.remaining()) + " unexpected bytes after the timing section",
                       in.offset());
    }
    check_network();
    check_placements();
    return std::move(plan_);
  }

 private:
  // Validates the header and copies the weight section; returns the payload size.
  size_t read_header() {
    ByteReader h(data_, size_, 0);
    uint8_t magic[sizeof kPlanMagic];
    for (uint8_t& c : magic) c = h.u8("magic");
    if (std::memcmp(magic, kPlanMagic, sizeof kPlanMagic) != 0) {
      ByteReader::fail("not an Ember plan (the file does not start with \"EMBRPLAN\")", 0);
    }
    const uint32_t version = h.u32("format version");
    if (version < kPlanMinReadableVersion || version > kPlanFormatVersion) {
      ByteReader::fail("the plan has format version " + std::to_string(version) +
                           ", but this build reads versions " +
                           std::to_string(kPlanMinReadableVersion) + " to " +
                           std::to_string(kPlanFormatVersion) +
                           "; rebuild the plan with this version of Ember",
                       8);
    }
    version_ = version;
    const uint32_t flags = h.u32("flags");
    if (flags != 0) {
      ByteReader::fail("unknown flags " + hex(flags) + " (version 1 defines none)", 12);
    }
    const uint64_t payload_size = h.u64("payload size");
    const uint64_t checksum = h.u64("checksum");
    const uint64_t weights_offset = h.u64("weights offset");
    const uint64_t weights_size = h.u64("weights size");
    if (payload_size > size_ - kPlanHeaderBytes) {
      ByteReader::fail("truncated: the header announces a " + std::to_string(payload_size) +
                           "-byte payload, but the file has " + std::to_string(size_) + " bytes",
                       kPlanPayloadSizePos);
    }
    const uint64_t payload_end = kPlanHeaderBytes + payload_size;
    const uint64_t expected_weights =
        (payload_end + kPlanWeightAlignment - 1) / kPlanWeightAlignment * kPlanWeightAlignment;
    if (weights_offset != expected_weights) {
      ByteReader::fail("weight section offset " + std::to_string(weights_offset) + " should be " +
                           std::to_string(expected_weights) + " (the payload end rounded up to " +
                           std::to_string(kPlanWeightAlignment) + ")",
                       kPlanWeightsOffsetPos);
    }
    if (weights_offset > size_ || weights_size != size_ - weights_offset) {
      ByteReader::fail("truncated or padded: the header says the file ends at byte " +
                           std::to_string(weights_offset) + " + " + std::to_string(weights_size) +
                           ", but it has " + std::to_string(size_) + " bytes",
                       kPlanWeightsSizePos);
    }
    if (options_.verify_checksum) {
      const uint64_t actual =
          plan_checksum(data_ + kPlanHeaderBytes, size_ - kPlanHeaderBytes, version_);
      if (actual != checksum) {
        ByteReader::fail("checksum mismatch (header " + hex(checksum) + ", contents " +
                             hex(actual) + "): the plan is corrupt",
                         kPlanChecksumPos);
      }
    }
    for (uint64_t i = payload_end; i < weights_offset; ++i) {
      if (data_[i] != 0) ByteReader::fail("padding before the weight section is not zero", i);
    }
    // One aligned copy of the weight section; every Weights borrows from it.
    const size_t n = static_cast<size_t>(weights_size);
    std::shared_ptr<uint8_t> blob(new (std::align_val_t(kPlanWeightAlignment))
                                      uint8_t[std::max<size_t>(n, 1)],
                                  AlignedDelete());
    if (n != 0) std::memcpy(blob.get(), data_ + weights_offset, n);
    blob_ = blob.get();
    blob_size_ = n;
    owner_ = std::move(blob);
    return static_cast<size_t>(payload_size);
  }

  void read_target(ByteReader& in) {
    const size_t at = in.offset();
    plan_.target = in.str("build target");
    if (plan_.target.empty()) return;
    const std::string& t = plan_.target;
    const bool well_formed = t.size() >= 5 && t.size() <= 8 && t.compare(0, 3, "sm_") == 0 &&
                             t.find_first_not_of("0123456789", 3) == std::string::npos;
    if (!well_formed) {
      ByteReader::fail("build target '" + t + "' is not of the form sm_<digits>", at);
    }
    if (plan_.backend != "cuda") {
      ByteReader::fail("a '" + plan_.backend + "' plan has build target '" + t +
                           "'; only cuda plans have one",
                       at);
    }
  }

  void read_backend(ByteReader& in) {
    const size_t at = in.offset();
    plan_.backend = in.str("back end name");
    const auto backends = available_backends();
    if (std::find(backends.begin(), backends.end(), plan_.backend) == backends.end()) {
      ByteReader::fail("the plan was built for back end '" + plan_.backend +
                           "', which this build does not include (available: " + join(backends) +
                           ")",
                       at);
    }
  }

  void read_profiles(ByteReader& in) {
    const size_t n = in.count("profile list", 4);
    plan_.profiles.resize(n);
    for (size_t pi = 0; pi < n; ++pi) {
      const size_t ranges = in.count("profile", 4 + 3 * 8);
      std::string previous;
      for (size_t r = 0; r < ranges; ++r) {
        const size_t at = in.offset();
        std::string symbol = in.str("profile symbol");
        const int64_t min = in.i64("profile min");
        const int64_t opt = in.i64("profile opt");
        const int64_t max = in.i64("profile max");
        if (r > 0 && symbol <= previous) {
          ByteReader::fail("profile " + std::to_string(pi) + " symbol '" + symbol +
                               "' is out of order or repeated",
                           at);
        }
        with_context("profile " + std::to_string(pi) + " at byte " + std::to_string(at),
                     [&] { plan_.profiles[pi].set_range(symbol, min, opt, max); });
        previous = std::move(symbol);
      }
    }
  }

  void add_tensor(Tensor* t, const TensorRecord& r) {
    tensors_.push_back(t);
    plan_.placements.push_back({r.arena_offset});
    offsets_at_.push_back(record_at_);
  }

  void read_inputs(ByteReader& in) {
    const size_t n = in.count("input list", 4 + kMinTensorRecordBytes);
    for (size_t i = 0; i < n; ++i) {
      record_at_ = in.offset();
      const std::string name = in.str("input name");
      const TensorRecord r = read_tensor(in);
      Tensor* t =
          with_context("input " + std::to_string(i) + " at byte " + std::to_string(record_at_),
                       [&] { return plan_.network.add_input(name, r.dtype, r.shape.shape); });
      add_tensor(t, r);
    }
  }

  void read_layers(ByteReader& in) {
    const size_t n = in.count("layer list", 1 + 4 + 4 + 4 + 4);
    for (size_t li = 0; li < n; ++li) {
      const size_t layer_at = in.offset();
      const auto kind = in.enumeration<LayerKind>("layer kind");
      if (const uint32_t since = first_version_with(kind); version_ < since) {
        ByteReader::fail("layer " + std::to_string(li) + " is a " + layer_kind_name(kind) +
                             " layer, which format version " + std::to_string(version_) +
                             " does not have (version " + std::to_string(since) + " added it)",
                         layer_at);
      }
      const std::string name = in.str("layer name");
      if (name.empty()) ByteReader::fail("layer " + std::to_string(li) + " has no name", layer_at);
      // Built only for a message: plans of many layers read faster without it.
      auto where = [&] {
        return "layer " + std::to_string(li) + " (" + layer_kind_name(kind) + " '" + name +
               "', at byte " + std::to_string(layer_at) + ")";
      };
      std::string impl = in.str("implementation name");
      if (impl.empty()) ByteReader::fail(where() + " has no implementation name", in.offset());
      std::vector<Tensor*> inputs(in.count("layer input list", 4));
      for (Tensor*& t : inputs) {
        const size_t at = in.offset();
        const int32_t id = in.i32("layer input id");
        if (id == -1) continue;  // an omitted optional input
        if (id < 0 || static_cast<size_t>(id) >= tensors_.size()) {
          ByteReader::fail(where() + " input tensor id " + std::to_string(id) +
                               " is not among the " + std::to_string(tensors_.size()) +
                               " tensors defined before it",
                           at);
        }
        t = tensors_[static_cast<size_t>(id)];
      }
      LayerParams params = default_layer_params(kind);
      ParamsReader fields(in, blob_, blob_size_, owner_);
      if (kind == LayerKind::kQuantizedMatrixMultiply && version_ < 7) {
        // Version 6 stored only the output type (no epilogue, no requantization).
        fields("out", std::get<QuantizedMatrixMultiplyParams>(params).out);
      } else if (kind == LayerKind::kFusedPointwise && version_ < 18) {
        // Versions 8 and 9 stored no views (every input read as it is), versions before 18 no
        // slices.
        FieldsBut all_but{fields, {"slices"}};
        if (version_ < 10) all_but.skip.push_back("views");
        std::get<FusedPointwiseParams>(params).fields(all_but);
      } else if (kind == LayerKind::kAttention && version_ < 12) {
        // Versions before 11 stored no seq_major_operands (one layout flag for all operands),
        // before 12 no views and out_dims.
        FieldsBut all_but{fields, {"views", "out_dims"}};
        if (version_ < 11) all_but.skip.push_back("seq_major_operands");
        std::get<AttentionParams>(params).fields(all_but);
      } else if (kind == LayerKind::kQuantizedConvolution && version_ < 14) {
        // Versions 7 and 8 stored no channels_last (NCHW only), versions before 14 no
        // requantize_to (i8, the only requantization they had).
        FieldsBut all_but{fields, {"requantize_to"}};
        if (version_ < 9) all_but.skip.push_back("channels_last");
        std::get<QuantizedConvolutionParams>(params).fields(all_but);
      } else if (kind == LayerKind::kQuantizedMatrixMultiply && version_ < 14) {
        FieldsBut all_but{fields, {"requantize_to"}};
        std::get<QuantizedMatrixMultiplyParams>(params).fields(all_but);
      } else if (kind == LayerKind::kPadding && version_ < 17) {
        FieldsBut all_but{fields, {"input_shape"}};
        if (version_ < 16) all_but.skip.push_back("input_permutation");
        std::get<PaddingParams>(params).fields(all_but);
      } else if (kind == LayerKind::kNormalization && version_ < 15) {
        FieldsBut all_but{fields, {"quantize", "quantize_to", "quantize_min", "quantize_max",
                                   "float_output"}};
        std::get<NormalizationParams>(params).fields(all_but);
      } else {
        visit_layer_fields(params, fields);
      }
      if (kind == LayerKind::kFusedPointwise && version_ < 10) {
        const auto& fp = std::get<FusedPointwiseParams>(params);
        for (int64_t i = 0; i < fp.num_steps(); ++i) {
          if (fp.program[FusedPointwiseParams::kStride * i] ==
              static_cast<int64_t>(FusedOpFamily::kReduce)) {
            ByteReader::fail(where() + " has a row-reduction step, which format version " +
                                 std::to_string(version_) + " does not have (version 10 added it)",
                             layer_at);
          }
        }
      }
      const size_t num_outputs = in.count("layer output list", kMinTensorRecordBytes);
      const size_t outputs_at = in.offset();
      std::vector<TensorRecord> records(num_outputs);
      for (TensorRecord& r : records) r = read_tensor(in);

      // add_layer's own messages name the layer.
      Layer* layer = with_context(
          "layer " + std::to_string(li) + " at byte " + std::to_string(layer_at),
          [&] { return plan_.network.add_layer(std::move(params), std::move(inputs), name); });
      plan_.impls.push_back(std::move(impl));
      if (layer->outputs().size() != num_outputs) {
        ByteReader::fail(where() + " has " + std::to_string(layer->outputs().size()) +
                             " outputs when rebuilt, but the plan lists " +
                             std::to_string(num_outputs),
                         outputs_at);
      }
      for (size_t o = 0; o < num_outputs; ++o) {
        const Tensor* t = layer->outputs()[o];
        const TensorRecord& r = records[o];
        bool same = t->dtype() == r.dtype && t->shape().size() == r.shape.texts.size();
        for (size_t d = 0; same && d < r.shape.texts.size(); ++d) {
          same = t->shape()[d].to_string() == r.shape.texts[d];
        }
        if (!same) {
          ByteReader::fail(where() + " output " + std::to_string(o) + " is " +
                               dtype_name(t->dtype()) + " " + shape_to_string(t->shape()) +
                               " when rebuilt, but the plan says " + dtype_name(r.dtype) + " [" +
                               join(r.shape.texts) + "]",
                           outputs_at);
        }
        record_at_ = outputs_at;
        add_tensor(layer->outputs()[o], r);
      }
    }
  }

  void read_outputs(ByteReader& in) {
    const size_t n = in.count("output list", 4 + 4);
    std::set<int32_t> seen;
    for (size_t i = 0; i < n; ++i) {
      const size_t at = in.offset();
      const int32_t id = in.i32("output tensor id");
      const std::string name = in.str("output name");
      if (id < 0 || static_cast<size_t>(id) >= tensors_.size()) {
        ByteReader::fail("output " + std::to_string(i) + " tensor id " + std::to_string(id) +
                             " is not among the " + std::to_string(tensors_.size()) + " tensors",
                         at);
      }
      if (!seen.insert(id).second) {
        ByteReader::fail("output " + std::to_string(i) + " repeats tensor id " + std::to_string(id),
                         at);
      }
      Tensor* t = tensors_[static_cast<size_t>(id)];
      if (t->is_input()) {
        ByteReader::fail("output " + std::to_string(i) + " is network input '" + t->name() +
                             "'; an engine returns inputs through an Identity layer",
                         at);
      }
      if (name.empty()) ByteReader::fail("output " + std::to_string(i) + " has no name", at);
      with_context("output " + std::to_string(i) + " at byte " + std::to_string(at),
                   [&] { plan_.network.mark_output(t, name); });
    }
  }

  // What the builder's validate pass guarantees and the runtime relies on.
  void check_network() {
    const Network& net = plan_.network;
    if (net.outputs().empty()) throw Error("plan: the network has no outputs");
    std::set<std::string> names;
    for (const Tensor* t : tensors_) {
      if (!names.insert(t->name()).second) {
        throw Error("plan: two tensors are named '" + t->name() + "'");
      }
    }
    std::set<std::string> symbols;
    for (const Tensor* t : net.inputs()) {
      for (const DimExpr& d : t->shape()) d.collect_symbols(symbols);
    }
    if (!symbols.empty() && plan_.profiles.empty()) {
      throw Error("plan: the network has symbolic input dims (" + *symbols.begin() +
                  ", ...) but no optimization profile");
    }
    for (size_t i = 0; i < plan_.profiles.size(); ++i) {
      with_context("profile " + std::to_string(i), [&] { plan_.profiles[i].resolve(net); });
    }
  }

  // Every tensor the runtime keeps in the arena must have a slot, and the slot must hold the
  // tensor at the largest size any profile allows.
  void check_placements() {
    std::vector<SymbolRanges> ranges;
    for (const OptimizationProfile& p : plan_.profiles) ranges.push_back(p.intervals());
    if (ranges.empty()) ranges.emplace_back();
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const Tensor& t = *tensors_[i];
      const int64_t offset = plan_.placements[i].arena_offset;
      const Layer* producer = t.producer();
      const bool in_arena = producer != nullptr && producer->kind() != LayerKind::kConstant;
      const std::string what = "tensor '" + t.name() + "'";
      const size_t at = offsets_at_[i];
      if (offset < -1) {
        ByteReader::fail(what + " has arena offset " + std::to_string(offset), at);
      }
      if (offset == -1) {
        if (in_arena && !t.is_output()) {
          ByteReader::fail(
              what + " is computed by " + producer->describe() + " but has no place in the arena",
              at);
        }
        continue;
      }
      if (!in_arena) {
        ByteReader::fail(what + (producer == nullptr ? " is a network input" : " is a constant") +
                             " and cannot live in the arena (offset " + std::to_string(offset) +
                             ")",
                         at);
      }
      const int64_t bytes = with_context(what, [&] { return max_bytes(t, ranges); });
      if (bytes > plan_.arena_bytes || offset > plan_.arena_bytes - bytes) {
        ByteReader::fail(what + " " + shape_to_string(t.shape()) + " needs up to " +
                             std::to_string(bytes) + " bytes at arena offset " +
                             std::to_string(offset) + ", past the " +
                             std::to_string(plan_.arena_bytes) + "-byte arena",
                         at);
      }
    }
  }

  // Upper bound of t's size in bytes over every profile.
  static int64_t max_bytes(const Tensor& t, const std::vector<SymbolRanges>& ranges) {
    const DimExpr numel = shape_numel(t.shape());
    const auto elem = static_cast<int64_t>(dtype_size(t.dtype()));
    int64_t best = 0;
    for (const SymbolRanges& r : ranges) best = std::max(best, numel.bounds(r).hi);
    if (best > std::numeric_limits<int64_t>::max() / elem) {
      throw Error(shape_to_string(t.shape()) + " is too large over the optimization profiles");
    }
    return best * elem;
  }

  const uint8_t* data_;
  size_t size_;
  PlanReadOptions options_;
  PlanModel plan_;
  uint32_t version_ = kPlanFormatVersion;  // of the plan being read
  const uint8_t* blob_ = nullptr;
  size_t blob_size_ = 0;
  std::shared_ptr<const void> owner_;
  std::vector<Tensor*> tensors_;    // canonical order, as placements
  std::vector<size_t> offsets_at_;  // file offset of each tensor's record, for messages
  size_t record_at_ = 0;
};

}  // namespace

namespace {

// Messages quote names and texts from the file; a corrupt one may hold any bytes.
std::string printable(const char* message) {
  std::string out;
  for (const char* p = message; *p != '\0'; ++p) {
    const auto c = static_cast<unsigned char>(*p);
    if (c >= 0x20 && c < 0x7f) {
      out += *p;
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

}  // namespace

PlanModel plan_read(const void* data, size_t size, const PlanReadOptions& options) {
  if (data == nullptr && size != 0) throw Error("plan: null data with a non-zero size");
  const uint8_t empty = 0;
  const auto* bytes = data == nullptr ? &empty : static_cast<const uint8_t*>(data);
  try {
    return PlanReader(bytes, size, options).read();
  } catch (const Error& e) {
    const std::string m = printable(e.what());
    throw Error(m.rfind("plan: ", 0) == 0 ? m : "plan: " + m);
  } catch (const std::exception& e) {
    // A lower layer failed in a way it does not report as Error (bad_alloc, length_error,
    // bad_variant_access): still a corrupt plan to the caller.
    throw Error("plan: corrupt plan (" + printable(e.what()) + ")");
  }
}

}  // namespace ember::engine
