// SPDX-License-Identifier: MIT
// Text output of `v4rt plan`: the layout table, the recommendation with its time breakdown, the
// sequence-parallel vs TP-replicated KV comparison (validation against measured points: validate.h).
#pragma once

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

}  // namespace v4rt::launch::plan
