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

void sp_select(cluster::Comm& sp, SpOps& ops, kernels::Backend& be, const SpPartition& part, const TensorView& scores,
               int64_t rows, int64_t pos_begin, int ratio, int k, const TensorView& sel) {
  CHECK_EQ(sp.size(), part.sp_size) << "SP group size vs partition";
  CHECK(sp.device() == be.device() && ops.device() == be.device()) << "SP select: group '" << sp.name()
                                                                   << "' and its ops must use the backend's memory";
  CHECK(sel.dtype == DType::kI32 && sel.contiguous() && sel.shape[0] == rows && sel.numel() == rows * k)
      << "SP select output " << sel.shape_str();
  const int64_t count = rows * k;
  Buffer values = be.alloc(size_t(count) * 4), local = be.alloc(size_t(count) * 4);
  kernels::TopkParams tp;
  tp.out_values = TensorView(values.data(), DType::kF32, {rows, k}, be.device());
  tp.out_idx = TensorView(local.data(), DType::kI32, {rows, k}, be.device());
  tp.k = k;
  Buffer none;
  if (scores.data != nullptr && scores.shape[1] > 0) {
    CHECK(scores.dtype == DType::kF32 && scores.contiguous() && scores.shape[0] == rows) << scores.shape_str();
    ops.mask_invisible(static_cast<float*>(scores.data), rows, scores.shape[1], part, pos_begin, ratio);
    tp.scores = scores;
  } else {  // no key here yet: every slot of this rank's lists is empty
    none = be.alloc(size_t(rows) * 4);
    tp.scores = TensorView(none.data(), DType::kF32, {rows, 1}, be.device());
    be.fill(tp.scores, -INFINITY);
  }
  be.topk(tp);
  const int n = sp.size();
  Buffer all_values = be.alloc(size_t(n * count) * 4), all_local = be.alloc(size_t(n * count) * 4);
  sp.all_gather(values.data(), all_values.data(), count, DType::kF32);
  sp.all_gather(local.data(), all_local.data(), count, DType::kI32);
  ops.merge_topk(static_cast<const float*>(all_values.data()), static_cast<const int32_t*>(all_local.data()), rows, k,
                 part, static_cast<int32_t*>(sel.data));
}

void sp_attention_merge(cluster::Comm& sp, SpOps& ops, kernels::Backend& be, const TensorView& o, const TensorView& lse,
                        const float* sink, bool round_bf16) {
  CHECK(o.dtype == DType::kF32 && o.contiguous() && o.ndim == 3) << "SP merge output " << o.shape_str();
  const int64_t heads = o.shape[1], head_dim = o.shape[2], rows = o.shape[0] * heads;
  CHECK(lse.dtype == DType::kF32 && lse.contiguous() && lse.numel() == rows) << "SP merge lse " << lse.shape_str();
  const int n = sp.size();
  Buffer all_o = be.alloc(size_t(n * rows * head_dim) * 4), all_lse = be.alloc(size_t(n * rows) * 4);
  sp.all_gather(o.data, all_o.data(), rows * head_dim, DType::kF32);
  sp.all_gather(lse.data, all_lse.data(), rows, DType::kF32);
  ops.merge_attention(static_cast<const float*>(all_o.data()), static_cast<const float*>(all_lse.data()), sink, n, rows,
                      heads, head_dim, round_bf16, static_cast<float*>(o.data));
}

}  // namespace v4rt::parallel
