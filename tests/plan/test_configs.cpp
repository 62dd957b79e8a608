// SPDX-License-Identifier: MIT
// Every runtime YAML in configs/ parses and validates for the world size its `# deploy:` line names
// (the GPU deployment configs also against the planner on their cluster), and the checker itself
// catches a config that is wrong for its deployment.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "tests/model/test_util.h"
#include "tests/plan/config_check.h"

namespace {

namespace fs = std::filesystem;
using v4rt::launch::plan::testing::config_problems;

const std::string kConfigs = std::string(V4RT_SOURCE_DIR) + "/configs";

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const std::string& s : v) out += s + "\n";
  return out;
}

TEST(Configs, EveryConfigValidatesForItsWorldSize) {
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(kConfigs))
    if (e.is_regular_file() && e.path().extension() == ".yaml") files.push_back(e.path().string());
  std::sort(files.begin(), files.end());
  ASSERT_GE(files.size(), 12u);
  for (const std::string& f : files) {
    SCOPED_TRACE(f);
    EXPECT_EQ(join(config_problems(f, kConfigs)), "");
  }
}

TEST(Configs, DeploymentConfigsCoverFlashAndProOnH200) {
  for (const char* name : {"flash_1x8_h200", "flash_2x8_h200", "pro_2x8_h200", "pro_4x8_h200"}) {
    const std::string path = kConfigs + "/" + name + ".yaml";
    ASSERT_TRUE(fs::exists(path)) << path;
    const std::string text = v4rt::model::testing::read_text(path);
    const auto deploy = v4rt::launch::plan::parse_deploy_line(text, path);
    ASSERT_TRUE(deploy);
    EXPECT_EQ(deploy->at("gpu"), "h200");
    const int nodes = std::string(name).find("_1x8") != std::string::npos   ? 1
                      : std::string(name).find("_2x8") != std::string::npos ? 2
                                                                            : 4;
    EXPECT_EQ(deploy->at("world"), std::to_string(nodes * 8)) << path;
    EXPECT_EQ(deploy->at("model"), std::string(name).substr(0, std::string(name).find('_')));
  }
}

TEST(Configs, CheckerNamesWhatIsWrong) {
  const v4rt::model::testing::TempDir tmp;
  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(tmp / name) << text;
    return tmp / name;
  };
  // No deploy line.
  auto p = config_problems(write("a.yaml", "parallel: {tp: 2}\n"), kConfigs);
  ASSERT_EQ(p.size(), 1u);
  EXPECT_NE(p[0].find("no '# deploy:"), std::string::npos) << p[0];
  // World size of the layout differs from the deploy line (the README's old failure).
  p = config_problems(write("b.yaml", "# deploy: world=8 model=flash gpu=h200 nodes=1 gpus_per_node=8\n"
                                      "# mpirun -np 8 v4rt serve\nparallel: {tp: 1, sp: 1, ep: 1, dp: 1}\n"),
                      kConfigs);
  ASSERT_FALSE(p.empty());
  EXPECT_NE(join(p).find("dp*sp*tp = 1 ranks, '# deploy:' says world=8"), std::string::npos) << join(p);
  // A layout the model does not allow, and one whose weights do not fit an H200.
  p = config_problems(write("c.yaml", "# deploy: world=6 model=flash\nparallel: {tp: 1, sp: 1, ep: 6, dp: 6}\n"),
                      kConfigs);
  EXPECT_NE(join(p).find("n_routed_experts"), std::string::npos) << join(p);
  p = config_problems(write("d.yaml", "# deploy: world=8 model=pro gpu=h200 nodes=1 gpus_per_node=8\n"
                                      "# mpirun -np 8 v4rt serve\nparallel: {tp: 1, sp: 1, ep: 8, dp: 8}\n"),
                      kConfigs);
  EXPECT_NE(join(p).find("does not fit"), std::string::npos) << join(p);
  // An unknown key still fails to parse.
  p = config_problems(write("e.yaml", "# deploy: world=1 model=tiny\nparalel: {tp: 1}\n"), kConfigs);
  EXPECT_NE(join(p).find("'paralel' is not a known key"), std::string::npos) << join(p);
}

}  // namespace
