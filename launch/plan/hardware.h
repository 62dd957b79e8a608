// SPDX-License-Identifier: MIT
// Inputs of the planner's cost model that are not the model: the GPU's datasheet figures
// (configs/hardware/<gpu>.yaml) and the efficiency constants measured by `v4rt bench`
// (--calibration FILE). Both are parsed here from YAML into plain structs, unknown keys rejected.
#pragma once

#include <cstdint>
#include <string>

namespace v4rt::launch::plan {

// Per-GPU datasheet figures (dense peaks, one-direction link bandwidths).
struct GpuSpec {
  std::string name;
  double hbm_bytes = 0;
  double hbm_bytes_per_s = 0;
  double bf16_flops = 0;
  double fp8_flops = 0;
  double fp4_flops = 0;              // 0: no FP4 tensor cores, FP4 experts run as FP8 GEMMs
  double nvlink_bytes_per_s = 0;
  double internode_bytes_per_s = 0;
  double nvlink_latency_s = 0;       // per collective inside a node
  double internode_latency_s = 0;    // per collective across nodes
};

// What the hardware achieves in practice. Defaults are planning assumptions, not measurements; a
// calibration file written from `v4rt bench` results replaces them key by key.
struct Calibration {
  double hbm_fraction = 0.80;              // achieved fraction of HBM bandwidth
  double flop_fraction = 0.50;             // achieved fraction of tensor-core peak
  double link_fraction = 0.80;             // achieved fraction of NVLink / network bandwidth
  double all_to_all_bytes_per_s = 0;       // measured EP all-to-all per GPU; 0: from the links
  double launch_overhead_s_per_layer = 10e-6;  // kernel launches / sync per layer and step
  double collective_latency_s = 0;         // measured per-collective latency; 0: hardware table
  double runtime_reserve_bytes = 8.0 * (1ull << 30);  // CUDA context, NCCL, workspace, activations
  int64_t prefill_chunk_tokens = 8192;     // prefill is run in chunks of this many tokens
};

GpuSpec parse_gpu_spec(const std::string& yaml_text, const std::string& source);
// `name_or_path` is "h200" (read from config_dir/hardware/h200.yaml) or a path to a YAML file.
GpuSpec load_gpu_spec(const std::string& name_or_path, const std::string& config_dir);

Calibration parse_calibration(const std::string& yaml_text, const std::string& source);
Calibration load_calibration(const std::string& path);

// The configs/ folder of the source tree this binary was built from.
std::string default_config_dir();

}  // namespace v4rt::launch::plan
