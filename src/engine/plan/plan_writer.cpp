// plan_write: PlanModel -> bytes (layout in plan.h). The writer emits the canonical form (tensors
// in canonical order, profiles sorted by symbol, shared constants stored once), so writing what
// plan_read returns reproduces the same bytes.
#include <cstring>
#include <string>
#include <unordered_map>

#include "plan/plan.h"
#include "plan/serialize.h"

namespace ember::engine {

// ---------------------------------------------------------------- building blocks

uint64_t fnv1a64(const uint8_t* data, size_t size) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < size; ++i) {
    h ^= data[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

uint64_t plan_checksum(const uint8_t* data, size_t size, uint32_t version) {
  if (version < 13) return fnv1a64(data, size);
  constexpr uint64_t kPrime = 0x100000001b3ull;
  uint64_t lane[4] = {0xcbf29ce484222325ull, 0x84222325cbf29ce4ull, 0x9ce484222325cbf2ull,
                      0x2325cbf29ce48422ull};
  size_t i = 0;
  for (; i + 32 <= size; i += 32) {
    for (int k = 0; k < 4; ++k) {
      uint64_t w;
      std::memcpy(&w, data + i + 8 * k, 8);  // little-endian hosts only (as the whole format)
      lane[k] = (lane[k] ^ w) * kPrime;
    }
  }
  uint64_t h = lane[0];
  for (int k = 1; k < 4; ++k) h = (h ^ lane[k]) * kPrime;
  for (; i < size; ++i) h = (h ^ data[i]) * kPrime;
  return (h ^ size) * kPrime;
}

void ByteWriter::count(size_t n, const char* what) {
  if (n > std::numeric_limits<uint32_t>::max()) {
    throw Error(std::string("plan_write: ") + what + " has " + std::to_string(n) +
                " entries, more than a plan can hold");
  }
  u32(static_cast<uint32_t>(n));
}

void ByteWriter::str(const std::string& s, const char* what) {
  if (s.size() > kPlanMaxStringBytes) {
    throw Error(std::string("plan_write: ") + what + " is " + std::to_string(s.size()) +
                " bytes long; a plan holds strings of at most " +
                std::to_string(kPlanMaxStringBytes) + " bytes");
  }
  u32(static_cast<uint32_t>(s.size()));
  raw(s.data(), s.size());
}

void write_shape(ByteWriter& out, const Shape& shape, const char* what) {
  out.count(shape.size(), what);
  for (const DimExpr& d : shape) out.str(d.to_string(), what);
}

uint64_t WeightsBlobWriter::add(const Weights& w) {
  const size_t size = w.nbytes();
  if (w.data() == nullptr && size != 0) {
    throw Error("plan_write: a constant of shape " + dims_to_string(w.dims()) + " has no data");
  }
  for (const Entry& e : entries_) {
    if (e.data == w.data() && e.size == size) return e.offset;
  }
  const size_t offset =
      (blob_.size() + kPlanWeightAlignment - 1) / kPlanWeightAlignment * kPlanWeightAlignment;
  blob_.resize(offset + size, 0);
  if (size != 0) std::memcpy(blob_.data() + offset, w.data(), size);
  entries_.push_back({w.data(), size, offset});
  return offset;
}

void ParamsWriter::operator()(const char* name, const std::vector<int64_t>& v) {
  out_.count(v.size(), name);
  for (int64_t x : v) out_.i64(x);
}

void ParamsWriter::operator()(const char* name, const std::vector<double>& v) {
  out_.count(v.size(), name);
  for (double x : v) out_.f64(x);
}

void ParamsWriter::operator()(const char* name, const Shape& v) { write_shape(out_, v, name); }

void ParamsWriter::operator()(const char* name, const std::vector<uint8_t>& v) {
  out_.count(v.size(), name);
  out_.raw(v.data(), v.size());
}

void ParamsWriter::operator()(const char* name, const Weights& v) {
  out_.u64(weights_.add(v));
  out_.u64(v.nbytes());
  out_.u8(static_cast<uint8_t>(v.dtype()));
  (*this)(name, v.dims());
}

// ---------------------------------------------------------------- plan_write

namespace {

// A tensor record: dtype, shape, arena offset (names are written only for inputs and outputs:
// the rebuilt network names every other tensor itself).
void write_tensor(ByteWriter& out, const Tensor& t, const TensorPlacement& placement) {
  out.u8(static_cast<uint8_t>(t.dtype()));
  write_shape(out, t.shape(), "tensor shape");
  out.i64(placement.arena_offset);
}

}  // namespace

std::vector<uint8_t> plan_write(const PlanModel& plan) {
  const Network& net = plan.network;
  const auto layers = net.layers();
  const auto tensors = net.tensors();
  if (plan.impls.size() != layers.size()) {
    throw Error("plan_write: " + std::to_string(plan.impls.size()) + " implementations for " +
                std::to_string(layers.size()) + " layers");
  }
  if (plan.placements.size() != tensors.size()) {
    throw Error("plan_write: " + std::to_string(plan.placements.size()) + " placements for " +
                std::to_string(tensors.size()) + " tensors");
  }

  ByteWriter out;
  out.raw(kPlanMagic, sizeof kPlanMagic);
  out.u32(kPlanFormatVersion);
  out.u32(0);  // flags: none defined in version 1
  out.u64(0);  // payload size, patched below
  out.u64(0);  // checksum, patched below
  out.u64(0);  // weights offset, patched below
  out.u64(0);  // weights size, patched below

  out.str(plan.backend, "back end name");
  out.i64(plan.arena_bytes);
  out.str(plan.target, "build target");
  out.count(plan.profiles.size(), "profile list");
  for (const OptimizationProfile& p : plan.profiles) {
    out.count(p.ranges().size(), "profile");
    for (const auto& [symbol, range] : p.ranges()) {
      out.str(symbol, "profile symbol");
      out.i64(range.min);
      out.i64(range.opt);
      out.i64(range.max);
    }
  }

  // Tensors are numbered in canonical order (inputs, then layer outputs in layer order), whatever
  // order the in-memory network keeps them in; placements are looked up by the tensor's own id.
  std::unordered_map<const Tensor*, int32_t> canonical;
  auto number = [&](const Tensor* t) {
    const auto id = static_cast<int32_t>(canonical.size());
    canonical[t] = id;
  };
  out.count(net.inputs().size(), "input list");
  for (const Tensor* t : net.inputs()) {
    number(t);
    out.str(t->name(), "input name");
    write_tensor(out, *t, plan.placements[t->id()]);
  }
  WeightsBlobWriter blob;
  out.count(layers.size(), "layer list");
  for (size_t li = 0; li < layers.size(); ++li) {
    const Layer& l = *layers[li];
    out.u8(static_cast<uint8_t>(l.kind()));
    out.str(l.name(), "layer name");
    out.str(plan.impls[li], "implementation name");
    out.count(l.inputs().size(), "layer input list");
    for (const Tensor* in : l.inputs()) {
      if (in == nullptr) {
        out.i32(-1);
        continue;
      }
      const auto it = canonical.find(in);
      if (it == canonical.end()) {
        throw Error("plan_write: " + l.describe() + " reads '" + in->name() +
                    "' before the layer computing it (layers must be in topological order)");
      }
      out.i32(it->second);
    }
    // fields() is non-const so that readers can fill the same list; write from a copy (cheap:
    // Weights share their bytes).
    LayerParams params = l.params();
    ParamsWriter fields(out, blob);
    visit_layer_fields(params, fields);
    out.count(l.outputs().size(), "layer output list");
    for (const Tensor* t : l.outputs()) {
      number(t);
      write_tensor(out, *t, plan.placements[t->id()]);
    }
  }
  out.count(net.outputs().size(), "output list");
  for (const Tensor* t : net.outputs()) {
    out.i32(canonical.at(t));
    out.str(t->name(), "output name");
  }
  write_timing_entries(out, plan.timing);

  const size_t payload_end = out.size();
  const size_t weights_offset =
      (payload_end + kPlanWeightAlignment - 1) / kPlanWeightAlignment * kPlanWeightAlignment;
  out.bytes().resize(weights_offset, 0);
  out.raw(blob.bytes().data(), blob.bytes().size());
  out.patch_u64(kPlanPayloadSizePos, payload_end - kPlanHeaderBytes);
  out.patch_u64(kPlanWeightsOffsetPos, weights_offset);
  out.patch_u64(kPlanWeightsSizePos, blob.bytes().size());
  // The checksum covers everything after the header (payload, padding and weights), so any
  // flipped bit outside the header is caught; header fields are each validated on read.
  out.patch_u64(kPlanChecksumPos,
                plan_checksum(out.bytes().data() + kPlanHeaderBytes,
                              out.size() - kPlanHeaderBytes, kPlanFormatVersion));
  return std::move(out.bytes());
}

}  // namespace ember::engine
