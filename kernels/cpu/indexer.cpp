// SPDX-License-Identifier: MIT
// Lightning-indexer scores (spec §5.5) and top-k selection with ties broken by the lower index
// (DESIGN.md: the same rule on every rank, so a distributed top-k agrees with a local one).
#include <algorithm>
#include <cmath>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/kv_rows.h"

namespace v4rt::kernels::cpu {

void CpuBackend::indexer_scores(const IndexerScoresParams& p) {
  const int64_t n = p.q.shape[0];
  const int64_t heads = p.q.shape[1];
  const int64_t dim = p.q.shape[2];
  const int64_t num_keys = p.keys.data ? p.keys.shape[0] : 0;
  const int64_t key_end = p.key_end < 0 ? num_keys : p.key_end;
  const int h_end = p.h_end < 0 ? int(heads) : p.h_end;
  check_f32(p.q, n, heads * dim, "indexer q");
  KvRowReader keys(p.keys, p.key_layout, p.key_blocks, dim, "indexer keys");  // compact rows decode on first use
  check_f32(p.w, n, heads, "indexer w");
  check_f32(p.scores, n, key_end - p.key_begin, "indexer scores");
  for (int64_t t = 0; t < n; ++t) {
    const int64_t visible = (p.pos_begin + t + 1) / p.ratio;
    const float* q = row_f32(p.q, t);
    const float* w = row_f32(p.w, t);
    float* s = row_f32(p.scores, t);
    for (int64_t j = p.key_begin; j < key_end; ++j) {
      float& out = s[j - p.key_begin];
      if (j >= visible) {
        out = -INFINITY;
        continue;
      }
      const float* k = keys.row(j);
      float sum = 0.0f;
      for (int h = p.h_begin; h < h_end; ++h) {
        float d = dot(q + h * dim, k, dim);
        if (p.bf16_arith) {
          d = round_bf16(d);
          sum += round_bf16(std::max(d, 0.0f) * round_bf16(w[h] * p.weight_scale));
        } else {
          sum += std::max(d, 0.0f) * w[h] * p.weight_scale;
        }
      }
      if (p.bf16_arith) sum = round_bf16(sum);
      out = p.accumulate ? out + sum : sum;
    }
  }
}

void CpuBackend::topk(const TopkParams& p) {
  const int64_t rows = p.scores.shape[0];
  const int64_t cols = p.scores.shape[1];
  check_f32(p.scores, rows, cols, "topk scores");
  CHECK(p.out_idx.dtype == DType::kI32);
  CHECK_EQ(p.out_idx.shape[0], rows);
  CHECK_EQ(row_width(p.out_idx), p.k);
  std::vector<int32_t> order;
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = row_f32(p.scores, r);
    order.clear();
    for (int64_t j = 0; j < cols; ++j)
      if (std::isfinite(s[j])) order.push_back(int32_t(j));
    const size_t take = std::min<size_t>(order.size(), size_t(p.k));
    std::partial_sort(order.begin(), order.begin() + ptrdiff_t(take), order.end(),
                      [&](int32_t a, int32_t b) { return s[a] > s[b] || (s[a] == s[b] && a < b); });
    int32_t* idx = row_i32(p.out_idx, r);
    float* val = p.out_values.data ? row_f32(p.out_values, r) : nullptr;
    for (int i = 0; i < p.k; ++i) {
      const bool valid = size_t(i) < take;
      idx[i] = valid ? int32_t(order[size_t(i)] + p.index_offset) : -1;
      if (val) val[i] = valid ? s[order[size_t(i)]] : -INFINITY;
    }
  }
}

}  // namespace v4rt::kernels::cpu
