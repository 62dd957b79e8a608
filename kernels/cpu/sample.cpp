// SPDX-License-Identifier: MIT
// Token sampling (SampleParams, kernels/backend.h), written for obviousness: a sort of the ids by
// descending logit (as far as the kept prefix needs it), the top-k / top-p prefix walked in that
// order, the draw walked in id order.
// The reference of the CUDA op, which finds the same prefix by radix selection instead of a sort.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/philox.h"

namespace v4rt::kernels::cpu {

SampleKept sample_kept_set(const float* logits, int64_t vocab, const SampleRow& row) {
  CHECK(vocab > 0 && row.temperature > 0.0f);
  const float mx = *std::max_element(logits, logits + vocab);
  const auto weight = [&](int64_t id) { return std::exp((logits[id] - mx) / row.temperature); };  // fp32
  const size_t len = row.top_k > 0 ? std::min<size_t>(size_t(row.top_k), size_t(vocab)) : size_t(vocab);
  SampleKept kept;
  if (len == size_t(vocab) && row.top_p >= 1.0f) {  // the whole vocabulary: no order needed
    for (int64_t id = 0; id < vocab; ++id) {
      kept.ids.push_back(int32_t(id));
      kept.weights.push_back(double(weight(id)));
      kept.mass += kept.weights.back();
    }
    return kept;
  }
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  const auto before = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  // The order is needed up to the kept length only: top-k sorts its k best; top-p alone first
  // tries the 1024 best and sorts everything only when the nucleus is longer.
  size_t sorted = len < size_t(vocab) ? len : std::min<size_t>(1024, len);
  std::partial_sort(order.begin(), order.begin() + ptrdiff_t(sorted), order.end(), before);
  size_t keep = len;
  if (row.top_p < 1.0f) {
    double mass = 0.0;
    if (len < size_t(vocab)) {
      for (size_t j = 0; j < len; ++j) mass += double(weight(order[j]));
    } else {
      for (int64_t id = 0; id < vocab; ++id) mass += double(weight(id));
    }
    const double target = double(row.top_p) * mass;
    for (;;) {
      double cum = 0.0;
      keep = 0;
      while (keep < sorted && cum < target) cum += double(weight(order[keep++]));
      if (cum >= target || sorted == len) break;
      sorted = len;  // the nucleus is longer than the partial order: sort the rest
      std::sort(order.begin(), order.end(), before);
    }
  }
  kept.ids.assign(order.begin(), order.begin() + ptrdiff_t(keep));
  std::sort(kept.ids.begin(), kept.ids.end());
  for (int32_t id : kept.ids) {
    kept.weights.push_back(double(weight(id)));
    kept.mass += kept.weights.back();
  }
  return kept;
}

int32_t sample_draw(const SampleKept& kept, double u) {
  CHECK(!kept.ids.empty());
  const double target = u * kept.mass;
  double cum = 0.0;
  int32_t last = kept.ids.front();
  for (size_t i = 0; i < kept.ids.size(); ++i) {
    if (kept.weights[i] <= 0.0) continue;
    cum += kept.weights[i];
    last = kept.ids[i];
    if (cum > target) return kept.ids[i];
  }
  return last;  // u * mass rounded up to the total
}

void CpuBackend::sample(const SampleParams& p) {
  const int64_t rows = p.logits.shape[0];
  const int64_t vocab = p.logits.ndim == 2 ? p.logits.shape[1] : 0;
  V4RT_REQUIRE(p.logits.ndim == 2 && vocab > 0, "sample logits: expected [rows, vocab], got " << p.logits.shape_str());
  check_f32(p.logits, rows, vocab, "sample logits");
  V4RT_REQUIRE(rows == 0 || p.rows != nullptr, "sample: no SampleRow array for " << rows << " rows");
  V4RT_REQUIRE(p.out_ids.dtype == DType::kI32 && p.out_ids.numel() == rows,
               "sample out_ids: expected I32 [" << rows << "], got " << p.out_ids.shape_str());
  if (p.out_logprob.data)
    V4RT_REQUIRE(p.out_logprob.dtype == DType::kF32 && p.out_logprob.numel() == rows,
                 "sample out_logprob: expected F32 [" << rows << "], got " << p.out_logprob.shape_str());
  const int64_t max_n = p.out_top_ids.data ? p.out_top_ids.shape[1] : 0;
  if (max_n > 0) {
    V4RT_REQUIRE(p.out_top_ids.dtype == DType::kI32 && p.out_top_ids.ndim == 2 && p.out_top_ids.shape[0] == rows,
                 "sample out_top_ids: expected I32 [" << rows << ", n], got " << p.out_top_ids.shape_str());
    check_f32(p.out_top_logprobs, rows, max_n, "sample out_top_logprobs");
  }
  int32_t* ids = static_cast<int32_t*>(p.out_ids.data);
  std::vector<int32_t> top;
  for (int64_t r = 0; r < rows; ++r) {
    const SampleRow& s = p.rows[r];
    V4RT_REQUIRE(s.temperature <= 0.0f || (s.top_p > 0.0f && s.top_p <= 1.0f),
                 "sample row " << r << ": top_p " << s.top_p << " must be in (0, 1]");
    V4RT_REQUIRE(s.n_logprobs >= 0 && s.n_logprobs <= max_n,
                 "sample row " << r << ": n_logprobs " << s.n_logprobs << " outside [0, " << max_n << "]");
    const float* l = row_f32(p.logits, r);
    if (s.temperature <= 0.0f) {
      ids[r] = int32_t(std::max_element(l, l + vocab) - l);  // the first maximum
    } else {
      ids[r] = sample_draw(sample_kept_set(l, vocab, s), sample_uniform(s.seed, s.position, s.draw));
    }
    if (!p.out_logprob.data && max_n == 0) continue;
    // log_softmax at temperature 1, as the server's logprobs: max, then Σ exp in fp64.
    const float mx = *std::max_element(l, l + vocab);
    double sum = 0.0;
    for (int64_t i = 0; i < vocab; ++i) sum += std::exp(double(l[i]) - mx);
    const double log_z = double(mx) + std::log(sum);
    if (p.out_logprob.data) row_f32(p.out_logprob, 0)[r] = float(double(l[ids[r]]) - log_z);
    if (max_n == 0) continue;
    const size_t n = std::min<size_t>(size_t(s.n_logprobs), size_t(vocab));
    if (n > 0) {
      top.resize(size_t(vocab));
      std::iota(top.begin(), top.end(), 0);
      std::partial_sort(top.begin(), top.begin() + ptrdiff_t(n), top.end(),
                        [&](int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); });
    }
    int32_t* tid = row_i32(p.out_top_ids, r);
    float* tlp = row_f32(p.out_top_logprobs, r);
    for (int64_t j = 0; j < max_n; ++j) {
      const bool valid = size_t(j) < n;
      tid[j] = valid ? top[size_t(j)] : -1;
      tlp[j] = valid ? float(double(l[top[size_t(j)]]) - log_z) : -INFINITY;
    }
  }
}

}  // namespace v4rt::kernels::cpu
