// Greedy decoding's whole sampling in one pass per row of float32 logits: the index of each
// row's first maximum (what torch's max(dim=-1) returns) and whether the row's sum is finite
// (the step's check for NaN and infinite logits). Right after a decode step the logits are
// still in cache while the code that would read them through several torch ops is not.
// Rows are split over torch's intra-op threads when there are many.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>

namespace {

// At least this many logits per thread chunk: one row of a large vocabulary stays on one thread.
constexpr int64_t kMinLogitsPerChunk = 1 << 17;

std::tuple<at::Tensor, at::Tensor> greedy_rows(const at::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == at::kFloat,
              "greedy_rows: logits must be [rows, vocab] float32");
  TORCH_CHECK(logits.size(1) > 0, "greedy_rows: logits rows are empty");
  TORCH_CHECK(logits.stride(1) == 1, "greedy_rows: logits rows must be contiguous");
  const int64_t rows = logits.size(0), vocab = logits.size(1), stride = logits.stride(0);
  at::Tensor tokens = at::empty({rows}, logits.options().dtype(at::kLong));
  at::Tensor finite = at::empty({rows}, logits.options().dtype(at::kBool));
  const float* data = logits.data_ptr<float>();
  int64_t* token_out = tokens.data_ptr<int64_t>();
  bool* finite_out = finite.data_ptr<bool>();
  const int64_t grain = std::max<int64_t>(1, kMinLogitsPerChunk / vocab);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* x = data + r * stride;
      float best = -std::numeric_limits<float>::infinity();
      float sum = 0.0f;
#pragma omp simd reduction(max : best) reduction(+ : sum)
      for (int64_t i = 0; i < vocab; ++i) {
        best = std::max(best, x[i]);
        sum += x[i];
      }
      int64_t at = 0;  // a row without a maximum (NaN) fails alone; its token must be an index
      for (int64_t i = 0; i < vocab; ++i) {
        if (x[i] == best) {
          at = i;
          break;
        }
      }
      token_out[r] = at;
      finite_out[r] = std::isfinite(sum);
    }
  });
  return {tokens, finite};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(loom, m) {
  m.def("greedy_rows(Tensor logits) -> (Tensor, Tensor)");
  m.impl("greedy_rows", c10::DispatchKey::CPU, &greedy_rows);
}
