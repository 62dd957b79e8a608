// SPDX-License-Identifier: MIT
// The per-rank parallel context of a Model (DESIGN.md "Parallel layout"): the layout, this rank's
// ShardPlan and the communicators of its TP, SP and EP groups. model/ reaches other ranks only
// through parallel/ (tp_reduce_sum, ExpertParallel, distributed_topk, attention_merge) with these
// communicators; a default context is one rank holding everything.
#pragma once

#include "cluster/comm.h"
#include "cluster/groups.h"
#include "kernels/backend.h"
#include "model/config.h"
#include "model/state.h"
#include "model/weights.h"
#include "parallel/layout.h"

namespace v4rt::model {

struct ParallelContext {
  parallel::Layout layout;          // tp = sp = ep = dp = 1: a single rank
  parallel::ShardPlan plan;         // this rank's slices (make_shard_plan)
  cluster::Comm* tp = nullptr;      // TP group; needed when layout.tp > 1
  cluster::Comm* sp = nullptr;      // SP group; needed when layout.sp > 1
  cluster::Comm* ep = nullptr;      // EP group; needed when layout.ep > 1
  bool sharded() const { return layout.tp > 1 || layout.sp > 1 || layout.ep > 1; }
};

// The model numbers parallel::validate checks a layout against. The 128-block rule applies to
// backends that keep FP8 weights in place (device backends) and to the official numerics (the FP8
// activation quantization of a row-parallel input works per 128 columns, so a TP slice must not
// cut a block); the host backend in reference numerics dequantizes everything, so a TP slice may
// cut a 128-block there (quant_block = 0).
parallel::ModelDims model_dims(const ModelConfig& config, const kernels::Backend& backend, int world_size,
                               bool official = false);

// Validates `layout` against the model (throws v4rt::Error listing every violated rule) and builds
// this rank's context over `groups` (made by cluster::make_mpi_groups for the same layout).
ParallelContext make_parallel_context(const parallel::Layout& layout, const ModelConfig& config,
                                      const kernels::Backend& backend, const cluster::ProcessGroups& groups,
                                      bool official = false);

// The loader's view of a plan, and the SP entry ownership of a context.
Shard shard_of(const parallel::ShardPlan& plan);
EntryOwnership ownership_of(const ParallelContext& context);

// Bytes sent to other ranks so far by this rank's TP, SP and EP communicators together.
uint64_t model_bytes_sent(const ParallelContext& context);

}  // namespace v4rt::model
