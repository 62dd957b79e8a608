// SPDX-License-Identifier: MIT
// `v4rt plan --write-config FILE`: the runtime YAML (configs/*.yaml format) of a planned layout,
// ready for `mpirun -np <world> v4rt serve --config FILE`, and that mpirun line. The file starts
// with comments saying what it is for (model, cluster, context, the plan command, the predicted
// figures) and a machine-readable `# deploy:` line naming the world size it is meant for.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "launch/plan/planner.h"

namespace v4rt::launch::plan {

struct DeployTarget {
  std::string model;         // "flash", "pro" or a checkpoint folder (as given to --model)
  std::string checkpoint;    // the runtime YAML's `model:` (a checkpoint folder)
  std::string gpu;           // hardware table name, e.g. "h200"
  bool cpu_ranks = false;    // the hardware table is CPU ranks: --backend cpu, reference numerics
  int nodes = 1;
  int gpus_per_node = 8;
  int64_t context = 0;       // tokens per sequence the layout was planned for
  std::string plan_command;  // the `v4rt plan` arguments that chose the layout
  std::string binary = "v4rt";
};

// The `model:` path for a --model value: the folder itself, or /models/DeepSeek-V4-Flash|Pro for
// the presets (a placeholder the comment tells the user to change or override with --model).
std::string default_checkpoint(const std::string& model);

// The runtime YAML of `row` (a valid layout of a plan) for `target`, to be written to
// `config_path` (named in its mpirun comment); parse_runtime_config reads it.
std::string deploy_config_yaml(const DeployTarget& target, const Prediction& row, const std::string& config_path);

// `mpirun -np <world> [--hostfile ... --map-by ppr:<g>:node] <binary> serve --config <file> ...`
std::string mpirun_line(const DeployTarget& target, const std::string& config_path);

// The `# deploy: world=N model=M key=value...` line of a runtime YAML's text as key -> value;
// nullopt when there is none. Throws v4rt::Error naming `source` when the line is malformed.
std::optional<std::map<std::string, std::string>> parse_deploy_line(const std::string& yaml_text,
                                                                    const std::string& source);

}  // namespace v4rt::launch::plan
