// SPDX-License-Identifier: MIT
// `v4rt plan` end to end: runs the built binary and checks what it prints.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>

#include "launch/runtime_config.h"
#include "tests/model/test_util.h"
#include "tests/plan/config_check.h"

namespace {

using v4rt::model::testing::CmdResult;
using v4rt::model::testing::Stderr;

// `v4rt <args>`: its exit code and its stdout and stderr interleaved as written (errors go to
// stderr, results to stdout).
CmdResult run_v4rt(const std::string& args) {
  const v4rt::model::testing::TempDir tmp;
  return v4rt::model::testing::run_shell(std::string(V4RT_EXE) + " " + args, tmp, Stderr::kMerged);
}

TEST(PlanCli, ProOneMillionOn2x8H200ShowsSpAndTpReplicatedRows) {
  const CmdResult r = run_v4rt("plan --model pro --nodes 2 --gpus-per-node 8 --gpu h200 --context 1048576");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("recommended: tp="), std::string::npos) << r.out;
  // Both rows of the comparison for 8 GPUs per sequence, each with a count of 1M-token sequences.
  const std::regex sp_row(R"(\n\s+8\s+sp-partitioned\s+tp=\d+ sp=(\d+) ep=\d+ dp=\d+\s+[0-9.]+ GiB\s+(\d+))");
  const std::regex rep_row(R"(\n\s+8\s+tp-replicated\s+tp=8 sp=1 ep=\d+ dp=\d+\s+[0-9.]+ GiB\s+(\d+))");
  std::smatch sp, rep;
  ASSERT_TRUE(std::regex_search(r.out, sp, sp_row)) << r.out;
  ASSERT_TRUE(std::regex_search(r.out, rep, rep_row)) << r.out;
  EXPECT_GT(std::stoi(sp[1]), 1);
  EXPECT_GT(std::stoll(sp[2]), 0);                   // 1M contexts fit with SP
  EXPECT_GT(std::stoll(rep[1]), 0);                  // and TP-replicated (fewer of them)
  EXPECT_GT(std::stoll(sp[2]), 2 * std::stoll(rep[1]));
  // Layouts that cannot work are listed with their reason.
  EXPECT_NE(r.out.find("rejected layouts:"), std::string::npos);
  EXPECT_NE(r.out.find("tp=16 sp=1 ep=16 dp=1: tp 16 > 8 GPUs per node"), std::string::npos) << r.out;
}

TEST(PlanCli, GivenInvalidLayoutPrintsReasonAndFails) {
  const CmdResult r = run_v4rt("plan --model flash --nodes 1 --gpus-per-node 8 --gpu h200 --context 65536 "
                    "--layout 8,1,6,1");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("n_routed_experts 256 % ep 6 != 0"), std::string::npos) << r.out;
  const CmdResult bad = run_v4rt("plan --model nosuch --gpu h200");
  EXPECT_EQ(bad.code, 1);
  EXPECT_NE(bad.out.find("--model 'nosuch'"), std::string::npos) << bad.out;
  const CmdResult gpu = run_v4rt("plan --model flash --gpu a100");
  EXPECT_EQ(gpu.code, 1);
  EXPECT_NE(gpu.out.find("unknown GPU 'a100'"), std::string::npos) << gpu.out;
}

TEST(PlanCli, CsvAndValidate) {
  const CmdResult csv = run_v4rt("plan --model flash --nodes 1 --gpus-per-node 8 --gpu h200 --context 65536 "
                      "--batch 8 --layout 8,1,8,1 --csv");
  ASSERT_EQ(csv.code, 0) << csv.out;
  ASSERT_EQ(csv.out.rfind("source,model,gpu,", 0), 0u) << csv.out;
  const size_t nl = csv.out.find('\n');
  const std::string row = csv.out.substr(nl + 1, csv.out.find('\n', nl + 1) - nl - 1);
  // predicted,flash,h200,1,8,8,1,8,1,65536,8,compact,<step_ms>,...
  std::smatch m;
  ASSERT_TRUE(std::regex_search(row, m, std::regex(R"(^predicted,flash,h200,1,8,8,1,8,1,65536,8,compact,([0-9.]+),)")))
      << row;
  const double predicted_ms = std::stod(m[1]);
  ASSERT_GT(predicted_ms, 0);

  // A measured point twice the prediction must show an error of -50.0%.
  const std::string path = (std::filesystem::temp_directory_path() / "v4rt_plan_validate.csv").string();
  {
    std::ofstream f(path);
    f << "source,model,gpu,nodes,gpus_per_node,tp,sp,ep,dp,context,batch,kv_format,step_ms,prefill_s,batching,head\n";
    f << "predicted,flash,h200,1,8,8,1,8,1,65536,8,compact,1.0,,batched,split\n";
    f << "measured,flash,h200,1,8,8,1,8,1,65536,8,compact," << 2 * predicted_ms << ",,batched,split\n";
  }
  const CmdResult v = run_v4rt("plan --validate " + path);
  ASSERT_EQ(v.code, 0) << v.out;
  EXPECT_NE(v.out.find("-50.0%"), std::string::npos) << v.out;
  EXPECT_NE(v.out.find("over 1 point(s)"), std::string::npos) << v.out;
  std::filesystem::remove(path);
}


// The measured H200 points of docs/PERFORMANCE.md: fitted on Flash batch 1 (per-op table), the
// Flash batch-4 and Pro points must be predicted within +-25%; the fit point is not counted, also
// when the written calibration is read back.
TEST(PlanCli, ValidateGpuPointsFitOnFlashBatch1) {
  const std::string points = std::string(V4RT_SOURCE_DIR) + "/scripts/scaling/data/h200_performance_md.csv";
  const std::string yaml = (std::filesystem::temp_directory_path() / "v4rt_plan_fit.yaml").string();
  const CmdResult fit = run_v4rt("plan validate --points " + points + " --fit-on model=flash,batch=1 --write-calibration " + yaml);
  ASSERT_EQ(fit.code, 0) << fit.out;
  EXPECT_NE(fit.out.find("fit point: flash L2 b1 ctx1048576 h200 1x1 tp1 sp1 ep1 dp1 f32 sequential"), std::string::npos)
      << fit.out;
  EXPECT_NE(fit.out.find("validation: 2 point(s), 2 PASS, 0 FAIL at +-25%"), std::string::npos) << fit.out;
  const std::regex pro(R"(check\s+([0-9.]+)\s+10\.200\s+([-+][0-9.]+)%\s+PASS\s+pro L2 b1 ctx1048576)");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(fit.out, m, pro)) << fit.out;
  EXPECT_LE(std::fabs(std::stod(m[2])), 25.0);
  const CmdResult again = run_v4rt("plan validate --points " + points + " --calibration " + yaml);
  ASSERT_EQ(again.code, 0) << again.out;
  EXPECT_NE(again.out.find("(fit)   flash L2 b1"), std::string::npos) << again.out;
  EXPECT_NE(again.out.find("calibration: 1 point(s) used to fit the constants, not counted above"), std::string::npos);
  // A filter that matches nothing is an error, not an empty fit.
  const CmdResult none = run_v4rt("plan validate --points " + points + " --fit-on model=tiny");
  EXPECT_EQ(none.code, 1) << none.out;
  EXPECT_NE(none.out.find("no measured point matches the fit filter"), std::string::npos) << none.out;
  std::filesystem::remove(yaml);
}

// --write-config: the recommended layout's runtime YAML, valid for its world size, and the mpirun
// line that serves it.
TEST(PlanCli, WriteConfigOfTheRecommendedLayout) {
  const v4rt::model::testing::TempDir tmp;
  const std::string path = tmp / "flash.yaml";
  const CmdResult r = run_v4rt("plan --model flash --nodes 1 --gpus-per-node 8 --gpu h200 --context 131072 "
                               "--write-config " + path);
  ASSERT_EQ(r.code, 0) << r.out;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.out, m, std::regex(R"(recommended: tp=(\d+) sp=(\d+) ep=(\d+) dp=(\d+))"))) << r.out;
  const v4rt::launch::RuntimeConfig c = v4rt::launch::load_runtime_config(path);
  EXPECT_EQ(c.parallel.tp, std::stoi(m[1]));
  EXPECT_EQ(c.parallel.sp, std::stoi(m[2]));
  EXPECT_EQ(c.parallel.ep, std::stoi(m[3]));
  EXPECT_EQ(c.parallel.dp, std::stoi(m[4]));
  EXPECT_EQ(c.model, "/models/DeepSeek-V4-Flash");
  EXPECT_EQ(c.numerics, "official");
  EXPECT_EQ(c.server.max_context, 131072);
  EXPECT_NE(r.out.find("config written to " + path), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("mpirun -np 8 "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(" serve --config " + path + " --backend cuda"), std::string::npos) << r.out;
  const std::string source_configs = std::string(V4RT_SOURCE_DIR) + "/configs";
  const auto problems = v4rt::launch::plan::testing::config_problems(path, source_configs);
  EXPECT_TRUE(problems.empty()) << problems.front();
}

TEST(PlanCli, WriteConfigOfAGivenLayoutAcrossNodes) {
  const v4rt::model::testing::TempDir tmp;
  const std::string path = tmp / "pro.yaml";
  const CmdResult r = run_v4rt("plan --model pro --nodes 2 --gpus-per-node 8 --gpu h200 --context 1048576 "
                               "--layout 8,2,16,1 --model-dir /data/pro --write-config " + path);
  ASSERT_EQ(r.code, 0) << r.out;
  const v4rt::launch::RuntimeConfig c = v4rt::launch::load_runtime_config(path);
  EXPECT_EQ(c.parallel.tp, 8);
  EXPECT_EQ(c.parallel.sp, 2);
  EXPECT_EQ(c.parallel.ep, 16);
  EXPECT_EQ(c.parallel.dp, 1);
  EXPECT_EQ(c.model, "/data/pro");
  EXPECT_NE(r.out.find("mpirun -np 16 --hostfile HOSTS --map-by ppr:8:node --bind-to none "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("sbatch --nodes=2 scripts/slurm/serve.sbatch " + path), std::string::npos) << r.out;
  const std::string text = v4rt::model::testing::read_text(path);
  EXPECT_NE(text.find("# deploy: world=16 model=pro gpu=h200 nodes=2 gpus_per_node=8"), std::string::npos) << text;
  EXPECT_NE(text.find("--layout 8,2,16,1"), std::string::npos) << text;  // the command that chose it
  const auto problems = v4rt::launch::plan::testing::config_problems(path, std::string(V4RT_SOURCE_DIR) + "/configs");
  EXPECT_TRUE(problems.empty()) << problems.front();
}

TEST(PlanCli, WriteConfigRefusesARejectedLayout) {
  const v4rt::model::testing::TempDir tmp;
  const std::string path = tmp / "bad.yaml";
  const CmdResult r = run_v4rt("plan --model flash --nodes 1 --gpus-per-node 8 --gpu h200 --context 65536 "
                               "--layout 8,1,6,1 --write-config " + path);
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("--write-config " + path + ": layout 8,1,6,1 cannot run: "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("n_routed_experts 256 % ep 6 != 0"), std::string::npos) << r.out;
  EXPECT_FALSE(std::filesystem::exists(path));
  const CmdResult csv = run_v4rt("plan --model flash --csv --write-config " + path);
  EXPECT_EQ(csv.code, 1) << csv.out;
  EXPECT_NE(csv.out.find("--write-config and --csv cannot be combined"), std::string::npos) << csv.out;
}

}  // namespace
