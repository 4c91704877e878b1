// Packed weight rows (quant_blocks.h) times activation rows quantized per 32 values to int16:
// `--activations int16`, shared by the projection op (quant_matmul_cpu.cpp) and the fused
// decode step (decode_step_cpu.cpp).
//
// Each activation is rounded to 1/32767 of its block's largest magnitude, 256 times finer
// than llama.cpp's int8 rows, so a product moves from the float32 one by about 1e-5 of its
// size where int8's moves by a few 1e-3. Q8_0, Q4_0 and Q4_1 blocks are widened to 16-bit
// integers in registers and multiplied with vpmaddwd (vpdpwssd with VNNI), about the
// operations of the int8 products and half those of float activations (quant_float_dot.h),
// whose widening of every weight to float dominates at one or two rows. A block's offset
// (Q4_1's m, Q4_0's -8 d) meets the float sum of the activations' block, which is exact.
// The K types, and CPUs without AVX2, take the float-activation kernel.
//
// Every activation row is summed the same way whatever other rows share the call, so a row's
// result does not depend on its batch.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "quant_blocks.h"
#include "quant_float_dot.h"

namespace loom::quant {

// x quantized per 32 values: q [M, K] int16; scales [M, K / 32]; sums [M, K / 32], the float
// sum of each block's original values.
struct QuantizedRows16 {
  int64_t rows = 0, k = 0;
  std::vector<int16_t> q;
  std::vector<float> scales, sums;
};

inline void quantize_rows16(const float* x, int64_t stride, int64_t rows, int64_t k,
                            QuantizedRows16& out) {
  out.rows = rows;
  out.k = k;
  out.q.resize(rows * k);
  out.scales.resize(rows * k / 32);
  out.sums.resize(rows * k / 32);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < k / 32; ++b) {
      const float* v = x + r * stride + b * 32;
      float amax = 0.0f, sum = 0.0f;
#pragma omp simd reduction(max : amax) reduction(+ : sum)
      for (int i = 0; i < 32; ++i) {
        amax = std::max(amax, std::fabs(v[i]));
        sum += v[i];
      }
      const float d = amax / 32767.0f;
      const float inv = d > 0.0f ? 1.0f / d : 0.0f;
      int16_t* q = out.q.data() + r * k + b * 32;
#pragma omp simd
      for (int i = 0; i < 32; ++i) q[i] = static_cast<int16_t>(std::nearbyint(v[i] * inv));
      out.scales[r * k / 32 + b] = d;
      out.sums[r * k / 32 + b] = sum;
    }
  }
}

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
// Sixteen int32 pair sums of 16-bit products (lane i: values 2i and 2i + 1), added to acc.
inline __m256i madd16(__m256i acc, __m256i w, __m256i x) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpwssd_epi32(acc, w, x);
#elif defined(__AVXVNNI__)
  return _mm256_dpwssd_avx_epi32(acc, w, x);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(w, x));
#endif
}

// A block's 32 values as two vectors of 16-bit integers: values 0-15 and 16-31.
template <int64_t kType>
inline void block32_int16(const uint8_t* blk, __m256i out[2]) {
  if constexpr (kType == kQ8_0) {
    const __m128i* q = reinterpret_cast<const __m128i*>(blk + 2);
    out[0] = _mm256_cvtepi8_epi16(_mm_loadu_si128(q));
    out[1] = _mm256_cvtepi8_epi16(_mm_loadu_si128(q + 1));
  } else {
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + (kType == kQ4_0 ? 2 : 4)));
    const __m128i mask = _mm_set1_epi8(0x0F);
    out[0] = _mm256_cvtepu8_epi16(_mm_and_si128(q, mask));
    out[1] = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(q, 4), mask));
  }
}

// The float16 at byte `kAt` of eight consecutive blocks, as eight floats.
template <int64_t kBytes, int kAt>
inline __m256 block16_scales(const uint8_t* first) {
  uint16_t h[8];
  for (int j = 0; j < 8; ++j) std::memcpy(&h[j], first + j * kBytes + kAt, 2);
  return _mm256_cvtph_ps(_mm_setr_epi16(h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]));
}

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Eight blocks at a time: their weight scales (and offsets) gathered into a vector and
// multiplied by the activation rows' eight block scales (and sums) at once.
template <int64_t kType, int kRows>
inline void dot_blocks32_int16(const uint8_t* row, int64_t k, const QuantizedRows16& a,
                               int64_t r0, float* y, int64_t ldy, bool accumulate) {
  constexpr int64_t kBytes = kType == kQ8_0 ? 34 : kType == kQ4_0 ? 18 : 20;
  const int64_t nb = k / 32;
  __m256 dot[kRows], off[kRows];
  for (int r = 0; r < kRows; ++r) dot[r] = off[r] = _mm256_setzero_ps();
  const auto block = [&](const uint8_t* blk, int64_t b, const __m256 both[kRows], int j) {
    __m256i w[2];
    block32_int16<kType>(blk, w);
    for (int r = 0; r < kRows; ++r) {
      const int16_t* q = a.q.data() + ((r0 + r) * nb + b) * 32;
      __m256i p = _mm256_setzero_si256();
      p = madd16(p, w[0], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q)));
      p = madd16(p, w[1], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 16)));
      const __m256 scale = _mm256_permutevar8x32_ps(both[r], _mm256_set1_epi32(j));
      dot[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, dot[r]);
    }
  };
  int64_t b = 0;
  for (; b + 8 <= nb; b += 8) {
    const __m256 dv = block16_scales<kBytes, 0>(row + b * kBytes);
    __m256 cv = _mm256_setzero_ps();  // the blocks' offsets
    if constexpr (kType == kQ4_1) cv = block16_scales<kBytes, 2>(row + b * kBytes);
    if constexpr (kType == kQ4_0) cv = _mm256_mul_ps(dv, _mm256_set1_ps(-8.0f));
    __m256 both[kRows];
    for (int r = 0; r < kRows; ++r) {
      const int64_t at = (r0 + r) * nb + b;
      both[r] = _mm256_mul_ps(dv, _mm256_loadu_ps(a.scales.data() + at));
      if constexpr (kType != kQ8_0)
        off[r] = _mm256_fmadd_ps(cv, _mm256_loadu_ps(a.sums.data() + at), off[r]);
    }
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) block(row + (b + j) * kBytes, b + j, both, j);
  }
  float tail[kRows] = {};
  for (; b < nb; ++b) {  // fewer than eight blocks left
    const uint8_t* blk = row + b * kBytes;
    const float d = f16(blk);
    const float c = kType == kQ4_1 ? f16(blk + 2) : kType == kQ4_0 ? -8.0f * d : 0.0f;
    __m256 both[kRows];
    for (int r = 0; r < kRows; ++r) {
      const int64_t at = (r0 + r) * nb + b;
      both[r] = _mm256_set1_ps(d * a.scales[at]);
      tail[r] += c * a.sums[at];
    }
    block(blk, b, both, 0);
  }
  for (int r = 0; r < kRows; ++r) {
    const float sum = hsum8(_mm256_add_ps(dot[r], off[r])) + tail[r];
    float* out = y + (r0 + r) * ldy;
    *out = accumulate ? *out + sum : sum;
  }
}

constexpr int kInt16RowTile = 4;

template <int64_t kType>
inline void rows_blocks32_int16(const uint8_t* row, int64_t k, const QuantizedRows16& a,
                                int64_t rows, float* y, int64_t ldy, bool accumulate) {
  int64_t r = 0;
  for (; r + kInt16RowTile <= rows; r += kInt16RowTile)
    dot_blocks32_int16<kType, kInt16RowTile>(row, k, a, r, y, ldy, accumulate);
  for (; r < rows; ++r) dot_blocks32_int16<kType, 1>(row, k, a, r, y, ldy, accumulate);
}
#endif

// Whether dot_weight_row_int16 reads rows of `type` through int16 products (else it takes
// the float-activation kernel, and the quantized rows are not needed).
inline bool int16_reads(int64_t type) {
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
  return type == kQ8_0 || type == kQ4_0 || type == kQ4_1;
#else
  (void)type;
  return false;
#endif
}

// y[r * ldy] (+)= the packed weight row . x[r] for rows [0, rows): `a` holds x quantized
// (quantize_rows16) when int16_reads(type).
inline void dot_weight_row_int16(int64_t type, const uint8_t* row, int64_t k,
                                 const QuantizedRows16& a, const float* x, int64_t ldx,
                                 int64_t rows, float* y, int64_t ldy, bool accumulate,
                                 FloatRow& scratch) {
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
  switch (type) {
    case kQ8_0: return rows_blocks32_int16<kQ8_0>(row, k, a, rows, y, ldy, accumulate);
    case kQ4_0: return rows_blocks32_int16<kQ4_0>(row, k, a, rows, y, ldy, accumulate);
    case kQ4_1: return rows_blocks32_int16<kQ4_1>(row, k, a, rows, y, ldy, accumulate);
    default: break;
  }
#endif
  dot_weight_row_float(type, row, k, x, ldx, rows, y, ldy, accumulate, scratch);
}

}  // namespace loom::quant
