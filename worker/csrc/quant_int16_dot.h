// Packed weight rows (quant_blocks.h) times activation rows quantized per 32 values to int16:
// `--activations int16`, shared by the projection op (quant_matmul_cpu.cpp) and the fused
// decode step (decode_step_cpu.cpp).
//
// Each activation is rounded to 1/32767 of its block's largest magnitude, 256 times finer
// than llama.cpp's int8 rows, so a product moves from the float32 one by about 1e-5 of its
// size where int8's moves by a few 1e-3. Every type's values are widened to 16-bit integers
// in registers and multiplied with vpmaddwd (vpdpwssd with VNNI), about the operations of the
// int8 products (quant_dot.h, whose unpacking of each type this follows) and half those of
// float activations (quant_float_dot.h), whose widening of every weight to float dominates
// at one or two rows. A block's offset (Q4_1's m, Q4_0's -8 d, the K types' mins, Q6_K's -32)
// meets the sum of the block's quantized activations, so the result is the weights times the
// rounded activations, to float32 rounding. CPUs without AVX2 take the float kernel.
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
#include "quant_dot.h"
#include "quant_float_dot.h"

namespace loom::quant {

// Rows quantized to int16 (quant_dot.h's QuantizedRowsOf), 256 times finer than int8.
using QuantizedRows16 = QuantizedRowsOf<int16_t>;

inline void quantize_rows16(const float* x, int64_t stride, int64_t rows, int64_t k,
                            QuantizedRows16& out) {
  quantize_rows_to<32767>(x, stride, rows, k, out);
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

// A block's 32 values, from its quant bytes, as two vectors of 16-bit integers: values 0-15
// and 16-31. A 4-bit block's 16 bytes are widened first and split into nibbles after (one
// widening instead of two).
template <int64_t kType>
inline void block32_int16(const uint8_t* qs, __m256i out[2]) {
  if constexpr (kType == kQ8_0) {
    const __m128i* q = reinterpret_cast<const __m128i*>(qs);
    out[0] = _mm256_cvtepi8_epi16(_mm_loadu_si128(q));
    out[1] = _mm256_cvtepi8_epi16(_mm_loadu_si128(q + 1));
  } else {
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
    const __m256i bytes = _mm256_cvtepu8_epi16(packed);
    out[0] = _mm256_and_si256(bytes, _mm256_set1_epi16(0x0F));
    out[1] = _mm256_srli_epi16(bytes, 4);
  }
}

// Eight blocks at a time: their weight scales (and offsets) gathered into a vector and
// multiplied by the activation rows' eight block scales (and sums) at once.
template <int64_t kType, int kRows>
inline void dot_blocks32_int16(const uint8_t* row, int64_t k, const QuantizedRows16& a,
                               int64_t r0, float* y, int64_t ldy, bool accumulate) {
  constexpr int64_t kBytes = layout(kType).bytes, kPlain = kPlainType<kType>;
  const int64_t nb = k / 32;
  Acc<kRows> acc;  // two sums per row, for alternate blocks
  const auto block = [&](const uint8_t* qs, int64_t b, const __m256 both[kRows], int j,
                         __m256 sums[kRows]) {
    __m256i w[2];
    block32_int16<kPlain>(qs, w);
    for (int r = 0; r < kRows; ++r) {
      const int16_t* q = a.q.data() + ((r0 + r) * nb + b) * 32;
      __m256i p = _mm256_setzero_si256();
      p = madd16(p, w[0], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q)));
      p = madd16(p, w[1], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 16)));
      const __m256 scale = _mm256_permutevar8x32_ps(both[r], _mm256_set1_epi32(j));
      sums[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, sums[r]);
    }
  };
  int64_t b = 0;
  for (; b + 8 <= nb; b += 8) {
    const uint8_t* first = row + b * kBytes;
    prefetch_weights_nta(first, 8 * kBytes);
    const __m256 dv = group_scales<kType>(first);
    __m256 cv = _mm256_setzero_ps();  // the blocks' offsets
    if constexpr (kPlain == kQ4_1) cv = group_scales<kType, 1>(first);
    if constexpr (kPlain == kQ4_0) cv = _mm256_mul_ps(dv, _mm256_set1_ps(-8.0f));
    __m256 both[kRows];
    for (int r = 0; r < kRows; ++r) {
      const int64_t at = (r0 + r) * nb + b;
      both[r] = _mm256_mul_ps(dv, _mm256_loadu_ps(a.scales.data() + at));
      if constexpr (kPlain != kQ8_0)
        acc.off[r] = _mm256_fmadd_ps(cv, _mm256_loadu_ps(a.sums32.data() + at), acc.off[r]);
    }
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j)
      block(group_quants<kType>(first, j), b + j, both, j, (j & 1) ? acc.alt : acc.dot);
  }
  // Fewer than eight blocks left: plain blocks (a regrouped row's tail too).
  for (; b < nb; ++b) {
    const uint8_t* blk = row + b * kBytes;
    const float d = f16(blk);
    const float c = kPlain == kQ4_1 ? f16(blk + 2) : kPlain == kQ4_0 ? -8.0f * d : 0.0f;
    __m256 both[kRows];
    for (int r = 0; r < kRows; ++r) {
      const int64_t at = (r0 + r) * nb + b;
      both[r] = _mm256_set1_ps(d * a.scales[at]);
      acc.scalar[r] += c * a.sums32[at];
    }
    block(blk + head_bytes(kPlain), b, both, 0, acc.dot);
  }
  acc.write(y, r0, ldy, accumulate);
}

// 32 unsigned bytes times 32 int16 activations: eight int32 lanes of partial sums.
inline __m256i dot32_u8(__m256i u, const int16_t* q) {
  const __m256i lo = madd16(_mm256_setzero_si256(), _mm256_cvtepu8_epi16(_mm256_castsi256_si128(u)),
                            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q)));
  const __m256i hi = madd16(_mm256_setzero_si256(), _mm256_cvtepu8_epi16(_mm256_extracti128_si256(u, 1)),
                            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 16)));
  // Adjacent lanes summed within each 128-bit half: lanes 0, 1, 4, 5 hold values 0-15, lanes
  // 2, 3, 6, 7 values 16-31.
  return _mm256_hadd_epi32(lo, hi);
}

// Q4_K and Q5_K, unpacked as quant_dot.h's dot_q45k does: a scale and a min per 32 values.
template <bool kFive, int kRows>
inline void dot_q45k_int16(const uint8_t* row, int64_t k, const QuantizedRows16& a, int64_t r0,
                           float* y, int64_t ldy, bool accumulate) {
  constexpr int64_t kBytes = layout(kFive ? kQ5_K : kQ4_K).bytes;
  const int64_t nb = k / 32;
  Acc<kRows> acc;
  for (int64_t s = 0; s < k / 256; ++s) {
    const uint8_t* x = row + s * kBytes;
    uint32_t sm[4];
    scales_mins_k4(x + 4, sm);
    const __m256 scale = _mm256_mul_ps(_mm256_set1_ps(f16(x)), u8_to_ps(sm));
    const __m256 mins = _mm256_mul_ps(_mm256_set1_ps(-f16(x + 2)), u8_to_ps(sm + 2));
    __m256 both[kRows];
    for (int r = 0; r < kRows; ++r) {
      const int64_t at = (r0 + r) * nb + s * 8;
      both[r] = _mm256_mul_ps(scale, _mm256_loadu_ps(a.scales.data() + at));
      acc.off[r] = _mm256_fmadd_ps(mins, _mm256_loadu_ps(a.sums32.data() + at), acc.off[r]);
    }
    __m256i qh = kFive ? load32(x + 16) : _mm256_setzero_si256();
    const uint8_t* qs = x + (kFive ? 48 : 16);
#pragma GCC unroll 4
    for (int p = 0; p < 4; ++p) {
      __m256i lo, hi;
      q45k_pair<kFive>(load32(qs + p * 32), qh, lo, hi);
      for (int r = 0; r < kRows; ++r) {
        const int16_t* q = a.q.data() + ((r0 + r) * nb + s * 8 + 2 * p) * 32;
        acc.dot[r] =
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot32_u8(lo, q)), lane(both[r], 2 * p), acc.dot[r]);
        acc.alt[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot32_u8(hi, q + 32)),
                                     lane(both[r], 2 * p + 1), acc.alt[r]);
      }
    }
  }
  acc.write(y, r0, ldy, accumulate);
}

// Q6_K, unpacked as quant_dot.h's dot_q6k does: a scale per 16 values, value = d * scale *
// (q - 32).
template <int kRows>
inline void dot_q6k_int16(const uint8_t* row, int64_t k, const QuantizedRows16& a, int64_t r0,
                          float* y, int64_t ldy, bool accumulate) {
  const int64_t nb = k / 32, ng = k / 16;
  Acc<kRows> acc;
  for (int64_t s = 0; s < k / 256; ++s) {
    const uint8_t* x = row + s * 210;
    const __m256 d = _mm256_set1_ps(f16(x + 208));
    const __m256 scale[2] = {_mm256_mul_ps(d, i8_to_ps(x + 192)), _mm256_mul_ps(d, i8_to_ps(x + 200))};
    const __m256 minus32 = _mm256_set1_ps(-32.0f);
    for (int r = 0; r < kRows; ++r) {
      const float* sums = a.sums16.data() + (r0 + r) * ng + s * 16;
      acc.off[r] =
          _mm256_fmadd_ps(_mm256_mul_ps(minus32, scale[0]), _mm256_loadu_ps(sums), acc.off[r]);
      acc.off[r] =
          _mm256_fmadd_ps(_mm256_mul_ps(minus32, scale[1]), _mm256_loadu_ps(sums + 8), acc.off[r]);
    }
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      __m256i quarter[4];
      q6k_quarters(x, h, quarter);
      // dot32_u8's lanes 0, 1, 4, 5 hold group 2i (values 0-15), lanes 2, 3, 6, 7 group 2i + 1.
      __m256 lanes[4];
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i)
        lanes[i] = _mm256_permutevar8x32_ps(
            scale[h], _mm256_setr_epi32(2 * i, 2 * i, 2 * i + 1, 2 * i + 1, 2 * i, 2 * i,
                                        2 * i + 1, 2 * i + 1));
      for (int r = 0; r < kRows; ++r) {
        const int64_t at = (r0 + r) * nb + s * 8 + h * 4;
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) {
          const __m256 p = _mm256_cvtepi32_ps(dot32_u8(quarter[i], a.q.data() + (at + i) * 32));
          const __m256 both = _mm256_mul_ps(lanes[i], _mm256_broadcast_ss(a.scales.data() + at + i));
          __m256& sum = (i & 1) ? acc.alt[r] : acc.dot[r];
          sum = _mm256_fmadd_ps(p, both, sum);
        }
      }
    }
  }
  acc.write(y, r0, ldy, accumulate);
}

template <int kRows>
inline void dot_row_tile_int16(int64_t type, const uint8_t* row, int64_t k,
                               const QuantizedRows16& a, int64_t r0, float* y, int64_t ldy,
                               bool accumulate) {
  switch (type) {
    case kQ8_0: return dot_blocks32_int16<kQ8_0, kRows>(row, k, a, r0, y, ldy, accumulate);
    case kQ4_0: return dot_blocks32_int16<kQ4_0, kRows>(row, k, a, r0, y, ldy, accumulate);
    case kQ4_1: return dot_blocks32_int16<kQ4_1, kRows>(row, k, a, r0, y, ldy, accumulate);
    case kQ4_0G8: return dot_blocks32_int16<kQ4_0G8, kRows>(row, k, a, r0, y, ldy, accumulate);
    case kQ4_1G8: return dot_blocks32_int16<kQ4_1G8, kRows>(row, k, a, r0, y, ldy, accumulate);
    case kQ4_K: return dot_q45k_int16<false, kRows>(row, k, a, r0, y, ldy, accumulate);
    case kQ5_K: return dot_q45k_int16<true, kRows>(row, k, a, r0, y, ldy, accumulate);
    case kQ6_K: return dot_q6k_int16<kRows>(row, k, a, r0, y, ldy, accumulate);
    default: return;
  }
}

constexpr int kInt16RowTile = 4;
#endif

// Whether dot_weight_row_int16 reads rows of `type` through int16 products (else it takes
// the float-activation kernel, and the quantized rows are not needed).
inline bool int16_reads(int64_t type) {
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
  return integer_kernels_read(type);
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
  if (int16_reads(type)) {
    int64_t r = 0;
    for (; r + kInt16RowTile <= rows; r += kInt16RowTile)
      dot_row_tile_int16<kInt16RowTile>(type, row, k, a, r, y, ldy, accumulate);
    for (; r < rows; ++r) dot_row_tile_int16<1>(type, row, k, a, r, y, ldy, accumulate);
    return;
  }
#endif
  dot_weight_row_float(type, row, k, x, ldx, rows, y, ldy, accumulate, scratch);
}

}  // namespace loom::quant
