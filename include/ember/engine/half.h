// Conversions between f32 and the 16-bit and 8-bit float formats, round to nearest even.
#pragma once

#include <cstdint>
#include <cstring>

namespace ember::engine {

/// Converts an IEEE binary16 bit pattern to float.
inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf or nan
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: normalize
    int e = -1;
    do {
      ++e;
      mant <<= 1;
    } while ((mant & 0x400u) == 0);
    bits = sign | (static_cast<uint32_t>(112 - e) << 23) | ((mant & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

/// Converts a float to an IEEE binary16 bit pattern (round to nearest even, overflow to inf).
inline uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // inf or nan
    return static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
  }
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds past 65504
  if (abs < 0x38800000u) {  // result is subnormal or zero
    if (abs < 0x33000000u) return sign;  // below half the smallest subnormal
    const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    const int shift = 126 - static_cast<int>(abs >> 23);  // 14..24
    uint32_t r = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return static_cast<uint16_t>(sign | r);
  }
  uint32_t r = ((abs >> 13) - (112u << 10));
  const uint32_t rem = abs & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
  return static_cast<uint16_t>(sign | r);
}

/// Converts a bfloat16 bit pattern to float.
inline float bf16_to_f32(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

/// Converts a float to a bfloat16 bit pattern (round to nearest even, nan stays nan).
inline uint16_t f32_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  const uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>((x + rounding) >> 16);
}

/// Converts an FP8 E4M3 "fn" bit pattern (bias 7, no infinities, 0x7f/0xff NaN) to float.
inline float f8e4m3_to_f32(uint8_t v) {
  const uint32_t sign = static_cast<uint32_t>(v & 0x80u) << 24;
  const uint32_t exp = (v >> 3) & 0xfu;
  const uint32_t mant = v & 0x7u;
  if (exp == 0xfu && mant == 0x7u) {
    const uint32_t nan = sign | 0x7fc00000u;
    float f;
    std::memcpy(&f, &nan, 4);
    return f;
  }
  if (exp == 0) {  // subnormal: mant * 2^-9
    const float m = static_cast<float>(mant) * (1.0f / 512.0f);
    return sign ? -m : m;
  }
  const uint32_t bits = sign | ((exp + 120u) << 23) | (mant << 20);
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

/// Converts a float to an FP8 E4M3 "fn" bit pattern: round to nearest even, saturating to
/// +-448 (infinities included), NaN to NaN. The same as cuda_fp8.h's __NV_SATFINITE conversion.
inline uint8_t f32_to_f8e4m3(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint8_t sign = static_cast<uint8_t>((x >> 24) & 0x80u);
  const uint32_t abs = x & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint8_t>(sign | 0x7fu);   // nan
  if (abs >= 0x43e00000u) return static_cast<uint8_t>(sign | 0x7eu);  // >= 448: saturate
  if (abs < 0x3c800000u) {  // below 2^-6: subnormal (units of 2^-9) or zero
    if (abs <= 0x3a800000u) return sign;  // at most half the smallest subnormal (a tie to 0)
    const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    const int shift = 141 - static_cast<int>(abs >> 23);  // 21..23
    uint32_t r = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) ++r;  // r == 8 is the smallest normal
    return static_cast<uint8_t>(sign | r);
  }
  uint32_t r = (abs >> 20) - (120u << 3);
  const uint32_t rem = abs & 0xfffffu;
  if (rem > 0x80000u || (rem == 0x80000u && (r & 1u))) ++r;
  return static_cast<uint8_t>(sign | r);
}

}  // namespace ember::engine
