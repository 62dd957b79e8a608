// SPDX-License-Identifier: MIT
// Text output of `v4rt plan`: the layout table, the recommendation with its time breakdown, the
// sequence-parallel vs TP-replicated KV comparison, and `--validate` (predicted vs measured points
// read from the scaling sweep's CSV).
#pragma once

#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "launch/plan/planner.h"

namespace v4rt::launch::plan {

struct ReportHeader {
  std::string model_name;
  std::string gpu_name;
};

// Header lines, the table of valid layouts (best first), rejected layouts with their reasons, and
// the recommended layout with its decode/prefill breakdown.
void print_plan(std::ostream& os, const ReportHeader& header, const model::ModelConfig& config,
                const GpuSpec& gpu, const PlanRequest& request, const Plan& plan);

// For every number of GPUs per sequence (tp*sp) two rows: the SP layout that fits the most
// sequences of `context` tokens ("sp-partitioned") and its TP-replicated counterpart with the same
// GPUs, ep and dp ("tp-replicated": tp*sp, sp=1, every TP rank holds the whole KV).
void print_kv_comparison(std::ostream& os, const model::ModelConfig& config, const GpuSpec& gpu,
                         const Calibration& calib, const PlanRequest& request, const Plan& plan);

// One measured point of the scaling sweep (CSV columns of the same names; see docs/PLANNER.md).
struct MeasuredPoint {
  int line = 0;  // line in the CSV, for messages
  std::string model, gpu;
  int nodes = 1, gpus_per_node = 1;
  parallel::Layout layout;
  int64_t context = 0, batch = 0;
  KvFormat kv_format = KvFormat::kCompact;
  double step_ms = 0;       // measured decode step; 0: not measured
  double prefill_s = 0;     // measured prefill; 0: not measured
};

// Reads the rows whose `source` column is "measured" (or every row when there is no such column).
std::vector<MeasuredPoint> read_measured_csv(const std::string& path);

using ModelResolver = std::function<model::ModelConfig(const std::string&)>;
using GpuResolver = std::function<GpuSpec(const std::string&)>;

// Prints predicted vs measured with the relative error for every point; returns the number of
// points compared.
int print_validation(std::ostream& os, const std::vector<MeasuredPoint>& points,
                     const ModelResolver& model_of, const GpuResolver& gpu_of,
                     const Calibration& calib);

}  // namespace v4rt::launch::plan
