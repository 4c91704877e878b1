// Float32 activations times packed weight rows (quant_blocks.h): `--activations float`, the
// exact way Loom multiplies by quantized weights on the CPU. Shared by the projection op
// (quant_matmul_cpu.cpp) and the fused decode step (decode_step_cpu.cpp).
//
// Each weight row is dequantized into a row of floats in L1 (loops the compiler vectorizes
// for the build's ISA), then multiplied by every activation row in float32. A value differs
// from dequantize_row's at most by the rounding a fused multiply-add saves, so the products
// follow the dequantized float32 oracle to float32 reassociation, where int8 activations
// (quant_dot.h) move logprobs by tenths of a nat and flip near ties. Every activation row is
// summed the same way (kAcc vector accumulators, always in the same order) whatever other
// rows share the call, so a row's result does not depend on its batch.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "quant_blocks.h"

namespace loom::quant {

// One dequantized weight row and the unpacked form the K types go through.
struct FloatRow {
  std::vector<float> w, lanes, offsets;
  std::vector<uint8_t> u, plain;  // plain: a regrouped row as plain blocks
};

// The row's k values into s.w (k a multiple of the type's block).
inline const float* dequantize_row_fast(int64_t type, const uint8_t* row, int64_t k, FloatRow& s) {
  s.w.resize(k);
  float* w = s.w.data();
  const Layout lay = layout(type);
  const int64_t nb = k / lay.values;
  switch (type) {
    case kQ8_0:
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* x = row + b * 34;
        const float d = f16(x);
        const int8_t* q = reinterpret_cast<const int8_t*>(x + 2);
        float* o = w + b * 32;
#pragma omp simd
        for (int i = 0; i < 32; ++i) o[i] = static_cast<float>(q[i]) * d;
      }
      return w;
    case kQ4_0:
    case kQ4_1:
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* x = row + b * lay.bytes;
        const float d = f16(x);
        const uint8_t* qs = x + (type == kQ4_0 ? 2 : 4);
        float* o = w + b * 32;
        if (type == kQ4_0) {
#pragma omp simd
          for (int i = 0; i < 16; ++i) {
            o[i] = static_cast<float>((qs[i] & 0xF) - 8) * d;
            o[i + 16] = static_cast<float>((qs[i] >> 4) - 8) * d;
          }
        } else {
          const float m = f16(x + 2);
#pragma omp simd
          for (int i = 0; i < 16; ++i) {
            o[i] = static_cast<float>(qs[i] & 0xF) * d + m;
            o[i + 16] = static_cast<float>(qs[i] >> 4) * d + m;
          }
        }
      }
      return w;
    case kBF16:
#pragma omp simd
      for (int64_t i = 0; i < k; ++i) w[i] = bf16(row + 2 * i);
      return w;
    default: {  // the K types: value = scale[g] * u + offset[g] per 16 values
      s.u.resize(k);
      s.lanes.resize(k / 4);
      s.offsets.resize(k / 16);
      unpack_row(type, row, k, false, s.u.data(), s.lanes.data(), s.offsets.data());
      const uint8_t* u = s.u.data();
      const float* lanes = s.lanes.data();
      const float* offsets = s.offsets.data();
      for (int64_t g = 0; g < k / 16; ++g) {
        const float scale = lanes[g * 4], offset = offsets[g];
#pragma omp simd
        for (int i = 0; i < 16; ++i) w[g * 16 + i] = static_cast<float>(u[g * 16 + i]) * scale + offset;
      }
      return w;
    }
  }
}

#if defined(__AVX512F__)
using FloatVec = __m512;
constexpr int kFloatLanes = 16;
constexpr int kFloatRowTile = 4;
inline FloatVec fv_load(const float* p) { return _mm512_loadu_ps(p); }
inline FloatVec fv_fma(FloatVec a, FloatVec b, FloatVec c) { return _mm512_fmadd_ps(a, b, c); }
inline FloatVec fv_add(FloatVec a, FloatVec b) { return _mm512_add_ps(a, b); }
inline FloatVec fv_zero() { return _mm512_setzero_ps(); }
inline float fv_sum(FloatVec v) { return _mm512_reduce_add_ps(v); }
#elif defined(__AVX2__) && defined(__FMA__)
using FloatVec = __m256;
constexpr int kFloatLanes = 8;
constexpr int kFloatRowTile = 2;  // 16 registers: 2 rows x 4 accumulators, weights, inputs
inline FloatVec fv_load(const float* p) { return _mm256_loadu_ps(p); }
inline FloatVec fv_fma(FloatVec a, FloatVec b, FloatVec c) { return _mm256_fmadd_ps(a, b, c); }
inline FloatVec fv_add(FloatVec a, FloatVec b) { return _mm256_add_ps(a, b); }
inline FloatVec fv_zero() { return _mm256_setzero_ps(); }
inline float fv_sum(FloatVec v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#else
struct FloatVec {
  float v[8];
};
constexpr int kFloatLanes = 8;
constexpr int kFloatRowTile = 2;
inline FloatVec fv_load(const float* p) {
  FloatVec r;
  for (int i = 0; i < 8; ++i) r.v[i] = p[i];
  return r;
}
inline FloatVec fv_fma(FloatVec a, FloatVec b, FloatVec c) {
  for (int i = 0; i < 8; ++i) c.v[i] += a.v[i] * b.v[i];
  return c;
}
inline FloatVec fv_add(FloatVec a, FloatVec b) {
  for (int i = 0; i < 8; ++i) a.v[i] += b.v[i];
  return a;
}
inline FloatVec fv_zero() { return FloatVec{}; }
inline float fv_sum(FloatVec v) {
  float s = 0.0f;
  for (float x : v.v) s += x;
  return s;
}
#endif

// Independent sums per row: enough to keep the FMA units busy on one row (decode).
constexpr int kAcc = 4;

// y[r * ldy] (+)= w . x[r] for kRows rows of x from r0 (k a multiple of 32).
template <int kRows>
inline void dot_float_tile(const float* w, const float* x, int64_t ldx, int64_t k, int64_t r0,
                           float* y, int64_t ldy, bool accumulate) {
  FloatVec acc[kRows][kAcc];
  for (int r = 0; r < kRows; ++r)
    for (int a = 0; a < kAcc; ++a) acc[r][a] = fv_zero();
  int64_t i = 0;
  for (; i + kAcc * kFloatLanes <= k; i += kAcc * kFloatLanes) {
#pragma GCC unroll 4
    for (int a = 0; a < kAcc; ++a) {
      const FloatVec wv = fv_load(w + i + a * kFloatLanes);
      for (int r = 0; r < kRows; ++r)
        acc[r][a] = fv_fma(wv, fv_load(x + (r0 + r) * ldx + i + a * kFloatLanes), acc[r][a]);
    }
  }
  for (int a = 0; i < k; i += kFloatLanes, ++a) {  // fewer than kAcc vectors left
    const FloatVec wv = fv_load(w + i);
    for (int r = 0; r < kRows; ++r) acc[r][a] = fv_fma(wv, fv_load(x + (r0 + r) * ldx + i), acc[r][a]);
  }
  for (int r = 0; r < kRows; ++r) {
    const float sum = fv_sum(fv_add(fv_add(acc[r][0], acc[r][1]), fv_add(acc[r][2], acc[r][3])));
    float* out = y + (r0 + r) * ldy;
    *out = accumulate ? *out + sum : sum;
  }
}

#if defined(__AVX2__) && defined(__FMA__)
// Q8_0, Q4_0, Q4_1 and bfloat16 read straight from their blocks: each block's 32 values
// built as floats in registers (d * q + m, or a bfloat16 widened), then multiplied by kRows
// activation rows. Blocks alternate between two pairs of accumulators, so one row has four
// independent sums.
constexpr int kBlockVecs = 32 / kFloatLanes;

template <int64_t kType>
inline void block32_floats(const uint8_t* blk, FloatVec out[kBlockVecs]) {
  if constexpr (kType == kBF16) {  // a bfloat16 is the high half of a float32
    for (int v = 0; v < kBlockVecs; ++v) {
#if defined(__AVX512F__)
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 32 * v));
      out[v] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
#else
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 16 * v));
      out[v] = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
#endif
    }
    return;
  }
  const float d = f16(blk);
  if constexpr (kType == kQ8_0) {
    const int8_t* q = reinterpret_cast<const int8_t*>(blk + 2);
    for (int v = 0; v < kBlockVecs; ++v) {
#if defined(__AVX512F__)
      const __m512 f = _mm512_cvtepi32_ps(
          _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 16 * v))));
      out[v] = _mm512_mul_ps(f, _mm512_set1_ps(d));
#else
      const __m256 f = _mm256_cvtepi32_ps(
          _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8 * v))));
      out[v] = _mm256_mul_ps(f, _mm256_set1_ps(d));
#endif
    }
  } else {
    const float m = kType == kQ4_0 ? -8.0f * d : f16(blk + 2);
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + (kType == kQ4_0 ? 2 : 4)));
    const __m128i mask = _mm_set1_epi8(0x0F);
    const __m128i halves[2] = {_mm_and_si128(q, mask), _mm_and_si128(_mm_srli_epi16(q, 4), mask)};
#if defined(__AVX512F__)
    for (int v = 0; v < 2; ++v)
      out[v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(halves[v])),
                               _mm512_set1_ps(d), _mm512_set1_ps(m));
#else
    for (int v = 0; v < 4; ++v) {
      const __m128i bytes = (v % 2) ? _mm_srli_si128(halves[v / 2], 8) : halves[v / 2];
      out[v] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes)),
                               _mm256_set1_ps(d), _mm256_set1_ps(m));
    }
#endif
  }
}

template <int64_t kType, int kRows>
inline void dot_blocks32_float(const uint8_t* row, int64_t k, const float* x, int64_t ldx,
                               int64_t r0, float* y, int64_t ldy, bool accumulate) {
  constexpr int64_t kBytes = layout(kType).bytes;
  FloatVec acc[kRows][4];
  for (int r = 0; r < kRows; ++r)
    for (int a = 0; a < 4; ++a) acc[r][a] = fv_zero();
  for (int64_t b = 0; b < k / 32; ++b) {
    FloatVec w[kBlockVecs];
    block32_floats<kType>(row + b * kBytes, w);
    const int pair = 2 * (b % 2);
    for (int r = 0; r < kRows; ++r) {
      const float* xr = x + (r0 + r) * ldx + b * 32;
      for (int v = 0; v < kBlockVecs; ++v)
        acc[r][pair + v % 2] = fv_fma(w[v], fv_load(xr + v * kFloatLanes), acc[r][pair + v % 2]);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    const float sum = fv_sum(fv_add(fv_add(acc[r][0], acc[r][1]), fv_add(acc[r][2], acc[r][3])));
    float* out = y + (r0 + r) * ldy;
    *out = accumulate ? *out + sum : sum;
  }
}

template <int64_t kType>
inline void rows_blocks32_float(const uint8_t* row, int64_t k, const float* x, int64_t ldx,
                                int64_t rows, float* y, int64_t ldy, bool accumulate) {
  int64_t r = 0;
  for (; r + kFloatRowTile <= rows; r += kFloatRowTile)
    dot_blocks32_float<kType, kFloatRowTile>(row, k, x, ldx, r, y, ldy, accumulate);
  for (; r < rows; ++r) dot_blocks32_float<kType, 1>(row, k, x, ldx, r, y, ldy, accumulate);
}
#endif

// y[r * ldy] (+)= the packed weight row . x[r] for rows [0, rows) of x.
inline void dot_weight_row_float(int64_t type, const uint8_t* row, int64_t k, const float* x,
                                 int64_t ldx, int64_t rows, float* y, int64_t ldy,
                                 bool accumulate, FloatRow& scratch) {
  if (is_grouped(type)) {  // the float path takes the plain blocks
    const int64_t plain = plain_type(type), bytes = layout(plain).bytes;
    scratch.plain.resize(k / 32 * bytes);
    for_plain_runs(type, row, k / 32, [&](const uint8_t* blocks, int64_t n, int64_t b) {
      std::memcpy(scratch.plain.data() + b * bytes, blocks, n * bytes);
    });
    return dot_weight_row_float(plain, scratch.plain.data(), k, x, ldx, rows, y, ldy, accumulate,
                                scratch);
  }
#if defined(__AVX2__) && defined(__FMA__)
  switch (type) {
    case kQ8_0: return rows_blocks32_float<kQ8_0>(row, k, x, ldx, rows, y, ldy, accumulate);
    case kQ4_0: return rows_blocks32_float<kQ4_0>(row, k, x, ldx, rows, y, ldy, accumulate);
    case kQ4_1: return rows_blocks32_float<kQ4_1>(row, k, x, ldx, rows, y, ldy, accumulate);
    case kBF16: return rows_blocks32_float<kBF16>(row, k, x, ldx, rows, y, ldy, accumulate);
    default: break;
  }
#endif
  const float* w = dequantize_row_fast(type, row, k, scratch);
  int64_t r = 0;
  for (; r + kFloatRowTile <= rows; r += kFloatRowTile)
    dot_float_tile<kFloatRowTile>(w, x, ldx, k, r, y, ldy, accumulate);
  for (; r < rows; ++r) dot_float_tile<1>(w, x, ldx, k, r, y, ldy, accumulate);
}

}  // namespace loom::quant
