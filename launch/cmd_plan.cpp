// SPDX-License-Identifier: MIT
// `v4rt plan`: capacity planner. Given a model, a cluster and a context length, it lists every
// parallel layout with weights and KV per GPU, the sequences that fit, predicted decode step and
// prefill times, rejects layouts that cannot work with the reason, and recommends one. `--csv`
// prints the same rows for the scaling sweep; `--validate FILE.csv` compares predictions with
// measured points.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <sstream>

#include "common/check.h"
#include "launch/commands.h"
#include "launch/plan/planner.h"
#include "launch/plan/report.h"
#include "model/presets.h"

namespace v4rt::launch {
namespace {

struct PlanOptions {
  std::string model;
  int nodes = 1;
  int gpus_per_node = 8;
  std::string gpu = "h200";
  int64_t context = 1048576;
  int64_t batch = 0;
  std::string layout;
  double latency_target_ms = 0;
  std::string calibration;
  std::string kv_format = "compact";
  std::string config_dir = plan::default_config_dir();
  std::string validate;
  bool csv = false;
};

// "flash" | "pro" | any preset name, a checkpoint folder holding config.json, or a config.json path.
model::ModelConfig resolve_model(const std::string& spec) {
  for (const std::string& name : model::preset_names())
    if (spec == name) return model::preset_config(name);
  namespace fs = std::filesystem;
  if (fs::is_directory(spec)) return model::load_model_config((fs::path(spec) / "config.json").string());
  V4RT_REQUIRE(fs::exists(spec), "--model '" << spec << "' is neither a preset (flash, pro) nor an "
                                             << "existing folder or config.json");
  return model::load_model_config(spec);
}

parallel::Layout parse_layout(const std::string& text) {
  parallel::Layout l;
  char tail = 0;
  V4RT_REQUIRE(std::sscanf(text.c_str(), "%d,%d,%d,%d%c", &l.tp, &l.sp, &l.ep, &l.dp, &tail) == 4,
               "--layout must be tp,sp,ep,dp (four integers), got '" << text << "'");
  return l;
}

void print_csv(std::ostream& os, const PlanOptions& o, const plan::PlanRequest& req,
               const plan::Plan& p) {
  os << "source,model,gpu,nodes,gpus_per_node,tp,sp,ep,dp,context,batch,kv_format,step_ms,"
        "tokens_per_s,prefill_s,max_seqs,weights_gib_per_gpu,kv_gib_per_seq_gpu,recommended,rejected\n";
  for (size_t i = 0; i < p.rows.size(); ++i) {
    const plan::Prediction& r = p.rows[i];
    std::string why = r.rejected;
    for (char& ch : why)
      if (ch == ',') ch = ';';
    char buf[512];
    std::snprintf(buf, sizeof(buf), "predicted,%s,%s,%d,%d,%d,%d,%d,%d,%lld,%lld,%s,%.4f,%.1f,%.3f,%lld,%.3f,%.4f,%d,",
                  o.model.c_str(), o.gpu.c_str(), o.nodes, o.gpus_per_node, r.layout.tp, r.layout.sp,
                  r.layout.ep, r.layout.dp, (long long)req.context, (long long)r.batch,
                  plan::kv_format_name(req.kv_format), r.decode.total() * 1e3, r.tokens_per_s,
                  r.prefill.total(), (long long)r.max_seqs, r.weight_bytes_per_gpu / double(1ull << 30),
                  r.kv_bytes_per_seq_gpu / double(1ull << 30), int(i) == p.best ? 1 : 0);
    os << buf << why << "\n";
  }
}

void run_plan(const PlanOptions& o) {
  const plan::Calibration calib =
      o.calibration.empty() ? plan::Calibration{} : plan::load_calibration(o.calibration);
  if (!o.validate.empty()) {
    const auto points = plan::read_measured_csv(o.validate);
    plan::print_validation(std::cout, points, resolve_model,
                           [&](const std::string& g) { return plan::load_gpu_spec(g, o.config_dir); },
                           calib);
    return;
  }
  V4RT_REQUIRE(!o.model.empty(), "--model is required (flash, pro, or a checkpoint folder)");
  V4RT_REQUIRE(o.nodes >= 1 && o.gpus_per_node >= 1, "--nodes and --gpus-per-node must be >= 1");
  V4RT_REQUIRE(o.context >= 1, "--context must be >= 1");
  V4RT_REQUIRE(o.batch >= 0, "--batch must be >= 0");
  V4RT_REQUIRE(o.kv_format == "compact" || o.kv_format == "bf16",
               "--kv-format must be compact or bf16, got '" << o.kv_format << "'");
  const model::ModelConfig config = resolve_model(o.model);
  const plan::GpuSpec gpu = plan::load_gpu_spec(o.gpu, o.config_dir);
  plan::PlanRequest req;
  req.cluster = {o.nodes, o.gpus_per_node};
  req.context = o.context;
  req.batch = o.batch;
  req.latency_target_s = o.latency_target_ms * 1e-3;
  req.kv_format = o.kv_format == "bf16" ? plan::KvFormat::kBf16 : plan::KvFormat::kCompact;
  std::optional<parallel::Layout> layout;
  if (!o.layout.empty()) layout = parse_layout(o.layout);
  const plan::Plan p = plan::make_plan(config, gpu, calib, req, layout);
  if (o.csv) {
    print_csv(std::cout, o, req, p);
    return;
  }
  plan::print_plan(std::cout, {o.model, gpu.name}, config, gpu, req, p);
  plan::print_kv_comparison(std::cout, config, gpu, calib, req, p);
  if (layout && !p.rows.empty() && !p.rows[0].rejected.empty()) exit_code() = 2;
}

}  // namespace

void register_plan(CLI::App& app) {
  auto opts = std::make_shared<PlanOptions>();
  CLI::App* cmd = app.add_subcommand(
      "plan", "Capacity planner: layouts, memory per GPU, sequences that fit, predicted step times");
  cmd->add_option("--model", opts->model, "flash | pro | checkpoint folder (config.json) | config.json");
  cmd->add_option("--nodes", opts->nodes, "Nodes")->capture_default_str();
  cmd->add_option("--gpus-per-node", opts->gpus_per_node, "GPUs per node")->capture_default_str();
  cmd->add_option("--gpu", opts->gpu, "h200 | h100 | b200 | path to a hardware YAML")->capture_default_str();
  cmd->add_option("--context", opts->context, "Tokens per sequence")->capture_default_str();
  cmd->add_option("--batch", opts->batch, "Sequences decoded together (0: as many as fit)")->capture_default_str();
  cmd->add_option("--layout", opts->layout, "Only this layout: tp,sp,ep,dp");
  cmd->add_option("--latency-target-ms", opts->latency_target_ms, "Decode step target in ms (0: none)");
  cmd->add_option("--calibration", opts->calibration, "YAML of measured efficiency constants");
  cmd->add_option("--kv-format", opts->kv_format, "compact | bf16")->capture_default_str();
  cmd->add_option("--config-dir", opts->config_dir, "Folder with hardware/<gpu>.yaml")->capture_default_str();
  cmd->add_option("--validate", opts->validate, "CSV of measured points: print predicted vs measured");
  cmd->add_flag("--csv", opts->csv, "Print the layout rows as CSV (for scripts/scaling)");
  cmd->callback([opts] { run_plan(*opts); });
}

}  // namespace v4rt::launch
