// SPDX-License-Identifier: MIT
// What one DeepSeek-V4 model costs, computed from its config alone: checkpoint bytes grouped by how
// a layout shards them (exact: equal to the release index's total_size), decode-state bytes per
// sequence (spec §8: compact 584 B entries + 68 B FP4 indexer keys, or the bf16 reference layout),
// and the multiply-adds of one token (spec §8.3). The planner's cost model is built on these numbers.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "model/config.h"

namespace v4rt::launch::plan {

// Checkpoint bytes by sharding rule (DESIGN.md "Parallel layout").
struct WeightGroups {
  int64_t replicated = 0;  // on every rank: norms, hc_*, wq_a, wkv, compressors, gate, shared expert
  int64_t tp_sharded = 0;  // split over TP: wq_b, wo_a, wo_b, attn_sink, indexer wq_b/weights_proj,
                           // embed, head
  int64_t experts = 0;     // routed experts, split over EP
  int64_t total() const { return replicated + tp_sharded + experts; }
};

struct WeightBytes {
  WeightGroups main;          // the backbone (embed, layers, head)
  WeightGroups mtp;           // the MTP block (loaded, not run per decode step)
  int64_t embed = 0;          // part of main.tp_sharded; a step reads only its tokens' rows
  int64_t expert_bytes = 0;   // one routed expert of one layer: w1, w3, w2 with their scales
  int64_t total() const { return main.total() + mtp.total(); }
  // Bytes resident on one GPU of a layout with this tp and ep (embed/head split over TP).
  double per_gpu(int tp, int ep) const;
};

WeightBytes weight_bytes(const model::ModelConfig& config);

// compact: spec §8.1 entries, as the runtime stores them under the official numerics; f32: the
// runtime's F32 row tables of the reference numerics. Both cost the state model::SequenceState
// allocates (F32 window tails and compressor buffers). bf16: the spec's reference layout.
enum class KvFormat { kCompact, kBf16, kF32 };
const char* kv_format_name(KvFormat format);
// "compact" | "bf16" | "f32"; nullopt otherwise.
std::optional<KvFormat> parse_kv_format(const std::string& name);

struct KvEntryBytes {
  int64_t main_entry = 0;   // one compressed CSA/HCA entry (512-d latent)
  int64_t indexer_key = 0;  // one indexer key (128-d), CSA layers only
  int64_t window_slot = 0;  // one raw-window slot as decode reads it (bf16 512; f32: F32 512)
};
KvEntryBytes kv_entry_bytes(const model::ModelConfig& config, KvFormat format);

// Decode state of one sequence holding `context` tokens (backbone layers; the MTP ring is excluded:
// decoding does not speculate).
struct KvBytes {
  int64_t compressed = 0;        // CSA + HCA entries and indexer keys; SP divides these
  int64_t window_ring = 0;       // every layer's window (bf16: 128-slot ring; runtime: F32 tail); every SP rank
  int64_t compressor_state = 0;  // fp32 compressor buffers; on every SP rank
  int64_t total() const { return compressed + window_ring + compressor_state; }
  // Bytes of this sequence on one GPU of an SP group of `sp` ranks (TP ranks each hold a copy).
  int64_t per_gpu(int sp) const { return (compressed + sp - 1) / sp + window_ring + compressor_state; }
};
KvBytes kv_bytes(const model::ModelConfig& config, int64_t context, KvFormat format);
// Compressed bytes per token of context, the asymptotic figure of spec §8.2.
double kv_bytes_per_token(const model::ModelConfig& config, KvFormat format);

// Multiply-adds of one token through the backbone's linear layers, by sharding rule.
struct LinearMacs {
  double replicated = 0;     // wq_a, wkv, compressors, indexer compressor, gate, hc mixes
  double tp_sharded = 0;     // wq_b, wo_a, wo_b, indexer wq_b, weights_proj
  double shared_expert = 0;  // all layers' shared experts
  double routed_expert = 0;  // ONE routed expert in every layer (multiply by top-k)
  double head = 0;           // LM head
  double total(int topk) const {
    return replicated + tp_sharded + shared_expert + topk * routed_expert + head;
  }
};
LinearMacs linear_macs(const model::ModelConfig& config);

// Attention FLOPs (2 per multiply-add). `indexer` runs in FP8/FP4, `core` (QK and PV over window
// and compressed entries) in bf16; TP splits both over heads, SP splits the compressed part.
struct AttentionFlops {
  double indexer = 0;
  double core_window = 0;      // window part of core attention (not split by SP)
  double core_compressed = 0;  // compressed-entry part of core attention
  double total() const { return indexer + core_window + core_compressed; }
};
// One token at position context-1 attending over `context` tokens.
AttentionFlops decode_attention_flops(const model::ModelConfig& config, int64_t context);
// Every token of a prompt of `length` tokens (causal).
AttentionFlops prefill_attention_flops(const model::ModelConfig& config, int64_t length);

// Bytes of decode state one decode step reads for one sequence at `context`, split like KvBytes.
struct KvReadBytes {
  double compressed = 0;  // indexer keys + selected CSA entries + all HCA entries
  double window = 0;      // window rings
};
KvReadBytes decode_kv_read_bytes(const model::ModelConfig& config, int64_t context, KvFormat format);

}  // namespace v4rt::launch::plan
