// Paged attention on the CPU, reading K/V blocks where they lie in the cache.
//
// One call per layer covers every sequence of the step: it writes the step's new K/V into
// their cache slots, then each sequence's queries attend over its own block table with an
// online softmax across blocks (no gather copy, no padding to the longest context). The
// query heads that share a KV head are processed together, so each K/V block is read once
// per group. Work is split into items (sequence, KV head, query tile, context split) that
// the threads of torch's intra-op pool take from a shared counter, largest first.
//
// Cache layouts, chosen for this kernel (the backend allocates them):
//   k_cache [num_blocks, KVH, D, BS]: one head's keys of a block side by side, so a query's
//     scores for the whole block are D vector FMAs with no horizontal sums;
//   v_cache [num_blocks, KVH, BS, D]: one head's values of a block, one row per token.
// q [T, H, D], k and v [T, KVH, D] (rows may be strided, heads contiguous); out [T, H, D];
// slot_mapping [T] int64 (slot = block * BS + offset); block_tables [S, max_blocks] int32;
// query_start_loc [S + 1] int32; seq_lens [S] int32. Query i of sequence s sits at position
// seq_lens[s] - num_queries + i and sees keys 0 ..= that position.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#include "vector_math.h"

namespace {

// Rows of one work item: query tile x the query heads of one KV head.
constexpr int kMaxTileRows = 32;
// Rows whose scores (and value sums) are computed together, sharing each loaded vector of
// keys (values): a register tile of kRowBlock rows x 16 floats.
constexpr int kRowBlock = 8;
// A context split covers at least this many keys, so merging stays cheap.
constexpr int kMinKeysPerSplit = 256;
// Cache lines of the next block's keys and values fetched ahead; the hardware prefetcher
// follows each block's run once it has started.
constexpr int kPrefetchLines = 8;
// Finite stand-in for -inf: every value stays finite, so the vectorised exp needs no checks.
constexpr float kNegBig = -1e30f;

inline float to_float(float x) { return x; }
inline float to_float(c10::BFloat16 x) { return static_cast<float>(x); }
inline float to_float(c10::Half x) { return static_cast<float>(x); }

// Softmax weights: every argument is <= 0 here (scores minus their running max).
inline float exp_nonpositive(float x) { return loom::exp_clamped(x); }

struct WorkItem {
  int32_t seq;
  int32_t kv_head;
  int32_t tile_start;  // first query of the tile, within the sequence
  int32_t tile_len;
  int32_t block_begin;  // context blocks [block_begin, block_end) of this split
  int32_t block_end;
  int32_t partial;  // -1: write the output; else this split's slot in the partial buffers
  int64_t cost;
};

struct Shape {
  int64_t num_heads, num_kv_heads, head_dim, group, block_size, max_blocks, q_row_stride;
  float scale;
};

// One thread's scratch: the item's queries, one block's keys and scores in float, and the
// running softmax state (per row the max, the sum of weights and the unnormalised output).
struct Scratch {
  // row_lanes[r][j]: row r's softmax denominator, kept per key lane (lane j sums the weights
  // of keys j, j + BS, ...) so adding a block needs no horizontal sum; finish() adds the lanes.
  std::vector<float> q, keys, values, scores, acc, row_max, row_lanes, row_sum;
  void reset(int rows, int64_t head_dim, int64_t block_size) {
    q.resize(rows * head_dim);
    keys.resize(head_dim * block_size);
    values.resize(block_size * head_dim);
    scores.resize(rows * block_size);
    acc.assign(rows * head_dim, 0.0f);
    row_max.assign(rows, kNegBig);
    row_lanes.assign(rows * block_size, 0.0f);
    row_sum.resize(rows);
  }
  void finish(int rows, int64_t block_size) {
    for (int r = 0; r < rows; ++r) {
      float sum = 0.0f;
      for (int64_t j = 0; j < block_size; ++j) sum += row_lanes[r * block_size + j];
      row_sum[r] = sum;
    }
  }
};

// A block's keys ([D, BS]) or values ([BS, D]) as float: the cache itself for float32, else
// converted once into `buffer` and shared by every row of the item.
template <typename scalar_t>
inline const float* as_float(const scalar_t* src, int64_t n, std::vector<float>& buffer) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return src;
  } else {
    for (int64_t i = 0; i < n; ++i) buffer[i] = to_float(src[i]);
    return buffer.data();
  }
}

// Calls f(std::integral_constant<int, n>) for 0 < n < kRowBlock: the rows left after the
// full register tiles, still with a row count fixed at compile time.
template <typename F>
inline void remainder_rows(int n, F&& f) {
  switch (n) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 7: return f(std::integral_constant<int, 7>{});
    default: return;
  }
}

// scores[r][j] = q_r . key_j for the BS keys of one block and ROWS rows, the rows sharing
// every vector of keys they load; with both sizes fixed the scores stay in registers.
template <int ROWS, int BS>
inline void scores_fixed(const float* q, int64_t D, const float* keys, float* scores) {
  float s[ROWS][BS] = {};
  for (int64_t d = 0; d < D; ++d) {
    const float* kd = keys + d * BS;
    for (int r = 0; r < ROWS; ++r) {
      const float qd = q[r * D + d];
#pragma omp simd
      for (int j = 0; j < BS; ++j) s[r][j] += qd * kd[j];
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int j = 0; j < BS; ++j) scores[r * BS + j] = s[r][j];
}

// The same for any block size (BS_T == 0) or row count: plain loops.
inline void scores_any(const float* q, int rows, int64_t D, const float* keys, int64_t BS,
                       float* scores) {
  for (int r = 0; r < rows; ++r) {
    float* s = scores + r * BS;
    for (int64_t j = 0; j < BS; ++j) s[j] = 0.0f;
    for (int64_t d = 0; d < D; ++d) {
      const float qd = q[r * D + d];
      const float* kd = keys + d * BS;
#pragma omp simd
      for (int64_t j = 0; j < BS; ++j) s[j] += qd * kd[j];
    }
  }
}

template <int BS_T>
inline void block_scores(const float* q, int rows, const float* keys, int64_t D, int64_t bs_rt,
                         float* scores) {
  if constexpr (BS_T == 0) {
    scores_any(q, rows, D, keys, bs_rt, scores);
  } else {
    int r = 0;
    for (; r + kRowBlock <= rows; r += kRowBlock)
      scores_fixed<kRowBlock, BS_T>(q + r * D, D, keys, scores + r * BS_T);
    if (r < rows) remainder_rows(rows - r, [&](auto n) {
      scores_fixed<decltype(n)::value, BS_T>(q + r * D, D, keys, scores + r * BS_T);
    });
  }
}

// acc_r[0:D] += sum_j p_r[j] * values[j][0:D] over a block's first `num_keys` values, for
// ROWS rows at once: each loaded chunk of a value row feeds every row's accumulator, which
// stays in registers across the whole block.
template <int ROWS>
inline void values_fixed(float* acc, const float* p, int64_t p_stride, const float* values,
                         int64_t num_keys, int64_t D) {
  constexpr int64_t kChunk = 16;
  int64_t d0 = 0;
  for (; d0 + kChunk <= D; d0 += kChunk) {
    float a[ROWS][kChunk];
    for (int r = 0; r < ROWS; ++r)
      for (int64_t k = 0; k < kChunk; ++k) a[r][k] = acc[r * D + d0 + k];
    for (int64_t j = 0; j < num_keys; ++j) {
      const float* v = values + j * D + d0;
      for (int r = 0; r < ROWS; ++r) {
        const float pj = p[r * p_stride + j];
#pragma omp simd
        for (int64_t k = 0; k < kChunk; ++k) a[r][k] += pj * v[k];
      }
    }
    for (int r = 0; r < ROWS; ++r)
      for (int64_t k = 0; k < kChunk; ++k) acc[r * D + d0 + k] = a[r][k];
  }
  for (int r = 0; r < ROWS; ++r)  // head sizes that are not a multiple of the chunk
    for (int64_t j = 0; j < num_keys; ++j)
      for (int64_t d = d0; d < D; ++d) acc[r * D + d] += p[r * p_stride + j] * values[j * D + d];
}

inline void block_values(float* acc, int rows, const float* p, int64_t p_stride,
                         const float* values, int64_t num_keys, int64_t D) {
  int r = 0;
  for (; r + kRowBlock <= rows; r += kRowBlock)
    values_fixed<kRowBlock>(acc + r * D, p + r * p_stride, p_stride, values, num_keys, D);
  if (r < rows) remainder_rows(rows - r, [&](auto n) {
    values_fixed<decltype(n)::value>(acc + r * D, p + r * p_stride, p_stride, values, num_keys, D);
  });
}

template <typename scalar_t, int BS_T>
void attend_item(const WorkItem& item, const Shape& sh, const scalar_t* q, const scalar_t* k_cache,
                 const scalar_t* v_cache, const int32_t* block_tables, const int32_t* qsl,
                 const int32_t* seq_lens, Scratch& a) {
  const int64_t D = sh.head_dim, G = sh.group, KVH = sh.num_kv_heads;
  const int64_t BS = BS_T > 0 ? BS_T : sh.block_size;
  const int rows = item.tile_len * static_cast<int>(G);
  a.reset(rows, D, BS);
  const int64_t first_row = qsl[item.seq];
  const int64_t num_queries = qsl[item.seq + 1] - first_row;
  const int64_t first_pos = seq_lens[item.seq] - num_queries;  // position of query 0
  // Row r is query tile_start + r / G through query head kv_head * G + r % G.
  for (int r = 0; r < rows; ++r) {
    const int64_t t = first_row + item.tile_start + r / G;
    const scalar_t* src = q + t * sh.q_row_stride + (item.kv_head * G + r % G) * D;
    float* dst = a.q.data() + r * D;
    for (int64_t d = 0; d < D; ++d) dst[d] = to_float(src[d]) * sh.scale;
  }
  const int32_t* table = block_tables + item.seq * sh.max_blocks;
  const int64_t last_pos = first_pos + item.tile_start + item.tile_len - 1;
  const int64_t block_elems = BS * D;  // one head's keys (or values) of one block
  for (int32_t b = item.block_begin; b < item.block_end; ++b) {
    const int64_t base_pos = static_cast<int64_t>(b) * BS;
    const int64_t num_keys = std::min<int64_t>(BS, last_pos + 1 - base_pos);
    if (num_keys <= 0) break;
    const int64_t offset = (static_cast<int64_t>(table[b]) * KVH + item.kv_head) * block_elems;
    if (b + 1 < item.block_end) {  // the next block lies elsewhere: start fetching it now
      const int64_t next = (static_cast<int64_t>(table[b + 1]) * KVH + item.kv_head) * block_elems;
      const char* nk = reinterpret_cast<const char*>(k_cache + next);
      const char* nv = reinterpret_cast<const char*>(v_cache + next);
      for (int line = 0; line < kPrefetchLines; ++line) {
        __builtin_prefetch(nk + 64 * line);
        __builtin_prefetch(nv + 64 * line);
      }
    }
    const float* keys = as_float(k_cache + offset, block_elems, a.keys);
    block_scores<BS_T>(a.q.data(), rows, keys, D, BS, a.scores.data());
    // Online softmax: mask what a row may not see (causal, past the context), rescale what
    // the row has so far to the new max, add this block.
    for (int r = 0; r < rows; ++r) {
      const int64_t pos = first_pos + item.tile_start + r / G;
      const int64_t limit = std::max<int64_t>(0, std::min<int64_t>(num_keys, pos + 1 - base_pos));
      float* s = a.scores.data() + r * BS;
      if (limit == 0) {  // a row that sees none of this block: it adds nothing
        for (int64_t j = 0; j < BS; ++j) s[j] = 0.0f;
        continue;
      }
      for (int64_t j = limit; j < BS; ++j) s[j] = kNegBig;
      float block_max = kNegBig;
#pragma omp simd reduction(max : block_max)
      for (int64_t j = 0; j < BS; ++j) block_max = std::max(block_max, s[j]);
      const float new_max = std::max(a.row_max[r], block_max);
      const float alpha = exp_nonpositive(a.row_max[r] - new_max);
#pragma omp simd
      for (int64_t j = 0; j < BS; ++j) s[j] = exp_nonpositive(s[j] - new_max);
      for (int64_t j = limit; j < BS; ++j) s[j] = 0.0f;  // exactly nothing from masked keys
      float* lanes = a.row_lanes.data() + r * BS;
#pragma omp simd
      for (int64_t j = 0; j < BS; ++j) lanes[j] = lanes[j] * alpha + s[j];
      a.row_max[r] = new_max;
      if (alpha != 1.0f) {
        float* acc = a.acc.data() + r * D;
        for (int64_t d = 0; d < D; ++d) acc[d] *= alpha;
      }
    }
    // acc_r += p_rj * v_j; slots past num_keys are never read (they may hold another
    // request's stale values).
    const float* values = as_float(v_cache + offset, num_keys * D, a.values);
    block_values(a.acc.data(), rows, a.scores.data(), BS, values, num_keys, D);
  }
  a.finish(rows, BS);
}

template <typename scalar_t>
void write_rows(const WorkItem& item, const Shape& sh, const int32_t* qsl, const float* acc,
                const float* row_sum, scalar_t* out) {
  const int64_t D = sh.head_dim, G = sh.group;
  const int rows = item.tile_len * static_cast<int>(G);
  for (int r = 0; r < rows; ++r) {
    const int64_t t = qsl[item.seq] + item.tile_start + r / G;
    scalar_t* dst = out + (t * sh.num_heads + item.kv_head * G + r % G) * D;
    const float inv = row_sum[r] > 0.0f ? 1.0f / row_sum[r] : 0.0f;
    for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<scalar_t>(acc[r * D + d] * inv);
  }
}

std::vector<WorkItem> plan_work(const Shape& sh, const int32_t* qsl, const int32_t* seq_lens,
                                int64_t num_seqs, int num_threads, int* num_partials) {
  const int tile = std::max<int>(1, kMaxTileRows / static_cast<int>(sh.group));
  std::vector<WorkItem> items;
  for (int32_t s = 0; s < num_seqs; ++s) {
    const int32_t num_queries = qsl[s + 1] - qsl[s];
    const int64_t first_pos = seq_lens[s] - num_queries;
    for (int32_t start = 0; start < num_queries; start += tile) {
      const int32_t len = std::min(tile, num_queries - start);
      const int64_t num_keys = first_pos + start + len;
      const auto num_blocks = static_cast<int32_t>((num_keys + sh.block_size - 1) / sh.block_size);
      for (int32_t h = 0; h < sh.num_kv_heads; ++h)
        items.push_back({s, h, start, len, 0, num_blocks, -1, num_keys * len});
    }
  }
  // Too few items to keep every thread busy (one long sequence, few KV heads): split each
  // context into parts merged afterwards, as flash-decoding does.
  *num_partials = 0;
  if (!items.empty() && static_cast<int64_t>(items.size()) < num_threads) {
    const int64_t want = (2 * num_threads + items.size() - 1) / items.size();
    std::vector<WorkItem> split;
    for (const WorkItem& it : items) {
      const int64_t keys = static_cast<int64_t>(it.block_end) * sh.block_size;
      const int64_t parts = std::max<int64_t>(1, std::min(want, keys / kMinKeysPerSplit));
      if (parts == 1) {
        split.push_back(it);
        continue;
      }
      for (int64_t p = 0; p < parts; ++p) {
        WorkItem part = it;
        part.block_begin = static_cast<int32_t>(it.block_end * p / parts);
        part.block_end = static_cast<int32_t>(it.block_end * (p + 1) / parts);
        part.partial = (*num_partials)++;
        part.cost = it.cost / parts;
        split.push_back(part);
      }
    }
    items.swap(split);
  }
  std::stable_sort(items.begin(), items.end(),
                   [](const WorkItem& a, const WorkItem& b) { return a.cost > b.cost; });
  return items;
}

// Each token's K goes to column `offset` of its block's [D, BS] keys, its V to row `offset`
// of the block's [BS, D] values, for every KV head.
template <typename scalar_t>
void write_kv(const at::Tensor& k, const at::Tensor& v, at::Tensor& k_cache, at::Tensor& v_cache,
              const at::Tensor& slot_mapping) {
  const int64_t T = k.size(0), KVH = k.size(1), D = k.size(2), BS = k_cache.size(3);
  const int64_t* slots = slot_mapping.data_ptr<int64_t>();
  const scalar_t* kp = k.data_ptr<scalar_t>();
  const scalar_t* vp = v.data_ptr<scalar_t>();
  scalar_t* kc = k_cache.data_ptr<scalar_t>();
  scalar_t* vc = v_cache.data_ptr<scalar_t>();
  const int64_t ks = k.stride(0), vs = v.stride(0);
  // A token's K and V are a few KB: only a long prefill is worth more than one thread.
  at::parallel_for(0, T, 512, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t block = slots[t] / BS, offset = slots[t] % BS;
      for (int64_t h = 0; h < KVH; ++h) {
        const int64_t head = (block * KVH + h) * BS * D;
        const scalar_t* key = kp + t * ks + h * D;
        for (int64_t d = 0; d < D; ++d) kc[head + d * BS + offset] = key[d];
        std::memcpy(vc + head + offset * D, vp + t * vs + h * D, D * sizeof(scalar_t));
      }
    }
  });
}

// The splits of each (sequence, KV head, tile), rescaled to their largest max and summed.
template <typename scalar_t>
void merge_partials(const std::vector<WorkItem>& items, const Shape& sh, const int32_t* qsl,
                    int64_t rows_max, const std::vector<float>& part_acc,
                    const std::vector<float>& part_max, const std::vector<float>& part_sum,
                    scalar_t* out) {
  std::vector<const WorkItem*> parts;
  for (const WorkItem& it : items)
    if (it.partial >= 0) parts.push_back(&it);
  std::sort(parts.begin(), parts.end(), [](const WorkItem* a, const WorkItem* b) {
    return std::tie(a->seq, a->kv_head, a->tile_start, a->block_begin) <
           std::tie(b->seq, b->kv_head, b->tile_start, b->block_begin);
  });
  const int64_t D = sh.head_dim;
  std::vector<float> merged_acc(rows_max * D), merged_sum(rows_max);
  for (size_t i = 0; i < parts.size();) {
    size_t j = i;
    while (j < parts.size() && parts[j]->seq == parts[i]->seq &&
           parts[j]->kv_head == parts[i]->kv_head && parts[j]->tile_start == parts[i]->tile_start)
      ++j;
    const int rows = parts[i]->tile_len * static_cast<int>(sh.group);
    for (int r = 0; r < rows; ++r) {
      float best = kNegBig;
      for (size_t p = i; p < j; ++p)
        best = std::max(best, part_max[parts[p]->partial * rows_max + r]);
      float total = 0.0f;
      float* acc = merged_acc.data() + r * D;
      std::fill(acc, acc + D, 0.0f);
      for (size_t p = i; p < j; ++p) {
        const int64_t slot = parts[p]->partial * rows_max + r;
        const float w = exp_nonpositive(part_max[slot] - best);
        total += w * part_sum[slot];
        const float* src = part_acc.data() + slot * D;
        for (int64_t d = 0; d < D; ++d) acc[d] += w * src[d];
      }
      merged_sum[r] = total;
    }
    write_rows(*parts[i], sh, qsl, merged_acc.data(), merged_sum.data(), out);
    i = j;
  }
}

template <typename scalar_t, int BS_T>
void run(at::Tensor& out, const at::Tensor& q, const at::Tensor& k_cache,
         const at::Tensor& v_cache, const at::Tensor& block_tables,
         const at::Tensor& query_start_loc, const at::Tensor& seq_lens, double scale) {
  Shape sh;
  sh.num_heads = q.size(1);
  sh.head_dim = q.size(2);
  sh.num_kv_heads = k_cache.size(1);
  sh.group = sh.num_heads / sh.num_kv_heads;
  sh.block_size = k_cache.size(3);
  sh.max_blocks = block_tables.size(1);
  sh.q_row_stride = q.stride(0);
  sh.scale = static_cast<float>(scale);
  const int32_t* qsl = query_start_loc.data_ptr<int32_t>();
  const int32_t* lens = seq_lens.data_ptr<int32_t>();
  const int32_t* tables = block_tables.data_ptr<int32_t>();
  const int num_threads = at::get_num_threads();
  int num_partials = 0;
  const std::vector<WorkItem> items =
      plan_work(sh, qsl, lens, seq_lens.size(0), num_threads, &num_partials);
  const int64_t rows_max = std::max<int64_t>(kMaxTileRows, sh.group);
  std::vector<float> part_acc(num_partials * rows_max * sh.head_dim);
  std::vector<float> part_max(num_partials * rows_max), part_sum(num_partials * rows_max);
  const scalar_t* qp = q.data_ptr<scalar_t>();
  const scalar_t* kc = k_cache.data_ptr<scalar_t>();
  const scalar_t* vc = v_cache.data_ptr<scalar_t>();
  scalar_t* op = out.data_ptr<scalar_t>();
  std::atomic<size_t> next{0};
  const int64_t workers = std::min<int64_t>(num_threads, static_cast<int64_t>(items.size()));
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    Scratch a;
    for (size_t i = next.fetch_add(1); i < items.size(); i = next.fetch_add(1)) {
      const WorkItem& item = items[i];
      attend_item<scalar_t, BS_T>(item, sh, qp, kc, vc, tables, qsl, lens, a);
      if (item.partial < 0) {
        write_rows(item, sh, qsl, a.acc.data(), a.row_sum.data(), op);
        continue;
      }
      const int rows = item.tile_len * static_cast<int>(sh.group);
      std::copy(a.acc.begin(), a.acc.begin() + rows * sh.head_dim,
                part_acc.begin() + item.partial * rows_max * sh.head_dim);
      std::copy(a.row_max.begin(), a.row_max.begin() + rows,
                part_max.begin() + item.partial * rows_max);
      std::copy(a.row_sum.begin(), a.row_sum.begin() + rows,
                part_sum.begin() + item.partial * rows_max);
    }
  });
  if (num_partials > 0) merge_partials(items, sh, qsl, rows_max, part_acc, part_max, part_sum, op);
}

template <typename scalar_t>
void dispatch(at::Tensor& out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
              at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& slot_mapping,
              const at::Tensor& block_tables, const at::Tensor& query_start_loc,
              const at::Tensor& seq_lens, double scale) {
  write_kv<scalar_t>(k, v, k_cache, v_cache, slot_mapping);
  switch (k_cache.size(3)) {  // the common block sizes get fixed-size inner loops
    case 16:
      return run<scalar_t, 16>(out, q, k_cache, v_cache, block_tables, query_start_loc, seq_lens,
                               scale);
    case 32:
      return run<scalar_t, 32>(out, q, k_cache, v_cache, block_tables, query_start_loc, seq_lens,
                               scale);
    default:
      return run<scalar_t, 0>(out, q, k_cache, v_cache, block_tables, query_start_loc, seq_lens,
                              scale);
  }
}

void paged_attention(at::Tensor out, const at::Tensor& q, const at::Tensor& k,
                     const at::Tensor& v, at::Tensor k_cache, at::Tensor v_cache,
                     const at::Tensor& slot_mapping, const at::Tensor& block_tables,
                     const at::Tensor& query_start_loc, const at::Tensor& seq_lens,
                     double scale) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "q, k, v must be [T, heads, D]");
  TORCH_CHECK(q.stride(2) == 1 && q.stride(1) == q.size(2), "q's heads must be contiguous");
  TORCH_CHECK(k.stride(2) == 1 && k.stride(1) == k.size(2), "k's heads must be contiguous");
  TORCH_CHECK(v.stride(2) == 1 && v.stride(1) == v.size(2), "v's heads must be contiguous");
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.is_contiguous() && v_cache.is_contiguous(),
              "caches must be contiguous [num_blocks, KVH, ...]");
  TORCH_CHECK(k.size(1) == k_cache.size(1) && k.size(2) == k_cache.size(2) &&
                  v_cache.size(2) == k_cache.size(3) && v_cache.size(3) == k.size(2),
              "k_cache must be [num_blocks, KVH, D, BS] and v_cache [num_blocks, KVH, BS, D]");
  TORCH_CHECK(out.is_contiguous() && out.sizes() == q.sizes(), "out must be contiguous like q");
  TORCH_CHECK(q.size(1) % k.size(1) == 0, "query heads must be a multiple of KV heads");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && k.scalar_type() == k_cache.scalar_type(),
              "q, k, v and the caches must share a dtype");
  TORCH_CHECK(slot_mapping.scalar_type() == at::kLong, "slot_mapping must be int64");
  TORCH_CHECK(block_tables.scalar_type() == at::kInt && block_tables.is_contiguous(),
              "block_tables must be contiguous int32");
  TORCH_CHECK(query_start_loc.scalar_type() == at::kInt && seq_lens.scalar_type() == at::kInt,
              "query_start_loc and seq_lens must be int32");
  switch (q.scalar_type()) {
    case at::kFloat:
      return dispatch<float>(out, q, k, v, k_cache, v_cache, slot_mapping, block_tables,
                             query_start_loc, seq_lens, scale);
    case at::kBFloat16:
      return dispatch<c10::BFloat16>(out, q, k, v, k_cache, v_cache, slot_mapping, block_tables,
                                     query_start_loc, seq_lens, scale);
    case at::kHalf:
      return dispatch<c10::Half>(out, q, k, v, k_cache, v_cache, slot_mapping, block_tables,
                                 query_start_loc, seq_lens, scale);
    default:
      TORCH_CHECK(false, "paged_attention: unsupported dtype ", q.scalar_type());
  }
}

}  // namespace

TORCH_LIBRARY(loom, m) {
  m.def(
      "paged_attention(Tensor(a!) out, Tensor q, Tensor k, Tensor v, Tensor(b!) k_cache, "
      "Tensor(c!) v_cache, Tensor slot_mapping, Tensor block_tables, Tensor query_start_loc, "
      "Tensor seq_lens, float scale) -> ()");
  m.impl("paged_attention", c10::DispatchKey::CPU, &paged_attention);
}
