// SPDX-License-Identifier: MIT
// Sequence parallelism over the compressed KV (DESIGN.md "What makes it different"). Compressed
// entries (CSA/HCA entries and indexer keys, which share the CSA entry index) are owned by blocks
// of `block` consecutive entries, blocks dealt round-robin over the SP group, so decode growth
// stays balanced. Each rank:
//   1. scores only its own indexer keys, selects its local top-k, and all ranks agree on the
//      global top-k through all_gathers of the (score, local index) lists: descending score,
//      ties by lower global index, -inf never selected — exactly the single-rank top-k
//      (sp_select);
//   2. attends over its own selected entries, producing per (token, head) its normalised output
//      and log-sum-exp; all_gathers and a log-sum-exp merge give the single softmax of spec §5.6
//      (sp_attention_merge). The window is attended by one designated rank only (window_rank()),
//      and the attention sink is added once, in the merge.
// Both run on the SP group's memory through SpOps (sp_ops.h): on GPU ranks nothing crosses the
// host. tests/parallel/sp_reference.h holds the fp32 host references of both steps.
// The merge is exact up to fp32 rounding; it does not reproduce the bf16 rounding of p relative
// to the reference kernel's running max (§5.6), which depends on the candidate order.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "cluster/comm.h"
#include "kernels/backend.h"
#include "parallel/sp_ops.h"

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

// ---- the SP steps of a layer on the group's memory (device-resident on GPU ranks) ------------------

// Indexer select of `rows` query rows at positions pos_begin.. under SP: this rank's scores
// [rows, num_local] F32 (empty view when it holds no key yet) are masked in place to the keys each
// row sees (global index < (pos + 1) / ratio), their local top-k (Backend::topk, values and
// indices) is gathered over the group, and ops.merge_topk leaves in sel [rows, k] I32 this rank's
// local index of each entry of the global top-k it owns, -1 for the others'. Two all_gathers of
// rows * k values and indices; nothing crosses the host on device Comms.
void sp_select(cluster::Comm& sp, SpOps& ops, kernels::Backend& be, const SpPartition& part, const TensorView& scores,
               int64_t rows, int64_t pos_begin, int ratio, int k, const TensorView& sel);

// Log-sum-exp merge of the group's partial attention outputs, in place: o [rows, heads, head_dim]
// F32 (this rank's output normalised over its candidates) and lse [rows, heads] F32 (its
// log-sum-exp, -inf where it attended nothing) are gathered and merged with the sink [heads]
// (F32, in the group's memory) added once (ops.merge_attention); o gets the merged output, the same
// on every rank, rounded to bf16 when `round_bf16`.
void sp_attention_merge(cluster::Comm& sp, SpOps& ops, kernels::Backend& be, const TensorView& o, const TensorView& lse,
                        const float* sink, bool round_bf16);

}  // namespace v4rt::parallel
