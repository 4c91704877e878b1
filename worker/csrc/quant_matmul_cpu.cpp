// Matrix products with weights kept in GGML's quantized blocks (quant_blocks.h), float32
// activations in and out: y[M, N] = x[M, K] @ W[N, K]^T.
//
// Up to 512 rows (decode steps, mixed steps, most prefill chunks): llama.cpp's way. Each activation row is quantized per 32 values
// to int8 with one float scale; each weight row is unpacked (in L1) to bytes, per-16-value
// scales and offsets; the products are integer dot products of 32 bytes (AVX-512 VNNI's
// vpdpbusd, AVX2's vpmaddubsw, or plain C++ where neither exists), scaled per block in
// float. A weight row is unpacked once for all rows of x. Threads split the weight rows.
// More rows (long prefill chunks): the weight rows are dequantized a chunk at a time to
// float32 and multiplied by torch's GEMM; measured on a Zen 4 the two cost about the same
// from 256-512 rows (bench_cpu_quant kernels), the int8 products much less below that.
// The ISA is chosen when the library is built (-march=native, cached per CPU).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "quant_blocks.h"

namespace {

using loom::quant::layout;

#if defined(__AVX512VNNI__) && defined(__AVX512VL__) && defined(__AVX512BW__)
constexpr bool kVnni512 = true;
#else
constexpr bool kVnni512 = false;
#endif
#if defined(__AVX512VNNI__) && defined(__AVX512VL__) || defined(__AVXVNNI__)
constexpr bool kVnni = true;
#else
constexpr bool kVnni = false;
#endif

// Rows up to which the integer-dot path runs; above it, dequantize + GEMM.
constexpr int64_t kMaxDotRows = 512;
// Activation rows sharing each unpacked weight vector.
constexpr int kRowTile = 4;

// x quantized per 32 values: q [M, K] int8; scales [M, K / 32]; lanes [M, K / 4]: each
// block's scale repeated 8 times (its lanes); sums [M, K / 16]: scale * the sum of each 16
// quantized values; sums32 [M, K / 32] the same per block.
struct QuantizedRows {
  int64_t rows = 0, k = 0;
  std::vector<int8_t> q;
  std::vector<float> scales, lanes, sums, sums32;
};

void quantize_rows(const float* x, int64_t stride, int64_t rows, int64_t k, QuantizedRows& out) {
  out.rows = rows;
  out.k = k;
  out.q.resize(rows * k);
  out.lanes.resize(rows * k / 4);
  out.sums.resize(rows * k / 16);
  out.scales.resize(rows * k / 32);
  out.sums32.resize(rows * k / 32);
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = x + r * stride;
    for (int64_t b = 0; b < k / 32; ++b) {
      const float* v = src + b * 32;
      float amax = 0.0f;
#pragma omp simd reduction(max : amax)
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(v[i]));
      const float d = amax / 127.0f;
      const float inv = d > 0.0f ? 1.0f / d : 0.0f;
      int8_t* q = out.q.data() + r * k + b * 32;
      int s0 = 0, s1 = 0;
#pragma omp simd reduction(+ : s0, s1)
      for (int i = 0; i < 32; ++i) {
        const int qi = static_cast<int>(std::nearbyint(v[i] * inv));
        q[i] = static_cast<int8_t>(qi);
        if (i < 16) s0 += qi; else s1 += qi;
      }
      float* lanes = out.lanes.data() + r * k / 4 + b * 8;
      for (int i = 0; i < 8; ++i) lanes[i] = d;
      out.sums[r * k / 16 + b * 2] = d * static_cast<float>(s0);
      out.sums[r * k / 16 + b * 2 + 1] = d * static_cast<float>(s1);
      out.scales[r * k / 32 + b] = d;
      out.sums32[r * k / 32 + b] = d * static_cast<float>(s0 + s1);
    }
  }
}

#if defined(__AVX2__)
inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The int32 lanes of 32 unsigned x signed byte products (lane i: bytes 4i..4i+3).
inline __m256i dot32(__m256i u, __m256i a, bool signed_u) {
  if constexpr (kVnni) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, a);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, a);
#endif
  }
  if (signed_u) {  // vpmaddubsw wants unsigned x signed: move the signs onto a
    a = _mm256_sign_epi8(a, u);
    u = _mm256_sign_epi8(u, u);
  }
  // Unpacked 4-6 bit values times int8 stay inside int16; Q8_0 as |w| * +-a does too.
  const __m256i pairs = _mm256_maddubs_epi16(u, a);
  return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}
#endif

#if defined(__AVX2__)
// One weight row of 32-value blocks (Q8_0, Q4_0, Q4_1) read straight from its blocks, times
// activation rows r0..r0+kRows-1: y[r * ldy].
template <int64_t kType, int kRows>
void dot_blocks32(const uint8_t* row, int64_t k, const QuantizedRows& a, int64_t r0, float* y,
                  int64_t ldy) {
  constexpr int64_t kBytes = kType == loom::quant::kQ8_0 ? 34 : kType == loom::quant::kQ4_0 ? 18 : 20;
  constexpr bool kSigned = kType == loom::quant::kQ8_0 && !kVnni;
  const int64_t nb = k / 32;
  __m256 acc[kRows];
  float off[kRows];
  for (int r = 0; r < kRows; ++r) {
    acc[r] = _mm256_setzero_ps();
    off[r] = 0.0f;
  }
  const __m256i low = _mm256_set1_epi8(0x0F);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = row + b * kBytes;
    const float d = loom::quant::f16(blk);
    __m256i w;
    float c;
    if constexpr (kType == loom::quant::kQ8_0) {
      w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
      if constexpr (kSigned) {
        c = 0.0f;
      } else {
        w = _mm256_xor_si256(w, _mm256_set1_epi8(static_cast<char>(0x80)));
        c = -128.0f * d;
      }
    } else {
      constexpr int kQs = kType == loom::quant::kQ4_0 ? 2 : 4;
      const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + kQs));
      w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), low);
      c = kType == loom::quant::kQ4_0 ? -8.0f * d : loom::quant::f16(blk + 2);
    }
    for (int r = 0; r < kRows; ++r) {
      const int64_t at = (r0 + r) * nb + b;
      const __m256i x =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q.data() + at * 32));
      const __m256 dot = _mm256_cvtepi32_ps(dot32(w, x, kSigned));
      acc[r] = _mm256_fmadd_ps(dot, _mm256_set1_ps(d * a.scales[at]), acc[r]);
      off[r] += c * a.sums32[at];
    }
  }
  for (int r = 0; r < kRows; ++r) y[(r0 + r) * ldy] = hsum256(acc[r]) + off[r];
}

template <int64_t kType>
void rows_blocks32(const uint8_t* row, int64_t k, const QuantizedRows& a, float* y, int64_t ldy) {
  int64_t r = 0;
  for (; r + kRowTile <= a.rows; r += kRowTile) dot_blocks32<kType, kRowTile>(row, k, a, r, y, ldy);
  for (; r < a.rows; ++r) dot_blocks32<kType, 1>(row, k, a, r, y, ldy);
}
#endif

// acc[r] over one weight row (unpacked) for activation rows r0..r0+n-1; returns nothing,
// writes y[r * ldy].
template <int kRows>
void dot_rows(const uint8_t* u, const float* lanes, const float* offsets, int64_t k,
              bool signed_u, const QuantizedRows& a, int64_t r0, float* y, int64_t ldy) {
  const int64_t nb = k / 32;
  float result[kRows];
#if defined(__AVX2__)
  int64_t b = 0;
#if defined(__AVX512F__)
  if constexpr (kVnni512) {
    __m512 acc[kRows];
    for (int r = 0; r < kRows; ++r) acc[r] = _mm512_setzero_ps();
    for (; b + 2 <= nb; b += 2) {
      const __m512i w = _mm512_loadu_si512(u + b * 32);
      const __m512 ws = _mm512_loadu_ps(lanes + b * 8);
      for (int r = 0; r < kRows; ++r) {
        const int64_t row = r0 + r;
        const __m512i x = _mm512_loadu_si512(a.q.data() + row * k + b * 32);
        const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x);
        const __m512 xs = _mm512_loadu_ps(a.lanes.data() + row * k / 4 + b * 8);
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(ws, xs), acc[r]);
      }
    }
    for (int r = 0; r < kRows; ++r) result[r] = _mm512_reduce_add_ps(acc[r]);
  } else {
    for (int r = 0; r < kRows; ++r) result[r] = 0.0f;
  }
#else
  for (int r = 0; r < kRows; ++r) result[r] = 0.0f;
#endif
  __m256 acc[kRows];
  for (int r = 0; r < kRows; ++r) acc[r] = _mm256_setzero_ps();
  for (; b < nb; ++b) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(u + b * 32));
    const __m256 ws = _mm256_loadu_ps(lanes + b * 8);
    for (int r = 0; r < kRows; ++r) {
      const int64_t row = r0 + r;
      const __m256i x =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q.data() + row * k + b * 32));
      const __m256 xs = _mm256_loadu_ps(a.lanes.data() + row * k / 4 + b * 8);
      const __m256 dot = _mm256_cvtepi32_ps(dot32(w, x, signed_u));
      acc[r] = _mm256_fmadd_ps(dot, _mm256_mul_ps(ws, xs), acc[r]);
    }
  }
  for (int r = 0; r < kRows; ++r) result[r] += hsum256(acc[r]);
#else
  for (int r = 0; r < kRows; ++r) {
    const int64_t row = r0 + r;
    const int8_t* x = a.q.data() + row * k;
    float sum = 0.0f;
    for (int64_t g = 0; g < nb * 2; ++g) {
      int dot = 0;
      for (int i = 0; i < 16; ++i) {
        const int w = signed_u ? static_cast<int8_t>(u[g * 16 + i]) : u[g * 16 + i];
        dot += w * x[g * 16 + i];
      }
      sum += static_cast<float>(dot) * lanes[(g / 2) * 8 + (g % 2) * 4] *
             a.lanes[row * k / 4 + (g / 2) * 8];
    }
    result[r] = sum;
  }
#endif
  // The offsets meet the activations' group sums: sum_g offset[g] * (d * sum of q in g).
  const int64_t ng = k / 16;
  for (int r = 0; r < kRows; ++r) {
    const float* s = a.sums.data() + (r0 + r) * ng;
    float off = 0.0f;
#pragma omp simd reduction(+ : off)
    for (int64_t g = 0; g < ng; ++g) off += offsets[g] * s[g];
    y[(r0 + r) * ldy] = result[r] + off;
  }
}

void check_weight(const at::Tensor& w, int64_t type, int64_t k) {
  const auto lay = layout(type);
  TORCH_CHECK(lay.values > 0, "unknown quantized type ", type);
  TORCH_CHECK(k > 0 && k % lay.values == 0, "row length ", k, " is not whole blocks of ",
              lay.values);
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kByte && w.is_contiguous() &&
                  w.size(1) == k / lay.values * lay.bytes,
              "expected packed weights uint8 [rows, ", k / lay.values * lay.bytes, "]");
}

void check_input(const at::Tensor& x, int64_t k) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.stride(1) == 1 &&
                  x.size(1) == k,
              "expected float32 input [rows, ", k, "] with contiguous rows");
}

at::Tensor quant_linear_int8(const at::Tensor& x, const at::Tensor& w, int64_t type,
                             int64_t k) {
  check_weight(w, type, k);
  check_input(x, k);
  const int64_t m = x.size(0), n = w.size(0), row_bytes = w.size(1);
  at::Tensor y = at::empty({m, n}, x.options());
  if (m == 0 || n == 0) return y;
  QuantizedRows a;
  quantize_rows(x.data_ptr<float>(), x.stride(0), m, k, a);
  const bool signed_u = !kVnni && type == loom::quant::kQ8_0;
  const uint8_t* wp = w.data_ptr<uint8_t>();
  float* yp = y.data_ptr<float>();
  // Enough rows per task that waking a thread pays: about 4096 block products each.
  const int64_t grain = std::max<int64_t>(8, 4096 / std::max<int64_t>(1, k / 32 * m));
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> u(k);
    std::vector<float> lanes(k / 4), offsets(k / 16);
    for (int64_t row = begin; row < end; ++row) {
#if defined(__AVX2__)
      const uint8_t* packed = wp + row * row_bytes;
      if (type == loom::quant::kQ8_0) {
        rows_blocks32<loom::quant::kQ8_0>(packed, k, a, yp + row, n);
        continue;
      }
      if (type == loom::quant::kQ4_0) {
        rows_blocks32<loom::quant::kQ4_0>(packed, k, a, yp + row, n);
        continue;
      }
      if (type == loom::quant::kQ4_1) {
        rows_blocks32<loom::quant::kQ4_1>(packed, k, a, yp + row, n);
        continue;
      }
#endif
      loom::quant::unpack_row(type, wp + row * row_bytes, k, signed_u, u.data(), lanes.data(),
                              offsets.data());
      int64_t r = 0;
      for (; r + kRowTile <= m; r += kRowTile)
        dot_rows<kRowTile>(u.data(), lanes.data(), offsets.data(), k, signed_u, a, r, yp + row, n);
      for (; r < m; ++r)
        dot_rows<1>(u.data(), lanes.data(), offsets.data(), k, signed_u, a, r, yp + row, n);
    }
  });
  return y;
}

#if defined(__AVX512F__)
using FloatVec = __m512;
constexpr int kLanes = 16;
inline FloatVec vload(const float* p) { return _mm512_loadu_ps(p); }
inline FloatVec vfma(FloatVec a, FloatVec b, FloatVec c) { return _mm512_fmadd_ps(a, b, c); }
inline FloatVec vzero() { return _mm512_setzero_ps(); }
inline float vsum(FloatVec v) { return _mm512_reduce_add_ps(v); }
#elif defined(__AVX2__)
using FloatVec = __m256;
constexpr int kLanes = 8;
inline FloatVec vload(const float* p) { return _mm256_loadu_ps(p); }
inline FloatVec vfma(FloatVec a, FloatVec b, FloatVec c) { return _mm256_fmadd_ps(a, b, c); }
inline FloatVec vzero() { return _mm256_setzero_ps(); }
inline float vsum(FloatVec v) { return hsum256(v); }
#else
struct FloatVec {
  float v[8];
};
constexpr int kLanes = 8;
inline FloatVec vload(const float* p) {
  FloatVec r;
  std::memcpy(r.v, p, sizeof(r.v));
  return r;
}
inline FloatVec vfma(FloatVec a, FloatVec b, FloatVec c) {
  for (int i = 0; i < 8; ++i) c.v[i] += a.v[i] * b.v[i];
  return c;
}
inline FloatVec vzero() { return FloatVec{}; }
inline float vsum(FloatVec v) {
  float s = 0.0f;
  for (float x : v.v) s += x;
  return s;
}
#endif

// y[r * ldy] = w . x[r] for kRows rows of x from r0, w a dequantized weight row.
template <int kRows>
void dot_float_rows(const float* w, const float* x, int64_t ldx, int64_t k, int64_t r0,
                    float* y, int64_t ldy) {
  FloatVec acc[kRows];
  for (int r = 0; r < kRows; ++r) acc[r] = vzero();
  for (int64_t i = 0; i < k; i += kLanes) {
    const FloatVec wv = vload(w + i);
    for (int r = 0; r < kRows; ++r) acc[r] = vfma(wv, vload(x + (r0 + r) * ldx + i), acc[r]);
  }
  for (int r = 0; r < kRows; ++r) y[(r0 + r) * ldy] = vsum(acc[r]);
}

// Float activations: each weight row is dequantized (exactly) into L1 once, then multiplied
// by every row of x in float32.
at::Tensor quant_linear_f32(const at::Tensor& x, const at::Tensor& w, int64_t type, int64_t k) {
  check_weight(w, type, k);
  check_input(x, k);
  const int64_t m = x.size(0), n = w.size(0), row_bytes = w.size(1);
  at::Tensor y = at::empty({m, n}, x.options());
  if (m == 0 || n == 0) return y;
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const float* xp = x.data_ptr<float>();
  const int64_t ldx = x.stride(0);
  float* yp = y.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(8, 65536 / std::max<int64_t>(1, k * m));
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> row(k);
    for (int64_t i = begin; i < end; ++i) {
      loom::quant::dequantize_row(type, wp + i * row_bytes, k, row.data());
      int64_t r = 0;
      for (; r + kRowTile <= m; r += kRowTile)
        dot_float_rows<kRowTile>(row.data(), xp, ldx, k, r, yp + i, n);
      for (; r < m; ++r) dot_float_rows<1>(row.data(), xp, ldx, k, r, yp + i, n);
    }
  });
  return y;
}

at::Tensor quant_linear_dequant(const at::Tensor& x, const at::Tensor& w, int64_t type,
                                int64_t k) {
  check_weight(w, type, k);
  check_input(x, k);
  const int64_t m = x.size(0), n = w.size(0), row_bytes = w.size(1);
  at::Tensor y = at::empty({m, n}, x.options());
  if (m == 0 || n == 0) return y;
  // Chunks of about 4 MiB of float32 weights.
  const int64_t chunk = std::min<int64_t>(n, std::max<int64_t>(16, (1 << 20) / k));
  at::Tensor buffer = at::empty({chunk, k}, x.options());
  const uint8_t* wp = w.data_ptr<uint8_t>();
  for (int64_t n0 = 0; n0 < n; n0 += chunk) {
    const int64_t rows = std::min(chunk, n - n0);
    float* bp = buffer.data_ptr<float>();
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        loom::quant::dequantize_row(type, wp + (n0 + r) * row_bytes, k, bp + r * k);
    });
    at::Tensor out = y.narrow(1, n0, rows);
    at::mm_out(out, x, buffer.narrow(0, 0, rows).t());
  }
  return y;
}

at::Tensor quant_linear(const at::Tensor& x, const at::Tensor& w, int64_t type, int64_t k) {
  if (x.size(0) <= kMaxDotRows) return quant_linear_int8(x, w, type, k);
  return quant_linear_dequant(x, w, type, k);
}

// rows[T] of W, dequantized exactly: the embedding lookup (and the tests' view of a tensor).
at::Tensor quant_rows(const at::Tensor& w, const at::Tensor& ids, int64_t type, int64_t k) {
  check_weight(w, type, k);
  TORCH_CHECK(ids.dim() == 1 && ids.scalar_type() == at::kLong, "ids must be int64 [T]");
  const at::Tensor idc = ids.contiguous();
  const int64_t t = idc.size(0), n = w.size(0), row_bytes = w.size(1);
  const int64_t* ip = idc.data_ptr<int64_t>();
  for (int64_t i = 0; i < t; ++i)
    TORCH_CHECK(ip[i] >= 0 && ip[i] < n, "row id ", ip[i], " is outside 0..", n - 1);
  at::Tensor out = at::empty({t, k}, w.options().dtype(at::kFloat));
  const uint8_t* wp = w.data_ptr<uint8_t>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, t, std::max<int64_t>(1, 65536 / k), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      loom::quant::dequantize_row(type, wp + ip[i] * row_bytes, k, op + i * k);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(loom, m) {
  m.def("quant_linear(Tensor x, Tensor w, int type, int k) -> Tensor");
  m.def("quant_linear_int8(Tensor x, Tensor w, int type, int k) -> Tensor");
  m.def("quant_linear_dequant(Tensor x, Tensor w, int type, int k) -> Tensor");
  m.def("quant_linear_f32(Tensor x, Tensor w, int type, int k) -> Tensor");
  m.def("quant_rows(Tensor w, Tensor ids, int type, int k) -> Tensor");
  m.impl("quant_linear", c10::DispatchKey::CPU, &quant_linear);
  m.impl("quant_linear_int8", c10::DispatchKey::CPU, &quant_linear_int8);
  m.impl("quant_linear_dequant", c10::DispatchKey::CPU, &quant_linear_dequant);
  m.impl("quant_linear_f32", c10::DispatchKey::CPU, &quant_linear_f32);
  m.impl("quant_rows", c10::DispatchKey::CPU, &quant_rows);
}
