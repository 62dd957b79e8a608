// SPDX-License-Identifier: MIT
// `v4rt plan`: capacity planner. Given a model, a cluster and a context length, it lists every
// parallel layout with weights and KV per GPU, the sequences that fit, predicted decode step and
// prefill times, rejects layouts that cannot work with the reason, and recommends one. `--csv`
// prints the same rows for the scaling sweep. `v4rt plan validate --points FILE` predicts every
// measured point (GPU points with a per-op-family breakdown, CPU-rank points of the sweep), prints
// predicted, measured, error and PASS/FAIL, and with `--fit-on FILTER` first fits the per-family
// constants on the matching points (written with `--write-calibration`, read by `--calibration`).
#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <iostream>
#include <sstream>

#include "common/check.h"
#include "common/install_dirs.h"
#include "launch/commands.h"
#include "launch/plan/deploy_config.h"
#include "launch/plan/planner.h"
#include "launch/plan/report.h"
#include "launch/plan/validate.h"
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
  int layers = 0;
  std::string batching = "batched";
  std::string head = "split";
  std::string write_config;
  std::string model_dir;
};

struct ValidateOptions {
  std::vector<std::string> points;
  std::string calibration;
  std::string fit_on;
  std::string write_calibration;
  std::string source;
  std::string gpu = "h200";
  std::string kv_format = "compact";
  std::string batching = "sequential";
  std::string head = "leader";
  double tolerance_pct = 25;
  bool by_family = false;
  std::string config_dir = plan::default_config_dir();
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
        "tokens_per_s,prefill_s,max_seqs,weights_gib_per_gpu,kv_gib_per_seq_gpu,layers,batching,recommended,"
        "rejected\n";
  for (size_t i = 0; i < p.rows.size(); ++i) {
    const plan::Prediction& r = p.rows[i];
    std::string why = r.rejected;
    for (char& ch : why)
      if (ch == ',') ch = ';';
    char buf[512];
    std::snprintf(buf, sizeof(buf), "predicted,%s,%s,%d,%d,%d,%d,%d,%d,%lld,%lld,%s,%.4f,%.1f,%.3f,%lld,%.3f,%.4f,%d,%s,%d,",
                  o.model.c_str(), o.gpu.c_str(), o.nodes, o.gpus_per_node, r.layout.tp, r.layout.sp,
                  r.layout.ep, r.layout.dp, (long long)req.context, (long long)r.batch,
                  plan::kv_format_name(req.kv_format), r.decode.total() * 1e3, r.tokens_per_s,
                  r.prefill.total(), (long long)r.max_seqs, r.weight_bytes_per_gpu / double(1ull << 30),
                  r.kv_bytes_per_seq_gpu / double(1ull << 30), o.layers,
                  plan::batching_name(req.batching), int(i) == p.best ? 1 : 0);
    os << buf << why << "\n";
  }
}

plan::KvFormat kv_format_option(const std::string& text) {
  const auto f = plan::parse_kv_format(text);
  V4RT_REQUIRE(f, "--kv-format must be compact, bf16 or f32, got '" << text << "'");
  return *f;
}

plan::Batching batching_option(const std::string& text) {
  const auto b = plan::parse_batching(text);
  V4RT_REQUIRE(b, "--batching must be batched or sequential, got '" << text << "'");
  return *b;
}

void run_validate(const ValidateOptions& o) {
  V4RT_REQUIRE(!o.points.empty(), "plan validate: --points FILE.csv is required");
  V4RT_REQUIRE(o.tolerance_pct > 0, "--tolerance must be > 0 (percent)");
  plan::PointDefaults defaults;
  defaults.gpu = o.gpu;
  defaults.kv_format = kv_format_option(o.kv_format);
  defaults.batching = batching_option(o.batching);
  V4RT_REQUIRE(o.head == "leader" || o.head == "split", "--head must be leader or split, got '" << o.head << "'");
  defaults.head_on_leader = o.head == "leader";
  std::vector<plan::MeasuredPoint> points;
  for (const std::string& f : o.points) {
    auto more = plan::read_points_csv(f, defaults);
    points.insert(points.end(), more.begin(), more.end());
  }
  std::map<std::string, plan::GpuSpec> gpus;
  const plan::GpuResolver gpu_of = [&](const std::string& g) {
    auto it = gpus.find(g);
    if (it == gpus.end()) it = gpus.emplace(g, plan::load_gpu_spec(g, o.config_dir)).first;
    return it->second;
  };
  plan::Calibration calib = o.calibration.empty() ? plan::Calibration{} : plan::load_calibration(o.calibration);
  std::cout << "measured points: " << points.size() << " from";
  for (const std::string& f : o.points) std::cout << " " << f;
  std::cout << "\n";
  if (!o.fit_on.empty()) {
    const plan::PointFilter filter = plan::parse_point_filter(o.fit_on);
    std::vector<plan::MeasuredPoint> subset;
    for (const plan::MeasuredPoint& p : points)
      if (filter.matches(p)) subset.push_back(p);
    std::cout << "fit filter '" << o.fit_on << "': " << subset.size() << " point(s)\n";
    calib = plan::fit_calibration(subset, resolve_model, gpu_of, calib, std::cout);
    if (!o.source.empty()) calib.source = o.source;
    if (!o.write_calibration.empty()) {
      std::ofstream out(o.write_calibration);
      out << "# Per-op-family constants fitted by `v4rt plan validate --fit-on '" << o.fit_on << "'`\n"
          << "# (docs/PLANNER.md \"Validation\"). Read with `v4rt plan --calibration FILE`.\n"
          << plan::calibration_yaml(calib);
      V4RT_REQUIRE(out.good(), "cannot write calibration file " << o.write_calibration);
      std::cout << "calibration written to " << o.write_calibration << "\n";
    }
  } else if (!calib.fitted_on.empty()) {
    std::cout << "calibration " << o.calibration << " was fitted on " << calib.fitted_on.size()
              << " point(s): those are marked 'fit' and not counted\n";
  }
  std::cout << "\n";
  plan::print_validation(std::cout, points, resolve_model, gpu_of, calib, o.tolerance_pct / 100, o.by_family);
}

const plan::Prediction& best_row(const plan::Plan& p) {
  V4RT_REQUIRE(p.best >= 0, "--write-config: no layout qualifies (every one is rejected or misses the "
                            "latency target); pick one with --layout tp,sp,ep,dp");
  return p.rows[size_t(p.best)];
}

// The arguments of this `v4rt plan` run that chose the layout (written into the config's comment).
std::string plan_arguments(const PlanOptions& o) {
  std::ostringstream os;
  os << "--model " << o.model << " --nodes " << o.nodes << " --gpus-per-node " << o.gpus_per_node << " --gpu "
     << o.gpu << " --context " << o.context;
  if (o.batch) os << " --batch " << o.batch;
  if (!o.layout.empty()) os << " --layout " << o.layout;
  if (o.latency_target_ms > 0) os << " --latency-target-ms " << o.latency_target_ms;
  if (!o.calibration.empty()) os << " --calibration " << o.calibration;
  if (o.kv_format != "compact") os << " --kv-format " << o.kv_format;
  if (o.batching != "batched") os << " --batching " << o.batching;
  if (o.head != "split") os << " --head " << o.head;
  return os.str();
}

// --write-config: the runtime YAML of `row`, and the mpirun line that runs it.
void write_config(const PlanOptions& o, const plan::GpuSpec& gpu, const plan::Prediction& row) {
  plan::DeployTarget t;
  t.model = o.model;
  t.checkpoint = o.model_dir.empty() ? plan::default_checkpoint(o.model) : o.model_dir;
  t.gpu = o.gpu;
  t.cpu_ranks = !gpu.fp8_block_tiles || gpu.shared_cores > 0;
  t.nodes = o.nodes;
  t.gpus_per_node = o.gpus_per_node;
  t.context = o.context;
  t.plan_command = plan_arguments(o);
  const std::string exe_dir = executable_dir();
  t.binary = exe_dir.empty() ? "v4rt" : (std::filesystem::path(exe_dir) / "v4rt").string();
  const std::string text = plan::deploy_config_yaml(t, row, o.write_config);
  {
    std::ofstream out(o.write_config);
    out << text;
    V4RT_REQUIRE(out.good(), "--write-config: cannot write " << o.write_config);
  }
  std::cout << "\nconfig written to " << o.write_config << " (tp " << row.layout.tp << ", sp " << row.layout.sp
            << ", ep " << row.layout.ep << ", dp " << row.layout.dp << "); run it with:\n  "
            << plan::mpirun_line(t, o.write_config) << "\n";
  if (row.layout.dp > 1)
    std::cout << "  note: dp " << row.layout.dp << ": the server runs the same step plans on every dp replica "
                 "today, so dp adds no throughput yet (docs/SERVING.md); for the runtime as it is, pick a dp 1 "
                 "row of the table with --layout\n";
  if (o.nodes > 1) std::cout << "  (under Slurm: sbatch --nodes=" << o.nodes << " scripts/slurm/serve.sbatch " << o.write_config << ")\n";
}

void run_plan(const PlanOptions& o) {
  const plan::Calibration calib =
      o.calibration.empty() ? plan::Calibration{} : plan::load_calibration(o.calibration);
  if (!o.validate.empty()) {
    ValidateOptions v;
    v.points = {o.validate};
    v.calibration = o.calibration;
    v.config_dir = o.config_dir;
    run_validate(v);
    return;
  }
  V4RT_REQUIRE(!o.model.empty(), "--model is required (flash, pro, or a checkpoint folder)");
  V4RT_REQUIRE(o.nodes >= 1 && o.gpus_per_node >= 1, "--nodes and --gpus-per-node must be >= 1");
  V4RT_REQUIRE(o.context >= 1, "--context must be >= 1");
  V4RT_REQUIRE(o.batch >= 0, "--batch must be >= 0");
  V4RT_REQUIRE(o.layers >= 0, "--layers must be >= 0");
  V4RT_REQUIRE(!o.csv || o.write_config.empty(), "--write-config and --csv cannot be combined");
  V4RT_REQUIRE(o.layers == 0 || o.write_config.empty(),
               "--write-config needs the whole model (--layers 0): a config serves every layer");
  const model::ModelConfig config = plan::with_layers(resolve_model(o.model), o.layers);
  const plan::GpuSpec gpu = plan::load_gpu_spec(o.gpu, o.config_dir);
  plan::PlanRequest req;
  req.cluster = {o.nodes, o.gpus_per_node, gpu.fp8_block_tiles};
  req.context = o.context;
  req.batch = o.batch;
  req.latency_target_s = o.latency_target_ms * 1e-3;
  req.kv_format = kv_format_option(o.kv_format);
  req.batching = batching_option(o.batching);
  V4RT_REQUIRE(o.head == "leader" || o.head == "split", "--head must be leader or split, got '" << o.head << "'");
  req.head_on_leader = o.head == "leader";
  std::optional<parallel::Layout> layout;
  if (!o.layout.empty()) layout = parse_layout(o.layout);
  const plan::Plan p = plan::make_plan(config, gpu, calib, req, layout);
  if (o.csv) {
    print_csv(std::cout, o, req, p);
    return;
  }
  plan::print_plan(std::cout, {o.model, gpu.name}, config, gpu, req, p);
  plan::print_kv_comparison(std::cout, config, gpu, calib, req, p);
  if (layout && !p.rows.empty() && !p.rows[0].rejected.empty()) {
    exit_code() = 2;
    V4RT_REQUIRE(o.write_config.empty(), "--write-config " << o.write_config << ": layout " << o.layout
                                                           << " cannot run: " << p.rows[0].rejected);
  }
  if (!o.write_config.empty()) write_config(o, gpu, layout ? p.rows.at(0) : best_row(p));
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
  cmd->add_option("--kv-format", opts->kv_format, "compact | bf16 | f32 (the runtime's current F32 tables)")
      ->capture_default_str();
  cmd->add_option("--layers", opts->layers, "Only the first N layers, CSA/HCA alternating, no MTP "
                                            "(what `v4rt bench step --layers N` builds); 0: all")
      ->capture_default_str();
  cmd->add_option("--batching", opts->batching, "batched | sequential (sequences one after another)")
      ->capture_default_str();
  cmd->add_option("--head", opts->head, "split (vocabulary over TP) | leader (rank 0 of a replica runs "
                                        "the whole LM head, as the runtime does today)")
      ->capture_default_str();
  cmd->add_option("--config-dir", opts->config_dir, "Folder with hardware/<gpu>.yaml")->capture_default_str();
  cmd->add_option("--validate", opts->validate, "Same as `plan validate --points FILE`");
  cmd->add_flag("--csv", opts->csv, "Print the layout rows as CSV (for scripts/scaling)");
  cmd->add_option("--write-config", opts->write_config,
                  "Write the runtime YAML of the recommended layout (or of --layout) to this file and "
                  "print the mpirun line that serves it");
  cmd->add_option("--model-dir", opts->model_dir,
                  "Checkpoint folder for the written config's `model:` (default: --model when it is a "
                  "folder, else /models/DeepSeek-V4-Flash|Pro)");

  auto vopts = std::make_shared<ValidateOptions>();
  CLI::App* val = cmd->add_subcommand(
      "validate", "Predicted vs measured for every measured point, error and PASS/FAIL; optional fit");
  val->add_option("--points", vopts->points, "CSV of measured points (repeatable; docs/PLANNER.md)")->required();
  val->add_option("--calibration", vopts->calibration, "Calibration YAML (its fitted_on points are not counted)");
  val->add_option("--fit-on", vopts->fit_on, "Fit per-op-family constants on the points matching "
                                             "key=value[|value],... (model, layers, batch, context, gpu, ...)");
  val->add_option("--write-calibration", vopts->write_calibration, "Write the fitted constants to this YAML");
  val->add_option("--source", vopts->source, "Text for the calibration's `source` key");
  val->add_option("--gpu", vopts->gpu, "Hardware table for points without a gpu column")->capture_default_str();
  val->add_option("--kv-format", vopts->kv_format, "KV format of points without a kv_format column")
      ->capture_default_str();
  val->add_option("--batching", vopts->batching, "Batching of points without a batching column")
      ->capture_default_str();
  val->add_option("--head", vopts->head, "LM head of points without a head column: leader (rank 0 of a "
                                         "replica runs all of it, the runtime today) | split (over TP)")
      ->capture_default_str();
  val->add_option("--tolerance", vopts->tolerance_pct, "PASS when |error| <= this many percent")
      ->capture_default_str();
  val->add_flag("--by-family", vopts->by_family, "Per-family predicted and measured times");
  val->add_option("--config-dir", vopts->config_dir, "Folder with hardware/<gpu>.yaml")->capture_default_str();
  val->callback([vopts] { run_validate(*vopts); });
  cmd->callback([opts, val] {
    if (!val->parsed()) run_plan(*opts);
  });
}

}  // namespace v4rt::launch
