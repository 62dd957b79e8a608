// SPDX-License-Identifier: MIT
// Checks a runtime YAML of configs/ against the deployment it says it is for: its `# deploy:` line
// (world=N model=tiny|flash|pro [gpu=G nodes=N gpus_per_node=G]) must be there, the file must
// parse, its layout must have N ranks and fit the model (parallel::layout_violations); with gpu=
// it must also be a layout the planner accepts on that cluster, whose weights and one sequence of
// server.max_context tokens fit the GPU, and its comment must carry the `mpirun -np N` line.
#pragma once

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/check.h"
#include "launch/plan/deploy_config.h"
#include "launch/plan/hardware.h"
#include "launch/plan/planner.h"
#include "model/presets.h"
#include "launch/runtime_config.h"
#include "parallel/layout.h"

namespace v4rt::launch::plan::testing {

// Every problem of the config at `path`, one sentence each naming the file; empty when it is sound.
inline std::vector<std::string> config_problems(const std::string& path, const std::string& hardware_dir) {
  std::vector<std::string> problems;
  std::ifstream in(path);
  if (!in) return {path + ": cannot read"};
  std::ostringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  try {
    const auto deploy = parse_deploy_line(text, path);
    if (!deploy) return {path + ": no '# deploy: world=N model=NAME' line"};
    const int world = std::stoi(deploy->at("world"));
    const std::string preset = deploy->at("model");
    const launch::RuntimeConfig rc = launch::parse_runtime_config(text, path);
    const parallel::Layout& l = rc.parallel;
    if (l.world() != world)
      problems.push_back(path + ": parallel section has dp*sp*tp = " + std::to_string(l.world()) +
                         " ranks, '# deploy:' says world=" + std::to_string(world));
    bool known = false;
    for (const std::string& n : model::preset_names()) known |= n == preset;
    if (!known) return {path + ": '# deploy:' model=" + preset + " is not a preset (tiny, flash, pro)"};
    const model::ModelConfig mc = model::preset_config(preset, /*mtp=*/true);
    const bool gpu = deploy->count("gpu") > 0;
    parallel::ModelDims d;
    d.num_heads = mc.num_attention_heads;
    d.head_dim = mc.head_dim;
    d.o_groups = mc.o_groups;
    d.o_lora_rank = mc.o_lora_rank;
    d.index_n_heads = mc.index_n_heads;
    d.index_head_dim = mc.index_head_dim;
    d.n_routed_experts = mc.n_routed_experts;
    d.q_lora_rank = mc.q_lora_rank;
    d.hidden = mc.hidden_size;
    // Device backends and official numerics keep FP8 in 128-blocks (model_dims in model/distributed.h).
    d.quant_block = gpu || rc.numerics == "official" ? mc.quant.weight_block_size[0] : 0;
    d.world_size = world;
    for (const std::string& v : parallel::layout_violations(l, d)) problems.push_back(path + ": " + v);
    if (!gpu) return problems;

    const int nodes = std::stoi(deploy->count("nodes") ? deploy->at("nodes") : "1");
    const int per_node = std::stoi(deploy->count("gpus_per_node") ? deploy->at("gpus_per_node") : "8");
    if (nodes * per_node != world)
      problems.push_back(path + ": nodes x gpus_per_node = " + std::to_string(nodes * per_node) + " != world " +
                         std::to_string(world));
    const GpuSpec spec = load_gpu_spec(deploy->at("gpu"), hardware_dir);
    PlanRequest req;
    req.cluster = {nodes, per_node, spec.fp8_block_tiles};
    req.context = rc.server.max_context > 0 ? rc.server.max_context : mc.max_position_embeddings;
    req.batch = 1;
    const Prediction p = predict(mc, spec, Calibration{}, req, l);
    if (!p.rejected.empty()) problems.push_back(path + ": v4rt plan rejects the layout: " + p.rejected);
    const std::string run = "mpirun -np " + std::to_string(world) + " ";
    if (text.find(run) == std::string::npos) problems.push_back(path + ": comment has no '" + run + "...' line");
  } catch (const std::exception& e) {
    problems.push_back(e.what());
  }
  return problems;
}

}  // namespace v4rt::launch::plan::testing
