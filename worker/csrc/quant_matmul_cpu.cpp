// Matrix products with weights kept in GGML's quantized blocks (quant_blocks.h), float32
// activations in and out: y[M, N] = x[M, K] @ W[N, K]^T, W given as one or more parts (a
// fused projection's pieces, as the file holds them: no copy is made to join them).
//
// Up to 512 rows, each activation row quantized per 32 values: to int16 (the default,
// quant_int16_dot.h) or to int8, llama.cpp's way (quant_dot.h), and integer dot products.
// Up to 16 rows with float activations (quant_float_dot.h: each block's values built as
// floats, float32 products, the dequantized oracle's results to float32 reassociation).
// Each weight row is read once for all rows of x; threads split the weight rows.
// More rows: the weight rows are dequantized a chunk at a time to float32 and multiplied by
// torch's GEMM.
// The ISA is chosen when the library is built (-march=native, cached per CPU).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "quant_blocks.h"
#include "quant_dot.h"
#include "quant_float_dot.h"
#include "quant_int16_dot.h"

namespace {

using loom::quant::layout;
using loom::quant::QuantizedRows;

// Rows up to which the integer-dot paths (int8 or int16 activations) run; above it,
// dequantize + GEMM.
constexpr int64_t kMaxDotRows = 512;
// The same for the float-activation kernel: measured on a Zen 4 (one thread,
// SmolLM2's Q4_1 w13 and w2) it beats dequantize + GEMM up to 8-16 rows, loses from 32.
constexpr int64_t kMaxFloatRows = 16;


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

// A projection's parts: each [rows_i, bytes] of one type; output columns follow the parts.
struct Parts {
  std::vector<const uint8_t*> data;
  std::vector<int64_t> types, rows, row_bytes, first;  // first: the part's first column
  int64_t n = 0;
};

Parts check_parts(at::TensorList ws, at::IntArrayRef types, int64_t k) {
  TORCH_CHECK(!ws.empty() && ws.size() == types.size(), "one type per weight part");
  Parts p;
  for (size_t i = 0; i < ws.size(); ++i) {
    check_weight(ws[i], types[i], k);
    p.data.push_back(ws[i].data_ptr<uint8_t>());
    p.types.push_back(types[i]);
    p.rows.push_back(ws[i].size(0));
    p.row_bytes.push_back(ws[i].size(1));
    p.first.push_back(p.n);
    p.n += ws[i].size(0);
  }
  return p;
}

// dot(type, row, col, scratch) for every weight row (output column) of the parts, the columns
// split over the threads at least `grain` a task, each task with its own Scratch.
template <typename Scratch, typename Dot>
void for_each_weight_row(const Parts& p, int64_t grain, const Dot& dot) {
  at::parallel_for(0, p.n, grain, [&](int64_t begin, int64_t end) {
    Scratch scratch;
    size_t part = 0;
    for (int64_t col = begin; col < end; ++col) {
      while (col >= p.first[part] + p.rows[part]) ++part;
      dot(p.types[part], p.data[part] + (col - p.first[part]) * p.row_bytes[part], col, scratch);
    }
  });
}

// Enough rows per task that waking a thread pays: about 4096 block products each.
int64_t integer_grain(int64_t k, int64_t m) {
  return std::max<int64_t>(8, 4096 / std::max<int64_t>(1, k / 32 * m));
}

at::Tensor linear_parts_int8(const at::Tensor& x, const Parts& p, int64_t k) {
  TORCH_CHECK(std::all_of(p.types.begin(), p.types.end(), loom::quant::integer_kernels_read),
              "bfloat16 weights take float activations");
  const int64_t m = x.size(0), n = p.n;
  at::Tensor y = at::empty({m, n}, x.options());
  if (m == 0 || n == 0) return y;
  QuantizedRows a;
  loom::quant::quantize_rows(x.data_ptr<float>(), x.stride(0), m, k, a);
  float* yp = y.data_ptr<float>();
  for_each_weight_row<loom::quant::Unpacked>(
      p, integer_grain(k, m), [&](int64_t type, const uint8_t* row, int64_t col, auto& scratch) {
        loom::quant::dot_weight_row(type, row, k, a, yp + col, n, false, scratch);
      });
  return y;
}

at::Tensor quant_linear_int8(const at::Tensor& x, const at::Tensor& w, int64_t type,
                             int64_t k) {
  check_input(x, k);
  return linear_parts_int8(x, check_parts(w, type, k), k);
}

at::Tensor linear_parts_int16(const at::Tensor& x, const Parts& p, int64_t k) {
  const int64_t m = x.size(0), n = p.n;
  at::Tensor y = at::empty({m, n}, x.options());
  if (m == 0 || n == 0) return y;
  const float* xp = x.data_ptr<float>();
  const int64_t ldx = x.stride(0);
  loom::quant::QuantizedRows16 a;
  if (std::any_of(p.types.begin(), p.types.end(), loom::quant::int16_reads))
    loom::quant::quantize_rows16(xp, ldx, m, k, a);
  float* yp = y.data_ptr<float>();
  for_each_weight_row<loom::quant::FloatRow>(
      p, integer_grain(k, m), [&](int64_t type, const uint8_t* row, int64_t col, auto& scratch) {
        loom::quant::dot_weight_row_int16(type, row, k, a, xp, ldx, m, yp + col, n, false,
                                          scratch);
      });
  return y;
}

at::Tensor quant_linear_int16(const at::Tensor& x, const at::Tensor& w, int64_t type,
                              int64_t k) {
  check_input(x, k);
  return linear_parts_int16(x, check_parts(w, type, k), k);
}

at::Tensor linear_parts_float(const at::Tensor& x, const Parts& p, int64_t k) {
  const int64_t m = x.size(0), n = p.n;
  at::Tensor y = at::empty({m, n}, x.options());
  if (m == 0 || n == 0) return y;
  const float* xp = x.data_ptr<float>();
  const int64_t ldx = x.stride(0);
  float* yp = y.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(8, 65536 / std::max<int64_t>(1, k * m));
  for_each_weight_row<loom::quant::FloatRow>(
      p, grain, [&](int64_t type, const uint8_t* row, int64_t col, auto& scratch) {
        loom::quant::dot_weight_row_float(type, row, k, xp, ldx, m, yp + col, n, false, scratch);
      });
  return y;
}

// Float activations: each weight row dequantized into L1 once, multiplied by every row of x.
at::Tensor quant_linear_f32(const at::Tensor& x, const at::Tensor& w, int64_t type, int64_t k) {
  check_input(x, k);
  return linear_parts_float(x, check_parts(w, type, k), k);
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

// Up to kMaxDotRows rows the integer products or kMaxFloatRows the float-activation kernel,
// above them dequantize + GEMM.
at::Tensor quant_linear_parts(const at::Tensor& x, at::TensorList ws, at::IntArrayRef types,
                              int64_t k, int64_t activations) {
  using loom::quant::kInt16Activations;
  using loom::quant::kInt8Activations;
  TORCH_CHECK(activations >= 0 && activations <= kInt16Activations, "unknown activations code ",
              activations);
  check_input(x, k);
  const Parts p = check_parts(ws, types, k);
  const int64_t m = x.size(0);
  if (!std::all_of(p.types.begin(), p.types.end(), loom::quant::integer_kernels_read))
    activations = loom::quant::kFloatActivations;  // bfloat16 weights
  if (activations == kInt8Activations && m <= kMaxDotRows) return linear_parts_int8(x, p, k);
  if (activations == kInt16Activations && m <= kMaxDotRows) return linear_parts_int16(x, p, k);
  if (activations == loom::quant::kFloatActivations && m <= kMaxFloatRows)
    return linear_parts_float(x, p, k);
  if (ws.size() == 1) return quant_linear_dequant(x, ws[0], types[0], k);
  at::Tensor y = at::empty({x.size(0), p.n}, x.options());
  for (size_t i = 0; i < ws.size(); ++i)
    y.narrow(1, p.first[i], p.rows[i]).copy_(quant_linear_dequant(x, ws[i], types[i], k));
  return y;
}

at::Tensor quant_linear(const at::Tensor& x, const at::Tensor& w, int64_t type, int64_t k,
                        int64_t activations) {
  return quant_linear_parts(x, w, std::vector<int64_t>{type}, k, activations);
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

// Plain Q4_0 or Q4_1 blocks [rows, bytes] regrouped by eights (quant_blocks.h), in new memory.
at::Tensor group_blocks(const at::Tensor& w, int64_t type) {
  using namespace loom::quant;
  TORCH_CHECK(type == kQ4_0 || type == kQ4_1, "only Q4_0 and Q4_1 blocks are regrouped, not type ",
              type);
  const int64_t bytes = layout(type).bytes;
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kByte && w.size(1) % bytes == 0,
              "expected blocks uint8 [rows, a multiple of ", bytes, " bytes]");
  const at::Tensor src = w.contiguous();
  at::Tensor out = at::empty_like(src);
  const int64_t rows = src.size(0), row_bytes = src.size(1);
  const uint8_t* sp = src.data_ptr<uint8_t>();
  uint8_t* op = out.data_ptr<uint8_t>();
  at::parallel_for(0, rows, std::max<int64_t>(1, 262144 / std::max<int64_t>(row_bytes, 1)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t r = begin; r < end; ++r)
                       group_row(type, sp + r * row_bytes, row_bytes / bytes, op + r * row_bytes);
                   });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(loom, m) {
  m.def("quant_linear(Tensor x, Tensor w, int type, int k, int activations=0) -> Tensor");
  m.def(
      "quant_linear_parts(Tensor x, Tensor[] ws, int[] types, int k, int activations=0) -> Tensor");
  m.def("quant_linear_int8(Tensor x, Tensor w, int type, int k) -> Tensor");
  m.def("quant_linear_int16(Tensor x, Tensor w, int type, int k) -> Tensor");
  m.def("quant_linear_dequant(Tensor x, Tensor w, int type, int k) -> Tensor");
  m.def("quant_linear_f32(Tensor x, Tensor w, int type, int k) -> Tensor");
  m.def("quant_rows(Tensor w, Tensor ids, int type, int k) -> Tensor");
  m.def("group_blocks(Tensor w, int type) -> Tensor");
  m.impl("quant_linear", c10::DispatchKey::CPU, &quant_linear);
  m.impl("quant_linear_parts", c10::DispatchKey::CPU, &quant_linear_parts);
  m.impl("quant_linear_int8", c10::DispatchKey::CPU, &quant_linear_int8);
  m.impl("quant_linear_int16", c10::DispatchKey::CPU, &quant_linear_int16);
  m.impl("quant_linear_dequant", c10::DispatchKey::CPU, &quant_linear_dequant);
  m.impl("quant_linear_f32", c10::DispatchKey::CPU, &quant_linear_f32);
  m.impl("quant_rows", c10::DispatchKey::CPU, &quant_rows);
  m.impl("group_blocks", c10::DispatchKey::CPU, &group_blocks);
}
