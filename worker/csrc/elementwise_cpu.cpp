// The elementwise work between the model's GEMMs, fused into single passes (float32, CPU):
//   add_rms_norm: residual += delta, then RMSNorm(residual) * weight, in one pass over rows;
//   rms_norm:     RMSNorm(x) * weight;
//   silu_and_mul: SiLU(gate) * up for x = [gate | up] along the last dimension;
//   rope_:        Meta's interleaved RoPE in place: each pair (x[2i], x[2i+1]) of every head
//                 of token t is multiplied, as a complex number, by cos_sin[t, i].
// Rows are split over torch's intra-op threads. RMSNorm follows Meta's reference: the mean of
// squares in float32, x * rsqrt(mean + eps), then the weight.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "vector_math.h"

namespace {

// Rows per thread chunk: at least this many elements, so that a small batch (a decode step)
// runs on one thread instead of paying for waking the others.
constexpr int64_t kMinElementsPerChunk = 1 << 16;

inline int64_t row_grain(int64_t row_elements) {
  return std::max<int64_t>(1, kMinElementsPerChunk / std::max<int64_t>(1, row_elements));
}

inline void norm_row(const float* x, const float* weight, float eps, int64_t dim, float* out) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < dim; ++i) sum += x[i] * x[i];
  const float scale = 1.0f / std::sqrt(sum / static_cast<float>(dim) + eps);
#pragma omp simd
  for (int64_t i = 0; i < dim; ++i) out[i] = x[i] * scale * weight[i];
}

void check_rows(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.stride(1) == 1,
              "expected float32 [rows, dim] with contiguous rows");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(1) && weight.is_contiguous() &&
                  weight.scalar_type() == at::kFloat,
              "weight must be float32 [dim]");
}

at::Tensor add_rms_norm(at::Tensor residual, const at::Tensor& delta, const at::Tensor& weight,
                        double eps) {
  check_rows(residual, weight);
  check_rows(delta, weight);
  TORCH_CHECK(delta.size(0) == residual.size(0), "delta and residual must have the same rows");
  const int64_t rows = residual.size(0), dim = residual.size(1);
  at::Tensor out = at::empty({rows, dim}, residual.options());
  float* r = residual.data_ptr<float>();
  const float* d = delta.data_ptr<float>();
  const float* w = weight.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const int64_t rs = residual.stride(0), ds = delta.stride(0);
  at::parallel_for(0, rows, row_grain(dim), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      float* x = r + row * rs;
      const float* y = d + row * ds;
#pragma omp simd
      for (int64_t i = 0; i < dim; ++i) x[i] += y[i];
      norm_row(x, w, static_cast<float>(eps), dim, o + row * dim);
    }
  });
  return out;
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_rows(x, weight);
  const int64_t rows = x.size(0), dim = x.size(1);
  at::Tensor out = at::empty({rows, dim}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* w = weight.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const int64_t xs = x.stride(0);
  at::parallel_for(0, rows, row_grain(dim), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row)
      norm_row(xp + row * xs, w, static_cast<float>(eps), dim, o + row * dim);
  });
  return out;
}

at::Tensor silu_and_mul(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.stride(1) == 1 &&
                  x.size(1) % 2 == 0,
              "expected float32 [rows, 2 * hidden] with contiguous rows");
  const int64_t rows = x.size(0), hidden = x.size(1) / 2;
  at::Tensor out = at::empty({rows, hidden}, x.options());
  const float* xp = x.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const int64_t xs = x.stride(0);
  at::parallel_for(0, rows, row_grain(2 * hidden), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const float* gate = xp + row * xs;
      const float* up = gate + hidden;
      float* dst = o + row * hidden;
#pragma omp simd
      for (int64_t i = 0; i < hidden; ++i) dst[i] = gate[i] / (1.0f + loom::exp_clamped(-gate[i])) * up[i];
    }
  });
  return out;
}

void rope_(at::Tensor x, const at::Tensor& cos_sin) {
  TORCH_CHECK(x.dim() == 3 && x.scalar_type() == at::kFloat && x.stride(2) == 1 &&
                  x.size(2) % 2 == 0,
              "expected float32 [tokens, heads, head_dim] with contiguous heads");
  const int64_t tokens = x.size(0), heads = x.size(1), half = x.size(2) / 2;
  TORCH_CHECK(cos_sin.dim() == 3 && cos_sin.scalar_type() == at::kFloat &&
                  cos_sin.is_contiguous() && cos_sin.size(0) == tokens &&
                  cos_sin.size(1) == half && cos_sin.size(2) == 2,
              "cos_sin must be float32 [tokens, head_dim / 2, 2]");
  float* xp = x.data_ptr<float>();
  const float* cs = cos_sin.data_ptr<float>();
  const int64_t ts = x.stride(0), hs = x.stride(1);
  at::parallel_for(0, tokens, row_grain(heads * half * 2), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* c = cs + t * half * 2;
      for (int64_t h = 0; h < heads; ++h) {
        float* v = xp + t * ts + h * hs;
#pragma omp simd
        for (int64_t i = 0; i < half; ++i) {
          const float a = v[2 * i], b = v[2 * i + 1];
          v[2 * i] = a * c[2 * i] - b * c[2 * i + 1];
          v[2 * i + 1] = a * c[2 * i + 1] + b * c[2 * i];
        }
      }
    }
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(loom, m) {
  m.def("rope_(Tensor(a!) x, Tensor cos_sin) -> ()");
  m.impl("rope_", c10::DispatchKey::CPU, &rope_);
  m.def("add_rms_norm(Tensor(a!) residual, Tensor delta, Tensor weight, float eps) -> Tensor");
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("silu_and_mul(Tensor x) -> Tensor");
  m.impl("add_rms_norm", c10::DispatchKey::CPU, &add_rms_norm);
  m.impl("rms_norm", c10::DispatchKey::CPU, &rms_norm);
  m.impl("silu_and_mul", c10::DispatchKey::CPU, &silu_and_mul);
}
