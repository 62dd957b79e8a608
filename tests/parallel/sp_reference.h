// SPDX-License-Identifier: MIT
// The fp32 host references the SP tests check parallel/sp.h's device-resident steps against:
// the single-rank top-k, and attention as per-candidate-set partials merged by log-sum-exp.
#pragma once

#include <cstdint>
#include <span>

namespace v4rt::parallel::testing {

// Single-rank top-k: indices of the k largest scores, descending, ties by lower index; -inf (and
// NaN) entries are never selected and pad with -1. scores: [num_entries]; out: [k].
void topk_reference(std::span<const float> scores, int k, int64_t* out);

// Partial of one (token, head) row: [2 + head_dim] f32 = {max z, sum exp(z - max), acc[head_dim]}
// with acc = sum exp(z - max) * v. An empty partial is {-inf, 0, 0...}.
inline int64_t partial_width(int64_t head_dim) { return 2 + head_dim; }

// Partials over a candidate set: q [num_rows, head_dim] (row = token * num_heads + head), kv
// [num_cand, head_dim] (K = V), cand [num_rows, num_sel] rows of kv each query row attends (-1 =
// none), scale the logit scale; partial [num_rows, 2 + head_dim].
void attention_partial(const float* q, const float* kv, const int64_t* cand, int64_t num_rows, int64_t num_sel,
                       int64_t head_dim, float scale, float* partial);

// Merge of gathered partials [num_parts, num_rows, 2 + head_dim] with the sink [num_heads] added
// once: out [num_rows, head_dim].
void merge_partials(const float* partials, int num_parts, const float* sink, int64_t num_rows, int64_t num_heads,
                    int64_t head_dim, float* out);

}  // namespace v4rt::parallel::testing
