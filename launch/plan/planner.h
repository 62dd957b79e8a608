// SPDX-License-Identifier: MIT
// The capacity planner: enumerates parallel layouts (tp, sp, ep, dp) for a cluster, rejects those
// that cannot work (with the reason), and predicts for the others how many sequences of a given
// context fit and how long a decode step and a prefill take. The cost model is a roofline per GPU
// (HBM bytes / bandwidth vs FLOPs / peak) plus communication (bytes / link bandwidth + latency per
// collective) plus a launch overhead per layer; docs/PLANNER.md states every formula.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "launch/plan/hardware.h"
#include "launch/plan/model_cost.h"
#include "launch/plan/op_cost.h"
#include "model/config.h"
#include "parallel/layout.h"

namespace v4rt::launch::plan {

struct Cluster {
  int nodes = 1;
  int gpus_per_node = 8;
  bool fp8_block_tiles = true;  // GpuSpec::fp8_block_tiles of the devices
  int world() const { return nodes * gpus_per_node; }
};

// How a replica decodes its sequences: all in one pass (weights read once per step), or one after
// another (each sequence a full pass: what Model::step does today, which has no batched path).
enum class Batching { kBatched, kSequential };
const char* batching_name(Batching batching);
std::optional<Batching> parse_batching(const std::string& name);  // "batched" | "sequential"

struct PlanRequest {
  Cluster cluster;
  int64_t context = 0;           // tokens per sequence
  int64_t batch = 0;             // sequences decoded together, whole deployment; 0: as many as fit
  double latency_target_s = 0;   // decode step target; 0: none
  KvFormat kv_format = KvFormat::kCompact;
  Batching batching = Batching::kBatched;
  bool head_on_leader = false;   // the first rank of a replica runs the whole LM head (see op_cost.h)
};

// Time of one decode step or one prefill on one GPU, by component (seconds).
struct StepTime {
  double compute = 0;  // FLOPs / (peak x flop_fraction)
  double memory = 0;   // HBM bytes / (bandwidth x hbm_fraction)
  double tp = 0;       // TP all-reduce per layer (+ logits gather)
  double ep = 0;       // EP dispatch + combine per layer
  double sp = 0;       // SP top-k exchange + attention merge per compressed layer
  double launch = 0;   // launch overhead per layer
  // With per-family calibration: the sum of the family times (replaces max(compute, memory) and
  // launch); family_s holds each family's share.
  double kernels = 0;
  std::array<double, kNumOpFamilies> family_s{};
  double total() const;
};

struct Prediction {
  parallel::Layout layout;
  std::string rejected;               // non-empty: why the layout cannot work
  std::string note;                   // caveats (SP group crosses nodes, misses latency target)
  double weight_bytes_per_gpu = 0;
  KvBytes kv;                         // one sequence of `context` tokens
  int64_t kv_bytes_per_seq_gpu = 0;   // of that sequence on each GPU of its replica
  int64_t max_seqs = 0;               // sequences of `context` tokens that fit, whole deployment
  int64_t batch = 0;                  // sequences decoded together, whole deployment
  StepTime decode;
  double tokens_per_s = 0;            // batch / decode step
  StepTime prefill;                   // one sequence of `context` tokens on one replica
  bool meets_latency = true;
};

struct Plan {
  std::vector<Prediction> rows;       // valid rows by throughput (best first), then rejected ones
  int best = -1;                      // index of the recommended row, -1 when none qualifies
};

// How much slower each rank's kernels run because the host's ranks share fewer cores
// (GpuSpec::shared_cores; 1 for GPUs).
double cpu_share(const GpuSpec& gpu, const Cluster& cluster);

// Why `layout` cannot run this model on this cluster (empty when it can, memory aside).
std::vector<std::string> layout_problems(const model::ModelConfig& config,
                                         const parallel::Layout& layout, const Cluster& cluster);
// Every (tp, sp, dp) with dp*sp*tp = world, each with ep in {world, GPUs per node, tp*sp}.
std::vector<parallel::Layout> candidate_layouts(const Cluster& cluster);

StepTime decode_step_time(const model::ModelConfig& config, const GpuSpec& gpu,
                          const Calibration& calib, const Cluster& cluster,
                          const parallel::Layout& layout, int64_t context, int64_t batch,
                          KvFormat format, Batching batching = Batching::kBatched,
                          bool head_on_leader = false);
StepTime prefill_time(const model::ModelConfig& config, const GpuSpec& gpu, const Calibration& calib,
                      const Cluster& cluster, const parallel::Layout& layout, int64_t length,
                      KvFormat format);

Prediction predict(const model::ModelConfig& config, const GpuSpec& gpu, const Calibration& calib,
                   const PlanRequest& request, const parallel::Layout& layout);
// Predicts the given layout, or every candidate; picks the best throughput meeting the target.
Plan make_plan(const model::ModelConfig& config, const GpuSpec& gpu, const Calibration& calib,
               const PlanRequest& request, const std::optional<parallel::Layout>& layout);

// The TP-replicated counterpart of an SP layout: the same GPUs per sequence group, KV replicated
// (tp' = tp*sp, sp' = 1). Returns nullopt when that layout is not valid for the model.
std::optional<parallel::Layout> tp_replicated_counterpart(const model::ModelConfig& config,
                                                          const parallel::Layout& layout,
                                                          const Cluster& cluster);

}  // namespace v4rt::launch::plan
