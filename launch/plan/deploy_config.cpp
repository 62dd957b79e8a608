// SPDX-License-Identifier: MIT
// Planned layout -> runtime YAML and mpirun line (see deploy_config.h).
#include "launch/plan/deploy_config.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "common/check.h"

namespace v4rt::launch::plan {
namespace {

std::string gib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f GiB", bytes / double(1ull << 30));
  return buf;
}

std::string tokens(int64_t n) {
  if (n >= (1 << 20) && n % (1 << 20) == 0) return std::to_string(n >> 20) + "M";
  if (n >= (1 << 10) && n % (1 << 10) == 0) return std::to_string(n >> 10) + "K";
  return std::to_string(n);
}

// A YAML line padded so that the comments after it line up.
std::string pad(std::string line) {
  line.resize(std::max<size_t>(line.size() + 1, 30), ' ');
  return line;
}

}  // namespace

std::string default_checkpoint(const std::string& model) {
  if (model == "flash") return "/models/DeepSeek-V4-Flash";
  if (model == "pro") return "/models/DeepSeek-V4-Pro";
  namespace fs = std::filesystem;
  if (fs::is_directory(model)) return model;
  return fs::path(model).parent_path().string();  // a config.json: its folder
}

std::string deploy_config_yaml(const DeployTarget& t, const Prediction& row, const std::string& config_path) {
  V4RT_REQUIRE(row.rejected.empty(), "cannot write a config for a rejected layout: " << row.rejected);
  const parallel::Layout& l = row.layout;
  const int world = t.nodes * t.gpus_per_node;
  V4RT_REQUIRE(l.world() == world, "layout tp=" << l.tp << " sp=" << l.sp << " dp=" << l.dp << " has "
                                                << l.world() << " ranks, the cluster " << world);
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(2);
  os << "# " << t.model << " on " << t.nodes << "x" << t.gpus_per_node << " " << t.gpu << " (" << world
     << " ranks), sequences of up to " << tokens(t.context) << " tokens: tp " << l.tp << ", sp " << l.sp
     << ", ep " << l.ep << ", dp " << l.dp << ".\n";
  os << "# Written by `v4rt plan " << t.plan_command << "`.\n";
  os << "# Predicted: " << gib(row.weight_bytes_per_gpu) << " of weights per GPU, " << row.max_seqs
     << " sequences of " << tokens(t.context) << " tokens fit, decode step " << row.decode.total() * 1e3
     << " ms at batch " << row.batch << ", prefill of one " << tokens(t.context) << " prompt "
     << row.prefill.total() << " s.\n";
  os << "# Run (the world size must be " << world << "):\n";
  os << "#   " << mpirun_line(t, config_path) << "\n";
  os << "# `model:` is the checkpoint folder; `--model DIR` on the command line overrides it.\n";
  os << "# deploy: world=" << world << " model=" << (t.model.find('/') == std::string::npos ? t.model : "checkpoint")
     << " gpu=" << t.gpu << " nodes=" << t.nodes << " gpus_per_node=" << t.gpus_per_node << "\n";
  os << "model: " << t.checkpoint << "\n";
  os << "numerics: " << (t.cpu_ranks ? "reference" : "official") << "\n";
  os << "sampling: {temperature: 1.0, top_p: 1.0, seed: 0, max_tokens: 4096}\n";
  os << "parallel: {tp: " << l.tp << ", sp: " << l.sp << ", ep: " << l.ep << ", dp: " << l.dp << "}\n";
  const int64_t running = std::clamp<int64_t>(row.max_seqs, 1, 256);
  os << "server:\n"
     << "  host: 127.0.0.1             # 0.0.0.0 (with api_key set) to serve other hosts\n"
     << "  port: 8080\n"
     << "  api_key: \"\"\n"
     << "  max_queue: 256\n"
     << pad("  max_running: " + std::to_string(running)) << "# sequences of the full context that fit\n"
     << "  max_batch_tokens: 4096\n"
     << "  max_context: " << t.context << "\n"
     << "  kv_budget_mb: 0             # 0: derive from free memory\n";
  return os.str();
}

std::string mpirun_line(const DeployTarget& t, const std::string& config_path) {
  const int world = t.nodes * t.gpus_per_node;
  std::ostringstream os;
  os << "mpirun -np " << world;
  if (t.nodes > 1) os << " --hostfile HOSTS --map-by ppr:" << t.gpus_per_node << ":node --bind-to none";
  os << " " << t.binary << " serve --config " << config_path;
  if (!t.cpu_ranks) os << " --backend cuda";
  return os.str();
}

std::optional<std::map<std::string, std::string>> parse_deploy_line(const std::string& text,
                                                                    const std::string& source) {
  std::istringstream in(text);
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    const std::string prefix = "# deploy:";
    if (line.rfind(prefix, 0) != 0) continue;
    std::map<std::string, std::string> kv;
    std::istringstream words(line.substr(prefix.size()));
    std::string w;
    while (words >> w) {
      const size_t eq = w.find('=');
      V4RT_REQUIRE(eq != std::string::npos && eq > 0 && eq + 1 < w.size(),
                   source << ":" << number << ": '# deploy:' expects key=value words, got '" << w << "'");
      kv[w.substr(0, eq)] = w.substr(eq + 1);
    }
    V4RT_REQUIRE(kv.count("world") && kv.count("model"),
                 source << ":" << number << ": '# deploy:' needs world=N and model=NAME");
    return kv;
  }
  return std::nullopt;
}

}  // namespace v4rt::launch::plan
