// GGML's quantized blocks (llama.cpp's GGUF tensor types), read in place.
//
// Two readings of a row of blocks:
//   dequantize_row: the float values, exactly as llama.cpp's reference dequantizers compute
//     them (same operations in the same order, no fused multiply-add), for the embedding
//     lookup, the prefill path and the tests;
//   unpack_row: the form the integer dot products take. Every type is written as
//     value = scale[g] * u + offset[g], with u an unsigned byte and g a group of 16 values,
//     so one kernel serves every type: u[K] bytes, `lanes` (8 floats per 32-value block: its
//     first group's scale in lanes 0-3, the second's in 4-7, matching the int32 lanes of a
//     byte dot product over 32 bytes) and offset[K / 16].
// Block layouts (bytes): Q8_0 d, q[32] (34); Q4_0 d, qs[16] (18); Q4_1 d, m, qs[16] (20);
// Q4_K d, dmin, scales[12], qs[128] (144); Q5_K d, dmin, scales[12], qh[32], qs[128] (176);
// Q6_K ql[128], qh[64], scales[16], d (210). d, m, dmin are float16.
//
// Q4_0_G8 and Q4_1_G8 are those types regrouped at load (group_row): each full run of eight
// blocks holds their eight scales d (then Q4_1's eight m), then their eight 16-byte quants; a
// row's last nb % 8 blocks stay plain. The kernels then take eight scales in one load instead
// of gathering them a block apart, which at one row cost them a sixth of their time. (Q8_0,
// whose products wait on memory more than on arithmetic, streamed 5-15% slower regrouped.)
#pragma once

#include <c10/util/Half.h>

#if defined(__F16C__)
#include <immintrin.h>
#endif

#include <cstdint>
#include <cstring>

namespace loom::quant {

// kBF16 is not a GGML block: bfloat16 weights (`--quantization bf16`), taken 32 values at a
// time, which only the float-activation kernel multiplies.
enum Type : int64_t {
  kQ8_0 = 0, kQ4_0 = 1, kQ4_1 = 2, kQ4_K = 3, kQ5_K = 4, kQ6_K = 5, kBF16 = 6,
  kQ4_0G8 = 7, kQ4_1G8 = 8
};

// The plain type a regrouped one holds (any other type: itself).
constexpr int64_t plain_type(int64_t type) {
  switch (type) {
    case kQ4_0G8: return kQ4_0;
    case kQ4_1G8: return kQ4_1;
    default: return type;
  }
}

constexpr bool is_grouped(int64_t type) { return plain_type(type) != type; }

// What packed weights multiply (`--activations`; worker/packed_modules.py holds the same codes):
// float32 rows (quant_float_dot.h), or rows quantized per 32 values to int8 (quant_dot.h) or
// to int16 (quant_int16_dot.h).
enum Activations : int64_t { kFloatActivations = 0, kInt8Activations = 1, kInt16Activations = 2 };

struct Layout {
  int64_t values;  // per block
  int64_t bytes;   // per block
};

constexpr Layout layout(int64_t type) {
  switch (plain_type(type)) {
    case kQ8_0: return {32, 34};
    case kQ4_0: return {32, 18};
    case kQ4_1: return {32, 20};
    case kQ4_K: return {256, 144};
    case kQ5_K: return {256, 176};
    case kQ6_K: return {256, 210};
    case kBF16: return {32, 64};
    default: return {0, 0};
  }
}

// Whether the integer kernels (int8 and int16 activations) read `type`.
inline bool integer_kernels_read(int64_t type) { return type != kBF16 && layout(type).values > 0; }

inline float bf16(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &wide, 4);
  return value;
}

inline float f16(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
#if defined(__F16C__)
  return _cvtsh_ss(bits);
#else
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
#endif
}

// The six-bit scale and min of sub-block j of a Q4_K / Q5_K super-block (get_scale_min_k4).
inline void scale_min_k4(int j, const uint8_t* q, int* scale, int* min) {
  if (j < 4) {
    *scale = q[j] & 63;
    *min = q[j + 4] & 63;
  } else {
    *scale = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *min = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// ---- blocks regrouped by eights ----------------------------------------------------------

constexpr int64_t kGroupBlocks = 8;

// The float16 fields that lead a plain 32-value block: d, and Q4_1's m.
constexpr int64_t head_bytes(int64_t plain) { return plain == kQ4_1 ? 4 : 2; }

// A plain row of nb blocks into its regrouped form (dst holds as many bytes as src): field f
// of block j at 16 f + 2 j of the group, block j's quants after all the fields.
inline void group_row(int64_t plain, const uint8_t* src, int64_t nb, uint8_t* dst) {
  const int64_t bytes = layout(plain).bytes, head = head_bytes(plain), quants = bytes - head;
  const int64_t full = nb / kGroupBlocks * kGroupBlocks;
  for (int64_t b = 0; b < full; b += kGroupBlocks) {
    uint8_t* g = dst + b * bytes;
    for (int64_t j = 0; j < kGroupBlocks; ++j) {
      const uint8_t* blk = src + (b + j) * bytes;
      for (int64_t f = 0; f < head / 2; ++f) std::memcpy(g + 16 * f + 2 * j, blk + 2 * f, 2);
      std::memcpy(g + kGroupBlocks * head + quants * j, blk + head, quants);
    }
  }
  std::memcpy(dst + full * bytes, src + full * bytes, (nb - full) * bytes);
}

// One group of a regrouped row back into eight plain blocks.
inline void ungroup(int64_t plain, const uint8_t* g, uint8_t* out) {
  const int64_t bytes = layout(plain).bytes, head = head_bytes(plain), quants = bytes - head;
  for (int64_t j = 0; j < kGroupBlocks; ++j) {
    for (int64_t f = 0; f < head / 2; ++f)
      std::memcpy(out + j * bytes + 2 * f, g + 16 * f + 2 * j, 2);
    std::memcpy(out + j * bytes + head, g + kGroupBlocks * head + quants * j, quants);
  }
}

// Calls read(plain blocks, count, first block) over a regrouped row of nb blocks, a group or
// the plain tail at a time: the readers below take the regrouped types through their plain
// code.
template <typename Read>
inline void for_plain_runs(int64_t type, const uint8_t* row, int64_t nb, Read read) {
  const int64_t plain = plain_type(type), bytes = layout(plain).bytes;
  uint8_t blocks[kGroupBlocks * 20];  // eight of the larger plain block
  int64_t b = 0;
  for (; b + kGroupBlocks <= nb; b += kGroupBlocks) {
    ungroup(plain, row + b * bytes, blocks);
    read(blocks, kGroupBlocks, b);
  }
  if (b < nb) read(row + b * bytes, nb - b, b);
}

// ---- exact values --------------------------------------------------------------------------

// Separate multiplies and adds, as the reference rounds them.
#define LOOM_EXACT __attribute__((optimize("fp-contract=off")))

LOOM_EXACT inline void dequantize_row(int64_t type, const uint8_t* row, int64_t k, float* out) {
  if (is_grouped(type)) {
    for_plain_runs(type, row, k / 32, [&](const uint8_t* blocks, int64_t n, int64_t b) {
      dequantize_row(plain_type(type), blocks, n * 32, out + b * 32);
    });
    return;
  }
  const Layout lay = layout(type);
  for (int64_t b = 0; b < k / lay.values; ++b) {
    const uint8_t* x = row + b * lay.bytes;
    float* y = out + b * lay.values;
    switch (type) {
      case kQ8_0: {
        const float d = f16(x);
        for (int i = 0; i < 32; ++i) y[i] = static_cast<float>(static_cast<int8_t>(x[2 + i])) * d;
        break;
      }
      case kQ4_0: {
        const float d = f16(x);
        for (int i = 0; i < 16; ++i) {
          y[i] = static_cast<float>((x[2 + i] & 0xF) - 8) * d;
          y[i + 16] = static_cast<float>((x[2 + i] >> 4) - 8) * d;
        }
        break;
      }
      case kQ4_1: {
        const float d = f16(x), m = f16(x + 2);
        for (int i = 0; i < 16; ++i) {
          y[i] = static_cast<float>(x[4 + i] & 0xF) * d + m;
          y[i + 16] = static_cast<float>(x[4 + i] >> 4) * d + m;
        }
        break;
      }
      case kQ4_K:
      case kQ5_K: {
        const float d = f16(x), dmin = f16(x + 2);
        const uint8_t* scales = x + 4;
        const bool five = type == kQ5_K;
        const uint8_t* qh = x + 16;
        const uint8_t* qs = five ? x + 48 : x + 16;
        for (int j = 0; j < 8; ++j) {
          int sc, m;
          scale_min_k4(j, scales, &sc, &m);
          const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(m);
          const uint8_t* q = qs + (j / 2) * 32;
          for (int l = 0; l < 32; ++l) {
            int v = (j % 2) ? (q[l] >> 4) : (q[l] & 0xF);
            if (five) v += ((qh[l] >> j) & 1) << 4;
            y[j * 32 + l] = d1 * static_cast<float>(v) - m1;
          }
        }
        break;
      }
      case kQ6_K: {
        const float d = f16(x + 208);
        const int8_t* sc = reinterpret_cast<const int8_t*>(x + 192);
        for (int half = 0; half < 2; ++half) {
          const uint8_t* ql = x + half * 64;
          const uint8_t* qh = x + 128 + half * 32;
          for (int l = 0; l < 32; ++l) {
            const int q[4] = {
                ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32,
                ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32,
                ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32,
                ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32,
            };
            for (int quarter = 0; quarter < 4; ++quarter) {
              const int g = half * 8 + quarter * 2 + l / 16;
              y[half * 128 + quarter * 32 + l] =
                  d * static_cast<float>(sc[g]) * static_cast<float>(q[quarter]);
            }
          }
        }
        break;
      }
      case kBF16:
        for (int i = 0; i < 32; ++i) y[i] = bf16(x + 2 * i);
        break;
      default: break;
    }
  }
}

// ---- the integer-dot form ------------------------------------------------------------------

// Scales of one 32-value block's two groups into its 8 lanes, and the groups' offsets.
inline void set_block(float* lanes, float* offsets, float scale0, float scale1, float off0,
                      float off1) {
  for (int i = 0; i < 4; ++i) {
    lanes[i] = scale0;
    lanes[4 + i] = scale1;
  }
  offsets[0] = off0;
  offsets[1] = off1;
}

// `signed_q8`: keep Q8_0's bytes signed (offset 0) for a kernel that multiplies signed bytes;
// otherwise they are shifted by 128 into unsigned ones.
inline void unpack_row(int64_t type, const uint8_t* row, int64_t k, bool signed_q8, uint8_t* u,
                       float* lanes, float* offsets) {
  if (is_grouped(type)) {
    for_plain_runs(type, row, k / 32, [&](const uint8_t* blocks, int64_t n, int64_t b) {
      unpack_row(plain_type(type), blocks, n * 32, signed_q8, u + b * 32, lanes + b * 8,
                 offsets + b * 2);
    });
    return;
  }
  const Layout lay = layout(type);
  for (int64_t b = 0; b < k / lay.values; ++b) {
    const uint8_t* x = row + b * lay.bytes;
    uint8_t* q = u + b * lay.values;
    float* ln = lanes + b * (lay.values / 4);
    float* off = offsets + b * (lay.values / 16);
    switch (type) {
      case kQ8_0: {
        const float d = f16(x);
        const uint8_t flip = signed_q8 ? 0 : 0x80;
        for (int i = 0; i < 32; ++i) q[i] = x[2 + i] ^ flip;
        const float o = signed_q8 ? 0.0f : -128.0f * d;
        set_block(ln, off, d, d, o, o);
        break;
      }
      case kQ4_0:
      case kQ4_1: {
        const float d = f16(x);
        const float o = type == kQ4_0 ? -8.0f * d : f16(x + 2);
        const uint8_t* qs = x + (type == kQ4_0 ? 2 : 4);
        for (int i = 0; i < 16; ++i) {
          q[i] = qs[i] & 0xF;
          q[i + 16] = qs[i] >> 4;
        }
        set_block(ln, off, d, d, o, o);
        break;
      }
      case kQ4_K:
      case kQ5_K: {
        const float d = f16(x), dmin = f16(x + 2);
        const bool five = type == kQ5_K;
        const uint8_t* qh = x + 16;
        const uint8_t* qs = five ? x + 48 : x + 16;
        for (int j = 0; j < 8; ++j) {
          int sc, m;
          scale_min_k4(j, x + 4, &sc, &m);
          const uint8_t* src = qs + (j / 2) * 32;
          for (int l = 0; l < 32; ++l) {
            uint8_t v = (j % 2) ? (src[l] >> 4) : (src[l] & 0xF);
            if (five) v |= ((qh[l] >> j) & 1) << 4;
            q[j * 32 + l] = v;
          }
          const float s = d * static_cast<float>(sc), o = -dmin * static_cast<float>(m);
          set_block(ln + j * 8, off + j * 2, s, s, o, o);
        }
        break;
      }
      case kQ6_K: {
        const float d = f16(x + 208);
        const int8_t* sc = reinterpret_cast<const int8_t*>(x + 192);
        for (int half = 0; half < 2; ++half) {
          const uint8_t* ql = x + half * 64;
          const uint8_t* qh = x + 128 + half * 32;
          uint8_t* dst = q + half * 128;
          for (int l = 0; l < 32; ++l) {
            dst[l] = (ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4);
            dst[l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
            dst[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            dst[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
          }
        }
        for (int blk = 0; blk < 8; ++blk) {
          const float s0 = d * static_cast<float>(sc[2 * blk]);
          const float s1 = d * static_cast<float>(sc[2 * blk + 1]);
          set_block(ln + blk * 8, off + blk * 2, s0, s1, -32.0f * s0, -32.0f * s1);
        }
        break;
      }
      default: break;
    }
  }
}

}  // namespace loom::quant
