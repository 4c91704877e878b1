// Math the kernels vectorise: plain loops over these compile to SIMD code (no libm calls).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace loom {

// exp(x) to about 2 ulp for x in [-87, 88] (clamped outside it): 2^n * e^r with
// n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2] (Cody-Waite), e^r by a degree-6
// polynomial, 2^n by building the float's exponent bits.
inline float exp_clamped(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

}  // namespace loom
