// SPDX-License-Identifier: MIT
// The per-rank parallel context of a Model (see distributed.h).
#include "model/distributed.h"

#include <glog/logging.h>

#include <set>

#include "common/check.h"

namespace v4rt::model {

parallel::ModelDims model_dims(const ModelConfig& config, const kernels::Backend& backend, int world_size,
                               bool official) {
  parallel::ModelDims d;
  d.num_heads = config.num_attention_heads;
  d.head_dim = config.head_dim;
  d.o_groups = config.o_groups;
  d.o_lora_rank = config.o_lora_rank;
  d.index_n_heads = config.index_n_heads;
  d.index_head_dim = config.index_head_dim;
  d.n_routed_experts = config.n_routed_experts;
  d.q_lora_rank = config.q_lora_rank;
  d.hidden = config.hidden_size;
  d.quant_block = backend.device() == Device::kHost && !official ? 0 : config.quant.weight_block_size[0];
  d.world_size = world_size;
  return d;
}

ParallelContext make_parallel_context(const parallel::Layout& layout, const ModelConfig& config,
                                      const kernels::Backend& backend, const cluster::ProcessGroups& groups,
                                      bool official) {
  const int world_size = groups.world->size();
  const parallel::ModelDims dims = model_dims(config, backend, world_size, official);
  parallel::validate(layout, dims);
  V4RT_REQUIRE(layout.tp == groups.shape.tp && layout.sp == groups.shape.sp && layout.ep == groups.shape.ep &&
                   layout.dp == groups.shape.dp,
               "process groups were made for another layout");
  ParallelContext c;
  c.layout = layout;
  c.plan = parallel::make_shard_plan(layout, dims, groups.world->rank());
  c.tp = groups.tp.get();
  c.sp = groups.sp.get();
  c.ep = groups.ep.get();
  return c;
}

Shard shard_of(const parallel::ShardPlan& plan) {
  Shard s;
  s.expert_begin = int(plan.experts.begin);
  s.expert_end = int(plan.experts.end);
  s.head_begin = int(plan.heads.begin);
  s.head_end = int(plan.heads.end);
  s.group_begin = int(plan.o_groups.begin);
  s.group_end = int(plan.o_groups.end);
  s.index_head_begin = int(plan.index_heads.begin);
  s.index_head_end = int(plan.index_heads.end);
  return s;
}

EntryOwnership ownership_of(const ParallelContext& context) {
  EntryOwnership o;
  o.num_ranks = context.plan.sp_size;
  o.rank = context.plan.sp_idx;
  o.block = context.plan.sp_block;
  return o;
}

uint64_t model_bytes_sent(const ParallelContext& context) {
  std::set<const cluster::Comm*> seen;
  uint64_t total = 0;
  for (const cluster::Comm* c : {context.tp, context.sp, context.ep}) {
    if (c && seen.insert(c).second) total += c->counters().total_bytes();
  }
  return total;
}

}  // namespace v4rt::model
