// SPDX-License-Identifier: MIT
// Inputs of the planner's cost model that are not the model: the GPU's datasheet figures
// (configs/hardware/<gpu>.yaml) and the efficiency constants measured by `v4rt bench`
// (--calibration FILE). Both are parsed here from YAML into plain structs, unknown keys rejected.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace v4rt::launch::plan {

// Kernel families of a decode step, as the cost model splits it (docs/PLANNER.md "Per-op-family
// model"): each has its own achieved efficiency and per-launch latency once calibrated.
enum class OpFamily : int {
  kLinear,     // dense FP8/bf16 projections (wq_a/b, wkv, wo_a/b, compressors, indexer, shared expert)
  kHead,       // embedding row, hc_head, LM head
  kExperts,    // routed experts (FP4)
  kGate,       // MoE gate GEMV + top-k routing
  kAttention,  // sparse attention over window + compressed candidates
  kIndexer,    // indexer scores over the compressed keys + top-k
  kHc,         // hyper-connection pre/post mixes
  kOther,      // norms, RoPE, quantize/dequantize, adds, copies (launch-bound)
};
constexpr int kNumOpFamilies = 8;
const char* op_family_name(OpFamily family);
OpFamily op_family_at(int index);
// "linear", "head", ... -> family; nullopt for an unknown name.
std::optional<OpFamily> parse_op_family(const std::string& name);

// Fitted constants of one op family: time = launches x launch_s + roofline / efficiency, where the
// roofline is max(bytes / HBM bandwidth, FLOPs / peak) at the datasheet figures.
struct FamilyCalibration {
  bool fitted = false;
  double efficiency = 1.0;  // achieved fraction of the roofline, in (0, 1]
  double launch_s = 0;      // fixed time per kernel launch
};

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
  // FP8 weights stay in 128x128 blocks on this device, so a TP slice must hold whole blocks. false:
  // the backend dequantizes at load (the CPU reference backend), any TP split of rows works.
  bool fp8_block_tiles = true;
  // CPU ranks: the cores one host's ranks share (more ranks than cores time-share them, so each
  // rank's kernels slow down by ranks/cores). 0: every rank has its own device (GPUs).
  int shared_cores = 0;
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
  // Per-op-family constants fitted from measured points (`v4rt plan validate --fit-on`). When any
  // family is fitted the decode step is the sum of the family times (kernels run one after
  // another) instead of max(compute, memory) with the two global fractions.
  std::array<FamilyCalibration, kNumOpFamilies> families{};
  std::vector<std::string> fitted_on;      // keys of the points the constants were fitted on
  std::string source;                      // free text: where the constants come from
  bool has_families() const;
};

GpuSpec parse_gpu_spec(const std::string& yaml_text, const std::string& source);
// `name_or_path` is "h200" (read from config_dir/hardware/h200.yaml) or a path to a YAML file.
GpuSpec load_gpu_spec(const std::string& name_or_path, const std::string& config_dir);

Calibration parse_calibration(const std::string& yaml_text, const std::string& source);
Calibration load_calibration(const std::string& path);
// YAML that parse_calibration reads back (every key written, families and fitted_on included).
std::string calibration_yaml(const Calibration& calib);

// The configs/ folder holding hardware/<gpu>.yaml: <prefix>/share/v4rt/configs of an installed
// tree (found relative to the executable), else the source tree this binary was built from.
std::string default_config_dir();

}  // namespace v4rt::launch::plan
