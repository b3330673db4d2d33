// libFuzzer target for plan_read: any bytes must either load or throw ember::engine::Error; any
// other exception, a sanitizer report or a crash is a bug. The checksum is off so mutations
// reach the field validation. A plan that loads must also survive a write/read round trip and
// come back byte-identical on the second write (plan_write emits the canonical form).
//
// A custom mutator keeps the header consistent while it mutates the payload or the weights
// (most mutations would otherwise only reach the header's size checks); one mutation in eight
// still goes to the raw bytes, header included.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "plan/plan.h"
#include "plan/serialize.h"

using ember::engine::Error;
using ember::engine::PlanModel;
using ember::engine::PlanReadOptions;

extern "C" size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t max_size);

namespace {

uint64_t load_u64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

void store_u64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

size_t align_up(size_t v) {
  const size_t a = ember::engine::kPlanWeightAlignment;
  return (v + a - 1) / a * a;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  PlanReadOptions options;
  options.verify_checksum = false;
  PlanModel model;
  try {
    model = ember::engine::plan_read(data, size, options);
  } catch (const Error&) {
    return 0;
  }
  // Anything thrown from here on escapes to libFuzzer and is reported as a crash.
  const std::vector<uint8_t> first = ember::engine::plan_write(model);
  const PlanModel again = ember::engine::plan_read(first.data(), first.size());
  if (ember::engine::plan_write(again) != first) std::abort();
  return 0;
}

extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size,
                                          unsigned int seed) {
  using ember::engine::kPlanHeaderBytes;
  std::minstd_rand rng(seed);
  const bool structured = size >= kPlanHeaderBytes && rng() % 8 != 0 &&
                          std::memcmp(data, ember::engine::kPlanMagic, 8) == 0;
  const uint64_t payload_size =
      structured ? load_u64(data + ember::engine::kPlanPayloadSizePos) : 0;
  if (!structured || payload_size > size - kPlanHeaderBytes ||
      align_up(kPlanHeaderBytes + payload_size) > size) {
    return LLVMFuzzerMutate(data, size, max_size);
  }
  const size_t payload_end = kPlanHeaderBytes + payload_size;
  std::vector<uint8_t> payload(data + kPlanHeaderBytes, data + payload_end);
  std::vector<uint8_t> weights(data + align_up(payload_end), data + size);
  // Room for growth: whatever max_size leaves after the header, the worst-case padding and the
  // part not being mutated.
  const size_t fixed = kPlanHeaderBytes + ember::engine::kPlanWeightAlignment;
  std::vector<uint8_t>& part = rng() % 8 == 0 ? weights : payload;
  const size_t other = (&part == &payload ? weights.size() : payload.size());
  if (max_size < fixed + other + part.size()) return LLVMFuzzerMutate(data, size, max_size);
  const size_t room = max_size - fixed - other;
  const size_t old_size = part.size();
  part.resize(room);
  part.resize(LLVMFuzzerMutate(part.data(), old_size, room));

  const size_t new_payload_end = kPlanHeaderBytes + payload.size();
  const size_t weights_offset = align_up(new_payload_end);
  const size_t total = weights_offset + weights.size();
  if (total > max_size) return LLVMFuzzerMutate(data, size, max_size);
  std::vector<uint8_t> out(total, 0);
  std::memcpy(out.data(), data, kPlanHeaderBytes);
  if (!payload.empty()) std::memcpy(out.data() + kPlanHeaderBytes, payload.data(), payload.size());
  if (!weights.empty()) std::memcpy(out.data() + weights_offset, weights.data(), weights.size());
  store_u64(out.data() + ember::engine::kPlanPayloadSizePos, payload.size());
  store_u64(out.data() + ember::engine::kPlanWeightsOffsetPos, weights_offset);
  store_u64(out.data() + ember::engine::kPlanWeightsSizePos, weights.size());
  std::memcpy(data, out.data(), total);
  return total;
}
