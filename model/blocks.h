// SPDX-License-Identifier: MIT
// Internal to model/: the V4 block pieces (attention, mHC, MoE) as functions over backend views.
// They hold no data loops of their own: every numeric step is a kernels::Backend op.
#pragma once

#include <span>

#include "kernels/backend.h"
#include "model/config.h"
#include "model/distributed.h"
#include "model/state.h"
#include "model/weights.h"
#include "parallel/ep.h"
#include "parallel/sp_ops.h"

namespace v4rt::model {

struct BlockContext {
  const ModelConfig& config;
  kernels::Backend& backend;
  bool official = false;  // Numerics::kOfficial rounding points
  const ParallelContext* parallel = nullptr;    // nullptr: one rank holding everything
  parallel::ExpertParallel* experts = nullptr;  // EP dispatch/combine (layout.ep > 1)
  parallel::SpOps* sp_ops = nullptr;            // SP top-k and attention merges (layout.sp > 1)
  TensorView row_positions;  // I32 [N] on the backend: each row's position in its sequence, for the
                             // attention segments of every layer (row_positions()); or empty
};

// A device F32 scratch tensor owned by the caller.
struct Scratch {
  Buffer buffer;
  TensorView view;
};
Scratch make_scratch(kernels::Backend& backend, std::initializer_list<int64_t> dims, DType dtype = DType::kF32);
// The dtype of an activation whose every value is rounded to bf16 by the op that writes it (the
// official numerics' rounding points, spec §2): BF16 where the backend takes bf16 views (half the
// bytes, the same values), else F32. Every other activation stays F32.
DType rounded_dtype(const BlockContext& ctx);

// Attention sublayer for the chunk at positions [pos_begin, pos_begin + n): a [n, D] -> out [n, D].
// `own` says which compressed entries this rank stores (SP); the layer's state holds only those.
void attention_forward(const BlockContext& ctx, const LayerWeights& w, LayerState& state, const EntryOwnership& own,
                       int64_t pos_begin, const TensorView& a, const TensorView& out);

// One sequence's rows of a batched attention call: rows [row_begin, row_begin + rows) of a / out
// are that sequence's tokens at positions [pos_begin, pos_begin + rows).
struct AttentionSegment {
  LayerState* state = nullptr;
  const EntryOwnership* own = nullptr;
  int64_t pos_begin = 0;
  int64_t row_begin = 0;
  int64_t rows = 0;
};
// The position of every row of `segs` (pos_begin .. pos_begin + rows - 1 per segment, in row
// order), I32 [N] on the backend: RoPE of several sequences' rows in one call. A step uploads them
// once into BlockContext::row_positions, which attention_forward_batched needs for several segments.
Scratch row_positions(kernels::Backend& backend, std::span<const AttentionSegment> segs);
// Attention over the concatenated rows of several sequences (distinct states): every projection
// (wq_a, wq_b, wkv, the compressors' wkv/wgate, the indexer's wq_b and weights_proj, wo_a, wo_b)
// runs once over all rows; window, compressor pooling, indexer scores/top-k and sparse attention
// run per segment on views. a [N, D] -> out [N, D], N = sum of the segments' rows (in order).
// PARALLEL: collective under TP/SP: every rank passes the same segments in the same order.
void attention_forward_batched(const BlockContext& ctx, const LayerWeights& w, std::span<const AttentionSegment> segs,
                               const TensorView& a, const TensorView& out);

// MoE sublayer: b [n, D], token ids [n] I32 -> out [n, D].
void moe_forward(const BlockContext& ctx, const LayerWeights& w, int layer, const TensorView& b,
                 const TensorView& token_ids, const TensorView& out);

// mHC around a sublayer: pre-mix x [n, hc, D] -> a [n, D] (+ post, comb); post-mix o -> x_new.
struct HcMix {
  Scratch post;  // [n, hc]
  Scratch comb;  // [n, hc, hc]
};
HcMix hc_pre(const BlockContext& ctx, const HcWeights& w, const TensorView& x, const TensorView& a);
void hc_post(const BlockContext& ctx, const HcMix& mix, const TensorView& o, const TensorView& x_old,
             const TensorView& x_new);

// The output head (spec §7), shared by the main model and the MTP block: hc_head collapse of the
// streams x [rows, hc, D], RMSNorm with `norm`, then the fp32 GEMM on the bf16 `head` weight in
// every mode. Returns the logits [rows, vocab] on the device.
Scratch lm_head(const BlockContext& ctx, const HcWeights& hc_head, const WeightView& norm, const WeightView& head,
                const TensorView& x);

}  // namespace v4rt::model
