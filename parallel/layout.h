// SPDX-License-Identifier: MIT
// The parallel layout of a job: world = dp x sp x tp ranks for attention; routed experts spread
// over an EP group of `ep` ranks. Parsed from the `parallel:` section of the runtime YAML by
// model/runtime_config; validated here against the model's dimensions (ModelDims, filled by the
// caller: parallel/ does not see model/), and turned into a ShardPlan: which slice of every
// sharded tensor one rank owns, so the loader reads only its slices.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cluster/groups.h"

namespace v4rt::parallel {

struct Layout {
  int tp = 1;  // tensor parallel: query heads, wq_b, wo_a groups, indexer heads; wo_b row-split
  int sp = 1;  // sequence parallel: compressed KV (CSA/HCA entries, indexer keys) by blocks
  int ep = 1;  // expert parallel: routed experts over the EP group
  int dp = 1;  // data parallel: independent replicas
  int sp_block = 64;  // SP ownership granule: compressed entries per block, blocks round-robin
  std::string source = {};  // the runtime YAML it was read from, named in errors; empty: built in code
  int world() const { return dp * sp * tp; }
};

// The model numbers a layout must fit (spec/v4-model.md §1.1 names in comments).
struct ModelDims {
  int num_heads = 0;          // num_attention_heads (H)
  int head_dim = 0;           // head_dim (512)
  int o_groups = 0;           // o_groups (G)
  int o_lora_rank = 0;        // o_lora_rank (1024)
  int index_n_heads = 0;      // index_n_heads (64)
  int index_head_dim = 0;     // index_head_dim (128)
  int n_routed_experts = 0;   // n_routed_experts (E)
  int q_lora_rank = 0;        // q_lora_rank
  int64_t hidden = 0;         // hidden_size (D)
  int quant_block = 128;      // FP8 weight block edge (weight_block_size)
  int world_size = 1;         // ranks in the job (MPI world)
};

// Every rule `layout` breaks for `dims`, one sentence each naming the key, e.g.
// "parallel.tp = 3 does not divide num_attention_heads 64"; empty when the layout is valid.
std::vector<std::string> layout_violations(const Layout& layout, const ModelDims& dims);
// Throws v4rt::Error when layout_violations() is not empty: ONE line, naming layout.source (when
// set) and every violated rule, e.g. "configs/x.yaml: parallel layout tp=3 sp=1 ep=1 dp=1 is
// invalid: parallel.tp = 3 does not divide num_attention_heads 64; parallel.tp = 3 does not ...".
void validate(const Layout& layout, const ModelDims& dims);

struct Range {
  int64_t begin = 0;
  int64_t end = 0;  // exclusive
  int64_t size() const { return end - begin; }
  bool contains(int64_t i) const { return i >= begin && i < end; }
};

// What one rank owns. Row ranges are in rows of the full (unsharded) checkpoint tensor.
struct ShardPlan {
  int world_rank = 0;
  cluster::GroupCoords coords;
  Range heads;            // query heads; also attn_sink entries
  Range wq_b_rows;        // attn.wq_b [H*head_dim, q_lora]: heads * head_dim
  Range o_groups;         // output-projection groups
  Range wo_a_rows;        // attn.wo_a [G*o_lora, (H/G)*head_dim]: o_groups * o_lora_rank
  Range wo_b_cols;        // attn.wo_b [D, G*o_lora]: input columns (row-parallel, then all-reduce)
  Range index_heads;      // indexer heads; also rows of indexer.weights_proj [index_n_heads, D]
  Range index_wq_b_rows;  // indexer.wq_b [index_n_heads*index_head_dim, q_lora]
  Range experts;          // routed experts held by this rank (EP)
  int sp_size = 1;        // SP group: entry ownership (see parallel/sp.h)
  int sp_idx = 0;
  int sp_block = 64;
};

// Needs a layout that passed validate().
ShardPlan make_shard_plan(const Layout& layout, const ModelDims& dims, int world_rank);

inline cluster::GroupShape group_shape(const Layout& layout) {
  return cluster::GroupShape{.tp = layout.tp, .sp = layout.sp, .ep = layout.ep, .dp = layout.dp};
}

}  // namespace v4rt::parallel
