// SPDX-License-Identifier: MIT
// The decode step split into kernel families (linear, head, experts, gate, attention, indexer, hc,
// other): per family the launches, the ideal HBM bytes and the FLOPs one GPU of a layout runs in
// one batched decode step, computed from the model config alone. With per-family constants fitted
// from measurements (hardware.h FamilyCalibration) a family takes
//   launches x launch_s + max(bytes / HBM bandwidth, FLOPs / peak) / efficiency
// and the step is the sum over the families (kernels run one after another). docs/PLANNER.md
// "Per-op-family model" lists every formula.
#pragma once

#include <array>
#include <string>

#include "launch/plan/hardware.h"
#include "launch/plan/model_cost.h"
#include "model/config.h"
#include "parallel/layout.h"

namespace v4rt::launch::plan {

struct OpCost {
  double launches = 0;
  double bytes = 0;       // ideal HBM traffic: weights read + decode state read + activations
  double flops = 0;
  double peak_flops = 0;  // the datasheet peak these FLOPs run at (FP8, FP4/FP8 experts, bf16)
  // max(bytes / HBM bandwidth, FLOPs / peak) at the datasheet figures.
  double roofline_s(const GpuSpec& gpu) const;
};
using StepOps = std::array<OpCost, kNumOpFamilies>;

// Kernels of one decode step (one token per sequence) on one GPU of `layout`:
// `seqs_per_replica` sequences decoded together in each replica, `seqs_total` in the deployment.
// head_on_leader: the replica's first rank runs the whole LM head (what the runtime's driver does
// today) instead of a vocabulary-split head; the step is that rank's.
StepOps decode_step_ops(const model::ModelConfig& config, const GpuSpec& gpu,
                        const parallel::Layout& layout, int64_t context, double seqs_per_replica,
                        double seqs_total, KvFormat format, bool head_on_leader = false);

// One family's time: fitted -> launches x launch_s + roofline / efficiency; not fitted ->
// max(bytes / (bandwidth x hbm_fraction), FLOPs / (peak x flop_fraction)).
double family_time_s(const OpCost& op, const GpuSpec& gpu, const FamilyCalibration& family,
                     const Calibration& calib);

// A kernel name as `v4rt bench step`'s per-op table prints it ("linear fp8 1024x4096", "moe_gate",
// "sparse_attention", "hc_pre", ...) or a family name ("linear", "head", ...) -> its family. The
// LM head is the linear with `vocab_size` rows; unknown names are `other`.
OpFamily op_family_of_kernel(const std::string& name, const model::ModelConfig& config);

// The model `v4rt bench step --layers N` builds: the first N layers alternating CSA (ratio 4) and
// HCA (ratio 128), score routing (no hash layers), no MTP block. N <= 0 returns `config` unchanged.
model::ModelConfig with_layers(const model::ModelConfig& config, int layers);

}  // namespace v4rt::launch::plan
