// A whole decode step of a Llama in one call: embedding, every layer (RMSNorm, QKV, RoPE,
// the KV write, attention, output projection, RMSNorm, gate/up, SiLU * up, down) and the
// final norm and LM head, for a batch of sequences that each add one token.
//
// The per-operator path (worker/model.py) runs some 150 parallel regions and 300 Python
// operators per token; here one OpenMP team runs the whole step, its threads meeting at five
// barriers per layer. Each projection's output columns are split over the threads (a
// column-major float32 one's inputs, with one more barrier before their sums); a thread
// that computes a head's Q or K also rotates it and writes K/V to the cache, and one that
// computes gate columns computes the matching up columns, so SiLU * up needs no barrier. The
// RMSNorms (and the int8 or int16 quantization of each projection's input) are cheap enough to
// be done by every thread for itself, which saves a barrier each.
//
// Projections are packed blocks (float activations, quant_float_dot.h; int8 ones, quant_dot.h;
// int16 ones, quant_int16_dot.h) or float32 matrices (either layout). Caches are float32 in
// the CPU attention kernel's layout (paged_attention_cpu.cpp):
// K [num_blocks, KVH, D, BS], V [num_blocks, KVH, BS, D].

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <omp.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <mutex>
#include <tuple>
#include <utility>
#include <vector>

#include "quant_blocks.h"
#include "quant_dot.h"
#include "quant_float_dot.h"
#include "quant_int16_dot.h"
#include "vector_math.h"

namespace {

using loom::quant::QuantizedRows;
using loom::quant::QuantizedRows16;

// Output columns of a thread's share are a multiple of this (a cache line of floats).
constexpr int64_t kColumnGranule = 16;
// Inputs of column-major float32 weights summed per pass over the partial sums (an eighth of
// their traffic); a thread's share of the inputs is a multiple of it. Eight against four:
// a 60M model's step (8 layers and a 32000-wide head, one row, two threads) 1.15x faster, at
// the rate of a plain sum over the same bytes, on a Zen 4.
constexpr int64_t kInputsPerPass = 8;

// One projection [n, k]: packed parts whose rows follow one another, or a float32 matrix
// whose element (col, i) is at fw[col * col_stride + i * in_stride].
struct Projection {
  std::vector<at::Tensor> owners;
  std::vector<const uint8_t*> data;
  std::vector<int64_t> types, rows, row_bytes, first;
  const float* fw = nullptr;
  int64_t col_stride = 0, in_stride = 0;
  int64_t n = 0, k = 0;

  bool is_float() const { return fw != nullptr; }
  bool is_input_major() const { return is_float() && in_stride != 1; }
};

Projection make_projection(const std::vector<at::Tensor>& parts, const std::vector<int64_t>& types,
                           int64_t k) {
  TORCH_CHECK(!parts.empty() && parts.size() == types.size(), "one type per weight part");
  Projection p;
  p.k = k;
  p.owners = parts;
  if (types[0] < 0) {  // float32
    TORCH_CHECK(parts.size() == 1, "a float projection is one matrix");
    const at::Tensor& w = parts[0];
    TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kFloat && w.size(1) == k,
                "float weights must be float32 [n, ", k, "]");
    TORCH_CHECK(w.stride(1) == 1 || w.stride(0) == 1, "float weights must be row- or column-major");
    p.fw = w.data_ptr<float>();
    p.col_stride = w.stride(0);
    p.in_stride = w.stride(1);
    p.n = w.size(0);
    return p;
  }
  for (size_t i = 0; i < parts.size(); ++i) {
    const at::Tensor& w = parts[i];
    const auto lay = loom::quant::layout(types[i]);
    TORCH_CHECK(lay.values > 0 && k % lay.values == 0, "type ", types[i], " does not fit rows of ", k);
    TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kByte && w.is_contiguous() &&
                    w.size(1) == k / lay.values * lay.bytes,
                "expected packed weights uint8 [rows, ", k / lay.values * lay.bytes, "]");
    p.data.push_back(w.data_ptr<uint8_t>());
    p.types.push_back(types[i]);
    p.rows.push_back(w.size(0));
    p.row_bytes.push_back(w.size(1));
    p.first.push_back(p.n);
    p.n += w.size(0);
  }
  return p;
}

struct Layer {
  at::Tensor attn_norm, ffn_norm;
  Projection wqkv, wo, w13, w2;
};

// What one thread keeps for itself during a step.
struct ThreadScratch {
  QuantizedRows xq;
  QuantizedRows16 xq16;
  std::vector<float> xf;  // a normed input, [T, dim]
  std::vector<float> acc, scores;  // attention
  loom::quant::Unpacked unpacked;
  loom::quant::FloatRow float_row;
};

// [begin, end) of `n` columns for thread `tid` of `nth`, in whole granules.
inline std::pair<int64_t, int64_t> share(int64_t n, int64_t granule, int tid, int nth) {
  const int64_t units = (n + granule - 1) / granule;
  const int64_t b = units * tid / nth * granule, e = units * (tid + 1) / nth * granule;
  return {std::min(b, n), std::min(e, n)};
}

inline void rms_norm_rows(const float* x, const float* w, float eps, int64_t rows, int64_t dim,
                          float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* v = x + r * dim;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < dim; ++i) sum += v[i] * v[i];
    const float scale = 1.0f / std::sqrt(sum / static_cast<float>(dim) + eps);
    float* o = out + r * dim;
#pragma omp simd
    for (int64_t i = 0; i < dim; ++i) o[i] = v[i] * scale * w[i];
  }
}

// dot(type, row, col) for the packed weight rows (output columns) [c0, c1) of p.
template <typename Dot>
void for_packed_rows(const Projection& p, int64_t c0, int64_t c1, const Dot& dot) {
  size_t part = 0;
  for (int64_t col = c0; col < c1; ++col) {
    while (col >= p.first[part] + p.rows[part]) ++part;
    dot(p.types[part], p.data[part] + (col - p.first[part]) * p.row_bytes[part], col);
  }
}

// y[t * ldy + col] (+)= x[t] . W[col] for col in [c0, c1) and the T rows of x.
// Packed weights take float activations (xf), or the rows quantized to int8 (my.xq) or
// int16 (my.xq16).
void project(const Projection& p, int64_t c0, int64_t c1, int64_t activations, const float* xf,
             int64_t T, float* y, int64_t ldy, bool accumulate, ThreadScratch& my) {
  if (c0 >= c1) return;
  const int64_t k = p.k;
  if (!p.is_float()) {
    for_packed_rows(p, c0, c1, [&](int64_t type, const uint8_t* row, int64_t col) {
      if (activations == loom::quant::kInt16Activations && loom::quant::int16_reads(type))
        loom::quant::dot_weight_row_int16(type, row, k, my.xq16, xf, k, T, y + col, ldy,
                                          accumulate, my.float_row);
      else if (activations == loom::quant::kInt8Activations &&
               loom::quant::integer_kernels_read(type))
        loom::quant::dot_weight_row(type, row, k, my.xq, y + col, ldy, accumulate, my.unpacked);
      else
        loom::quant::dot_weight_row_float(type, row, k, xf, k, T, y + col, ldy, accumulate,
                                          my.float_row);
    });
    return;
  }
  // Row-major float32 (column-major weights take split_inputs() and add_partials()): a dot
  // product per column.
  for (int64_t col = c0; col < c1; ++col) {
    const float* w = p.fw + col * p.col_stride;
    for (int64_t t = 0; t < T; ++t) {
      const float* x = xf + t * k;
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t i = 0; i < k; ++i) sum += w[i] * x[i];
      loom::quant::store(y + t * ldy + col, sum, accumulate);
    }
  }
}

// Column-major float32 weights (input i's weights for every column side by side): a thread
// takes the inputs [i0, i1) and sums them into its own partial rows [T, n] over every
// column; after a barrier each thread adds up the threads' partials of its own columns. So
// each thread reads one contiguous stretch of the matrix, as a row-major GEMV does; a split
// by columns would read every input's row in pieces (1.5x slower at one row).
void split_inputs(const Projection& p, int64_t i0, int64_t i1, const float* x, int64_t T,
                  float* partial) {
  const int64_t n = p.n, k = p.k;
  // Columns per tile: a tile's T partial rows stay in L2 while the inputs stream past.
  const int64_t tile = std::max<int64_t>(2048, (16384 / T) / kColumnGranule * kColumnGranule);
  for (int64_t c = 0; c < n; c += tile) {
    const int64_t cw = std::min(tile, n - c);
    for (int64_t t = 0; t < T; ++t) std::fill_n(partial + t * n + c, cw, 0.0f);
    int64_t i = i0;
    for (; i + kInputsPerPass <= i1; i += kInputsPerPass) {
      const float* w = p.fw + i * p.in_stride + c;
      const int64_t s = p.in_stride;
      for (int64_t t = 0; t < T; ++t) {
        const float* xt = x + t * k + i;
        const float x0 = xt[0], x1 = xt[1], x2 = xt[2], x3 = xt[3];
        const float x4 = xt[4], x5 = xt[5], x6 = xt[6], x7 = xt[7];
        float* a = partial + t * n + c;
#pragma omp simd
        for (int64_t j = 0; j < cw; ++j)
          a[j] += x0 * w[j] + x1 * w[j + s] + x2 * w[j + 2 * s] + x3 * w[j + 3 * s] +
                  x4 * w[j + 4 * s] + x5 * w[j + 5 * s] + x6 * w[j + 6 * s] + x7 * w[j + 7 * s];
      }
    }
    for (; i < i1; ++i) {
      const float* w = p.fw + i * p.in_stride + c;
      for (int64_t t = 0; t < T; ++t) {
        const float xv = x[t * k + i];
        float* a = partial + t * n + c;
#pragma omp simd
        for (int64_t j = 0; j < cw; ++j) a[j] += xv * w[j];
      }
    }
  }
}

// y[t * ldy + col] (+)= the sum of the nth threads' partials (each [T, n], `stride` apart) of
// columns [c0, c1).
void add_partials(const float* partials, int64_t stride, int nth, int64_t n, int64_t T,
                  int64_t c0, int64_t c1, float* y, int64_t ldy, bool accumulate) {
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t c = c0; c < c1; ++c) {
      float sum = 0.0f;
      for (int th = 0; th < nth; ++th) sum += partials[th * stride + t * n + c];
      loom::quant::store(y + t * ldy + c, sum, accumulate);
    }
  }
}

// Meta's interleaved RoPE of one head in place: pairs (2i, 2i+1) times cos_sin[i].
inline void rope_head(float* v, const float* cs, int64_t half) {
#pragma omp simd
  for (int64_t i = 0; i < half; ++i) {
    const float a = v[2 * i], b = v[2 * i + 1];
    v[2 * i] = a * cs[2 * i] - b * cs[2 * i + 1];
    v[2 * i + 1] = a * cs[2 * i + 1] + b * cs[2 * i];
  }
}

struct StepShape {
  int64_t T, dim, H, KVH, D, hidden, vocab, BS, max_blocks;
};

// One token's attention for query heads [h0, h0 + nh) of KV head g (an online softmax over
// the blocks of its context), into out [nh, D].
void attend(const float* q, int64_t nh, int64_t g, const StepShape& s, const float* k_cache,
            const float* v_cache, const int32_t* table, int64_t context, float scale, float* out,
            ThreadScratch& my) {
  const int64_t D = s.D, BS = s.BS, KVH = s.KVH;
  my.scores.resize(nh * BS + nh * 2);
  my.acc.assign(nh * D, 0.0f);
  float* scores = my.scores.data();
  float* row_max = scores + nh * BS;
  float* row_sum = row_max + nh;
  for (int64_t r = 0; r < nh; ++r) {
    row_max[r] = -1e30f;
    row_sum[r] = 0.0f;
  }
  const int64_t num_blocks = (context + BS - 1) / BS;
  for (int64_t b = 0; b < num_blocks; ++b) {
    const int64_t keys = std::min(BS, context - b * BS);
    const int64_t base = (static_cast<int64_t>(table[b]) * KVH + g) * D * BS;
    const float* kb = k_cache + base;  // [D, BS]
    const float* vb = v_cache + base;  // [BS, D]
    for (int64_t r = 0; r < nh; ++r) {
      float* sr = scores + r * BS;
      for (int64_t j = 0; j < BS; ++j) sr[j] = 0.0f;
      const float* qr = q + r * D;
      for (int64_t d = 0; d < D; ++d) {
        const float qd = qr[d] * scale;
        const float* kd = kb + d * BS;
#pragma omp simd
        for (int64_t j = 0; j < BS; ++j) sr[j] += qd * kd[j];
      }
      float block_max = -1e30f;
      for (int64_t j = 0; j < keys; ++j) block_max = std::max(block_max, sr[j]);
      const float new_max = std::max(row_max[r], block_max);
      const float alpha = loom::exp_clamped(row_max[r] - new_max);
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < keys; ++j) {
        sr[j] = loom::exp_clamped(sr[j] - new_max);
        sum += sr[j];
      }
      row_sum[r] = row_sum[r] * alpha + sum;
      row_max[r] = new_max;
      float* a = my.acc.data() + r * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) a[d] *= alpha;
      for (int64_t j = 0; j < keys; ++j) {
        const float p = sr[j];
        const float* v = vb + j * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) a[d] += p * v[d];
      }
    }
  }
  for (int64_t r = 0; r < nh; ++r) {
    const float inv = row_sum[r] > 0.0f ? 1.0f / row_sum[r] : 0.0f;
    for (int64_t d = 0; d < D; ++d) out[r * D + d] = my.acc[r * D + d] * inv;
  }
}

class DecodeModel : public torch::CustomClassHolder {
 public:
  DecodeModel(int64_t dim, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim,
              int64_t hidden, double eps, at::Tensor rope_cos_sin, at::Tensor final_norm,
              int64_t activations)
      : dim_(dim), H_(n_heads), KVH_(n_kv_heads), D_(head_dim), hidden_(hidden),
        eps_(static_cast<float>(eps)), activations_(activations), rope_(rope_cos_sin),
        final_norm_(final_norm) {
    TORCH_CHECK(activations >= 0 && activations <= loom::quant::kInt16Activations,
                "unknown activations code ", activations);
    TORCH_CHECK(n_heads % n_kv_heads == 0 && head_dim % 2 == 0, "unsupported head layout");
    TORCH_CHECK(rope_.dim() == 3 && rope_.scalar_type() == at::kFloat && rope_.is_contiguous() &&
                    rope_.size(1) == head_dim / 2 && rope_.size(2) == 2,
                "rope_cos_sin must be float32 [max_len, head_dim / 2, 2]");
    check_norm(final_norm_);
  }

  void set_embedding(std::vector<at::Tensor> parts, std::vector<int64_t> types) {
    embedding_ = make_projection(parts, types, dim_);
    TORCH_CHECK(embedding_.is_float() ? embedding_.in_stride == 1 : embedding_.data.size() == 1,
                "the embedding must be one packed tensor or row-major float32");
  }

  void set_output(std::vector<at::Tensor> parts, std::vector<int64_t> types) {
    output_ = make_projection(parts, types, dim_);
  }

  void add_layer(at::Tensor attn_norm, at::Tensor ffn_norm, std::vector<at::Tensor> wqkv,
                 std::vector<int64_t> wqkv_types, std::vector<at::Tensor> wo,
                 std::vector<int64_t> wo_types, std::vector<at::Tensor> w13,
                 std::vector<int64_t> w13_types, std::vector<at::Tensor> w2,
                 std::vector<int64_t> w2_types) {
    check_norm(attn_norm);
    check_norm(ffn_norm);
    Layer layer{attn_norm, ffn_norm, make_projection(wqkv, wqkv_types, dim_),
                make_projection(wo, wo_types, H_ * D_), make_projection(w13, w13_types, dim_),
                make_projection(w2, w2_types, hidden_)};
    TORCH_CHECK(layer.wqkv.n == (H_ + 2 * KVH_) * D_ && layer.wo.n == dim_ &&
                    layer.w13.n == 2 * hidden_ && layer.w2.n == dim_,
                "layer ", layers_.size(), ": projection shapes do not fit the model");
    layers_.push_back(std::move(layer));
  }

  // ids, positions, slot_mapping [T] int64; block_tables [T, max_blocks] int32; seq_lens [T]
  // int32 (each sequence's context, this token included). Returns logits [T, vocab].
  at::Tensor forward(at::Tensor ids, at::Tensor positions, std::vector<at::Tensor> k_caches,
                     std::vector<at::Tensor> v_caches, at::Tensor slot_mapping,
                     at::Tensor block_tables, at::Tensor seq_lens) {
    const StepShape s = check_step(ids, positions, k_caches, v_caches, slot_mapping,
                                   block_tables, seq_lens);
    const auto opts = at::TensorOptions().dtype(at::kFloat);
    at::Tensor h = at::empty({s.T, dim_}, opts);
    at::Tensor qkv = at::empty({s.T, (H_ + 2 * KVH_) * D_}, opts);
    at::Tensor attn = at::empty({s.T, H_ * D_}, opts);
    at::Tensor gate_up = at::empty({s.T, 2 * hidden_}, opts);
    at::Tensor act = at::empty({s.T, hidden_}, opts);
    at::Tensor logits = at::empty({s.T, s.vocab}, opts);
    const int num_threads = std::max(1, at::get_num_threads());
    const int64_t partial_stride = s.T * input_major_columns();
    const std::lock_guard<std::mutex> one_step_at_a_time(partials_mutex_);
    if (partials_.size() < static_cast<size_t>(num_threads * partial_stride))
      partials_.resize(num_threads * partial_stride);
    Buffers buf{h.data_ptr<float>(),     qkv.data_ptr<float>(), attn.data_ptr<float>(),
                gate_up.data_ptr<float>(), act.data_ptr<float>(), logits.data_ptr<float>(),
                partials_.data(),          partial_stride};
    Inputs in{ids.data_ptr<int64_t>(), positions.data_ptr<int64_t>(),
              slot_mapping.data_ptr<int64_t>(), block_tables.data_ptr<int32_t>(),
              seq_lens.data_ptr<int32_t>(), {}, {}};
    for (size_t l = 0; l < layers_.size(); ++l) {
      in.k_caches.push_back(k_caches[l].data_ptr<float>());
      in.v_caches.push_back(v_caches[l].data_ptr<float>());
    }
    std::vector<ThreadScratch> scratch(num_threads);
#pragma omp parallel num_threads(num_threads)
    run(s, in, buf, scratch[omp_get_thread_num()], omp_get_thread_num(), omp_get_num_threads());
    return logits;
  }

 private:
  struct Buffers {
    float *h, *qkv, *attn, *gate_up, *act, *logits;
    float* partials;  // each thread's [T, n] sums of column-major weights, partial_stride apart
    int64_t partial_stride;
  };
  struct Inputs {
    const int64_t *ids, *positions, *slots;
    const int32_t *tables, *seq_lens;
    std::vector<float*> k_caches, v_caches;
  };

  // The widest column-major float32 projection (0 if none): each thread's partial rows.
  int64_t input_major_columns() const {
    int64_t n = output_.is_input_major() ? output_.n : 0;
    for (const Layer& L : layers_)
      for (const Projection* p : {&L.wqkv, &L.wo, &L.w13, &L.w2})
        if (p->is_input_major()) n = std::max(n, p->n);
    return n;
  }

  void check_norm(const at::Tensor& w) const {
    TORCH_CHECK(w.dim() == 1 && w.size(0) == dim_ && w.scalar_type() == at::kFloat &&
                    w.is_contiguous(),
                "norm weights must be float32 [", dim_, "]");
  }

  StepShape check_step(const at::Tensor& ids, const at::Tensor& positions,
                       const std::vector<at::Tensor>& k_caches,
                       const std::vector<at::Tensor>& v_caches, const at::Tensor& slots,
                       const at::Tensor& tables, const at::Tensor& seq_lens) const {
    TORCH_CHECK(embedding_.n > 0 && output_.n > 0 && !layers_.empty(), "the model is not complete");
    const int64_t T = ids.numel();
    for (const at::Tensor* t : {&ids, &positions, &slots})
      TORCH_CHECK(t->dim() == 1 && t->size(0) == T && t->scalar_type() == at::kLong &&
                      t->is_contiguous(),
                  "ids, positions and slot_mapping must be int64 [T]");
    TORCH_CHECK(seq_lens.dim() == 1 && seq_lens.size(0) == T &&
                    seq_lens.scalar_type() == at::kInt && seq_lens.is_contiguous(),
                "seq_lens must be int32 [T]");
    TORCH_CHECK(tables.dim() == 2 && tables.size(0) == T && tables.scalar_type() == at::kInt &&
                    tables.is_contiguous(),
                "block_tables must be int32 [T, max_blocks]");
    TORCH_CHECK(k_caches.size() == layers_.size() && v_caches.size() == layers_.size(),
                "one K and one V cache per layer");
    const at::Tensor& k0 = k_caches[0];
    TORCH_CHECK(k0.dim() == 4 && k0.size(1) == KVH_ && k0.size(2) == D_, "K cache must be [N, KVH, D, BS]");
    const int64_t num_blocks = k0.size(0), BS = k0.size(3);
    for (size_t l = 0; l < layers_.size(); ++l) {
      for (const at::Tensor* c : {&k_caches[l], &v_caches[l]})
        TORCH_CHECK(c->scalar_type() == at::kFloat && c->is_contiguous() && c->numel() == k0.numel(),
                    "caches must be contiguous float32 of one shape");
      TORCH_CHECK(v_caches[l].dim() == 4 && v_caches[l].size(2) == BS && v_caches[l].size(3) == D_,
                  "V cache must be [N, KVH, BS, D]");
    }
    const int64_t* ip = ids.data_ptr<int64_t>();
    const int64_t* pp = positions.data_ptr<int64_t>();
    const int64_t* sp = slots.data_ptr<int64_t>();
    const int32_t* lp = seq_lens.data_ptr<int32_t>();
    const int32_t* tp = tables.data_ptr<int32_t>();
    const int64_t max_blocks = tables.size(1);
    for (int64_t t = 0; t < T; ++t) {
      TORCH_CHECK(ip[t] >= 0 && ip[t] < embedding_.n, "token id ", ip[t], " is outside the vocabulary");
      TORCH_CHECK(pp[t] >= 0 && pp[t] < rope_.size(0) && pp[t] == lp[t] - 1,
                  "position ", pp[t], " must be its context length minus one, inside the RoPE table");
      TORCH_CHECK(sp[t] >= 0 && sp[t] < num_blocks * BS, "slot ", sp[t], " is outside the cache");
      const int64_t blocks = (lp[t] + BS - 1) / BS;
      TORCH_CHECK(blocks <= max_blocks, "a context longer than its block table");
      for (int64_t b = 0; b < blocks; ++b)
        TORCH_CHECK(tp[t * max_blocks + b] >= 0 && tp[t * max_blocks + b] < num_blocks,
                    "block id outside the cache");
    }
    return {T, dim_, H_, KVH_, D_, hidden_, output_.n, BS, max_blocks};
  }

  void quantize_if_packed(const Projection& p, const float* x, int64_t T, ThreadScratch& my) const {
    if (p.is_float()) return;
    if (activations_ == loom::quant::kInt8Activations)
      loom::quant::quantize_rows(x, p.k, T, p.k, my.xq);
    if (activations_ == loom::quant::kInt16Activations &&
        std::any_of(p.types.begin(), p.types.end(), loom::quant::int16_reads))
      loom::quant::quantize_rows16(x, p.k, T, p.k, my.xq16);
  }

  // Columns `ranges` of p's output for this thread of the team (the others take theirs);
  // every thread of the team calls it for every projection.
  void project_columns(const Projection& p,
                       std::initializer_list<std::pair<int64_t, int64_t>> ranges, const float* x,
                       int64_t T, float* y, int64_t ldy, bool accumulate, const Buffers& buf,
                       ThreadScratch& my, int tid, int nth) const {
    if (!p.is_input_major()) {
      quantize_if_packed(p, x, T, my);
      for (const auto& [c0, c1] : ranges)
        project(p, c0, c1, activations_, x, T, y, ldy, accumulate, my);
      return;
    }
    const auto [i0, i1] = share(p.k, kInputsPerPass, tid, nth);
    split_inputs(p, i0, i1, x, T, buf.partials + tid * buf.partial_stride);
#pragma omp barrier
    for (const auto& [c0, c1] : ranges)
      add_partials(buf.partials, buf.partial_stride, nth, p.n, T, c0, c1, y, ldy, accumulate);
  }

  // The body each thread of the team runs.
  void run(const StepShape& s, const Inputs& in, const Buffers& buf, ThreadScratch& my, int tid,
           int nth) const {
    const int64_t T = s.T, D = s.D, G = H_ / KVH_, half = D / 2;
    const int64_t nqkv = (H_ + 2 * KVH_) * D;
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    my.xf.resize(T * std::max(dim_, std::max(hidden_, H_ * D)));
    // Embedding rows, split over tokens.
    for (int64_t t = tid; t < T; t += nth) {
      const int64_t id = in.ids[t];
      if (embedding_.is_float()) {
        std::copy(embedding_.fw + id * embedding_.col_stride,
                  embedding_.fw + id * embedding_.col_stride + dim_, buf.h + t * dim_);
      } else {
        loom::quant::dequantize_row(embedding_.types[0], embedding_.data[0] + id * embedding_.row_bytes[0],
                                    dim_, buf.h + t * dim_);
      }
    }
#pragma omp barrier
    for (size_t l = 0; l < layers_.size(); ++l) {
      const Layer& L = layers_[l];
      float* kc = in.k_caches[l];
      float* vc = in.v_caches[l];
      // Norm, QKV; each head this thread computed: rotated (Q, K), written to the cache (K, V).
      rms_norm_rows(buf.h, L.attn_norm.data_ptr<float>(), eps_, T, dim_, my.xf.data());
      auto [c0, c1] = share(nqkv, D, tid, nth);
      project_columns(L.wqkv, {{c0, c1}}, my.xf.data(), T, buf.qkv, nqkv, false, buf, my, tid, nth);
      for (int64_t head = c0 / D; head < c1 / D; ++head) {
        for (int64_t t = 0; t < T; ++t) {
          float* v = buf.qkv + t * nqkv + head * D;
          const float* cs = rope_.data_ptr<float>() + in.positions[t] * D;
          if (head < H_ + KVH_) rope_head(v, cs, half);
          if (head < H_) continue;
          const int64_t slot = in.slots[t], blk = slot / s.BS, off = slot % s.BS;
          if (head < H_ + KVH_) {
            float* dst = kc + ((blk * KVH_ + head - H_) * D) * s.BS + off;
            for (int64_t d = 0; d < D; ++d) dst[d * s.BS] = v[d];
          } else {
            std::copy(v, v + D, vc + ((blk * KVH_ + head - H_ - KVH_) * s.BS + off) * D);
          }
        }
      }
#pragma omp barrier
      // Attention: (token, KV head) items, or (token, query head) when those are too few.
      const bool per_kv = G == 1 || T * KVH_ >= 2 * nth;
      const int64_t per_token = per_kv ? KVH_ : H_;
#pragma omp for schedule(dynamic, 1)
      for (int64_t item = 0; item < T * per_token; ++item) {
        const int64_t t = item / per_token, i = item % per_token;
        const int64_t g = per_kv ? i : i / G, h0 = per_kv ? i * G : i, nh = per_kv ? G : 1;
        attend(buf.qkv + t * nqkv + h0 * D, nh, g, s, kc, vc, in.tables + t * s.max_blocks,
               in.seq_lens[t], scale, buf.attn + t * H_ * D + h0 * D, my);
      }  // (the loop ends with a barrier)
      std::tie(c0, c1) = share(dim_, kColumnGranule, tid, nth);
      project_columns(L.wo, {{c0, c1}}, buf.attn, T, buf.h, dim_, true, buf, my, tid, nth);
#pragma omp barrier
      // Norm, gate and up columns together, SiLU(gate) * up.
      rms_norm_rows(buf.h, L.ffn_norm.data_ptr<float>(), eps_, T, dim_, my.xf.data());
      std::tie(c0, c1) = share(hidden_, kColumnGranule, tid, nth);
      project_columns(L.w13, {{c0, c1}, {hidden_ + c0, hidden_ + c1}}, my.xf.data(), T,
                      buf.gate_up, 2 * hidden_, false, buf, my, tid, nth);
      for (int64_t t = 0; t < T; ++t) {
        const float* gate = buf.gate_up + t * 2 * hidden_;
        const float* up = gate + hidden_;
        float* out = buf.act + t * hidden_;
#pragma omp simd
        for (int64_t i = c0; i < c1; ++i)
          out[i] = gate[i] / (1.0f + loom::exp_clamped(-gate[i])) * up[i];
      }
#pragma omp barrier
      std::tie(c0, c1) = share(dim_, kColumnGranule, tid, nth);
      project_columns(L.w2, {{c0, c1}}, buf.act, T, buf.h, dim_, true, buf, my, tid, nth);
#pragma omp barrier
    }
    rms_norm_rows(buf.h, final_norm_.data_ptr<float>(), eps_, T, dim_, my.xf.data());
    const auto [c0, c1] = share(s.vocab, kColumnGranule, tid, nth);
    project_columns(output_, {{c0, c1}}, my.xf.data(), T, buf.logits, s.vocab, false, buf, my,
                    tid, nth);
  }

  int64_t dim_, H_, KVH_, D_, hidden_;
  float eps_;
  int64_t activations_;  // what packed weights multiply (loom::quant::Activations)
  at::Tensor rope_, final_norm_;
  Projection embedding_, output_;
  std::vector<Layer> layers_;
  // The by-input partial sums, kept from step to step: a fresh buffer each step (tens of MB
  // for a wide LM head on many threads) would fault its pages in again every time. No need
  // to clear it: split_inputs() clears each tile before summing into it.
  std::vector<float> partials_;
  std::mutex partials_mutex_;
};

}  // namespace

TORCH_LIBRARY_FRAGMENT(loom, m) {
  m.class_<DecodeModel>("DecodeModel")
      .def(torch::init<int64_t, int64_t, int64_t, int64_t, int64_t, double, at::Tensor,
                       at::Tensor, int64_t>())
      .def("set_embedding", &DecodeModel::set_embedding)
      .def("set_output", &DecodeModel::set_output)
      .def("add_layer", &DecodeModel::add_layer)
      .def("forward", &DecodeModel::forward);
}
