// SPDX-License-Identifier: MIT
// SP entry ownership, distributed top-k and the log-sum-exp attention merge (see sp.h).
#include "parallel/sp.h"

#include <glog/logging.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace v4rt::parallel {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// One top-k candidate on the wire: 16 bytes.
struct Candidate {
  float score;
  int32_t pad;
  int64_t index;  // global entry index, -1 = none
};
static_assert(sizeof(Candidate) == 16);

bool selectable(float score) { return score > kNegInf; }  // false for -inf and NaN

// Descending score, ties by lower index.
bool better(const Candidate& a, const Candidate& b) {
  if (a.score != b.score) return a.score > b.score;
  return a.index < b.index;
}

// Top k of `cands` (selectable ones only) into out[0..k), padded with {-inf, -1}.
void select_topk(std::vector<Candidate>& cands, int k, Candidate* out) {
  auto end = std::remove_if(cands.begin(), cands.end(),
                            [](const Candidate& c) { return !selectable(c.score); });
  const int64_t n = std::min<int64_t>(k, end - cands.begin());
  std::partial_sort(cands.begin(), cands.begin() + n, end, better);
  for (int64_t i = 0; i < k; ++i) out[i] = i < n ? cands[size_t(i)] : Candidate{kNegInf, 0, -1};
}

}  // namespace

int64_t SpPartition::num_local(int64_t num_entries) const {
  const int64_t full = num_entries / block, rem = num_entries % block;
  int64_t blocks = full > sp_idx ? (full - sp_idx + sp_size - 1) / sp_size : 0;
  int64_t n = blocks * block;
  if (rem > 0 && full % sp_size == sp_idx) n += rem;
  return n;
}

void topk_reference(std::span<const float> scores, int k, int64_t* out) {
  std::vector<Candidate> cands(scores.size());
  for (size_t i = 0; i < scores.size(); ++i) cands[i] = {scores[i], 0, int64_t(i)};
  std::vector<Candidate> top(static_cast<size_t>(k));
  select_topk(cands, k, top.data());
  for (int i = 0; i < k; ++i) out[i] = top[size_t(i)].index;
}

void distributed_topk(cluster::Comm& sp, const SpPartition& part, const float* local_scores,
                      int64_t num_queries, int64_t num_local, int k, int64_t* out) {
  CHECK_EQ(sp.size(), part.sp_size) << "SP group size vs partition";
  CHECK_GT(k, 0);
  const int n = sp.size();
  std::vector<Candidate> mine(size_t(num_queries * k));
  std::vector<Candidate> cands;
  for (int64_t q = 0; q < num_queries; ++q) {
    cands.resize(size_t(num_local));
    for (int64_t j = 0; j < num_local; ++j) {
      // Local order is increasing global order, so ties still break by lower global index.
      cands[size_t(j)] = {local_scores[q * num_local + j], 0, part.to_global(j)};
    }
    select_topk(cands, k, &mine[size_t(q * k)]);
  }
  std::vector<Candidate> all(size_t(n) * mine.size());
  sp.all_gather(mine.data(), all.data(), int64_t(mine.size() * sizeof(Candidate)), DType::kU8);
  std::vector<Candidate> top(static_cast<size_t>(k));
  for (int64_t q = 0; q < num_queries; ++q) {
    cands.clear();
    for (int r = 0; r < n; ++r) {
      const Candidate* c = &all[size_t((int64_t(r) * num_queries + q) * k)];
      cands.insert(cands.end(), c, c + k);
    }
    select_topk(cands, k, top.data());
    for (int i = 0; i < k; ++i) out[q * k + i] = top[size_t(i)].index;
  }
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

void attention_merge(cluster::Comm& sp, const float* partial, const float* sink, int64_t num_rows,
                     int64_t num_heads, int64_t head_dim, float* out) {
  const int64_t count = num_rows * partial_width(head_dim);
  std::vector<float> all(size_t(sp.size()) * size_t(count));
  sp.all_gather(partial, all.data(), count, DType::kF32);
  merge_partials(all.data(), sp.size(), sink, num_rows, num_heads, head_dim, out);
}

}  // namespace v4rt::parallel
