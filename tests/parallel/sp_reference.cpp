// SPDX-License-Identifier: MIT
#include "tests/parallel/sp_reference.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace v4rt::parallel::testing {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

}  // namespace

void topk_reference(std::span<const float> scores, int k, int64_t* out) {
  std::vector<int64_t> idx;
  for (size_t i = 0; i < scores.size(); ++i)
    if (scores[i] > kNegInf) idx.push_back(int64_t(i));  // neither -inf nor NaN
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return scores[size_t(a)] > scores[size_t(b)]; });
  for (int i = 0; i < k; ++i) out[i] = size_t(i) < idx.size() ? idx[size_t(i)] : -1;
}

void attention_partial(const float* q, const float* kv, const int64_t* cand, int64_t num_rows,
                       int64_t num_sel, int64_t head_dim, float scale, float* partial) {
  const int64_t width = partial_width(head_dim);
  std::vector<float> z(static_cast<size_t>(num_sel));
  for (int64_t r = 0; r < num_rows; ++r) {
    const float* qr = q + r * head_dim;
    float* p = partial + r * width;
    float m = kNegInf;
    for (int64_t i = 0; i < num_sel; ++i) {
      const int64_t c = cand[r * num_sel + i];
      if (c < 0) {
        z[size_t(i)] = kNegInf;
        continue;
      }
      const float* v = kv + c * head_dim;
      float dot = 0.f;
      for (int64_t d = 0; d < head_dim; ++d) dot += qr[d] * v[d];
      z[size_t(i)] = dot * scale;
      m = std::max(m, z[size_t(i)]);
    }
    p[0] = m;
    p[1] = 0.f;
    std::fill(p + 2, p + width, 0.f);
    if (m == kNegInf) continue;
    for (int64_t i = 0; i < num_sel; ++i) {
      const int64_t c = cand[r * num_sel + i];
      if (c < 0) continue;
      const float e = std::exp(z[size_t(i)] - m);
      p[1] += e;
      const float* v = kv + c * head_dim;
      for (int64_t d = 0; d < head_dim; ++d) p[2 + d] += e * v[d];
    }
  }
}

void merge_partials(const float* partials, int num_parts, const float* sink, int64_t num_rows,
                    int64_t num_heads, int64_t head_dim, float* out) {
  const int64_t width = partial_width(head_dim);
  for (int64_t r = 0; r < num_rows; ++r) {
    float* o = out + r * head_dim;
    float m = kNegInf;
    for (int p = 0; p < num_parts; ++p) m = std::max(m, partials[(p * num_rows + r) * width]);
    std::fill(o, o + head_dim, 0.f);
    if (m == kNegInf) continue;  // no candidate anywhere (cannot happen: the window holds t)
    float den = std::exp(sink[r % num_heads] - m);
    for (int p = 0; p < num_parts; ++p) {
      const float* part = partials + (p * num_rows + r) * width;
      if (part[0] == kNegInf) continue;
      const float f = std::exp(part[0] - m);
      den += part[1] * f;
      for (int64_t d = 0; d < head_dim; ++d) o[d] += part[2 + d] * f;
    }
    for (int64_t d = 0; d < head_dim; ++d) o[d] /= den;
  }
}

}  // namespace v4rt::parallel::testing
