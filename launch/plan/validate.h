// SPDX-License-Identifier: MIT
// Planner validation against measured points: reading measured points (the GPU points CSV with a
// per-op-family breakdown, and the scaling sweep's results.csv), fitting per-op-family constants on
// a chosen subset of the points, and the predicted-vs-measured table with the error and PASS/FAIL
// at a tolerance. Points used to fit are reported as such and never counted as validation passes.
#pragma once

#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "launch/plan/planner.h"

namespace v4rt::launch::plan {

// One kernel family's measured time inside a point (the per-op table of `v4rt bench step`).
struct MeasuredOp {
  std::string name;     // as measured ("moe_gate", "linear fp8 1024x4096", or a family name)
  double calls = 0;
  double ms = 0;
  double bytes = 0;     // as the profiler booked them (shown, not used by the prediction)
  double flops = 0;
};

struct MeasuredPoint {
  std::string file;
  int line = 0;                 // first CSV line of the point
  std::string model, gpu;
  int layers = 0;               // 0: the whole model
  int nodes = 1, gpus_per_node = 1;
  parallel::Layout layout;      // tp, sp, ep, dp (1 when the CSV has no such column)
  int64_t context = 0, batch = 0;
  KvFormat kv_format = KvFormat::kCompact;
  Batching batching = Batching::kSequential;
  bool head_on_leader = true;   // `head` column: leader (the runtime today) | split
  double step_ms = 0;           // measured decode step (whole batch); 0: not measured
  double prefill_s = 0;         // measured prefill; 0: not measured
  std::vector<MeasuredOp> ops;  // empty: the step total only
  // "flash L2 b1 ctx1048576 h200 1x1 tp1 sp1 ep1 dp1 f32 sequential": identifies the point (the
  // calibration YAML lists the keys it was fitted on).
  std::string key() const;
};

// Defaults for columns a CSV does not have.
struct PointDefaults {
  std::string gpu = "h200";
  KvFormat kv_format = KvFormat::kCompact;
  Batching batching = Batching::kSequential;  // what Model::step does today
  bool head_on_leader = true;                 // what the runtime's driver does today
};

// Reads measured points. Two layouts of the same columns (docs/PLANNER.md "Measured points"):
//  - long (an `op` column): one row per (point, op); op "step" carries the step time, every other
//    op a kernel family's calls / ms / bytes / flops; rows with the same configuration columns
//    form one point;
//  - wide (no `op` column): one row per point with `step_ms` (the sweep's results.csv; rows whose
//    `source` is not "measured" are skipped).
std::vector<MeasuredPoint> read_points_csv(const std::string& path, const PointDefaults& defaults);

// "key=value[|value...],key=value": every key must match (model, layers, batch, context, gpu,
// gpus, tp, sp, ep, dp, kv_format, batching). Empty text matches nothing.
struct PointFilter {
  std::vector<std::pair<std::string, std::vector<std::string>>> terms;
  bool matches(const MeasuredPoint& point) const;
};
PointFilter parse_point_filter(const std::string& text);

using ModelResolver = std::function<model::ModelConfig(const std::string&)>;
using GpuResolver = std::function<GpuSpec(const std::string&)>;

// The planner's decode step for the configuration of a measured point.
StepTime predict_point(const MeasuredPoint& point, const ModelResolver& model_of,
                       const GpuResolver& gpu_of, const Calibration& calib);

// Fits per-family (efficiency, launch latency) on `points` starting from `base`: per family a
// least-squares fit, relative errors, of measured ms = launches x launch_s + roofline / efficiency
// (efficiency <= 1, launch_s >= 0); `other` takes the step time not booked to another family. A
// family measured at one configuration only keeps the launch latency of `other` and fits its
// efficiency. Points without a per-op breakdown are fitted together: one efficiency and one launch
// latency for every family. The result lists the points in `fitted_on`.
Calibration fit_calibration(const std::vector<MeasuredPoint>& points, const ModelResolver& model_of,
                            const GpuResolver& gpu_of, const Calibration& base, std::ostream& log);

struct ValidationSummary {
  int validated = 0, passed = 0, failed = 0, calibration = 0;
};

// Predicted vs measured for every point: error (pred - meas) / meas, PASS/FAIL at +-tolerance, or
// "fit" for the points whose key is in calib.fitted_on (not counted). `by_family` adds the
// per-family predicted and measured times of the points that have a breakdown.
ValidationSummary print_validation(std::ostream& os, const std::vector<MeasuredPoint>& points,
                                   const ModelResolver& model_of, const GpuResolver& gpu_of,
                                   const Calibration& calib, double tolerance, bool by_family);

}  // namespace v4rt::launch::plan
