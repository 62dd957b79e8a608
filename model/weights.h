// SPDX-License-Identifier: MIT
// The V4 parameters, uploaded through a kernels::Backend (which picks the storage format: the CPU
// backend dequantizes to F32, a GPU backend keeps FP8/FP4). Per-layer structs, and a Shard that
// selects the query heads / experts a rank holds, so a rank loads only its slice.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "model/checkpoint.h"
#include "model/config.h"

namespace v4rt::model {

using kernels::WeightView;

struct HcWeights {
  WeightView fn;     // [(2+hc)*hc, hc*D] (hc_head: [hc, hc*D])
  WeightView base;   // [(2+hc)*hc]
  WeightView scale;  // [3] (hc_head: [1])
};

struct CompressorWeights {
  WeightView wkv;    // [c*d, D]
  WeightView wgate;  // [c*d, D]
  WeightView ape;    // [ratio, c*d]
  WeightView norm;   // [d]
  int ratio = 0;
  int head_dim = 0;
  bool overlap = false;
};

struct IndexerWeights {
  WeightView wq_b;          // [index_heads * index_head_dim, q_lora]
  WeightView weights_proj;  // [index_heads, D]
  CompressorWeights compressor;
};

struct AttentionWeights {
  WeightView wq_a, q_norm;  // [q_lora, D], [q_lora]
  WeightView wq_b;          // [H*hd, q_lora]
  WeightView wkv, kv_norm;  // [hd, D], [hd]
  WeightView wo_a;          // [G*o_lora, (H/G)*hd]
  WeightView wo_b;          // [D, G*o_lora]
  WeightView sink;          // [H]
  bool has_compressor = false;
  bool has_indexer = false;
  CompressorWeights compressor;
  IndexerWeights indexer;
};

struct MoeWeights {
  WeightView gate;                   // [E, D]
  WeightView bias;                   // [E] (score-routed layers)
  WeightView tid2eid;                // [vocab, k] I32 (hash layers)
  std::vector<WeightView> w1, w2, w3;  // [E]; experts outside the shard stay empty
  WeightView shared_w1, shared_w2, shared_w3;
  int expert_begin = 0;              // the routed experts this rank holds: [expert_begin, expert_end)
  int expert_end = 0;
};

struct LayerWeights {
  int index = 0;
  int ratio = 0;
  WeightView attn_norm, ffn_norm;
  HcWeights hc_attn, hc_ffn;
  AttentionWeights attn;
  MoeWeights moe;
  std::vector<float> inv_freq;  // [rope_dim/2] of this layer's RoPE (YaRN folded in)
};

// The slice of the model a rank holds (parallel::ShardPlan, in the loader's terms). The defaults
// hold everything; every `end` of -1 means "to the end". Attention shapes above are then local:
// H -> heads of the shard, G -> its groups, index_heads -> its indexer heads.
struct Shard {
  int expert_begin = 0;
  int expert_end = -1;        // routed experts (EP)
  int head_begin = 0;
  int head_end = -1;          // query heads (TP): wq_b rows, attn_sink
  int group_begin = 0;
  int group_end = -1;         // output groups (TP): wo_a rows, wo_b input columns
  int index_head_begin = 0;
  int index_head_end = -1;    // indexer heads (TP): indexer.wq_b rows, weights_proj rows
};

struct ModelWeights {
  WeightView embed;  // [vocab, D]
  WeightView head;   // [vocab, D]
  WeightView norm;   // [D]
  HcWeights hc_head;
  std::vector<LayerWeights> layers;
  // Bytes of checkpoint data this rank loaded (stored format: FP8/FP4 with their scales), i.e. its
  // share of the weights; the backend may hold them in another format (the CPU backend: F32).
  uint64_t bytes_loaded = 0;
};

// Progress of a load, reported after each unit: the embedding, the head (head, norm, hc_head), then
// every layer (the release places each of these in its own shard file), or the MTP block. The
// units are the same on every rank whatever its shard, so a caller may run a collective per call.
struct LoadProgress {
  std::string unit;            // "embed", "head", "layers.7", "mtp.0"
  std::string shards;          // the shard file(s) the unit's tensors came from, ", "-separated
  int unit_index = 0;          // 1-based
  int num_units = 0;
  uint64_t unit_bytes = 0;     // checkpoint bytes this rank loaded for the unit (its share)
  uint64_t bytes = 0;          // checkpoint bytes this rank loaded so far
  double done_fraction = 0;    // share of the checkpoint's tensor bytes in the units done, in [0, 1]
  double elapsed_s = 0;        // since this load started
};
using LoadObserver = std::function<void(const LoadProgress&)>;

// Loads every tensor the forward needs. Throws v4rt::Error naming the tensor and its shard file at
// fault. `observer` (may be empty) is called after each unit.
ModelWeights load_weights(const Checkpoint& ckpt, kernels::Backend& backend, const Shard& shard,
                          const LoadObserver& observer = {});

// The MTP block `mtp.0.*` (spec §7): a window-only, score-routed block (layer index L) plus the
// projections that fuse the main model's streams with the next token's embedding. It shares
// embed and head with the main model.
struct MtpWeights {
  LayerWeights block;
  WeightView e_proj, h_proj;         // [D, D] FP8
  WeightView enorm, hnorm, norm;     // [D]
  HcWeights hc_head;                 // [hc, hc*D], [hc], [1]
  uint64_t bytes_loaded = 0;
};

// Loads `mtp.0.*` with the same shard as the main layers. Throws v4rt::Error when the checkpoint
// has no MTP block or a tensor is missing / mis-shaped (naming it).
MtpWeights load_mtp_weights(const Checkpoint& ckpt, kernels::Backend& backend, const Shard& shard,
                            const LoadObserver& observer = {});

// RoPE inverse frequencies of a layer (spec §2.5): ratio 0 -> base rope_theta, no YaRN; otherwise
// base compress_rope_theta with YaRN (frequency blend only, no attention scaling).
std::vector<float> rope_inv_freq(const ModelConfig& config, int ratio);

}  // namespace v4rt::model
