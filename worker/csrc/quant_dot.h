// Integer dot products of packed weight rows (quant_blocks.h) with activation rows quantized
// per 32 values to int8, as llama.cpp computes them; shared by the projection op
// (quant_matmul_cpu.cpp) and the fused decode step (decode_step_cpu.cpp).
//
// Every type is read straight from its blocks: the 4-6 bit values are expanded to 32 bytes
// in registers, multiplied with 32 activation bytes (AVX-512 VNNI's vpdpbusd, or AVX2's
// vpmaddubsw), and scaled per 32 values (per 16 for Q6_K) in float. A block's offsets (Q4_1's
// m, the K types' mins, Q6_K's -32, Q8_0's shift to unsigned) meet the activations' block
// sums, so no weight value is ever expanded to float. Without AVX2 a plain C++ path unpacks
// each row (unpack_row) and takes the same products.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "quant_blocks.h"

namespace loom::quant {

#if defined(__AVX512VNNI__) && defined(__AVX512VL__) || defined(__AVXVNNI__)
constexpr bool kVnni = true;
#else
constexpr bool kVnni = false;
#endif

// Activation rows sharing each loaded weight vector.
constexpr int kRowTile = 4;

// x quantized per 32 values to integers of type T: q [M, K]; scales [M, K / 32]; sums16
// [M, K / 16]: the scale times the sum of each 16 quantized values; sums32 [M, K / 32] the
// same per 32.
template <typename T>
struct QuantizedRowsOf {
  int64_t rows = 0, k = 0;
  std::vector<T> q;
  std::vector<float> scales, sums16, sums32;
};

// Each 32 values rounded to the nearest multiple of d = max|x| / kLevels.
template <int kLevels, typename T>
inline void quantize_rows_to(const float* x, int64_t stride, int64_t rows, int64_t k,
                             QuantizedRowsOf<T>& out) {
  out.rows = rows;
  out.k = k;
  out.q.resize(rows * k);
  out.sums16.resize(rows * k / 16);
  out.scales.resize(rows * k / 32);
  out.sums32.resize(rows * k / 32);
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = x + r * stride;
    for (int64_t b = 0; b < k / 32; ++b) {
      const float* v = src + b * 32;
      float amax = 0.0f;
#pragma omp simd reduction(max : amax)
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(v[i]));
      const float d = amax / static_cast<float>(kLevels);
      const float inv = d > 0.0f ? 1.0f / d : 0.0f;
      T* q = out.q.data() + r * k + b * 32;
      int s0 = 0, s1 = 0;
#pragma omp simd reduction(+ : s0, s1)
      for (int i = 0; i < 32; ++i) {
        const int qi = static_cast<int>(std::nearbyint(v[i] * inv));
        q[i] = static_cast<T>(qi);
        if (i < 16) s0 += qi; else s1 += qi;
      }
      out.sums16[r * k / 16 + b * 2] = d * static_cast<float>(s0);
      out.sums16[r * k / 16 + b * 2 + 1] = d * static_cast<float>(s1);
      out.scales[r * k / 32 + b] = d;
      out.sums32[r * k / 32 + b] = d * static_cast<float>(s0 + s1);
    }
  }
}

// The int8 rows llama.cpp's products take.
using QuantizedRows = QuantizedRowsOf<int8_t>;

inline void quantize_rows(const float* x, int64_t stride, int64_t rows, int64_t k,
                          QuantizedRows& out) {
  quantize_rows_to<127>(x, stride, rows, k, out);
}

inline void store(float* y, float value, bool accumulate) { *y = accumulate ? *y + value : value; }

#if defined(__AVX2__)
inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline __m256i load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// How far ahead of the weight bytes being multiplied the kernels ask for the next ones.
constexpr int64_t kWeightPrefetchBytes = 1024;

// Ask for the `bytes` of weights kWeightPrefetchBytes past `at` as non-temporal: each weight
// byte is read once per product, and weight lines that stay in L1 would push out the
// activation row every weight row reads again. The int16 products take it (a 7B model's
// 4096-11008-wide rows hold 8-22 KB of a 32 KB L1): measured on a Zen 4 at one row, the 7B's
// projections about 7% faster in all, its 11008-wide rows up to 1.3x; the int8 rows, half
// the size, gained nothing.
inline void prefetch_weights_nta(const uint8_t* at, int64_t bytes) {
  for (int64_t ahead = 0; ahead < bytes; ahead += 64)
    _mm_prefetch(reinterpret_cast<const char*>(at + kWeightPrefetchBytes + ahead), _MM_HINT_NTA);
}

// The int32 lanes of 32 unsigned x signed byte products (lane i: bytes 4i..4i+3).
// `signed_u`: u holds signed bytes (Q8_0 without VNNI), whose signs move onto a first.
template <bool kSignedU>
inline __m256 dot32(__m256i u, __m256i a) {
  if constexpr (kVnni && !kSignedU) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), u, a));
#elif defined(__AVXVNNI__)
    return _mm256_cvtepi32_ps(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, a));
#endif
  }
  if constexpr (kSignedU) {
    a = _mm256_sign_epi8(a, u);
    u = _mm256_sign_epi8(u, u);
  }
  // 4-6 bit values times int8 stay inside int16; Q8_0 as |w| * +-a does too.
  const __m256i pairs = _mm256_maddubs_epi16(u, a);
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

// Per-row accumulators of one weight row: two vectors of scaled products (`dot` and `alt`,
// for alternate blocks), a vector of offset products (K types) and a scalar one. With two
// sums each multiply-add waits on the one two blocks back, not on the one just before: with
// one activation row that wait set the pace. Measured on a Zen 4 over a 7B layer's Q4_0
// projections at one row, int16 activations: 1.25x faster in alternating runs of the two
// builds, 1.8x with a switch between them in one process (int8 1.2x; four rows 1.15-1.2x).
template <int kRows>
struct Acc {
  __m256 dot[kRows], alt[kRows], off[kRows];
  float scalar[kRows];
  Acc() {
    for (int r = 0; r < kRows; ++r) {
      dot[r] = alt[r] = off[r] = _mm256_setzero_ps();
      scalar[r] = 0.0f;
    }
  }
  void write(float* y, int64_t r0, int64_t ldy, bool accumulate) const {
    for (int r = 0; r < kRows; ++r) {
      const __m256 sum = _mm256_add_ps(_mm256_add_ps(dot[r], alt[r]), off[r]);
      store(y + (r0 + r) * ldy, hsum256(sum) + scalar[r], accumulate);
    }
  }
};

// Lane j of v, in every lane.
inline __m256 lane(__m256 v, int j) { return _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(j)); }

// Q8_0, Q4_0, Q4_1 (and their regrouped forms, read as they are): one 32-value block per
// scale. Eight blocks at a time: their scales and offsets gathered into vectors, multiplied by
// the activation rows' eight block scales and sums at once.

// How each block's values and offset read: a regrouped type's blocks are its plain type's.
template <int64_t kType>
constexpr int64_t kPlainType = plain_type(kType);

// A block's 32 values as unsigned bytes (signed for Q8_0 without VNNI) from its quant bytes.
template <int64_t kType>
inline __m256i block32_values(const uint8_t* qs) {
  if constexpr (kType == kQ8_0) {
    const __m256i w = load32(qs);
    if constexpr (kVnni) return _mm256_xor_si256(w, _mm256_set1_epi8(static_cast<char>(0x80)));
    return w;  // signed: dot32<true> moves the signs
  } else {
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), _mm256_set1_epi8(0x0F));
  }
}

// The quant bytes of block j of the eight starting at `first`.
template <int64_t kType>
inline const uint8_t* group_quants(const uint8_t* first, int j) {
  constexpr int64_t kPlain = plain_type(kType), kBytes = layout(kPlain).bytes;
  constexpr int64_t kHead = head_bytes(kPlain);
  if constexpr (is_grouped(kType)) return first + kGroupBlocks * kHead + (kBytes - kHead) * j;
  return first + j * kBytes + kHead;
}

// A block's offset per unit of the activations' block sum: value = d * u + offset.
// (Q4_1's is its m; the others' a multiple of d.)
template <int64_t kType>
inline float block32_offset(const uint8_t* blk, float d) {
  if constexpr (kType == kQ8_0) return kVnni ? -128.0f * d : 0.0f;
  if constexpr (kType == kQ4_0) return -8.0f * d;
  return f16(blk + 2);
}

// The float16 at byte `kAt` of eight consecutive blocks, as eight floats.
template <int64_t kBytes, int kAt>
inline __m256 block32_scales(const uint8_t* first) {
  uint16_t h[8];
  for (int j = 0; j < 8; ++j) std::memcpy(&h[j], first + j * kBytes + kAt, 2);
  const __m128i packed = _mm_setr_epi16(h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]);
  return _mm256_cvtph_ps(packed);
}

// Float16 field kField (0: d, 1: Q4_1's m) of the eight blocks starting at `first`, as
// eight floats: one load where the row is regrouped.
template <int64_t kType, int kField = 0>
inline __m256 group_scales(const uint8_t* first) {
  if constexpr (is_grouped(kType))
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(first + 16 * kField)));
  return block32_scales<layout(kType).bytes, 2 * kField>(first);
}

template <int64_t kType, int kRows>
inline void dot_blocks32(const uint8_t* row, int64_t k, const QuantizedRows& a, int64_t r0,
                         float* y, int64_t ldy, bool accumulate) {
  constexpr int64_t kBytes = layout(kType).bytes, kPlain = kPlainType<kType>;
  constexpr bool kSigned = kPlain == kQ8_0 && !kVnni;
  const int64_t nb = k / 32;
  Acc<kRows> acc;
  int64_t b = 0;
  for (; b + 8 <= nb; b += 8) {
    const uint8_t* first = row + b * kBytes;
    // Built in registers: stored floats loaded back as a vector would stall the load.
    const __m256 dv = group_scales<kType>(first);
    __m256 cv;
    if constexpr (kPlain == kQ4_1) {
      cv = group_scales<kType, 1>(first);
    } else {
      cv = _mm256_mul_ps(dv, _mm256_set1_ps(block32_offset<kPlain>(nullptr, 1.0f)));
    }
    __m256 both[kRows];
    for (int r = 0; r < kRows; ++r) {
      const int64_t at = (r0 + r) * nb + b;
      both[r] = _mm256_mul_ps(dv, _mm256_loadu_ps(a.scales.data() + at));
      acc.off[r] = _mm256_fmadd_ps(cv, _mm256_loadu_ps(a.sums32.data() + at), acc.off[r]);
    }
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {
      const __m256i w = block32_values<kPlain>(group_quants<kType>(first, j));
      for (int r = 0; r < kRows; ++r) {
        const int8_t* q = a.q.data() + ((r0 + r) * nb + b + j) * 32;
        __m256& sum = (j & 1) ? acc.alt[r] : acc.dot[r];
        sum = _mm256_fmadd_ps(dot32<kSigned>(w, load32(q)), lane(both[r], j), sum);
      }
    }
  }
  // Fewer than eight blocks left: plain blocks (a regrouped row's tail too).
  for (; b < nb; ++b) {
    const uint8_t* blk = row + b * kBytes;
    const float d = f16(blk), c = block32_offset<kPlain>(blk, d);
    const __m256i w = block32_values<kPlain>(blk + head_bytes(kPlain));
    for (int r = 0; r < kRows; ++r) {
      const int64_t at = (r0 + r) * nb + b;
      const __m256 dot = dot32<kSigned>(w, load32(a.q.data() + at * 32));
      acc.dot[r] = _mm256_fmadd_ps(dot, _mm256_set1_ps(d * a.scales[at]), acc.dot[r]);
      acc.scalar[r] += c * a.sums32[at];
    }
  }
  acc.write(y, r0, ldy, accumulate);
}

// Eight unsigned (signed) bytes as eight floats.
inline __m256 u8_to_ps(const void* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(static_cast<const __m128i*>(p))));
}
inline __m256 i8_to_ps(const void* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(static_cast<const __m128i*>(p))));
}

// The 12 bytes of a Q4_K / Q5_K super-block's six-bit scales and mins as 8 scale bytes, then 8
// min bytes (scale_min_k4 for j = 0..7, with word operations).
inline void scales_mins_k4(const uint8_t* packed, uint32_t out[4]) {
  constexpr uint32_t kLow6 = 0x3f3f3f3f, kLow4 = 0x0f0f0f0f, kLow2 = 0x03030303;
  uint32_t w[3];
  std::memcpy(w, packed, 12);
  out[0] = w[0] & kLow6;                                             // scales 0-3
  out[1] = (w[2] & kLow4) | (((w[0] >> 6) & kLow2) << 4);           // scales 4-7
  out[2] = w[1] & kLow6;                                             // mins 0-3
  out[3] = ((w[2] >> 4) & kLow4) | (((w[1] >> 6) & kLow2) << 4);    // mins 4-7
}

// Q4_K and Q5_K: super-blocks of 256 values, eight 32-value sub-blocks with 6-bit scales and
// mins; a pair of sub-blocks shares 32 bytes (low nibbles, then high), Q5_K adds bit j of
// qh[l] as bit 4 of sub-block j's value l. The pair's values as bytes; qh advances two bits.
template <bool kFive>
inline void q45k_pair(__m256i raw, __m256i& qh, __m256i& lo, __m256i& hi) {
  const __m256i low = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
  lo = _mm256_and_si256(raw, low);
  hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
  if constexpr (kFive) {
    lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(qh, one), 4));
    qh = _mm256_srli_epi16(qh, 1);
    hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(qh, one), 4));
    qh = _mm256_srli_epi16(qh, 1);
  }
}

// Q6_K: super-blocks of 256 six-bit values (low 4 bits in ql, high 2 in qh), an int8 scale
// per 16 values, value = d * scale * (q - 32). Half h's four 32-value blocks as bytes.
inline void q6k_quarters(const uint8_t* x, int h, __m256i quarter[4]) {
  const __m256i low = _mm256_set1_epi8(0x0F), two = _mm256_set1_epi8(3);
  const __m256i ql0 = load32(x + h * 64), ql1 = load32(x + h * 64 + 32);
  const __m256i qh = load32(x + 128 + h * 32);
  quarter[0] = _mm256_or_si256(_mm256_and_si256(ql0, low),
                               _mm256_slli_epi16(_mm256_and_si256(qh, two), 4));
  quarter[1] = _mm256_or_si256(_mm256_and_si256(ql1, low),
                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), two), 4));
  quarter[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low),
                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), two), 4));
  quarter[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low),
                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), two), 4));
}

template <bool kFive, int kRows>
inline void dot_q45k(const uint8_t* row, int64_t k, const QuantizedRows& a, int64_t r0,
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
    // Per row: each sub-block's weight scale times its activation block's scale.
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
        const int8_t* q = a.q.data() + ((r0 + r) * nb + s * 8 + 2 * p) * 32;
        acc.dot[r] = _mm256_fmadd_ps(dot32<false>(lo, load32(q)), lane(both[r], 2 * p), acc.dot[r]);
        acc.alt[r] =
            _mm256_fmadd_ps(dot32<false>(hi, load32(q + 32)), lane(both[r], 2 * p + 1), acc.alt[r]);
      }
    }
  }
  acc.write(y, r0, ldy, accumulate);
}

template <int kRows>
inline void dot_q6k(const uint8_t* row, int64_t k, const QuantizedRows& a, int64_t r0, float* y,
                    int64_t ldy, bool accumulate) {
  const int64_t nb = k / 32, ng = k / 16;
  Acc<kRows> acc;
  for (int64_t s = 0; s < k / 256; ++s) {
    const uint8_t* x = row + s * 210;
    const __m256 d = _mm256_set1_ps(f16(x + 208));
    // The 16 groups' scales, groups 0-7 (first half) and 8-15.
    const __m256 scale[2] = {_mm256_mul_ps(d, i8_to_ps(x + 192)), _mm256_mul_ps(d, i8_to_ps(x + 200))};
    const __m256 minus32 = _mm256_set1_ps(-32.0f);
    for (int r = 0; r < kRows; ++r) {
      const float* sums = a.sums16.data() + (r0 + r) * ng + s * 16;
      acc.off[r] = _mm256_fmadd_ps(_mm256_mul_ps(minus32, scale[0]), _mm256_loadu_ps(sums), acc.off[r]);
      acc.off[r] =
          _mm256_fmadd_ps(_mm256_mul_ps(minus32, scale[1]), _mm256_loadu_ps(sums + 8), acc.off[r]);
    }
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      __m256i quarter[4];
      q6k_quarters(x, h, quarter);
      // Lanes 0-3 hold values 0-15 of a block (group 2i), lanes 4-7 values 16-31 (2i + 1).
      __m256 lanes[4];
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i)
        lanes[i] = _mm256_permutevar8x32_ps(
            scale[h], _mm256_setr_epi32(2 * i, 2 * i, 2 * i, 2 * i, 2 * i + 1, 2 * i + 1,
                                        2 * i + 1, 2 * i + 1));
      for (int r = 0; r < kRows; ++r) {
        const int64_t at = (r0 + r) * nb + s * 8 + h * 4;
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) {
          const __m256 dot = dot32<false>(quarter[i], load32(a.q.data() + (at + i) * 32));
          const __m256 both = _mm256_mul_ps(lanes[i], _mm256_broadcast_ss(a.scales.data() + at + i));
          __m256& sum = (i & 1) ? acc.alt[r] : acc.dot[r];
          sum = _mm256_fmadd_ps(dot, both, sum);
        }
      }
    }
  }
  acc.write(y, r0, ldy, accumulate);
}

template <int kRows>
inline void dot_row_tile(int64_t type, const uint8_t* row, int64_t k, const QuantizedRows& a,
                         int64_t r0, float* y, int64_t ldy, bool accumulate) {
  switch (type) {
    case kQ8_0: return dot_blocks32<kQ8_0, kRows>(row, k, a, r0, y, ldy, accumulate);
    case kQ4_0: return dot_blocks32<kQ4_0, kRows>(row, k, a, r0, y, ldy, accumulate);
    case kQ4_1: return dot_blocks32<kQ4_1, kRows>(row, k, a, r0, y, ldy, accumulate);
    case kQ4_0G8: return dot_blocks32<kQ4_0G8, kRows>(row, k, a, r0, y, ldy, accumulate);
    case kQ4_1G8: return dot_blocks32<kQ4_1G8, kRows>(row, k, a, r0, y, ldy, accumulate);
    case kQ4_K: return dot_q45k<false, kRows>(row, k, a, r0, y, ldy, accumulate);
    case kQ5_K: return dot_q45k<true, kRows>(row, k, a, r0, y, ldy, accumulate);
    case kQ6_K: return dot_q6k<kRows>(row, k, a, r0, y, ldy, accumulate);
    default: return;
  }
}
#endif  // __AVX2__

// Scratch for the plain C++ path: one unpacked weight row.
struct Unpacked {
  std::vector<uint8_t> u;
  std::vector<float> lanes, offsets;
};

// The plain C++ path: the row unpacked (unpack_row), integer products per 16 values.
inline void dot_row_plain(int64_t type, const uint8_t* row, int64_t k, const QuantizedRows& a,
                          float* y, int64_t ldy, bool accumulate, Unpacked& scratch) {
  // Plain C++ multiplies signed bytes as readily as unsigned ones: Q8_0 stays signed.
  scratch.u.resize(k);
  scratch.lanes.resize(k / 4);
  scratch.offsets.resize(k / 16);
  unpack_row(type, row, k, true, scratch.u.data(), scratch.lanes.data(), scratch.offsets.data());
  const bool signed_u = type == kQ8_0;
  const int64_t nb = k / 32, ng = k / 16;
  for (int64_t r = 0; r < a.rows; ++r) {
    const int8_t* x = a.q.data() + r * k;
    float sum = 0.0f;
    for (int64_t g = 0; g < ng; ++g) {
      int dot = 0;
      for (int i = 0; i < 16; ++i) {
        const uint8_t b = scratch.u[g * 16 + i];
        dot += (signed_u ? static_cast<int8_t>(b) : b) * x[g * 16 + i];
      }
      sum += static_cast<float>(dot) * scratch.lanes[(g / 2) * 8 + (g % 2) * 4] *
             a.scales[r * nb + g / 2];
      sum += scratch.offsets[g] * a.sums16[r * ng + g];
    }
    store(y + r * ldy, sum, accumulate);
  }
}

// y[r * ldy] (+)= the weight row . activation row r, for every row of `a`.
inline void dot_weight_row(int64_t type, const uint8_t* row, int64_t k, const QuantizedRows& a,
                           float* y, int64_t ldy, bool accumulate, Unpacked& scratch) {
#if defined(__AVX2__)
  (void)scratch;
  int64_t r = 0;
  for (; r + kRowTile <= a.rows; r += kRowTile)
    dot_row_tile<kRowTile>(type, row, k, a, r, y, ldy, accumulate);
  for (; r < a.rows; ++r) dot_row_tile<1>(type, row, k, a, r, y, ldy, accumulate);
#else
  dot_row_plain(type, row, k, a, y, ldy, accumulate, scratch);
#endif
}

}  // namespace loom::quant
