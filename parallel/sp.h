// SPDX-License-Identifier: MIT
// Sequence parallelism over the compressed KV (DESIGN.md "What makes it different"). Compressed
// entries (CSA/HCA entries and indexer keys, which share the CSA entry index) are owned by blocks
// of `block` consecutive entries, blocks dealt round-robin over the SP group, so decode growth
// stays balanced. Each rank:
//   1. scores only its own indexer keys, selects its local top-k, and all ranks agree on the
//      global top-k through one all_gather of (score, global index) candidates: descending score,
//      ties by lower global index, -inf never selected — exactly the single-rank top-k;
//   2. attends over its own selected entries, producing per (token, head) a partial
//      (max, sum of exp, unnormalised P.V); one all_gather and a log-sum-exp merge give the single
//      softmax of spec §5.6. The window is attended by one designated rank only (window_rank()),
//      and the attention sink is added once, in the merge.
// The merge is exact up to fp32 rounding; it does not reproduce the bf16 rounding of p relative
// to the reference kernel's running max (§5.6), which depends on the candidate order.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "cluster/comm.h"

namespace v4rt::parallel {

// Which compressed entries one SP rank owns, and its local numbering of them.
struct SpPartition {
  int sp_size = 1;
  int sp_idx = 0;
  int block = 64;

  int owner(int64_t entry) const { return int((entry / block) % sp_size); }
  bool owns(int64_t entry) const { return owner(entry) == sp_idx; }
  // Entries of [0, num_entries) owned by this rank.
  int64_t num_local(int64_t num_entries) const;
  // local index <-> global entry index (for owned entries only).
  int64_t to_global(int64_t local) const {
    return ((local / block) * sp_size + sp_idx) * block + local % block;
  }
  int64_t to_local(int64_t entry) const {
    return (entry / block / sp_size) * block + entry % block;
  }
  static constexpr int window_rank() { return 0; }  // SP rank that attends the raw window
};

// Single-rank top-k: indices of the k largest scores, descending, ties by lower index; -inf
// entries are never selected and pad with -1. scores: [num_entries]; out: [k].
void topk_reference(std::span<const float> scores, int k, int64_t* out);

// Distributed top-k over the SP group for num_queries queries at once.
// local_scores: [num_queries, num_local] scores of this rank's entries in local order.
// out: [num_queries, k] global entry indices (same on every rank), equal to topk_reference over
// the scores of all entries. One all_gather of sp * num_queries * k (f32, i64) pairs.
void distributed_topk(cluster::Comm& sp, const SpPartition& part, const float* local_scores,
                      int64_t num_queries, int64_t num_local, int k, int64_t* out);

// ---- attention partials and their merge -----------------------------------------------------------

// Partial of one (token, head) row: [2 + head_dim] f32 = {max z, sum exp(z - max), acc[head_dim]}
// with acc = sum exp(z - max) * v. An empty partial is {-inf, 0, 0...}.
inline int64_t partial_width(int64_t head_dim) { return 2 + head_dim; }

// Partials over a candidate set, fp32 (CPU path and reference):
// q: [num_rows, head_dim] (row = token*num_heads + head), kv: [num_cand, head_dim] (K = V),
// cand: [num_rows, num_sel] rows of kv each query row attends (-1 = none), scale: logit scale.
// partial: [num_rows, 2 + head_dim].
void attention_partial(const float* q, const float* kv, const int64_t* cand, int64_t num_rows,
                       int64_t num_sel, int64_t head_dim, float scale, float* partial);

// Merges the SP group's partials and adds the sink once: out[r] = sum_ranks acc / den with
// den = sum_ranks sum * exp(max - M) + exp(sink[r % num_heads] - M), M = max over ranks (the sink
// is not in the max, as in §5.6). partial: [num_rows, 2 + head_dim]; sink: [num_heads];
// out: [num_rows, head_dim], the same on every rank. One all_gather of the partials.
void attention_merge(cluster::Comm& sp, const float* partial, const float* sink, int64_t num_rows,
                     int64_t num_heads, int64_t head_dim, float* out);

// Local merge of partials already gathered: partials: [num_parts, num_rows, 2 + head_dim].
void merge_partials(const float* partials, int num_parts, const float* sink, int64_t num_rows,
                    int64_t num_heads, int64_t head_dim, float* out);

}  // namespace v4rt::parallel
