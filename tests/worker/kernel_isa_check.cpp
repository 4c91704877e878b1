// The packed-weight dot products (worker/csrc/quant_float_dot.h, quant_dot.h,
// quant_int16_dot.h) built for
// whatever ISA the compiler is told (tests/worker/test_kernel_isa.py builds this file for
// AVX2 and for plain x86-64 and runs it): each path against dequantize_row's exact values
// multiplied in double, for every block type and bfloat16 weights, 1-7 activation rows
// (tiles and leftovers), one block per row and several. Prints one line per case and exits 1
// on any failure.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "quant_dot.h"
#include "quant_float_dot.h"
#include "quant_int16_dot.h"

using namespace loom::quant;

namespace {

// Random blocks with scales of a sane size (float16 fields overwritten per type).
std::vector<uint8_t> random_row(int64_t type, int64_t blocks, std::mt19937& gen) {
  const Layout lay = layout(type);
  std::vector<uint8_t> row(blocks * lay.bytes);
  for (auto& b : row) b = static_cast<uint8_t>(gen());
  if (type == kBF16) {  // bfloat16 values of a sane size: 2^-7 times [1, 2), either sign
    for (size_t i = 0; i + 1 < row.size(); i += 2) row[i + 1] = (row[i + 1] & 0x80) | 0x3C;
    return row;
  }
  const uint16_t small = 0x2000;  // float16 2^-7
  for (int64_t b = 0; b < blocks; ++b) {
    uint8_t* x = row.data() + b * lay.bytes;
    auto put = [&](int at) { std::memcpy(x + at, &small, 2); };
    if (type == kQ6_K) {
      put(208);
    } else {
      put(0);
      if (type != kQ8_0 && type != kQ4_0) put(2);
    }
  }
  return row;
}

bool check(int64_t type, int64_t blocks, int rows, std::mt19937& gen) {
  const Layout lay = layout(type);
  const int64_t k = blocks * lay.values;
  const std::vector<uint8_t> w = random_row(type, blocks, gen);
  std::vector<float> wf(k), x(rows * k);
  dequantize_row(type, w.data(), k, wf.data());
  std::normal_distribution<float> normal;
  for (auto& v : x) v = normal(gen);
  QuantizedRows q;
  quantize_rows(x.data(), k, rows, k, q);
  QuantizedRows16 q16;
  quantize_rows16(x.data(), k, rows, k, q16);
  std::vector<float> y_float(rows), y_int8(rows), y_int16(rows);
  FloatRow float_scratch;
  Unpacked int8_scratch;
  dot_weight_row_float(type, w.data(), k, x.data(), k, rows, y_float.data(), 1, false,
                       float_scratch);
  if (integer_kernels_read(type)) {
    dot_weight_row(type, w.data(), k, q, y_int8.data(), 1, false, int8_scratch);
  } else {  // bfloat16: the int8 path refuses it, its check is the float one's
    dot_weight_row_float(type, w.data(), k, x.data(), k, rows, y_int8.data(), 1, false,
                         float_scratch);
  }
  dot_weight_row_int16(type, w.data(), k, q16, x.data(), k, rows, y_int16.data(), 1, false,
                       float_scratch);
  bool ok = true;
  for (int r = 0; r < rows; ++r) {
    double exact = 0.0, exact_q = 0.0, exact_q16 = 0.0, size = 0.0;
    for (int64_t i = 0; i < k; ++i) {
      const int64_t at = r * k / 32 + i / 32;
      const double xq = q.q[r * k + i] * static_cast<double>(q.scales[at]);
      const double xq16 = q16.q[r * k + i] * static_cast<double>(q16.scales[at]);
      exact += static_cast<double>(wf[i]) * x[r * k + i];
      exact_q += static_cast<double>(wf[i]) * xq;
      exact_q16 += static_cast<double>(wf[i]) * xq16;
      size += std::fabs(static_cast<double>(wf[i]) * x[r * k + i]);
    }
    // Without AVX2 the int16 path is the float kernel.
    const double expected16 = int16_reads(type) ? exact_q16 : exact;
    if (!integer_kernels_read(type)) exact_q = exact;
    const double bound = 4.0 * k * 1.1920929e-7 * size + 1e-30;
    if (std::fabs(y_float[r] - exact) > bound || std::fabs(y_int8[r] - exact_q) > bound ||
        std::fabs(y_int16[r] - expected16) > bound) {
      std::printf("FAIL type %ld blocks %ld row %d: float %g int8 %g int16 %g exact %g / %g / %g"
                  " bound %g\n", static_cast<long>(type), static_cast<long>(blocks), r,
                  y_float[r], y_int8[r], y_int16[r], exact, exact_q, expected16, bound);
      ok = false;
    }
  }
  return ok;
}

}  // namespace

int main() {
#if defined(__AVX512F__)
  std::printf("isa avx512\n");
#elif defined(__AVX2__)
  std::printf("isa avx2\n");
#else
  std::printf("isa plain\n");
#endif
  std::mt19937 gen(7);
  bool ok = true;
  int cases = 0;
  for (int64_t type = kQ8_0; type <= kBF16; ++type)
    for (int64_t blocks : {1, 3, 10})
      for (int rows = 1; rows <= 7; ++rows) {
        ok = check(type, blocks, rows, gen) && ok;
        ++cases;
      }
  std::printf("checked %d cases: %s\n", cases, ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
